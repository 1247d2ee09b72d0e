"""A JSON-serialisable summary of an :class:`Image` (what ``geomed-seg info`` prints).

Statistics are streamed with dask (one pass, chunk by chunk), so ``--stats`` works on files
larger than memory.
"""

from __future__ import annotations

from typing import Any

import dask
import dask.array as da
import numpy as np

from geomed_seg.core.grid import GeoGrid
from geomed_seg.core.image import Image


def _crs_summary(crs: Any) -> dict[str, Any] | None:
    if crs is None:
        return None
    epsg = crs.to_epsg()
    name = crs.to_dict().get("proj") if epsg is None else None
    try:
        from pyproj import CRS as ProjCRS  # rasterio ships PROJ; pyproj comes with rioxarray

        name = ProjCRS.from_user_input(crs.to_wkt()).name
    except Exception:  # noqa: BLE001 - a name is cosmetic; fall back to the WKT below
        pass
    return {"epsg": epsg, "name": name, "wkt": crs.to_wkt(), "linear_units": crs.linear_units}


def _ground_summary(grid: GeoGrid) -> dict[str, Any]:
    """Ground units of a raster: how areas are computed, pixel size and area on the ground."""
    from geomed_seg.core.ground import pixel_size_at
    from geomed_seg.errors import GeometryError

    try:
        gu = grid.ground
        size = pixel_size_at(grid, grid.height / 2, grid.width / 2)
    except GeometryError as exc:  # corners outside the CRS's domain: say so, not fail
        return {"ground_units": f"none: {exc}"}
    return {
        "ground_units": gu.reason,
        f"ground_pixel_size_{'m' if gu.metric else 'crs_units'}": list(size),
        f"ground_pixel_area_{gu.area_key}": gu.mean_pixel_area,
    }


def describe(image: Image, *, stats: bool = False) -> dict[str, Any]:
    """Return a summary dict of ``image``: dims, shape, dtype, chunks, nodata and geometry.

    With ``stats=True`` also per-channel min/max/mean over valid samples (streamed).
    Geometry: rasters give CRS (EPSG or WKT name), the GDAL-order geotransform
    ``(c, a, b, f, d, e)``, resolution and ``georeference`` (``transform``, ``gcps`` with
    the GCPs and the residual of the affine fit that ``transform_gdal`` then shows, ``rpcs``
    or ``none`` with a note) and ground units (``ground_units``: how areas are computed,
    ``ground_pixel_size_m`` (x, y) at the scene centre, mean ``ground_pixel_area_m2``; CRS
    units without a ground, :mod:`geomed_seg.core.ground`); volumes give the 4×4 RAS affine, spacing (x, y, z)
    in mm, origin, orientation codes and whether the grid is oblique.
    """
    out: dict[str, Any] = {
        "kind": image.kind,
        "dims": list(image.data.dims),
        "shape": list(image.shape),
        "dtype": str(image.dtype),
        "chunksize": [max(c) for c in image.chunks],
        "n_chunks": int(np.prod([len(c) for c in image.chunks])),
        "nodata": None if image.nodata is None else float(image.nodata),
        "has_mask": image.mask is not None,
        "channel_names": image.channel_names,
    }
    grid = image.grid
    if isinstance(grid, GeoGrid):
        from geomed_seg.io.georef import describe_georeference

        t = grid.transform
        out.update(
            crs=_crs_summary(grid.crs),
            transform_gdal=[t.c, t.a, t.b, t.f, t.d, t.e],
            resolution=list(grid.res),
            bounds=list(grid.bounds),
            rotated=not grid.is_rectilinear,
        )
        out.update(describe_georeference(grid))
        out.update(_ground_summary(grid))
    else:
        out.update(
            affine=grid.affine.tolist(),
            spacing_xyz_mm=list(grid.spacing),
            origin_ras_mm=list(grid.origin),
            orientation="".join(grid.axcodes),
            oblique=grid.is_oblique,
        )
    for key in ("source", "format", "band_names"):
        if key in image.attrs:
            out[key] = image.attrs[key]
    if stats:
        out["stats"] = channel_stats(image)
    return out


def channel_stats(image: Image) -> list[dict[str, float]]:
    """Per-channel ``min``, ``max``, ``mean`` and ``valid`` count over valid samples (streamed)."""
    arr = image.darray
    valid = image.valid_mask()
    data = arr.astype(np.float64)
    if image.nodata is not None and not np.isnan(image.nodata):
        per_channel_valid = arr != image.nodata
    else:
        per_channel_valid = da.isfinite(data)
    per_channel_valid = per_channel_valid & valid[None]
    masked = da.ma.masked_array(data, mask=~per_channel_valid)
    axes = tuple(range(1, arr.ndim))
    mins, maxs, means, counts = dask.compute(
        masked.min(axis=axes),
        masked.max(axis=axes),
        masked.mean(axis=axes),
        per_channel_valid.sum(axis=axes),
    )
    rows = []
    for i in range(arr.shape[0]):
        count = int(counts[i])
        rows.append(
            {
                "min": float(mins[i]) if count else float("nan"),
                "max": float(maxs[i]) if count else float("nan"),
                "mean": float(means[i]) if count else float("nan"),
                "valid": count,
            }
        )
    return rows
