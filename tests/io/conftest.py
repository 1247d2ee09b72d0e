"""Raster fixtures for the IO tests: small GeoTIFFs written with rasterio in ``tmp_path``.

NIfTI/DICOM fixtures live in their own test files (tests/io/test_nifti.py, test_dicom.py).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from affine import Affine

UTM33 = "EPSG:32633"
NORTH_UP = Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 4000000.0)


def ramp(count: int, height: int, width: int, dtype: Any = "uint16") -> np.ndarray:
    """Return a deterministic ``(band, y, x)`` array with distinct values per band and pixel."""
    b, y, x = np.indices((count, height, width))
    return ((b * 1000 + y * 7 + x * 3) % 5000).astype(dtype)


def write_tif(
    path: Path,
    data: np.ndarray,
    *,
    crs: Any = UTM33,
    transform: Affine = NORTH_UP,
    **profile: Any,
) -> Path:
    """Write ``data`` ``(band, y, x)`` with rasterio (the independent writer) and return ``path``."""
    count, height, width = data.shape
    prof = dict(
        driver="GTiff", width=width, height=height, count=count, dtype=data.dtype.name,
        crs=crs, transform=transform,
    )  # fmt: skip
    prof.update(profile)
    with rasterio.open(path, "w", **prof) as dst:
        dst.write(data)
    return path


@pytest.fixture
def make_tif(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``make_tif(name, data, **profile)`` writes ``tmp_path/name`` with rasterio."""

    def _make(name: str, data: np.ndarray, **kw: Any) -> Path:
        return write_tif(tmp_path / name, data, **kw)

    return _make


@pytest.fixture
def tiled_tif(make_tif: Callable[..., Path]) -> Path:
    """3-band uint16, 1100 x 1000 px, 256 tiles, deflate, nodata 0, UTM 33N, 10 m."""
    data = ramp(3, 1100, 1000) + 1
    return make_tif(
        "tiled.tif", data, tiled=True, blockxsize=256, blockysize=256, compress="deflate", nodata=0
    )
