"""Blocks of one large scene: cores that tile it exactly, each read with a halo of context.

A scene of ``(height, width)`` pixels is cut row-major into blocks of ``block_size``; the
last row/column of blocks is smaller. Each block's **core** is the part whose labels it
writes; the cores tile the scene with no gap and no overlap. Its **read** window is the
core grown by ``halo`` pixels on every side and clipped to the scene, so a sliding-window
engine (gaussian blending, overlap) and neighbourhood post-processing see the same context
near the core's edge as in a whole-scene run. ``core_in_read`` locates the core inside the
read window (what to crop after the model ran).

Pure planning, numpy-free and I/O-free, like :mod:`geomed_seg.inference.plan`.
Hand-written: rasterio's ``block_windows`` lists a file's internal blocks only (no halo, no
chosen size) and MONAI's ``dense_patch_slices`` plans overlapping windows, not disjoint cores.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from geomed_seg.errors import InvalidInputError

Window2D = tuple[slice, slice]


@dataclass(frozen=True)
class Block:
    """One block of a scene; all slices are in pixels, ``(y, x)`` order.

    Parameters
    ----------
    index : tuple of int
        ``(block row, block column)``, 0-based.
    core : tuple of slice
        The pixels this block owns in scene coordinates.
    read : tuple of slice
        ``core`` grown by the halo on each side, clipped to the scene (scene coordinates).
    core_in_read : tuple of slice
        ``core`` relative to ``read``'s origin.
    """

    index: tuple[int, int]
    core: Window2D
    read: Window2D
    core_in_read: Window2D

    def offsets(self) -> dict[str, dict[str, int]]:
        """Return ``{"core"|"read": {row_off, col_off, height, width}}`` (pixels; JSON-ready)."""
        return {name: _window_dict(win) for name, win in (("core", self.core), ("read", self.read))}


def _window_dict(win: Window2D) -> dict[str, int]:
    ys, xs = win
    return {"row_off": ys.start, "col_off": xs.start,
            "height": ys.stop - ys.start, "width": xs.stop - xs.start}  # fmt: skip


def _pair(value: int | Sequence[int], name: str, minimum: int) -> tuple[int, int]:
    try:
        vals = (value, value) if isinstance(value, int) else tuple(value)
    except TypeError:
        vals = (value,)
    if len(vals) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in vals):
        raise InvalidInputError(f"{name} must be an int or (rows, cols) ints, got {value!r}")
    if min(vals) < minimum:
        raise InvalidInputError(f"{name} must be >= {minimum} pixels, got {value!r}")
    return int(vals[0]), int(vals[1])


def aligned_block_size(
    block_size: int | Sequence[int], align: Sequence[int] | None = None
) -> tuple[int, int]:
    """Return ``(rows, cols)`` of ``block_size`` rounded up to multiples of ``align``.

    ``align`` is the source's internal tile / chunk shape ``(rows, cols)``; rounding up makes
    every block core start on a tile boundary, so a block reads whole source tiles.
    """
    bh, bw = _pair(block_size, "block_size", 1)
    if align is None:
        return bh, bw
    ah, aw = _pair(tuple(align), "align", 1)
    return -(-bh // ah) * ah, -(-bw // aw) * aw


def plan_blocks(
    shape: Sequence[int],
    block_size: int | Sequence[int],
    halo: int,
    align: Sequence[int] | None = None,
) -> list[Block]:
    """Return the blocks of a ``(height, width)`` scene in row-major order.

    Parameters
    ----------
    shape : (int, int)
        Scene ``(height, width)`` in pixels.
    block_size : int or (int, int)
        Core size in pixels, ``(rows, cols)``; the last row/column of blocks is smaller.
    halo : int
        Context in pixels added on each side of a core for reading (clipped to the scene).
    align : (int, int), optional
        Internal tile/chunk shape of the source: ``block_size`` is rounded up to multiples of it.

    Raises
    ------
    InvalidInputError
        Non-positive sizes, a negative halo, or a shape that is not 2D.
    """
    height, width = _pair(tuple(shape), "scene shape", 1)
    if not isinstance(halo, int) or isinstance(halo, bool) or halo < 0:
        raise InvalidInputError(f"halo must be an int >= 0 pixels, got {halo!r}")
    bh, bw = aligned_block_size(block_size, align)
    blocks = []
    for i, y0 in enumerate(range(0, height, bh)):
        for j, x0 in enumerate(range(0, width, bw)):
            core = (slice(y0, min(y0 + bh, height)), slice(x0, min(x0 + bw, width)))
            read = tuple(
                slice(max(s.start - halo, 0), min(s.stop + halo, n))
                for s, n in zip(core, (height, width), strict=True)
            )
            inner = tuple(
                slice(c.start - r.start, c.stop - r.start) for c, r in zip(core, read, strict=True)
            )
            blocks.append(Block((i, j), core, read, inner))  # type: ignore[arg-type]
    return blocks
