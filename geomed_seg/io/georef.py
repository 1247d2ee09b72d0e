"""Georeference of rasters as GDAL stores it: geotransform, ground control points or RPCs.

A GeoTIFF places its pixels on the ground in one of three ways, and an image may have none:

* a **geotransform** (affine, rotation allowed) + CRS: :attr:`GeoGrid.transform`;
* **ground control points** (GCPs) + the GCPs' CRS, with no geotransform (scanned maps,
  L1 satellite products): :attr:`GeoGrid.gcps`;
* **RPCs** (rational polynomial coefficients, WGS 84 ground), with or without a
  geotransform: :attr:`GeoGrid.rpcs`;
* **nothing**: pixel coordinates only (:attr:`GeoGrid.georeference` ``"none"``).

Choice for GCP and RPC inputs: **carry, never warp.** The pixel grid of the input is kept
and its GCPs/RPCs are written to every raster output (COG, labels, tiles), shifted for
windows; polygons are mapped from pixel corners to the GCPs' CRS through GDAL's own GCP
transformer (polynomial of the order GDAL picks from the number of GCPs) or RPC
transformer, the same mapping GDAL and QGIS apply when they display the raster. Warping once
would resample the pixels (labels by nearest neighbour: counts and shapes change) and make
``convert`` lossy; carrying keeps every output pixel-identical to what the model saw and
still exactly georeferenced. Pixel sizes and areas of a GCP grid come from GDAL's
least-squares affine fit of the GCPs (``GDALGCPsToGeoTransform``), whose residual
:func:`gcp_fit_residual_px` reports (``geomed-seg info``).

Nothing here is hand-written geometry: reading and writing are rasterio's, the transformers
are GDAL's (``rasterio.transform.GCPTransformer`` / ``RPCTransformer``).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
from affine import Affine
from rasterio.errors import NotGeoreferencedWarning

from geomed_seg.core.grid import GCP, GeoGrid

log = logging.getLogger(__name__)

# rasterio warns on every open of a file without a geotransform (GCP, RPC and plain files
# alike, from every dask task that reads a window); the grid records the georeference and
# `info` reports its absence, so the warning is noise here. Scoped to rasterio's own module.
warnings.filterwarnings("ignore", category=NotGeoreferencedWarning, module=r"rasterio(\.|$)")

#: CRS of RPC ground coordinates (longitude, latitude in degrees; GDAL's RPC transformer).
RPC_CRS = "EPSG:4326"


def read_grid(src: Any) -> GeoGrid:
    """Return the :class:`GeoGrid` of an open rasterio dataset, GCPs and RPCs included.

    A dataset with a geotransform keeps it (and its RPCs, if any). One without a
    geotransform (GDAL reports the identity) but with GCPs gets ``gcps`` + the GCPs' CRS and, as ``transform``, GDAL's
    least-squares affine fit; one with only RPCs gets ``rpcs`` with no CRS and the identity
    transform (its pixel sizes are in pixels: RPCs give no defensible affine; polygons go
    through the RPC transformer to WGS 84, :func:`map_crs`). Otherwise the grid is not
    georeferenced (no CRS, identity transform).
    """
    from rasterio.transform import from_gcps

    shape = (src.height, src.width)
    rpcs = src.rpcs.to_gdal() if src.rpcs is not None else None
    rpc_items = None if rpcs is None else tuple(rpcs.items())
    gcps, gcp_crs = src.gcps
    # GDAL's own rule (GDALCreateGenImgProjTransformer2, i.e. gdalwarp/QGIS): an identity
    # geotransform is no geotransform, and GCPs then place the pixels, even when the
    # dataset also carries a CRS (a VRT with <SRS> and <GCPList>, e.g. a COMPD_CS one).
    # The dataset CRS next to an identity transform says nothing about where pixels are.
    has_transform = src.transform != Affine.identity()
    if gcps and not has_transform:
        ours = tuple(
            GCP(g.row, g.col, g.x, g.y, 0.0 if g.z is None else g.z, g.id or "", g.info or "")
            for g in gcps
        )
        return GeoGrid(gcp_crs, from_gcps(gcps), shape, ours, rpc_items)
    return GeoGrid(src.crs, src.transform, shape, None, rpc_items)


def map_crs(grid: GeoGrid) -> Any:
    """CRS of :func:`pixel_to_map`'s output: the grid's, or WGS 84 for an RPC-only grid."""
    if grid.georeference == "rpcs":
        from rasterio.crs import CRS

        return CRS.from_user_input(RPC_CRS)
    return grid.crs


def write_profile(grid: GeoGrid) -> dict[str, Any]:
    """Return the rasterio ``open(..., "w")`` keywords that store ``grid``'s georeference.

    Geotransform grids give ``crs`` + ``transform``; GCP grids ``gcps`` + ``crs`` (and no
    transform: GDAL keeps one or the other); RPCs are added as ``rpcs``; a grid that is not
    georeferenced gives nothing, so the output has no CRS and no geotransform.
    """
    from rasterio.control import GroundControlPoint
    from rasterio.rpc import RPC

    kind = grid.georeference
    prof: dict[str, Any] = {}
    if kind == "transform":
        prof.update(crs=grid.crs, transform=grid.transform)
    elif kind == "gcps":
        prof["gcps"] = [
            GroundControlPoint(g.row, g.col, g.x, g.y, g.z, id=g.id or None, info=g.info or None)
            for g in grid.gcps or ()
        ]
        prof["crs"] = grid.crs
    if grid.rpcs is not None:
        prof["rpcs"] = RPC.from_gdal(dict(grid.rpcs))
    return prof


def is_affine(grid: GeoGrid) -> bool:
    """True when pixel → map is exactly ``grid.transform`` (geotransform or no georeference)."""
    return grid.georeference in ("transform", "none")


def pixel_to_map(grid: GeoGrid) -> Callable[[np.ndarray], np.ndarray]:
    """Return a function mapping ``(N, 2)`` pixel-corner ``(col, row)`` to map ``(x, y)``.

    Geotransform grids use the affine; GCP grids GDAL's GCP transformer (polynomial, order
    chosen by GDAL from the GCP count); RPC-only grids GDAL's RPC transformer at height 0
    (GDAL's default without a DEM or ``RPC_HEIGHT``, as ``gdalwarp`` does), giving WGS 84 longitude/latitude (:func:`map_crs`). Suited to
    ``shapely.transform``.
    """
    kind = grid.georeference
    if kind in ("transform", "none"):
        t = grid.transform

        def affine(xy: np.ndarray) -> np.ndarray:
            xy = np.asarray(xy, dtype=np.float64)
            return np.column_stack(
                [t.a * xy[:, 0] + t.b * xy[:, 1] + t.c, t.d * xy[:, 0] + t.e * xy[:, 1] + t.f]
            )

        return affine
    transformer = _gdal_transformer(grid)

    def through_gdal(xy: np.ndarray) -> np.ndarray:
        xy = np.asarray(xy, dtype=np.float64)
        if len(xy) == 0:
            return xy.reshape(0, 2)
        xs, ys = transformer.xy(xy[:, 1], xy[:, 0], offset="ul")
        return np.column_stack([np.atleast_1d(xs), np.atleast_1d(ys)]).astype(np.float64)

    return through_gdal


def _gdal_transformer(grid: GeoGrid) -> Any:
    """GDAL's GCP or RPC transformer of a GCP / RPC-only grid (rasterio wrappers)."""
    from rasterio.transform import GCPTransformer, RPCTransformer

    if grid.georeference == "gcps":
        from rasterio.control import GroundControlPoint

        return GCPTransformer([GroundControlPoint(g.row, g.col, g.x, g.y, g.z)
                               for g in grid.gcps or ()])  # fmt: skip
    from rasterio.rpc import RPC

    return RPCTransformer(RPC.from_gdal(dict(grid.rpcs or ())))


def map_to_pixel(grid: GeoGrid) -> Callable[[np.ndarray], np.ndarray]:
    """Return a function mapping ``(N, 2)`` map ``(x, y)`` to fractional pixel-corner ``(col, row)``.

    The inverse of :func:`pixel_to_map`: the inverse affine, or GDAL's GCP / RPC transformer
    run backwards (``rowcol`` without rounding).
    """
    if is_affine(grid):
        inv = ~grid.transform

        def affine(xy: np.ndarray) -> np.ndarray:
            xy = np.asarray(xy, dtype=np.float64)
            return np.column_stack([inv.a * xy[:, 0] + inv.b * xy[:, 1] + inv.c,
                                    inv.d * xy[:, 0] + inv.e * xy[:, 1] + inv.f])  # fmt: skip

        return affine
    transformer = _gdal_transformer(grid)

    def through_gdal(xy: np.ndarray) -> np.ndarray:
        xy = np.asarray(xy, dtype=np.float64)
        if len(xy) == 0:
            return xy.reshape(0, 2)
        rows, cols = transformer.rowcol(xy[:, 0], xy[:, 1], op=lambda v: v)
        return np.column_stack([np.atleast_1d(cols), np.atleast_1d(rows)]).astype(np.float64)

    return through_gdal


def gcp_fit_residual_px(grid: GeoGrid) -> float | None:
    """Largest distance (pixels) between a GCP and GDAL's affine fit; None without GCPs.

    Zero for GCPs that an affine maps exactly; large values mean pixel sizes and areas of
    the grid (which use the fit) are approximate, while polygons (GCP transformer) are not.
    """
    if not grid.gcps:
        return None
    inv = ~grid.transform
    worst = 0.0
    for g in grid.gcps:
        col, row = inv @ (g.x, g.y)
        worst = max(worst, float(np.hypot(col - g.col, row - g.row)))
    return worst


def describe_georeference(grid: GeoGrid) -> dict[str, Any]:
    """JSON summary of how ``grid`` is georeferenced (what ``geomed-seg info`` prints)."""
    kind = grid.georeference
    out: dict[str, Any] = {"georeference": kind}
    if kind == "none":
        out["georeference_note"] = (
            "no georeference (no CRS, geotransform, GCPs or RPCs): pixel coordinates only; "
            "outputs stay ungeoreferenced"
        )
    if grid.gcps:
        out["gcps"] = [list(g[:5]) for g in grid.gcps]
        out["gcp_count"] = len(grid.gcps)
        out["gcp_fit_residual_px"] = gcp_fit_residual_px(grid)
    if grid.rpcs:
        out["rpcs"] = dict(grid.rpcs)
    return out
