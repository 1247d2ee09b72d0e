"""Window planning: where sliding windows go, how they blend, when an output chunk is done.

Pure numpy (no torch, no I/O), so planning is testable without a model. The numerics follow
MONAI 1.6 exactly (``monai.inferers.utils._get_scan_interval``, ``monai.data.utils.
dense_patch_slices`` and ``compute_importance_map``) so that our streamed blend equals
``monai.inferers.sliding_window_inference``. They are re-implemented here, not imported,
because MONAI's versions are torch-bound and the streaming engine additionally needs the
window/chunk incidence (which windows touch which output chunk), which MONAI does not offer.

All shapes, slices and sizes are in array order: ``(y, x)`` for rasters, ``(z, y, x)`` for
volumes, in pixels/voxels.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from itertools import product

import numpy as np

from geomed_seg.errors import InvalidInputError

Window = tuple[slice, ...]

BLEND_MODES = ("constant", "gaussian", "nnunet")


def resolve_roi(
    roi_size: int | Sequence[int | None] | None, image_size: Sequence[int]
) -> tuple[int, ...]:
    """Return the window size in array order, replacing ``None``/non-positive entries by the image size.

    Same rule as MONAI's ``fall_back_tuple``: ``roi_size=(32, -1)`` on a ``(100, 64)`` image
    gives ``(32, 64)``; a scalar applies to every axis.
    """
    nd = len(image_size)
    if roi_size is None or isinstance(roi_size, int | np.integer):
        roi = (roi_size,) * nd
    else:
        roi = tuple(roi_size)
    if len(roi) != nd:
        raise InvalidInputError(f"roi_size {roi_size} has {len(roi)} values for a {nd}D image")
    return tuple(
        int(r) if r is not None and r > 0 else int(s) for r, s in zip(roi, image_size, strict=True)
    )


def _per_axis(value: float | Sequence[float], nd: int, what: str) -> tuple[float, ...]:
    vals = (value,) * nd if isinstance(value, int | float) else tuple(value)
    if len(vals) != nd:
        raise InvalidInputError(f"{what} {value} has {len(vals)} values for {nd} axes")
    return tuple(float(v) for v in vals)


def scan_interval(
    image_size: Sequence[int], roi_size: Sequence[int], overlap: float | Sequence[float]
) -> tuple[int, ...]:
    """Return the step between window starts per axis (pixels), as MONAI computes it.

    ``int(roi * (1 - overlap))`` (at least 1), or ``roi`` when the roi equals the image size.
    ``image_size`` is the (padded) image size, at least ``roi_size`` on every axis.
    """
    ov = _per_axis(overlap, len(roi_size), "overlap")
    if any(not 0 <= o < 1 for o in ov):
        raise InvalidInputError(f"overlap must be >= 0 and < 1, got {overlap}")
    out = []
    for size, roi, o in zip(image_size, roi_size, ov, strict=True):
        if roi == size:
            out.append(int(roi))
        else:
            out.append(max(int(roi * (1 - o)), 1))
    return tuple(out)


def window_starts(size: int, roi: int, interval: int) -> tuple[int, ...]:
    """Return window starts along one axis of length ``size`` (>= ``roi``), MONAI's dense grid.

    Starts are ``0, interval, 2*interval, ...`` until a window reaches the end; the last one is
    shifted back so that it ends exactly at ``size``.
    """
    num = math.ceil(size / interval)
    count = next((d + 1 for d in range(num) if d * interval + roi >= size), 1)
    return tuple(i * interval - max(i * interval + roi - size, 0) for i in range(count))


def nnunet_window_starts(size: int, roi: int, overlap: float) -> tuple[int, ...]:
    """Return window starts along one axis as nnU-Net v2 places them (``size >= roi``).

    ``nnunetv2.inference.sliding_window_prediction.compute_steps_for_sliding_window`` with
    ``tile_step_size = 1 - overlap``: ``ceil((size - roi) / (roi * step)) + 1`` windows
    spread evenly from 0 to ``size - roi`` (rounded), so the gaps are equal rather than
    MONAI's fixed interval with a shifted last window.
    """
    step = roi * (1.0 - overlap)
    num = int(np.ceil((size - roi) / step)) + 1
    if num == 1:
        return (0,)
    actual = (size - roi) / (num - 1)
    return tuple(int(np.round(actual * i)) for i in range(num))


def pad_widths(image_size: Sequence[int], roi_size: Sequence[int]) -> tuple[tuple[int, int], ...]:
    """Return ``(before, after)`` padding per axis so that every axis is at least the roi.

    MONAI pads ``diff // 2`` before and the rest after (so odd differences pad more after).
    """
    out = []
    for size, roi in zip(image_size, roi_size, strict=True):
        diff = max(roi - size, 0)
        out.append((diff // 2, diff - diff // 2))
    return tuple(out)


def _unravel(index: int, counts: Sequence[int]) -> list[int]:
    """Return the C-order multi-index of flat ``index`` over axes of ``counts`` entries."""
    out = [0] * len(counts)
    for a in range(len(counts) - 1, -1, -1):
        index, out[a] = divmod(index, counts[a])
    return out


class WindowGrid(Sequence[Window]):
    """The windows of a plan as a lazy, read-only sequence (C order over per-axis starts).

    Only the per-axis starts are stored, so a 200000² raster's million windows cost a few
    kilobytes; ``grid[i]`` builds the slices of window ``i`` on demand.
    """

    def __init__(self, starts: Sequence[Sequence[int]], roi_size: Sequence[int]) -> None:
        self.starts = tuple(tuple(int(v) for v in ax) for ax in starts)
        self.roi_size = tuple(int(r) for r in roi_size)
        self.counts = tuple(len(ax) for ax in self.starts)
        self._len = math.prod(self.counts)

    def __len__(self) -> int:
        return self._len

    def index_of(self, index: int) -> list[int]:
        """Return the per-axis start indices of window ``index`` (C order)."""
        if not -self._len <= index < self._len:
            raise IndexError(f"window {index} out of range ({self._len} windows)")
        return _unravel(index % self._len, self.counts)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._len))]
        js = self.index_of(int(index))
        return tuple(
            slice(ax[j], ax[j] + r) for ax, j, r in zip(self.starts, js, self.roi_size, strict=True)
        )

    def __iter__(self) -> Iterator[Window]:
        for js in product(*(range(n) for n in self.counts)):
            yield tuple(
                slice(ax[j], ax[j] + r)
                for ax, j, r in zip(self.starts, js, self.roi_size, strict=True)
            )


@dataclass(frozen=True)
class WindowPlan:
    """Sliding windows over one image.

    Attributes
    ----------
    image_shape : tuple of int
        Spatial shape of the unpadded image.
    roi_size : tuple of int
        Window size.
    pad : tuple of (int, int)
        Padding before/after per axis (non-zero only where the image is smaller than the roi).
    interval : tuple of int
        Step between window starts.
    starts : tuple of tuple of int
        Window starts per axis in *padded* coordinates; the windows are their C-order product.
    """

    image_shape: tuple[int, ...]
    roi_size: tuple[int, ...]
    pad: tuple[tuple[int, int], ...]
    interval: tuple[int, ...]
    starts: tuple[tuple[int, ...], ...] = field(repr=False)

    @cached_property
    def windows(self) -> WindowGrid:
        """Window slices in padded coordinates, in MONAI's order (a lazy sequence)."""
        return WindowGrid(self.starts, self.roi_size)

    @property
    def ndim(self) -> int:
        return len(self.image_shape)

    @property
    def padded_shape(self) -> tuple[int, ...]:
        """Spatial shape after padding."""
        return tuple(s + b + a for s, (b, a) in zip(self.image_shape, self.pad, strict=True))

    def __len__(self) -> int:
        return math.prod(len(ax) for ax in self.starts)

    def clip(self, index: int) -> tuple[Window, Window]:
        """Return ``(image_slices, window_slices)`` of window ``index``'s part inside the image.

        ``image_slices`` index the unpadded image, ``window_slices`` the matching part of a
        ``roi_size`` window array (they differ only where the image was padded).
        """
        js = self.windows.index_of(index)
        img, win = [], []
        for ax, j, r, (before, _), n in zip(
            self.starts, js, self.roi_size, self.pad, self.image_shape, strict=True
        ):
            start = ax[j]
            lo, hi = max(start - before, 0), min(start + r - before, n)
            img.append(slice(lo, hi))
            win.append(slice(lo + before - start, hi + before - start))
        return tuple(img), tuple(win)


