"""Merge the tiles' polygon GeoPackages into one, joining regions cut by tile edges.

Each done tile has ``polygons.gpkg`` written by :func:`geomed_seg.io.vector.write_polygons`:
polygons of ``rasterio.features.shapes``, whose vertices lie on pixel corners. The tiles sit
on one pixel grid (:func:`geomed_seg.batch.layout.tile_layout`), so a region cut by a tile
edge is made of pieces that share their edges exactly once mapped to the mosaic's pixel
coordinates (inverse affine, rounded to integers). A polygon touching an *inner* tile edge
(one shared with a neighbour tile, not the mosaic's outer edge) is such a border piece: the
pieces are kept, unioned per class (``shapely.union_all`` of each group of touching pieces)
and split into connected parts (``shapely.get_parts``), then mapped back with the mosaic's
affine; a joined feature's ``area_m2`` is the sum of its pieces' (true ground areas written
per tile by :func:`~geomed_seg.io.vector.write_polygons`; ``area_crs_units2`` for tiles
without a ground). All of this happens in the pixel space of the shared grid, so tiles of a
rotated (or south-up) grid merge exactly like north-up ones. Every other polygon is final:
it is copied unchanged (read per tile with
pyogrio, appended in batches), so memory holds only the border pieces, never a raster.

Hand-written because GDAL/OGR has no "dissolve only across tile seams" and re-polygonising
the mosaic raster would need the whole country's pixels in one process; the geometry work
is shapely's.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from geomed_seg.batch.layout import TileLayout, TilePlace, tile_layout
from geomed_seg.errors import GeometryError, InvalidInputError
from geomed_seg.io.atomic import atomic_output
from geomed_seg.io.vector import LAYER, VectorSummary, piece_areas

log = logging.getLogger(__name__)

FIELDS = ["class", "name", "area_m2"]
#: The area field of tiles on a grid without ground units (no CRS, local CRS).
FIELDS_CRS_UNITS = ["class", "name", "area_crs_units2"]
#: Largest distance (pixels) of a border vertex from a pixel corner that is accepted.
CORNER_TOLERANCE_PX = 1e-6


def inner_sides(layout: TileLayout) -> np.ndarray:
    """Return ``(n_tiles, 4)`` booleans: has the tile a neighbour on its left/top/right/bottom.

    A side counts as inner when another tile's opposite side lies on the same pixel line and
    their extents overlap; the mosaic's outer edges and edges facing missing tiles do not.
    """
    p = layout.places
    c0 = np.array([t.col_off for t in p])
    r0 = np.array([t.row_off for t in p])
    c1 = c0 + np.array([t.width for t in p])
    r1 = r0 + np.array([t.height for t in p])
    sides = np.zeros((len(p), 4), dtype=bool)
    for i in range(len(p)):
        rows = (r0 < r1[i]) & (r0[i] < r1)
        cols = (c0 < c1[i]) & (c0[i] < c1)
        sides[i] = [
            np.any(rows & (c1 == c0[i])),
            np.any(cols & (r1 == r0[i])),
            np.any(rows & (c0 == c1[i])),
            np.any(cols & (r0 == r1[i])),
        ]
    return sides


def check_disjoint(layout: TileLayout) -> None:
    """Raise :class:`GeometryError` when two tiles overlap (their polygons would repeat)."""
    p = layout.places
    c0 = np.array([t.col_off for t in p])
    r0 = np.array([t.row_off for t in p])
    c1 = c0 + np.array([t.width for t in p])
    r1 = r0 + np.array([t.height for t in p])
    for i in range(len(p)):
        hit = (c0 < c1[i]) & (c0[i] < c1) & (r0 < r1[i]) & (r0[i] < r1)
        hit[i] = False
        if hit.any():
            j = int(np.flatnonzero(hit)[0])
            raise GeometryError(f"{p[i].path} overlaps {p[j].path}: tiles must not overlap")


def _fields(gpkg: Path) -> list[str]:
    """Return the tile's field names (``FIELDS`` or ``FIELDS_CRS_UNITS``)."""
    import pyogrio
    from pyogrio.errors import DataLayerError, DataSourceError

    try:
        fields = list(pyogrio.read_info(gpkg, layer=LAYER)["fields"])
    except (DataLayerError, DataSourceError) as exc:
        raise InvalidInputError(f"{gpkg}: cannot read layer {LAYER!r}: {exc}") from exc
    if fields not in (FIELDS, FIELDS_CRS_UNITS):
        raise InvalidInputError(f"{gpkg}: fields {fields} != {FIELDS}")
    return fields


def _read(gpkg: Path, batch: int) -> Iterator[tuple[np.ndarray, list[np.ndarray]]]:
    """Yield ``(wkb, [class, name, area])`` of a tile's polygons, ``batch`` at a time."""
    import pyogrio
    import pyogrio.raw
    from pyogrio.errors import DataLayerError, DataSourceError, FieldError

    columns = _fields(gpkg)
    try:
        info = pyogrio.read_info(gpkg, layer=LAYER)
        for skip in range(0, max(int(info["features"]), 0), batch):
            _meta, _fids, wkb, fields = pyogrio.raw.read(
                gpkg, layer=LAYER, columns=columns, skip_features=skip, max_features=batch
            )
            yield wkb, fields
    except (DataLayerError, DataSourceError, FieldError) as exc:
        raise InvalidInputError(f"{gpkg}: cannot read layer {LAYER!r}: {exc}") from exc


