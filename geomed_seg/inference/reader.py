"""Window reads through a cache of the image's dask blocks: each block is computed once.

Hand-written because dask has no such access pattern: computing ``darray[window]`` reads and
decodes every chunk the window touches, from scratch, for every window. Sliding windows are
smaller than the chunks and overlap, so the same chunk would be read many times (for a
GeoTIFF with 64 MB chunks and 256² windows, dozens of times). Windows are visited in chunk
order, so each block is computed on its first use, kept while later windows still need it
and freed after its last use. Memory is bounded by the band of blocks in flight, like the
engine's output accumulators, not by the image.

No torch here: this module only moves numpy/dask data.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import product

import dask.array as da
import numpy as np

from geomed_seg.core.image import Image, valid_samples
from geomed_seg.inference.plan import WindowPlan

Block = tuple[int, ...]


def _bounds(chunks: Sequence[tuple[int, ...]]) -> list[np.ndarray]:
    return [np.cumsum((0, *c)) for c in chunks]


def _block_ranges(bounds: list[np.ndarray], window: Sequence[slice]) -> list[range]:
    """Block indices along each axis that intersect ``window`` (slices with start/stop)."""
    return [
        range(
            int(np.searchsorted(b, s.start, "right") - 1), int(np.searchsorted(b, s.stop, "left"))
        )
        for b, s in zip(bounds, window, strict=True)
    ]


class BlockCache:
    """Serve spatial windows of a dask array, computing each spatial block once.

    Parameters
    ----------
    array : dask.array.Array
        ``(*leading, *spatial)``; leading axes (channels) are always read whole.
    n_leading : int
        Number of leading non-spatial axes (1 for channel-first data, 0 for a mask).
    windows : sequence of tuple of slice
        Every window that will be read, in the order it will be read. A block is freed after
        the last of these windows that touches it.
    """

    def __init__(self, array: da.Array, n_leading: int, windows: Sequence[Sequence[slice]]):
        self.array = array
        self.lead = n_leading
        self.bounds = _bounds(array.chunks[n_leading:])
        self.remaining: dict[Block, int] = {}
        for window in windows:
            for block in product(*_block_ranges(self.bounds, window)):
                self.remaining[block] = self.remaining.get(block, 0) + 1
        self.cache: dict[Block, np.ndarray] = {}
        self.blocks_read = 0
        self.peak_blocks = 0

    def _block_slices(self, block: Block) -> tuple[slice, ...]:
        return tuple(
            slice(int(b[i]), int(b[i + 1])) for b, i in zip(self.bounds, block, strict=True)
        )

    def _get(self, block: Block) -> np.ndarray:
        data = self.cache.get(block)
        if data is None:
            index = (slice(None),) * self.lead + self._block_slices(block)
            data = np.asarray(self.array[index].compute(scheduler="synchronous"))
            self.cache[block] = data
            self.blocks_read += 1
            self.peak_blocks = max(self.peak_blocks, len(self.cache))
        return data

    def read(self, window: Sequence[slice]) -> np.ndarray:
        """Return the array inside ``window`` (leading axes whole), freeing finished blocks."""
        lead_shape = self.array.shape[: self.lead]
        out = np.empty((*lead_shape, *(s.stop - s.start for s in window)), self.array.dtype)
        for block in product(*_block_ranges(self.bounds, window)):
            data = self._get(block)
            src, dst = [], []
            for s, b, i in zip(window, self.bounds, block, strict=True):
                lo, hi = max(s.start, int(b[i])), min(s.stop, int(b[i + 1]))
                src.append(slice(lo - int(b[i]), hi - int(b[i])))
                dst.append(slice(lo - s.start, hi - s.start))
            lead = (slice(None),) * self.lead
            out[(*lead, *dst)] = data[(*lead, *src)]
            left = self.remaining.get(block, 1) - 1
            if left <= 0:
                self.remaining.pop(block, None)
                self.cache.pop(block, None)
            else:
                self.remaining[block] = left
        return out


class WindowReader:
    """Read ``(data (C, *clip), valid (*clip))`` of plan windows through block caches.

    Validity comes from ``image.mask`` when the image has one (cached the same way), else
    from the data block itself by the image's nodata rule, so data is never read twice.
    """

    def __init__(self, image: Image, plan: WindowPlan, order: Sequence[int]):
        self.image = image
        self.plan = plan
        windows = [plan.clip(i)[0] for i in order]
        self.data = BlockCache(image.darray, 1, windows)
        mask = None if image.mask is None else image.valid_mask()
        self.mask = None if mask is None else BlockCache(mask, 0, windows)

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Return window ``index``'s data and validity inside the image."""
        window = self.plan.clip(index)[0]
        data = self.data.read(window)
        if self.mask is not None:
            valid = self.mask.read(window).astype(bool, copy=False)
        else:
            valid = np.asarray(valid_samples(data, self.image.nodata))
        return data, valid
