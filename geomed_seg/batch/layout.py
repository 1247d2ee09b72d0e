"""Tile layout: where each label tile of a batch sits on the tiles' common pixel grid.

:func:`tile_layout` places single-band label rasters on their shared pixel grid (same CRS,
pixel size, rotation, data type, whole-pixel offsets in the shared grid's pixel space, so
rotated and south-up grids are placed like north-up ones; GCP-georeferenced windows of one
scene by their shifted GCPs). It is shared by the VRT and COG mosaics
(:mod:`geomed_seg.batch.mosaic`) and the merged polygons (:mod:`geomed_seg.batch.vectors`).
When the tiles are not on one grid, :func:`grid_difference` names two tiles and the
differing value. Reads only the tiles' headers (rasterio).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from affine import Affine

from geomed_seg.errors import GeometryError


@dataclass(frozen=True)
class TilePlace:
    """Where one tile sits in the mosaic: pixel offsets and size (rows, cols)."""

    path: Path
    col_off: int
    row_off: int
    width: int
    height: int


@dataclass(frozen=True)
class TileLayout:
    """Tiles placed on one pixel grid: the mosaic's CRS, affine transform and size."""

    crs: Any
    transform: Affine
    width: int
    height: int
    dtype: str
    nodata: float | None
    places: tuple[TilePlace, ...]
    #: GCPs ``(row, col, x, y, z)`` in the mosaic's pixels when the tiles are GCP-georeferenced
    #: (then ``crs`` is the GCPs' CRS and ``transform`` the first tile's affine fit).
    gcps: tuple[tuple[float, ...], ...] | None = None


#: Largest difference (pixels) accepted between tiles' pixel vectors or whole-pixel offsets.
GRID_TOLERANCE_PX = 1e-6


@dataclass(frozen=True)
class _TileMeta:
    path: Path
    crs: Any
    transform: Affine
    width: int
    height: int
    dtype: str
    nodata: float | None
    georeference: str
    gcps: tuple[tuple[float, ...], ...] = ()


def _read_meta(path: Path) -> _TileMeta:
    import rasterio

    from geomed_seg.io.georef import read_grid

    with rasterio.open(path) as ds:
        grid = read_grid(ds)
        gcps = tuple(tuple(g[:5]) for g in grid.gcps or ())
        crs = grid.crs if grid.georeference == "gcps" else ds.crs
        transform = grid.transform if grid.georeference == "gcps" else ds.transform
        return _TileMeta(Path(path), crs, transform, ds.width, ds.height, ds.dtypes[0],
                         ds.nodata, grid.georeference, gcps)  # fmt: skip


def _gcp_difference(ref: _TileMeta, tile: _TileMeta, pair: str) -> str | None:
    """Why two GCP tiles are not windows of one GCP grid (same ground points, whole-pixel shift)."""
    if tile.crs != ref.crs:
        return f"{pair}: GCP CRS differs ({tile.crs} vs {ref.crs})"
    a, b = ref.gcps, tile.gcps
    ground = [g[2:5] for g in a] == [g[2:5] for g in b]
    if len(a) != len(b) or not ground:
        return f"{pair}: GCPs differ (not the same ground points): tiles cannot be placed"
    dc = {round(ga[1] - gb[1], 9) for ga, gb in zip(a, b, strict=True)}
    dr = {round(ga[0] - gb[0], 9) for ga, gb in zip(a, b, strict=True)}
    if len(dc) != 1 or len(dr) != 1:
        return (
            f"{pair}: GCP pixel positions are not one shift of each other: tiles cannot be placed"
        )
    if tile.dtype != ref.dtype:
        return f"{pair}: data type differs ({tile.dtype} vs {ref.dtype})"
    col, row = dc.pop(), dr.pop()
    frac = (col - round(col), row - round(row))
    if max(abs(f) for f in frac) > GRID_TOLERANCE_PX:
        shown = tuple(round(f, 6) + 0.0 for f in frac)
        return f"{pair}: sub-pixel offset {_fmt(shown)} px (not on one pixel grid)"
    return None


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.10g}" for v in values) + ")"


def _pixel_size(t: Affine) -> tuple[float, float]:
    """Lengths (CRS units) of the column and row vectors of ``t``."""
    return (math.hypot(t.a, t.d), math.hypot(t.b, t.e))


def _rotation_deg(t: Affine) -> tuple[float, float]:
    """Directions (degrees) of the column and row vectors of ``t`` (north-up: 0, -90)."""
    return (math.degrees(math.atan2(t.d, t.a)), math.degrees(math.atan2(t.e, t.b)))


