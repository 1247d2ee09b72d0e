"""Zarr v3 adapter: lossless round trips checked with zarr-python and xarray as readers."""

from __future__ import annotations

import re

import dask.array as da
import numpy as np
import pytest
import rasterio
import xarray as xr
import zarr

from geomed_seg.core.grid import VoxelGrid
from geomed_seg.core.image import Image
from geomed_seg.errors import OutputExistsError, ReadError, UnsupportedFormatError
from geomed_seg.io.geotiff import open_geotiff
from geomed_seg.io.zarr import ZarrBlockWriter, open_zarr, write_zarr

OBLIQUE = np.array(
    [
        [0.9271838545667874, -0.3746065934159120, 0.0, -91.123456789012345],
        [0.3746065934159120, 0.9271838545667874, 0.1, 12.3000000000000007],
        [0.0, -0.05, 2.4999999999999996, -30.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)


def test_raster_roundtrip_lossless(landsat_path, tmp_path):
    img = open_geotiff(landsat_path)
    out = write_zarr(img, tmp_path / "scene.zarr", chunks=(6, 128, 100))
    back = open_zarr(out)
    with rasterio.open(landsat_path) as src:
        ref, crs, transform = src.read(), src.crs, src.transform
    np.testing.assert_array_equal(back.compute(), ref)
    assert back.dtype == ref.dtype and back.chunks[1][0] == 128
    assert back.grid.crs == crs and tuple(back.grid.transform) == tuple(transform)  # bit-exact
    assert back.attrs == img.attrs and back.channel_names == img.channel_names
    assert back.nodata is None and back.data.dims == ("band", "y", "x")
    # an independent reader sees the same array and dims
    arr = zarr.open_group(str(out), mode="r")["data"]
    np.testing.assert_array_equal(arr[:], ref)
    ds = xr.open_zarr(out, consolidated=False)
    assert ds["data"].dims == ("band", "y", "x")


def test_volume_oblique_affine_nan_nodata_attrs(tmp_path):
    grid = VoxelGrid(OBLIQUE, (7, 9, 11))
    data = np.random.default_rng(1).random((2, 7, 9, 11)).astype(np.float32)
    data[0, 0, 0, :3] = np.nan
    attrs = {"nifti": {"qform_code": 1, "sform_code": 2, "pixdim": [1.0, 0.5], "descrip": "x"}}
    img = Image.from_array(data, grid, nodata=float("nan"), chunks=(2, 4, 5, 11), attrs=attrs)
    back = open_zarr(write_zarr(img, tmp_path / "vol.zarr"))
    assert isinstance(back.grid, VoxelGrid)
    assert back.grid.affine.tobytes() == OBLIQUE.tobytes()  # bit-exact float64
    assert back.grid.shape == (7, 9, 11) and back.data.dims == ("channel", "z", "y", "x")
    assert np.isnan(back.nodata) and back.attrs == attrs
    np.testing.assert_array_equal(back.compute(), data)
    assert back.chunks == ((2,), (4, 3), (5, 4), (11,))


def test_mask_roundtrip(tmp_path):
    grid = VoxelGrid(np.diag([2.0, 2.0, 3.0, 1.0]), (4, 5, 6))
    img = Image.from_array(np.arange(120, dtype=np.int16).reshape(1, 4, 5, 6), grid)
    mask = np.zeros((4, 5, 6), bool)
    mask[1:3, 2:, :4] = True
    img = Image(img.data, grid, None, xr.DataArray(da.from_array(mask), dims=("z", "y", "x")), {})
    back = open_zarr(write_zarr(img, tmp_path / "m.zarr"))
    np.testing.assert_array_equal(back.valid_mask().compute(), mask)


@pytest.mark.parametrize("spatial_only", [True, False])
def test_block_writer_slices(tmp_path, spatial_only):
    grid = VoxelGrid(OBLIQUE, (6, 8, 10))
    full = np.arange(2 * 6 * 8 * 10, dtype=np.uint16).reshape(2, 6, 8, 10)
    path = tmp_path / "sink.zarr"
    chunks = (3, 4, 5) if spatial_only else (2, 3, 4, 5)
    with ZarrBlockWriter(path, grid, full.shape, "uint16", chunks=chunks, nodata=0) as w:
        assert w.chunks == (2, 3, 4, 5)
        assert not path.exists()  # only the temporary folder exists while writing
        for z in (0, 3):
            for y in (0, 4):
                sp = (slice(z, z + 3), slice(y, y + 4), slice(0, 10))
                if spatial_only:
                    w.write(full[(slice(None), *sp)], sp)
                else:
                    w.write(full[(slice(None), *sp)], (slice(0, 2), *sp))
    back = open_zarr(path)
    np.testing.assert_array_equal(back.compute(), full)
    assert back.nodata == 0 and back.grid.affine.tobytes() == OBLIQUE.tobytes()
    assert {p.name for p in tmp_path.iterdir()} == {"sink.zarr"}


def test_atomic_and_overwrite(landsat_path, tmp_path):
    img = open_geotiff(landsat_path)
    out = tmp_path / "a.zarr"
    write_zarr(img, out)
    with pytest.raises(OutputExistsError, match=re.escape(str(out))):
        write_zarr(img, out)

    def boom(block, block_id=None):
        if block_id == (0, 1, 1):
            raise RuntimeError("chunk failed")
        return block

    bad = Image.from_array(
        img.darray.rechunk((6, 128, 128)).map_blocks(boom, dtype=img.dtype), img.grid
    )
    with pytest.raises(RuntimeError, match="chunk failed"):
        write_zarr(bad, out, overwrite=True)
    assert {p.name for p in tmp_path.iterdir()} == {"a.zarr"}  # old store kept, no temp left
    np.testing.assert_array_equal(open_zarr(out).compute(), img.compute())
    with pytest.raises(RuntimeError):
        write_zarr(bad, tmp_path / "b.zarr")
    assert {p.name for p in tmp_path.iterdir()} == {"a.zarr"}


def test_bad_stores(tmp_path):
    with pytest.raises(ReadError, match="no such file"):
        open_zarr(tmp_path / "missing.zarr")
    plain = tmp_path / "plain.zarr"
    zarr.create_array(str(plain), shape=(3,), dtype="uint8")
    with pytest.raises(UnsupportedFormatError, match=re.escape(str(plain))):
        open_zarr(plain)
    empty = tmp_path / "empty.zarr"
    empty.mkdir()
    with pytest.raises(UnsupportedFormatError, match=re.escape(str(empty))):
        open_zarr(empty)
