"""Image: dims, windows, validity and chunking."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
from affine import Affine
from rasterio.crs import CRS

from geomed_seg.core import GeoGrid, Image, VoxelGrid
from geomed_seg.core.image import default_chunks
from geomed_seg.errors import GeometryError, InvalidInputError

GRID = GeoGrid(CRS.from_epsg(3857), Affine(10, 0, 0, 0, -10, 1000), (40, 50))


def test_from_array_adds_channel_dim_and_keeps_geometry():
    img = Image.from_array(np.arange(2000, dtype=np.uint16).reshape(40, 50), GRID)
    assert img.data.dims == ("band", "y", "x")
    assert img.shape == (1, 40, 50) and img.kind == "raster"
    assert img.grid is GRID
    assert np.array_equal(img.compute()[0], np.arange(2000).reshape(40, 50))


def test_volume_dims_and_shape_mismatch():
    grid = VoxelGrid(np.diag([2.0, 2.0, 3.0, 1.0]), (4, 5, 6))
    img = Image.from_array(np.zeros((2, 4, 5, 6), np.float32), grid, channel_names=["t1", "t2"])
    assert img.data.dims == ("channel", "z", "y", "x")
    assert img.channel_names == ["t1", "t2"] and img.n_channels == 2
    with pytest.raises(GeometryError):
        Image.from_array(np.zeros((4, 5, 7)), grid)
    with pytest.raises(InvalidInputError, match="dims"):
        Image(img.data, GRID)  # volume dims on a raster grid


def test_sel_window_data_and_grid_agree():
    arr = np.random.default_rng(0).integers(0, 255, (3, 40, 50)).astype(np.uint8)
    img = Image.from_array(arr, GRID, chunks=(3, 16, 16))
    sub = img.sel_window((slice(5, 25), slice(10, 40)))
    assert np.array_equal(sub.compute(), arr[:, 5:25, 10:40])
    # the sub-grid maps pixel (0, 0) where the parent maps (5, 10)
    assert np.allclose(sub.grid.xy(0, 0), GRID.xy(5, 10))


def test_valid_mask_nodata_nan_and_explicit_mask():
    arr = np.ones((2, 40, 50), np.float32)
    arr[:, :10] = -9999
    arr[0, 10:20] = -9999  # one band still valid there
    m = Image.from_array(arr, GRID, nodata=-9999).valid_mask().compute()
    assert not m[:10].any() and m[10:].all()
    arr[:, :10] = np.nan
    m = Image.from_array(arr, GRID, nodata=float("nan")).valid_mask().compute()
    assert not m[:10].any() and m[10:].all()
    m = Image.from_array(arr, GRID).valid_mask().compute()  # float without nodata: NaN invalid
    assert not m[:10].any() and m[10:].all()
    ints = Image.from_array(np.zeros((1, 40, 50), np.uint8), GRID)
    assert ints.valid_mask().compute().all()


def test_rechunk_and_default_chunks():
    grid = GeoGrid(None, Affine.identity(), (300, 200))
    img = Image.from_array(da.zeros((4, 300, 200), dtype=np.uint16, chunks=(4, 300, 200)), grid)
    assert img.chunks == ((4,), (300,), (200,))
    r = img.rechunk((4, 128, 128))
    assert r.chunks[1] == (128, 128, 44)
    assert default_chunks((4, 100000, 100000), 2, 2)[0] == 4
    c = default_chunks((1, 10**5, 10**5), 4, 2)
    assert c[1] * c[2] * 4 <= 64 * 2**20