def grid_difference(ref: _TileMeta, tile: _TileMeta) -> str | None:
    """Return why ``tile`` is not on ``ref``'s pixel grid (naming both), or None if it is.

    Checked in order: georeference kind, CRS, pixel size, rotation (direction of the pixel
    axes, flips and shear included), data type, sub-pixel offset. Pixel vectors must agree
    to :data:`GRID_TOLERANCE_PX` of a pixel and offsets be whole pixels to the same
    tolerance, measured in ``ref``'s pixel space (so rotated grids are handled alike).
    """
    pair = f"{tile.path} vs {ref.path}"
    if ref.georeference == tile.georeference == "gcps":  # windows of one GCP scene
        return _gcp_difference(ref, tile, pair)
    for m in (ref, tile):
        if m.georeference != "transform":
            how = {"gcps": "GCPs", "rpcs": "RPCs only", "none": "no georeference"}
            return (f"{m.path}: georeferenced by {how[m.georeference]}, not a geotransform: "
                    "tiles cannot be placed on one grid")  # fmt: skip
    if tile.crs != ref.crs:
        return f"{pair}: CRS differs ({tile.crs} vs {ref.crs})"
    t, r = tile.transform, ref.transform
    size_t, size_r = _pixel_size(t), _pixel_size(r)
    tol = GRID_TOLERANCE_PX * min(size_r)
    if any(abs(a - b) > tol for a, b in zip(size_t, size_r, strict=True)):
        return f"{pair}: pixel size differs ({_fmt(size_t)} vs {_fmt(size_r)} CRS units)"
    if any(abs(a - b) > tol for a, b in zip((t.a, t.b, t.d, t.e), (r.a, r.b, r.d, r.e),
                                            strict=True)):  # fmt: skip
        return (f"{pair}: rotation differs (pixel axes at {_fmt(_rotation_deg(t))} vs "
                f"{_fmt(_rotation_deg(r))} degrees)")  # fmt: skip
    if tile.dtype != ref.dtype:
        return f"{pair}: data type differs ({tile.dtype} vs {ref.dtype})"
    col, row = _offset(ref, tile)
    frac = (col - round(col), row - round(row))
    if max(abs(f) for f in frac) > GRID_TOLERANCE_PX:
        shown = tuple(round(f, 6) + 0.0 for f in frac)  # no float noise, no -0
        return f"{pair}: sub-pixel offset {_fmt(shown)} px (not on one pixel grid)"
    return None


def _offset(ref: _TileMeta, tile: _TileMeta) -> tuple[float, float]:
    """Fractional ``(col, row)`` of ``tile``'s origin in ``ref``'s pixel space."""
    if ref.gcps and tile.gcps:  # the same ground point sits at (col - c_off, row - r_off)
        return (ref.gcps[0][1] - tile.gcps[0][1], ref.gcps[0][0] - tile.gcps[0][0])
    return ~ref.transform @ (tile.transform.c, tile.transform.f)


def tile_layout(tiles: Sequence[Path]) -> TileLayout:
    """Return the placement of single-band ``tiles`` on their common pixel grid.

    Tiles share a grid when they have a geotransform with the same CRS, pixel size and
    rotation (the pixel vectors ``a, b, d, e`` agree) and their origins are whole-pixel
    offsets in the first tile's pixel space: rotated and south-up grids mosaic like
    north-up ones. The mosaic's transform is the first tile's, moved to the top-left tile
    of the layout (taken exactly from a tile that sits there, when one does).

    Raises
    ------
    GeometryError
        When there are no tiles, or two tiles differ in georeference kind, CRS, pixel size,
        rotation, data type or sub-pixel offset; the message names both tiles and the
        differing value (:func:`grid_difference`).
    """
    if not tiles:
        raise GeometryError("no label tiles")
    metas = [_read_meta(Path(t)) for t in tiles]
    ref = metas[0]
    offsets = []
    for m in metas:
        why = grid_difference(ref, m)
        if why:
            raise GeometryError(why)
        col, row = _offset(ref, m)
        offsets.append((round(col), round(row)))
    mx, my = min(o[0] for o in offsets), min(o[1] for o in offsets)
    corner = next((m for m, o in zip(metas, offsets, strict=True) if o == (mx, my)), None)
    origin = ref.transform @ Affine.translation(mx, my)
    transform = corner.transform if corner is not None else origin
    places = tuple(
        TilePlace(m.path, ix - mx, iy - my, m.width, m.height)
        for m, (ix, iy) in zip(metas, offsets, strict=True)
    )
    gcps = None
    if ref.georeference == "gcps":  # mosaic pixel = reference pixel - (mx, my)
        gcps = tuple((g[0] - my, g[1] - mx, *g[2:5]) for g in ref.gcps)
    return TileLayout(
        crs=ref.crs,
        transform=Affine(*tuple(transform)[:6]),
        width=max(p.col_off + p.width for p in places),
        height=max(p.row_off + p.height for p in places),
        dtype=ref.dtype,
        nodata=ref.nodata,
        places=places,
        gcps=gcps,
    )
