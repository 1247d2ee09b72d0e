"""Cut one window plan into independent tiles whose outputs equal the whole run's.

An image far larger than the engine's working set (a 200000² raster: a million windows, an
output row of chunks of several GB) is run tile by tile. A tile owns a *core* of output
chunks and runs exactly the windows of the whole plan that touch its core (so windows that
cross a tile border run once for each tile they touch), over the *read* region those windows
cover. Every core sample therefore gets the same windows, with the same weights, added in the
same relative order (chunk order maps monotonically into the tile), so each written chunk
equals the untiled run's (bitwise, up to the model's own rounding, which may change with the
batch a window is run in); the chunks of the read region outside the core are incomplete and
are not written. Memory and per-window bookkeeping are bounded by the tile,
not by the image.

Pure numpy, no torch, no I/O. Shapes and slices in array order, in samples.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import product

import numpy as np

from geomed_seg.inference.plan import Window, WindowPlan

#: default tile edge per spatial rank (samples): images up to this size run as one tile
TILE_EDGE = {2: 8192, 3: 512}


@dataclass(frozen=True)
class PlanTile:
    """One tile of a plan.

    Attributes
    ----------
    core : tuple of slice
        Image samples whose output this tile writes (whole output chunks).
    read : tuple of slice
        Image region the tile's windows cover; ``plan`` is relative to its start.
    plan : WindowPlan
        The windows of the whole plan that touch ``core``, in ``read``-local coordinates.
    chunks : tuple of tuple of int
        Output chunk sizes over ``read`` (the global chunk grid cut to it; the core is a
        union of whole chunks of it).
    """

    core: Window
    read: Window
    plan: WindowPlan
    chunks: tuple[tuple[int, ...], ...]

    def in_core(self, slices: Window) -> bool:
        """Return whether read-local ``slices`` (one output chunk) lie inside the core."""
        return all(
            r.start + s.start >= c.start and r.start + s.stop <= c.stop
            for s, r, c in zip(slices, self.read, self.core, strict=True)
        )


def tile_edges(
    plan: WindowPlan, chunks: Sequence[Sequence[int]], edge: int | None = None
) -> tuple[tuple[int, ...], ...]:
    """Return the core boundaries per axis: every ``edge`` samples, snapped to chunk bounds.

    An axis shorter than ``edge``, or one that is padded (image smaller than the roi), is one
    tile. ``edge`` defaults to :data:`TILE_EDGE` for the plan's rank (one tile when unknown).
    """
    edge = TILE_EDGE.get(plan.ndim) if edge is None else int(edge)
    out = []
    for n, ax, pad in zip(plan.image_shape, chunks, plan.pad, strict=True):
        bounds = np.cumsum((0, *ax)).tolist()
        if edge is None or n <= edge or any(pad):
            out.append((0, n))
            continue
        cuts = [0]
        while cuts[-1] < n:  # the first chunk boundary at or past cut + edge (or the end)
            k = bisect.bisect_left(bounds, cuts[-1] + edge)
            cuts.append(bounds[k] if k < len(bounds) else n)
        out.append(tuple(cuts))
    return tuple(out)


def _axis_tile(
    starts: Sequence[int], roi: int, before: int, n: int, lo: int, hi: int
) -> tuple[int, int, int, int]:
    """Return ``(first start index, last + 1, read_lo, read_hi)`` of windows touching [lo, hi)."""
    img = np.asarray(starts) - before  # window starts in image coordinates
    first = int(np.searchsorted(img + roi, lo, side="right"))  # first window ending after lo
    last = int(np.searchsorted(img, hi, side="left"))  # windows starting before hi
    read_lo = max(int(img[first]), 0)
    read_hi = min(int(img[last - 1]) + roi, n)
    return first, last, read_lo, read_hi


def is_tiled(plan: WindowPlan, chunks: Sequence[Sequence[int]], edge: int | None = None) -> bool:
    """Return whether ``plan`` runs as more than one tile."""
    return any(len(c) > 2 for c in tile_edges(plan, chunks, edge))


def split_plan(
    plan: WindowPlan, chunks: Sequence[Sequence[int]], edge: int | None = None
) -> Iterator[PlanTile]:
    """Yield the tiles of ``plan`` over output ``chunks`` (dask convention), in C order.

    One tile (the whole plan, unchanged) when the image fits in one tile edge.
    """
    chunks = tuple(tuple(int(c) for c in ax) for ax in chunks)
    cuts = tile_edges(plan, chunks, edge)
    if all(len(c) == 2 for c in cuts):
        whole = tuple(slice(0, n) for n in plan.image_shape)
        yield PlanTile(whole, whole, plan, chunks)
        return
    per_axis = []
    for a, (n, c) in enumerate(zip(plan.image_shape, cuts, strict=True)):
        before = plan.pad[a][0]
        bounds = np.cumsum((0, *chunks[a])).tolist()
        items = []
        for lo, hi in zip(c[:-1], c[1:], strict=True):
            if any(plan.pad[a]):  # padded axis: one tile, windows unchanged
                items.append((slice(0, n), slice(0, n), plan.starts[a], chunks[a]))
                continue
            first, last, r_lo, r_hi = _axis_tile(
                plan.starts[a], plan.roi_size[a], before, n, lo, hi
            )
            local = tuple(s - r_lo for s in plan.starts[a][first:last])
            inner = [b for b in bounds if r_lo < b < r_hi]
            edges = [r_lo, *inner, r_hi]
            sizes = tuple(int(b - a_) for a_, b in zip(edges[:-1], edges[1:], strict=True))
            items.append((slice(lo, hi), slice(r_lo, r_hi), local, sizes))
        per_axis.append(items)
    for combo in product(*per_axis):
        core = tuple(it[0] for it in combo)
        read = tuple(it[1] for it in combo)
        shape = tuple(s.stop - s.start for s in read)
        sub = WindowPlan(
            shape, plan.roi_size, plan.pad, plan.interval, tuple(it[2] for it in combo)
        )
        yield PlanTile(core, read, sub, tuple(it[3] for it in combo))


def tiled_window_count(
    plan: WindowPlan, chunks: Sequence[Sequence[int]], edge: int | None = None
) -> int:
    """Return how many windows a tiled run predicts (border windows count once per tile)."""
    cuts = tile_edges(plan, chunks, edge)
    total = 1
    for a, (n, c) in enumerate(zip(plan.image_shape, cuts, strict=True)):
        if len(c) == 2 or any(plan.pad[a]):
            total *= len(plan.starts[a])
            continue
        per_tile = (
            _axis_tile(plan.starts[a], plan.roi_size[a], 0, n, lo, hi)
            for lo, hi in zip(c[:-1], c[1:], strict=True)
        )
        total *= sum(last - first for first, last, _, _ in per_tile)
    return total