def plan_windows(
    spatial_shape: Sequence[int],
    roi_size: int | Sequence[int | None] | None,
    overlap: float | Sequence[float] = 0.25,
    steps: str = "monai",
) -> WindowPlan:
    """Return the :class:`WindowPlan` MONAI's ``sliding_window_inference`` would use.

    Parameters
    ----------
    spatial_shape : sequence of int
        Image size in array order (pixels/voxels).
    roi_size : int, sequence or None
        Window size; ``None``/non-positive entries take the image size.
    overlap : float or sequence of float
        Fraction of overlap between neighbouring windows, in ``[0, 1)``.
    steps : {"monai", "nnunet"}
        Window starts: MONAI's fixed interval, or nnU-Net's evenly spread starts
        (:func:`nnunet_window_starts`; same padding, same window order).
    """
    if steps not in ("monai", "nnunet"):
        raise InvalidInputError(f"steps must be 'monai' or 'nnunet', got {steps!r}")
    shape = tuple(int(s) for s in spatial_shape)
    if not shape or min(shape) < 1:
        raise InvalidInputError(f"image shape {shape} must be non-empty and positive")
    roi = resolve_roi(roi_size, shape)
    pad = pad_widths(shape, roi)
    padded = tuple(max(s, r) for s, r in zip(shape, roi, strict=True))
    step = scan_interval(padded, roi, overlap)
    if steps == "nnunet":
        ov = _per_axis(overlap, len(roi), "overlap")
        starts = tuple(
            nnunet_window_starts(n, r, o) for n, r, o in zip(padded, roi, ov, strict=True)
        )
    else:
        starts = tuple(window_starts(n, r, i) for n, r, i in zip(padded, roi, step, strict=True))
    return WindowPlan(shape, roi, pad, step, tuple(tuple(int(v) for v in ax) for ax in starts))


