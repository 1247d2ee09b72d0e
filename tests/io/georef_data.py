"""Test data for the georeference tests: GCP-only, RPC-only and ungeoreferenced GeoTIFFs.

Written with rasterio from the bundled Landsat scene (or generated pixels), so anyone can
regenerate them: the GCP copy places 12 GCPs on a mildly non-affine map (a quadratic term of
up to ~4 pixels) of the scene's own transform, so GDAL's GCP transformer is a 2nd-order
polynomial and differs from the least-squares affine fit.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from rasterio.control import GroundControlPoint
from rasterio.rpc import RPC


def gcps_for(transform, height: int, width: int, bend_px: float = 4.0) -> list[GroundControlPoint]:
    """Return 12 GCPs (4 x 3 pixel positions) of ``transform`` bent by a quadratic term."""
    res = abs(transform.a)
    out = []
    for row in np.linspace(0, height, 3):
        for col in np.linspace(0, width, 4):
            x, y = transform @ (col, row)
            x += bend_px * res * (col / width) ** 2
            y -= bend_px * res * (row / height) * (col / width)
            out.append(GroundControlPoint(float(row), float(col), float(x), float(y), 0.0))
    return out


def write_gcp_copy(scene: Path, path: Path) -> Path:
    """Copy ``scene``'s pixels into ``path`` georeferenced by GCPs only (no geotransform)."""
    with rasterio.open(scene) as src:
        data, prof = src.read(), src.profile.copy()
        gcps = gcps_for(src.transform, src.height, src.width)
        crs = src.crs
    for key in ("transform", "crs", "blockxsize", "blockysize", "tiled"):
        prof.pop(key, None)
    with rasterio.open(path, "w", **prof, gcps=gcps, crs=crs) as dst:
        dst.write(data)
    return path


def write_plain(path: Path, data: np.ndarray) -> Path:
    """Write ``data`` ``(band, y, x)`` with no CRS, geotransform, GCPs or RPCs."""
    count, height, width = data.shape
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=count,
                       dtype=data.dtype) as dst:  # fmt: skip
        dst.write(data)
    return path


def simple_rpc() -> RPC:
    """RPCs of a ~0.1 degree image at 40 N 105 W, 100 x 100 pixels (affine-like, exact)."""
    zero = [0.0] * 20
    return RPC(
        height_off=0.0, height_scale=500.0, lat_off=40.0, lat_scale=0.05,
        line_den_coeff=[1.0] + zero[1:], line_num_coeff=[0.0, 0.0, -1.0] + zero[3:],
        line_off=50.0, line_scale=50.0, long_off=-105.0, long_scale=0.05,
        samp_den_coeff=[1.0] + zero[1:], samp_num_coeff=[0.0, 1.0] + zero[2:],
        samp_off=50.0, samp_scale=50.0,
    )  # fmt: skip


def write_rpc(path: Path, data: np.ndarray) -> Path:
    """Write ``data`` ``(band, y, x)`` georeferenced by :func:`simple_rpc` only."""
    count, height, width = data.shape
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=count,
                       dtype=data.dtype, rpcs=simple_rpc()) as dst:  # fmt: skip
        dst.write(data)
    return path
