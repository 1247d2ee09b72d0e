"""NDWI + Otsu on the bundled Landsat scene against an independent NumPy/scikit-image computation."""

from __future__ import annotations

import numpy as np
import rasterio
from affine import Affine
from skimage.filters import threshold_otsu

from geomed_seg.classical.indices import normalized_difference, spectral_index
from geomed_seg.classical.thresholds import otsu_threshold
from geomed_seg.core import GeoGrid, Image


def _scene(path, chunks=(6, 64, 64)):
    with rasterio.open(path) as ds:
        arr = ds.read()
        grid = GeoGrid(ds.crs, ds.transform, arr.shape[1:])
    img = Image.from_array(
        arr,
        grid,
        chunks=chunks,
        attrs={"band_names": ["blue", "green", "red", "nir", "swir1", "swir2"]},
    )
    return arr, img


def test_ndwi_and_otsu_match_numpy_and_skimage(landsat_path):
    arr, img = _scene(landsat_path)
    green, nir = arr[1].astype(np.float64), arr[3].astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        ref = (green - nir) / (green + nir)
    ours = normalized_difference(img, "green", "nir").compute()[0]
    np.testing.assert_allclose(ours, ref, rtol=1e-6, equal_nan=True)
    t = otsu_threshold(spectral_index(img, "ndwi"), bins=4096)
    t_ref = threshold_otsu(ref[np.isfinite(ref)], nbins=4096)
    assert abs(t - t_ref) < 2 * (np.nanmax(ref) - np.nanmin(ref)) / 4096
    # the water fraction the demo reports is reproduced by the independent threshold
    frac = float((ours > t).sum() / np.isfinite(ours).sum())
    frac_ref = float((ref > t_ref).sum() / np.isfinite(ref).sum())
    assert abs(frac - frac_ref) < 0.002
    assert 0.05 < frac < 0.5  # the scene has ocean and rivers, not all water


def test_streamed_threshold_ignores_nodata_and_chunking():
    rng = np.random.default_rng(1)
    a = (
        np.concatenate([rng.normal(0.0, 1.0, 5000), rng.normal(6.0, 1.0, 5000)])
        .reshape(1, 100, 100)
        .astype(np.float32)
    )
    grid = GeoGrid(None, Affine.identity(), (100, 100))
    t1 = otsu_threshold(Image.from_array(a, grid, chunks=(1, 100, 100)))
    t2 = otsu_threshold(Image.from_array(a, grid, chunks=(1, 17, 33)))
    assert t1 == t2
    b = a.copy()
    b[0, :20] = -9999.0  # nodata must not pull the threshold
    t3 = otsu_threshold(Image.from_array(b, grid, nodata=-9999.0, chunks=(1, 32, 32)))
    t_ref = threshold_otsu(b[0, 20:], nbins=1024)
    assert abs(t3 - t_ref) < 0.05
