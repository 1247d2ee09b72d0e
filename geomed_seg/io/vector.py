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
carries the class index, class name and area in m² (CRS units²).

Hand-written tiling because rasterio vectorises a whole in-memory array at once and GDAL's
``gdal_polygonize`` needs the whole raster as one dataset; the per-tile work is theirs.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import dask.array as da
import numpy as np

from geomed_seg.core.grid import GeoGrid
from geomed_seg.core.image import Image
from geomed_seg.core.labels import ClassInfo
from geomed_seg.errors import InvalidInputError
from geomed_seg.io.atomic import atomic_output
from geomed_seg.io.georef import is_affine, map_crs, pixel_to_map

log = logging.getLogger(__name__)

LAYER = "labels"


@dataclass
class VectorSummary:
    """What :func:`write_polygons` wrote: feature count and area (CRS units², m²) per class."""

    path: Path
    n_features: int = 0
    area_by_class: dict[int, float] = field(default_factory=dict)
    features_by_class: dict[int, int] = field(default_factory=dict)


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


def _pixel_polygons(block: np.ndarray, keep: np.ndarray, r0: int, c0: int):
    """Yield ``(shapely polygon in global pixel coords, value)`` of one tile."""
    from affine import Affine
    from rasterio.features import shapes
    from shapely.geometry import shape

    for geom, value in shapes(
        _shapes_dtype(block), mask=keep, connectivity=4, transform=Affine.translation(c0, r0)
    ):
        yield shape(geom), int(value)


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
        ``name``, ``area_m2``; the grid's CRS, the GCPs' CRS for a GCP grid, WGS 84 for
        an RPC-only grid, none for an ungeoreferenced grid: then coordinates are pixels).
    classes : sequence of ClassInfo, optional
        Names of the classes; only these are vectorised when given.
    tile : int
        Tile edge in pixels: memory holds one tile plus the pieces touching tile edges.
    batch : int
        Finished polygons buffered before each append to the GeoPackage.
    """
    import pyogrio.raw
    import shapely

    if not isinstance(labels.grid, GeoGrid) or labels.n_channels != 1:
        raise InvalidInputError(f"{path}: polygons need a single-band raster label image")
    grid = labels.grid
    names = {c.index: c.name for c in classes or []}
    wanted = np.array(sorted(names), dtype=np.int64) if classes else None
    to_map = pixel_to_map(grid)  # affine, or GDAL's GCP / RPC transformer
    # GCP/RPC mappings bend straight pixel edges: map every pixel corner of the boundary
    densify = not is_affine(grid)
    crs = map_crs(grid).to_wkt() if map_crs(grid) is not None else None
    height, width = grid.shape
    summary = VectorSummary(Path(path))
    border: dict[int, list] = defaultdict(list)
    arr = labels.darray[0]
    valid = labels.valid_mask()

    with atomic_output(path, overwrite) as tmp:
        started = False
        done: list = []
        done_v: list[int] = []

        def flush(polys: list, values: list[int]) -> None:
            nonlocal started
            if not polys:
                return
            pix = np.empty(len(polys), dtype=object)
            pix[:] = polys
            if densify:
                pix = shapely.segmentize(pix, 1.0)
            geoms = list(shapely.transform(pix, to_map))
            areas = np.array([g.area for g in geoms], dtype=np.float64)
            vals = np.asarray(values, dtype=np.int32)
            pyogrio.raw.write(
                tmp,
                shapely.to_wkb(np.array(geoms, dtype=object)),
                field_data=[vals, np.array([names.get(v, str(v)) for v in values], object), areas],
                fields=["class", "name", "area_m2"],
                layer=LAYER,
                driver="GPKG",
                geometry_type="Polygon",
                crs=crs,
                append=started,
            )
            started = True
            for v, a in zip(values, areas, strict=True):
                summary.area_by_class[v] = summary.area_by_class.get(v, 0.0) + float(a)
                summary.features_by_class[v] = summary.features_by_class.get(v, 0) + 1
            summary.n_features += len(values)

        for r0, r1, c0, c1 in _tile_slices((height, width), tile):
            block, keep = (
                np.asarray(x) for x in da.compute(arr[r0:r1, c0:c1], valid[r0:r1, c0:c1])
            )
            keep = keep & ~np.isin(block, background)
            if wanted is not None:
                keep &= np.isin(block, wanted)
            if not keep.any():
                continue
            for poly, value in _pixel_polygons(block, keep, r0, c0):
                x0, y0, x1, y1 = poly.bounds
                inner = (x0 == c0 and c0 > 0) or (y0 == r0 and r0 > 0)
                inner |= (x1 == c1 and c1 < width) or (y1 == r1 and r1 < height)
                if inner:
                    border[value].append(poly)
                else:
                    done.append(poly)
                    done_v.append(value)
            if len(done) >= batch:
                flush(done, done_v)
                done, done_v = [], []
        flush(done, done_v)
        for value, pieces in sorted(border.items()):
            merged = list(shapely.get_parts(shapely.union_all(pieces)))
            flush(merged, [value] * len(merged))
        if not started:  # an empty layer still records the CRS and schema
            pyogrio.raw.write(
                tmp,
                np.array([], dtype=object),
                field_data=[np.array([], np.int32), np.array([], object), np.array([], float)],
                fields=["class", "name", "area_m2"],
                layer=LAYER,
                driver="GPKG",
                geometry_type="Polygon",
                crs=crs,
            )
    log.info("%s: %d polygons", path, summary.n_features)
    return summary