def _to_mosaic_pixels(geoms: np.ndarray, layout: TileLayout) -> np.ndarray:
    """Map polygons from CRS units to the mosaic's pixel space (inverse affine, rotation too)."""
    import shapely

    inv = ~layout.transform

    def to_px(xy: np.ndarray) -> np.ndarray:
        return np.column_stack([inv.a * xy[:, 0] + inv.b * xy[:, 1] + inv.c,
                                inv.d * xy[:, 0] + inv.e * xy[:, 1] + inv.f])  # fmt: skip

    return shapely.transform(geoms, to_px)


def _touches_inner(px: np.ndarray, place: TilePlace, sides) -> np.ndarray:
    """Which polygons (in mosaic pixels) touch an inner side of their tile (half-pixel slack)."""
    import shapely

    b = shapely.bounds(px)  # col_min, row_min, col_max, row_max in mosaic pixels
    left, top, right, bottom = sides
    hit = np.zeros(len(px), dtype=bool)
    if left:
        hit |= b[:, 0] < place.col_off + 0.5
    if top:
        hit |= b[:, 1] < place.row_off + 0.5
    if right:
        hit |= b[:, 2] > place.col_off + place.width - 0.5
    if bottom:
        hit |= b[:, 3] > place.row_off + place.height - 0.5
    return hit


def _snap(px: np.ndarray, gpkg: Path) -> np.ndarray:
    """Snap polygons in mosaic pixels to integer corners; raise when a vertex is off-grid."""
    import shapely

    def snap(xy: np.ndarray) -> np.ndarray:
        snapped = np.round(xy)
        off = np.abs(xy - snapped).max(initial=0.0)
        if off > CORNER_TOLERANCE_PX:
            raise GeometryError(
                f"{gpkg}: a polygon vertex is {off:.3g} px off the pixel corners of the mosaic "
                "(not polygons of the label raster?)"
            )
        return snapped

    return shapely.transform(px, snap)


def join_pieces(pieces: Sequence) -> list:
    """Return the connected parts of the union of ``pieces`` (shapely polygons).

    Pieces are grouped by the connected components of their "intersects" graph (an STRtree
    query) and each group is unioned alone: a GEOS union of many small groups is far cheaper
    than one union of all pieces, and the result is the same.
    """
    import shapely
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    geoms = np.empty(len(pieces), dtype=object)
    geoms[:] = list(pieces)
    a, b = shapely.STRtree(geoms).query(geoms, predicate="intersects")
    graph = coo_matrix((np.ones(len(a), dtype=bool), (a, b)), shape=(len(geoms), len(geoms)))
    n, comp = connected_components(graph, directed=False)
    order = np.argsort(comp, kind="stable")
    parts: list = []
    for idx in np.split(order, np.cumsum(np.bincount(comp, minlength=n))[:-1]):
        if len(idx) == 1:
            parts.append(geoms[idx[0]])
        else:
            parts.extend(shapely.get_parts(shapely.union_all(geoms[idx])))
    return parts


def merge_polygons(
    labels: Sequence[Path],
    gpkgs: Sequence[Path],
    path: str | os.PathLike,
    *,
    overwrite: bool = True,
    batch: int = 50_000,
) -> VectorSummary:
    """Merge the tiles' polygons into one GeoPackage at ``path``; return a summary.

    Parameters
    ----------
    labels : sequence of Path
        The tiles' single-band label rasters (their geometry places the tiles).
    gpkgs : sequence of Path
        Each tile's polygons (layer ``"labels"``, fields ``class``, ``name``, ``area_m2``,
        vertices on the tile's pixel corners), in the order of ``labels``.
    path : path-like
        Output ``.gpkg``, written atomically with the same layer and fields; features cut
        by tile edges are joined into one, their area the sum of their pieces' areas.
    batch : int
        Features read from a tile at a time, and copied features buffered before each
        append.

    Raises
    ------
    GeometryError
        Tiles not on one CRS / pixel size / pixel grid, overlapping tiles, or a border
        vertex more than 1e-6 px from a pixel corner.
    """
    layout, out_fields = _check_tiles(labels, gpkgs, path)
    unit = "CRS units²" if out_fields == FIELDS_CRS_UNITS else "m²"
    summary = VectorSummary(Path(path), area_unit=unit)
    crs = layout.crs.to_wkt() if layout.crs is not None else None
    with atomic_output(path, overwrite) as tmp:
        out = _LayerWriter(tmp, out_fields, crs, summary)
        border, names = _copy_inner(layout, gpkgs, batch, out)
        _write_border(border, names, layout, out)
        if not out.started:  # an empty layer still records the CRS and schema
            out.write(np.array([], dtype=object),
                      [np.array([], np.int32), np.array([], object), np.array([], float)])  # fmt: skip
    log.info("%s: %d polygons merged from %d tiles", path, summary.n_features, len(gpkgs))
    return summary


