"""Small generated rasters for the classical tests (data built here, see the functions)."""

from __future__ import annotations

import numpy as np
import pytest
from affine import Affine
from rasterio.crs import CRS
from scipy import ndimage as ndi

from geomed_seg.core import GeoGrid, Image


def blobs(shape=(96, 120), n=14, seed=0) -> np.ndarray:
    """Binary mask of random overlapping disks (touching objects for watershed)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.indices(shape)
    out = np.zeros(shape, bool)
    for _ in range(n):
        cy, cx = rng.integers(8, shape[0] - 8), rng.integers(8, shape[1] - 8)
        r = rng.integers(4, 9)
        out |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
    return out


@pytest.fixture
def geogrid():
    return lambda shape: GeoGrid(
        CRS.from_epsg(32633), Affine(10.0, 0, 500000.0, 0, -10.0, 4000000.0), shape
    )


@pytest.fixture
def blob_image(geogrid):
    """(mask, smoothed float image, Image chunked 32x40) of random blobs."""
    m = blobs()
    img = ndi.gaussian_filter(m.astype(np.float64), 1.0) + 0.05 * np.random.default_rng(3).normal(
        size=m.shape
    )
    return (
        m,
        img,
        Image.from_array(img[None].astype(np.float32), geogrid(m.shape), chunks=(1, 32, 40)),
    )
