"""Polygonise a label raster into a GeoPackage, tile by tile, so any scene size fits.

Each tile is read from the lazy label image and vectorised with
``rasterio.features.shapes`` in *pixel* coordinates (integer vertices, so pieces of one
region cut by a tile edge share their edges exactly). Polygons that do not touch an inner
tile edge are final and appended to the GeoPackage at once (pyogrio); those that do are
kept and, at the end, unioned per class (``shapely.union_all``) and split into their
connected parts, so a region crossing tile borders becomes one feature. Only the border
pieces are held in memory. Geometries are then mapped to the grid's CRS with its affine
transform, or for GCP / RPC grids through GDAL's GCP / RPC transformer after densifying
edges to every pixel corner (:func:`geomed_seg.io.georef.pixel_to_map`); each feature
carries the class index, class name and its true ground area.

Polygons use the project's one connectivity (faces only, ``shapes(connectivity=4)``,
:mod:`geomed_seg.core.connectivity`), the same as post-processing: each polygon is one
face-connected region, so after ``min_object_size`` every polygon is at least that size.
Its area is the sum of the ground areas of the pixels it covers (each tile is labelled
with ``skimage.measure.label(connectivity=1)`` and polygonised by region id, so region and
polygon are the same pixels; areas from :mod:`geomed_seg.core.ground`, geodesic where the
CRS's scale varies; a GCP grid's from GDAL's affine fit of its GCPs). The field is
``area_m2``, or ``area_crs_units2`` for a grid without a ground (no CRS, local CRS,
RPC-only).

Hand-written tiling because rasterio vectorises a whole in-memory array at once and GDAL's
``gdal_polygonize`` needs the whole raster as one dataset; the per-tile work is theirs.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np

from geomed_seg.core.connectivity import CONNECTIVITY, RASTERIO_CONNECTIVITY
from geomed_seg.core.grid import GeoGrid
from geomed_seg.core.ground import GroundUnits
from geomed_seg.core.image import Image
from geomed_seg.core.labels import ClassInfo
from geomed_seg.errors import InvalidInputError
from geomed_seg.io.atomic import atomic_output
from geomed_seg.io.georef import is_affine, map_crs, pixel_to_map

log = logging.getLogger(__name__)

LAYER = "labels"


@dataclass
class VectorSummary:
    """What :func:`write_polygons` wrote: feature count and ground area per class.

    Areas are in ``area_unit`` (m², or CRS units² for a grid without a ground).
    """

    path: Path
    n_features: int = 0
    area_by_class: dict[int, float] = field(default_factory=dict)
    features_by_class: dict[int, int] = field(default_factory=dict)
    area_unit: str = "m²"


def _tile_slices(shape: tuple[int, int], tile: int):
    for r0 in range(0, shape[0], tile):
        for c0 in range(0, shape[1], tile):
            yield r0, min(r0 + tile, shape[0]), c0, min(c0 + tile, shape[1])


def _shapes_dtype(arr: np.ndarray) -> np.ndarray:
    if arr.dtype in (np.uint8, np.uint16, np.int16, np.int32, np.float32):
        return arr
    if np.issubdtype(arr.dtype, np.integer) and arr.max(initial=0) < 2**31:
        return arr.astype(np.int32)
    raise InvalidInputError(f"cannot polygonise labels of dtype {arr.dtype}")


def _pixel_polygons(block: np.ndarray, keep: np.ndarray, r0: int, c0: int, gu: GroundUnits):
    """Yield ``(shapely polygon in global pixel coords, value, ground area)`` of one tile.

    Regions are face-connected pixels of equal value (``skimage.measure.label``,
    connectivity 1); ``rasterio.features.shapes`` (connectivity 4) polygonises the region
    ids, so each region is exactly one polygon and its area is the sum of its pixels' areas.
    """
    from affine import Affine
    from rasterio.features import shapes
    from shapely.geometry import shape
    from skimage.measure import label

    values = _shapes_dtype(block)
    # +1 so that a kept value 0 is not skimage's background
    ids = label(np.where(keep, values.astype(np.int64) + 1, 0), background=0,
                connectivity=CONNECTIVITY)  # fmt: skip
    h, w = block.shape
    weights = np.broadcast_to(gu.pixel_areas(slice(r0, r0 + h), slice(c0, c0 + w)), (h, w))
    area = np.bincount(ids.ravel(), weights=weights.ravel())
    value = np.zeros(len(area), dtype=np.int64)
    value[ids[keep]] = values[keep]
    if ids.max(initial=0) >= 2**31:
        raise InvalidInputError(f"tile at row {r0}, col {c0} has too many regions to polygonise")
    for geom, rid in shapes(
        ids.astype(np.int32), mask=keep, connectivity=RASTERIO_CONNECTIVITY,
        transform=Affine.translation(c0, r0),
    ):  # fmt: skip
        rid = int(rid)
        yield shape(geom), int(value[rid]), float(area[rid])


def piece_areas(parts: list, pieces: list, areas: list[float]) -> np.ndarray:
    """Return the area of each joined part as the sum of the areas of its pieces."""
    import shapely

    tree = shapely.STRtree(np.array(parts, dtype=object))
    points = shapely.point_on_surface(np.array(pieces, dtype=object))
    src, part = tree.query(points, predicate="intersects")
    out = np.zeros(len(parts))
    first = np.unique(src, return_index=True)[1]  # a point on a shared edge counts once
    np.add.at(out, part[first], np.asarray(areas)[src[first]])
    return out


def write_polygons(
    labels: Image,
    path: str | os.PathLike,
    *,
    classes: Sequence[ClassInfo] | None = None,
    background: Sequence[int] = (0,),
    tile: int = 1024,
    overwrite: bool = False,
    batch: int = 50_000,
) -> VectorSummary:
    """Vectorise a single-band label raster into a GeoPackage; return a summary.

    Parameters
    ----------
    labels : Image
        One band ``(1, y, x)`` of integer class labels on a :class:`GeoGrid`; ``nodata``
        samples and ``background`` labels are not vectorised.
    path : path-like
        ``.gpkg`` output, written atomically (layer ``"labels"``; fields ``class``,
        ``name``, ``area_m2`` = true ground area, or ``area_crs_units2`` for a grid without
        a ground; the grid's CRS, the GCPs' CRS for a GCP grid, WGS 84 for an RPC-only
        grid, none for an ungeoreferenced grid: then coordinates are pixels).
    classes : sequence of ClassInfo, optional
        Names of the classes; only these are vectorised when given.
    tile : int
        Tile edge in pixels: memory holds one tile plus the pieces touching tile edges.
    batch : int
        Finished polygons buffered before each append to the GeoPackage.
    """
    import shapely

    if not isinstance(labels.grid, GeoGrid) or labels.n_channels != 1:
        raise InvalidInputError(f"{path}: polygons need a single-band raster label image")
    names = {c.index: c.name for c in classes or []}
    wanted = np.array(sorted(names), dtype=np.int64) if classes else None
    summary = VectorSummary(Path(path), area_unit=labels.grid.ground.area_unit)
    border: dict[int, list] = defaultdict(list)
    with atomic_output(path, overwrite) as tmp:
        out = _PolygonWriter(tmp, labels.grid, names, summary)
        done: list[tuple[Any, int, float]] = []
        for poly, value, area, inner in _tile_polygons(labels, tile, background, wanted):
            if inner:  # a piece of a region cut by a tile edge: joined below
                border[value].append((poly, area))
            else:
                done.append((poly, value, area))
            if len(done) >= batch:
                out.write(*zip(*done, strict=True))
                done = []
        if done:
            out.write(*zip(*done, strict=True))
        for value, items in sorted(border.items()):
            pieces = [p for p, _ in items]
            merged = list(shapely.get_parts(shapely.union_all(pieces)))
            areas = piece_areas(merged, pieces, [a for _, a in items])
            out.write(merged, [value] * len(merged), areas)
        if not out.started:  # an empty layer still records the CRS and schema
            out.write_empty()
    log.info("%s: %d polygons", path, summary.n_features)
    return summary


def _tile_polygons(
    labels: Image, tile: int, background: Sequence[int], wanted: np.ndarray | None
) -> Iterator[tuple[Any, int, float, bool]]:
    """Yield ``(polygon in pixels, class, area, touches an inner tile edge)`` tile by tile."""
    grid = labels.grid
    height, width = grid.shape
    arr, valid = labels.darray[0], labels.valid_mask()
    for r0, r1, c0, c1 in _tile_slices((height, width), tile):
        block, keep = (np.asarray(x) for x in da.compute(arr[r0:r1, c0:c1], valid[r0:r1, c0:c1]))
        keep = keep & ~np.isin(block, background)
        if wanted is not None:
            keep &= np.isin(block, wanted)
        if not keep.any():
            continue
        for poly, value, area in _pixel_polygons(block, keep, r0, c0, grid.ground):
            x0, y0, x1, y1 = poly.bounds
            inner = (x0 == c0 and c0 > 0) or (y0 == r0 and r0 > 0)
            inner |= (x1 == c1 and c1 < width) or (y1 == r1 and r1 < height)
            yield poly, value, area, inner


class _PolygonWriter:
    """Maps pixel polygons to the grid's map CRS and appends them to the layer at ``tmp``."""

    def __init__(self, tmp: Path, grid: GeoGrid, names: dict[int, str], summary: VectorSummary):
        self.tmp, self.names, self.summary = tmp, names, summary
        self.fields = ["class", "name", f"area_{grid.ground.area_key}"]
        self.to_map = pixel_to_map(grid)  # affine, or GDAL's GCP / RPC transformer
        # GCP/RPC mappings bend straight pixel edges: map every pixel corner of the boundary
        self.densify = not is_affine(grid)
        self.crs = map_crs(grid).to_wkt() if map_crs(grid) is not None else None
        self.started = False

    def _append(self, wkb: np.ndarray, field_data: list[np.ndarray]) -> None:
        import pyogrio.raw

        pyogrio.raw.write(self.tmp, wkb, field_data=field_data, fields=self.fields, layer=LAYER,
                          driver="GPKG", geometry_type="Polygon", crs=self.crs,
                          append=self.started)  # fmt: skip
        self.started = True

    def write(self, polys: Sequence, values: Sequence[int], areas: Sequence[float]) -> None:
        """Append ``polys`` (pixel coordinates) with their classes and areas."""
        import shapely

        if not polys:
            return
        pix = np.empty(len(polys), dtype=object)
        pix[:] = list(polys)
        if self.densify:
            pix = shapely.segmentize(pix, 1.0)
        geoms = list(shapely.transform(pix, self.to_map))
        area = np.asarray(areas, dtype=np.float64)
        vals = np.asarray(values, dtype=np.int32)
        names = np.array([self.names.get(v, str(v)) for v in values], object)
        self._append(shapely.to_wkb(np.array(geoms, dtype=object)), [vals, names, area])
        s = self.summary
        for v, a in zip(values, area, strict=True):
            s.area_by_class[v] = s.area_by_class.get(v, 0.0) + float(a)
            s.features_by_class[v] = s.features_by_class.get(v, 0) + 1
        s.n_features += len(values)

    def write_empty(self) -> None:
        """Create the layer with no features (CRS and schema recorded)."""
        self._append(np.array([], dtype=object),
                     [np.array([], np.int32), np.array([], object), np.array([], float)])  # fmt: skip
