"""Window reads through a cache of the image's dask blocks: each block is computed once.

Hand-written because dask has no such access pattern: computing ``darray[window]`` reads and
decodes every chunk the window touches, from scratch, for every window. Sliding windows are
smaller than the chunks and overlap, so the same chunk would be read many times (for a
GeoTIFF with 64 MB chunks and 256² windows, dozens of times). Windows are visited in chunk
order, so each block is computed on its first use, kept while later windows still need it
and freed after its last use. Memory is bounded by the band of blocks in flight, like the
engine's output accumulators, not by the image.

Blocks are decoded ahead of use by a small thread pool (GDAL, zlib and numpy release the GIL,
so decoding runs in parallel with the model and with each other): when block ``k`` (in
order of first use) is needed, blocks ``k+1 .. k+readahead`` are already being computed.
A window inside one block is served as a view of the cached block (no copy).

No torch here: this module only moves numpy/dask data.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import product

import dask.array as da
import numpy as np

from geomed_seg.core.image import Image, valid_samples
from geomed_seg.inference.plan import WindowPlan

Block = tuple[int, ...]


def default_read_threads() -> int:
    """Return the reader pool size: the CPU count, between 1 and 4."""
    return max(1, min(4, os.cpu_count() or 1))


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
    pool : ThreadPoolExecutor, optional
        Threads that compute blocks ahead of use; None computes each block on first use in
        the calling thread.
    readahead : int
        How many blocks (in order of first use) are submitted ahead of the one being read.
    """

    def __init__(
        self,
        array: da.Array,
        n_leading: int,
        windows: Sequence[Sequence[slice]],
        pool: ThreadPoolExecutor | None = None,
        readahead: int = 2,
    ):
        self.array = array
        self.lead = n_leading
        self.bounds = _bounds(array.chunks[n_leading:])
        self.remaining: dict[Block, int] = {}
        first_use: list[Block] = []
        for window in windows:
            for block in product(*_block_ranges(self.bounds, window)):
                if block not in self.remaining:
                    first_use.append(block)
                self.remaining[block] = self.remaining.get(block, 0) + 1
        self.first_use = first_use
        self.rank = {b: k for k, b in enumerate(first_use)}
        self.pool = pool
        self.readahead = max(int(readahead), 0) if pool is not None else 0
        self.submitted = 0  # blocks of ``first_use`` handed to the pool (or computed) so far
        self.cache: dict[Block, np.ndarray | Future] = {}
        self.blocks_read = 0
        self.peak_blocks = 0

    def _block_slices(self, block: Block) -> tuple[slice, ...]:
        return tuple(
            slice(int(b[i]), int(b[i + 1])) for b, i in zip(self.bounds, block, strict=True)
        )

    def _compute(self, block: Block) -> np.ndarray:
        index = (slice(None),) * self.lead + self._block_slices(block)
        return np.asarray(self.array[index].compute(scheduler="synchronous"))

    def _submit_through(self, rank: int) -> None:
        """Start computing every not yet started block up to ``rank`` (first-use order)."""
        while self.submitted <= min(rank, len(self.first_use) - 1):
            block = self.first_use[self.submitted]
            self.submitted += 1
            if block in self.cache:
                continue
            if self.pool is not None:
                self.cache[block] = self.pool.submit(self._compute, block)
            else:
                self.cache[block] = self._compute(block)
            self.blocks_read += 1
            self.peak_blocks = max(self.peak_blocks, len(self.cache))

    def _get(self, block: Block) -> np.ndarray:
        data = self.cache.get(block)
        if data is None:
            rank = self.rank.get(block)
            if rank is None:  # a window outside the announced ones: compute it here
                data = self._compute(block)
                self.cache[block] = data
                self.blocks_read += 1
                self.peak_blocks = max(self.peak_blocks, len(self.cache))
                return data
            self._submit_through(rank)
            data = self.cache[block]
        if isinstance(data, Future):
            self._submit_through(self.rank.get(block, 0) + self.readahead)
            data = data.result()
            self.cache[block] = data
        return data

    def _release(self, block: Block) -> None:
        left = self.remaining.get(block, 1) - 1
        if left <= 0:
            self.remaining.pop(block, None)
            self.cache.pop(block, None)
        else:
            self.remaining[block] = left

    def read(self, window: Sequence[slice]) -> np.ndarray:
        """Return the array inside ``window`` (leading axes whole), freeing finished blocks.

        A window inside one block is a read-only view of that block; otherwise a new array.
        """
        lead = (slice(None),) * self.lead
        blocks = list(product(*_block_ranges(self.bounds, window)))
        if len(blocks) == 1:
            block = blocks[0]
            data = self._get(block)
            src = tuple(
                slice(s.start - int(b[i]), s.stop - int(b[i]))
                for s, b, i in zip(window, self.bounds, block, strict=True)
            )
            out = data[(*lead, *src)]
            out.flags.writeable = False
            self._release(block)
            return out
        lead_shape = self.array.shape[: self.lead]
        out = np.empty((*lead_shape, *(s.stop - s.start for s in window)), self.array.dtype)
        for block in blocks:
            data = self._get(block)
            src, dst = [], []
            for s, b, i in zip(window, self.bounds, block, strict=True):
                lo, hi = max(s.start, int(b[i])), min(s.stop, int(b[i + 1]))
                src.append(slice(lo - int(b[i]), hi - int(b[i])))
                dst.append(slice(lo - s.start, hi - s.start))
            out[(*lead, *dst)] = data[(*lead, *src)]
            self._release(block)
        return out

    def close(self) -> None:
        """Drop cached blocks and cancel reads not yet started."""
        for value in self.cache.values():
            if isinstance(value, Future):
                value.cancel()
        self.cache.clear()


class WindowReader:
    """Read ``(data (C, *clip), valid (*clip))`` of plan windows through block caches.

    Validity comes from ``image.mask`` when the image has one (cached the same way), else
    from the data block itself by the image's nodata rule, so data is never read twice.
    ``threads`` > 0 decodes blocks ahead of use in a thread pool (``0``: in the caller);
    call :meth:`close` (or use it as a context manager) to stop the pool.
    """

    def __init__(
        self,
        image: Image,
        plan: WindowPlan,
        order: Sequence[int],
        threads: int | None = None,
        readahead: int | None = None,
    ):
        self.image = image
        self.plan = plan
        threads = default_read_threads() if threads is None else int(threads)
        self.pool = (
            ThreadPoolExecutor(threads, thread_name_prefix="geomed-seg-read") if threads else None
        )
        ahead = threads if readahead is None else readahead
        windows = [plan.clip(i)[0] for i in order]
        self.data = BlockCache(image.darray, 1, windows, self.pool, ahead)
        mask = None if image.mask is None else image.valid_mask()
        self.mask = None if mask is None else BlockCache(mask, 0, windows, self.pool, ahead)

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Return window ``index``'s data and validity inside the image (data may be a view)."""
        window = self.plan.clip(index)[0]
        data = self.data.read(window)
        if self.mask is not None:
            valid = self.mask.read(window).astype(bool, copy=False)
        else:
            valid = np.asarray(valid_samples(data, self.image.nodata))
        return data, valid

    def close(self) -> None:
        """Stop the pool (reads in progress finish; queued ones are cancelled)."""
        self.data.close()
        if self.mask is not None:
            self.mask.close()
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = None

    def __enter__(self) -> WindowReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