def importance_map(
    roi_size: Sequence[int],
    mode: str = "constant",
    sigma_scale: float | Sequence[float] = 0.125,
) -> np.ndarray:
    """Return the float32 blending weights of one window, shape ``roi_size`` (array order).

    ``"constant"``: ones. ``"gaussian"``: separable Gaussian with sigma ``sigma_scale * roi``
    per axis, centred on the window centre (peak 1 for odd sizes, as in MONAI), then clamped
    below at ``max(min, 1e-3)`` so every pixel keeps a positive weight, as MONAI does.
    ``"nnunet"``: nnU-Net v2's ``compute_gaussian`` (:func:`nnunet_gaussian`).
    """
    roi = tuple(int(r) for r in roi_size)
    if mode not in BLEND_MODES:
        raise InvalidInputError(f"unknown blend mode {mode!r}; use one of {BLEND_MODES}")
    if mode == "constant":
        w = np.ones(roi, dtype=np.float32)
    elif mode == "nnunet":
        return nnunet_gaussian(roi, sigma_scale)
    else:
        scales = _per_axis(sigma_scale, len(roi), "sigma_scale")
        w = np.ones((), dtype=np.float32)
        for n, sc in zip(roi, scales, strict=True):
            sigma = n * sc
            x = np.arange(-(n - 1) / 2.0, (n - 1) / 2.0 + 1, dtype=np.float32)
            g = np.exp(x**2 / np.float32(-2 * sigma**2)).astype(np.float32)
            w = w[..., None] * g
    floor = max(float(w.min()), 1e-3)
    return np.maximum(w, np.float32(floor)).astype(np.float32)