def _check_tiles(
    labels: Sequence[Path], gpkgs: Sequence[Path], path: str | os.PathLike
) -> tuple[TileLayout, list[str]]:
    """Return the tiles' layout and their common field names; refuse tiles that cannot merge."""
    if len(labels) != len(gpkgs):
        raise InvalidInputError(f"{path}: {len(labels)} label tiles but {len(gpkgs)} GeoPackages")
    layout = tile_layout(labels)
    if layout.gcps is not None:
        raise GeometryError(
            f"{labels[0]}: tiles are georeferenced by GCPs; their polygons (mapped through GDAL's "
            "GCP transformer) are not merged: use each tile's polygons.gpkg"
        )
    check_disjoint(layout)
    kinds = {tuple(_fields(Path(g))) for g in gpkgs}
    if len(kinds) > 1:
        raise GeometryError(f"{path}: tiles mix ground areas (m²) and CRS units²")
    return layout, list(kinds.pop()) if kinds else FIELDS


class _LayerWriter:
    """Appends features to the output layer in batches and counts them into ``summary``."""

    def __init__(self, tmp: Path, fields: list[str], crs: str | None, summary: VectorSummary):
        self.tmp, self.fields, self.crs, self.summary = tmp, fields, crs, summary
        self.started = False
        self.buf: list[tuple[np.ndarray, list[np.ndarray]]] = []

    def write(self, wkb: np.ndarray, fields: list[np.ndarray]) -> None:
        import pyogrio.raw

        pyogrio.raw.write(self.tmp, wkb, field_data=fields, fields=self.fields, layer=LAYER,
                          driver="GPKG", geometry_type="Polygon", crs=self.crs,
                          append=self.started)  # fmt: skip
        self.started = True
        s = self.summary
        for v, a in zip(fields[0].tolist(), fields[2].tolist(), strict=True):
            s.area_by_class[v] = s.area_by_class.get(v, 0.0) + float(a)
            s.features_by_class[v] = s.features_by_class.get(v, 0) + 1
        s.n_features += len(wkb)

    def add(self, wkb: np.ndarray, fields: list[np.ndarray], batch: int) -> None:
        """Buffer features; write the buffer once it holds ``batch`` of them."""
        self.buf.append((wkb, fields))
        if sum(len(b[0]) for b in self.buf) >= batch:
            self.flush()

    def flush(self) -> None:
        if self.buf:
            self.write(np.concatenate([b[0] for b in self.buf]),
                       [np.concatenate([b[1][k] for b in self.buf]) for k in range(3)])  # fmt: skip
            self.buf.clear()


def _copy_inner(
    layout: TileLayout, gpkgs: Sequence[Path], batch: int, out: _LayerWriter
) -> tuple[dict[int, list], dict[int, str]]:
    """Copy every polygon that touches no inner tile edge; return the border pieces.

    Returns ``({class: [(piece in mosaic pixels, area)]}, {class: name})``.
    """
    import shapely

    border: dict[int, list] = defaultdict(list)
    names: dict[int, str] = {}
    chunks = (
        (place, tile_sides, Path(gpkg), *chunk)
        for place, tile_sides, gpkg in zip(layout.places, inner_sides(layout), gpkgs, strict=True)
        for chunk in _read(Path(gpkg), batch)
    )
    for place, tile_sides, gpkg, wkb, fields in chunks:
        cls = fields[0].astype(np.int32)
        fields = [cls, fields[1].astype(object), fields[2].astype(np.float64)]
        names.update(zip(cls.tolist(), fields[1].tolist(), strict=True))
        px = _to_mosaic_pixels(shapely.from_wkb(wkb), layout)
        inner = _touches_inner(px, place, tile_sides)
        pieces = _snap(px[inner], gpkg)
        for v, g, a in zip(cls[inner].tolist(), pieces, fields[2][inner].tolist(), strict=True):
            border[v].append((g, a))
        keep = ~inner
        if keep.any():
            out.add(wkb[keep], [f[keep] for f in fields], batch)
    out.flush()
    return border, names


def _write_border(
    border: dict[int, list], names: dict[int, str], layout: TileLayout, out: _LayerWriter
) -> None:
    """Join the border pieces of each class, map them back to the CRS and write them."""
    import shapely
    import shapely.affinity

    t = layout.transform
    to_crs = [t.a, t.b, t.d, t.e, t.c, t.f]
    for v, items in sorted(border.items()):
        pieces = [g for g, _ in items]
        parts = join_pieces(pieces)
        areas = piece_areas(parts, pieces, [a for _, a in items])
        geoms = np.array([shapely.affinity.affine_transform(p, to_crs) for p in parts])
        out.write(shapely.to_wkb(geoms), [np.full(len(geoms), v, np.int32),
                                          np.array([names[v]] * len(geoms), object),
                                          areas])  # fmt: skip