def nnunet_gaussian(roi_size: Sequence[int], sigma_scale: float = 0.125) -> np.ndarray:
    """Return nnU-Net v2's window weights (float32, shape ``roi_size``), written out in numpy.

    ``compute_gaussian`` filters a unit impulse at ``roi // 2`` with
    ``scipy.ndimage.gaussian_filter(sigma = roi * sigma_scale, mode="constant")``: per axis
    the normalised kernel ``exp(-d**2 / (2 sigma**2))`` for ``|d| <= int(4 sigma + 0.5)``
    and 0 beyond; the product is scaled to a peak of 1 here (nnU-Net scales to 10, which
    cancels in the blend) and zeros are raised to the smallest non-zero weight.
    """
    roi = tuple(int(r) for r in roi_size)
    scales = _per_axis(sigma_scale, len(roi), "sigma_scale")
    w = np.ones((), dtype=np.float64)
    for n, sc in zip(roi, scales, strict=True):
        sigma = n * sc
        d = np.arange(n, dtype=np.float64) - n // 2
        g = np.exp(-0.5 * (d / sigma) ** 2) if sigma > 0 else (d == 0).astype(np.float64)
        g[np.abs(d) > int(4.0 * sigma + 0.5)] = 0.0
        w = w[..., None] * g
    w = w / w.max()
    if (w == 0).any():
        w[w == 0] = w[w > 0].min()
    return w.astype(np.float32)


# -- output chunks -----------------------------------------------------------------------


def regular_chunks(shape: Sequence[int], chunk: int | Sequence[int]) -> tuple[tuple[int, ...], ...]:
    """Return dask-style chunk sizes per axis for a regular ``chunk`` edge (last one shorter)."""
    edges = (chunk,) * len(shape) if isinstance(chunk, int | np.integer) else tuple(chunk)
    out = []
    for n, c in zip(shape, edges, strict=True):
        c = max(min(int(c), int(n)), 1)
        out.append((c,) * (n // c) + ((n % c,) if n % c else ()))
    return tuple(out)


@dataclass(frozen=True)
class ChunkSchedule:
    """Which output chunks each window touches, in chunk order, with reference counts.

    Attributes
    ----------
    chunks : tuple of tuple of int
        Output chunk sizes per axis (dask convention) over the unpadded image.
    order : tuple of int
        Window indices (into ``plan.windows``) in chunk order: grouped by the output chunk
        that holds the window's first pixel, chunk groups in C order, so an output chunk is
        complete soon after its own group and only about one "row" of chunks is open.
    touches : tuple of tuple of tuple of int
        ``touches[w]``: chunk indices (block coordinates) touched by window ``w``.
    counts : dict
        ``counts[block]``: number of windows touching ``block``.
    """

    chunks: tuple[tuple[int, ...], ...]
    order: tuple[int, ...]
    touches: tuple[tuple[tuple[int, ...], ...], ...] = field(repr=False)
    counts: dict[tuple[int, ...], int] = field(repr=False)

    def block_slices(self, block: Sequence[int]) -> Window:
        """Return the image slices of chunk ``block``."""
        out = []
        for b, sizes in zip(block, self.chunks, strict=True):
            start = int(sum(sizes[:b]))
            out.append(slice(start, start + sizes[b]))
        return tuple(out)

    def windows_touching(self, block: Sequence[int]) -> int:
        """Return how many windows touch chunk ``block`` (0 if none)."""
        return self.counts.get(tuple(block), 0)


def schedule_chunks(plan: WindowPlan, chunks: Sequence[Sequence[int]]) -> ChunkSchedule:
    """Return the :class:`ChunkSchedule` of ``plan`` over output ``chunks`` (dask convention)."""
    chunks = tuple(tuple(int(c) for c in ax) for ax in chunks)
    if tuple(sum(ax) for ax in chunks) != plan.image_shape:
        raise InvalidInputError(f"chunks {chunks} do not tile image shape {plan.image_shape}")
    bounds = [np.cumsum((0, *ax)) for ax in chunks]
    touches = []
    first = []
    counts: dict[tuple[int, ...], int] = {}
    for i in range(len(plan)):
        img, _ = plan.clip(i)
        ranges = []
        for s, b in zip(img, bounds, strict=True):
            lo = int(np.searchsorted(b, s.start, side="right") - 1)
            hi = int(np.searchsorted(b, s.stop, side="left"))
            ranges.append(range(lo, hi))
        blocks = tuple(product(*ranges))
        touches.append(blocks)
        first.append(blocks[0])
        for blk in blocks:
            counts[blk] = counts.get(blk, 0) + 1
    order = tuple(sorted(range(len(plan)), key=lambda i: (first[i], i)))
    return ChunkSchedule(chunks, order, tuple(touches), counts)
