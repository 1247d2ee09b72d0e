"""File sinks: output geometry equals the input's (read back with rasterio / nibabel), atomic."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import rasterio
import torch

from geomed_seg.core.image import Image
from geomed_seg.errors import OutputExistsError, UnsupportedFormatError
from geomed_seg.inference.segment import segment
from geomed_seg.inference.sinks import MemorySink
from geomed_seg.models.card import ModelCard
from tests.inference.conftest import raster, tiny_net, volume


class _Loaded:
    def __init__(self, module, card):
        self.module, self.card = module, card


def _card(dims: int, cin: int) -> ModelCard:
    return ModelCard(
        name="t", architecture="custom", spatial_dims=dims, in_channels=cin,
        roi_size=[16] * dims, mode="gaussian",
        classes=[{"index": 0, "name": "land", "color": [0, 128, 0]},
                 {"index": 1, "name": "water", "color": [0, 0, 255]}],
    )  # fmt: skip


def _raster_with_nodata() -> Image:
    img = raster(shape=(3, 70, 93))
    x = img.compute()
    x[:, :20, :30] = -1.0
    return Image.from_array(x, img.grid, nodata=-1.0, chunks=(3, 32, 40))


def test_geotiff_labels_keep_geometry_nodata_and_classes(tmp_path):
    img = _raster_with_nodata()
    model = _Loaded(tiny_net(2, 3, 2), _card(2, 3))
    mem = segment(img, model, device="cpu").image.compute()
    out = tmp_path / "labels.tif"
    res = segment(img, model, sink=out, device="cpu")
    assert res.path == out
    with rasterio.open(out) as src:
        assert src.crs == img.grid.crs and src.transform == img.grid.transform
        assert src.shape == img.grid.shape and src.count == 1 and src.dtypes[0] == "uint8"
        assert src.nodata == 255
        np.testing.assert_array_equal(src.read(1), mem[0])
        assert src.colormap(1)[1][:3] == (0, 0, 255)
    assert (mem[0, :20, :30] == 255).all()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".aux.xml")) == [
        "labels.qml", "labels.tif"
    ]  # fmt: skip


def test_zarr_probabilities_roundtrip(tmp_path):
    from geomed_seg.io.zarr import open_zarr

    img = _raster_with_nodata()
    net = tiny_net(2, 3, 2)
    kw = dict(roi_size=(16, 16), output="probabilities", device="cpu")
    mem = segment(img, net, **kw).image.compute()
    res = segment(img, net, sink=tmp_path / "p.zarr", **kw)
    back = open_zarr(tmp_path / "p.zarr")
    assert back.grid.almost_equals(img.grid)
    np.testing.assert_array_equal(back.compute(), mem)
    assert np.isnan(mem[:, :20, :30]).all()
    assert res.image.grid.almost_equals(img.grid)


def test_nifti_labels_keep_affine(tmp_path):
    img = volume(shape=(1, 13, 21, 18))
    model = _Loaded(tiny_net(3, 1, 2), _card(3, 1))
    mem = segment(img, model, device="cpu").image.compute()
    out = tmp_path / "seg.nii.gz"
    segment(img, model, sink=out, device="cpu")
    nii = nib.load(out)
    np.testing.assert_allclose(nii.affine, img.grid.affine, atol=1e-5)
    data = np.asarray(nii.dataobj)
    assert data.shape == (18, 21, 13)  # nibabel (i, j, k) = our (x, y, z)
    np.testing.assert_array_equal(data.transpose(2, 1, 0), mem[0])


def test_failure_leaves_nothing_and_overwrite_guard(tmp_path):
    img = raster(shape=(3, 64, 64))
    calls = []

    def flaky(x: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        if len(calls) > 3:
            raise RuntimeError("boom")
        return torch.zeros((x.shape[0], 2, *x.shape[2:]))

    for name in ("a.tif", "b.zarr"):
        with pytest.raises(RuntimeError, match="boom"):
            calls.clear()
            segment(img, flaky, roi_size=16, batch_size=1, sink=tmp_path / name, device="cpu")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "c.tif").write_bytes(b"keep")
    with pytest.raises(OutputExistsError):
        segment(img, tiny_net(2, 3, 2), roi_size=16, sink=tmp_path / "c.tif", device="cpu")
    assert (tmp_path / "c.tif").read_bytes() == b"keep"
    with pytest.raises(UnsupportedFormatError):
        segment(img, tiny_net(2, 3, 2), roi_size=16, sink=tmp_path / "x.png", device="cpu")


def test_memory_sink_chunking_does_not_change_labels():
    img = raster()
    net = tiny_net(2, 3, 3)
    a = segment(img, net, roi_size=20, device="cpu", sink=MemorySink(chunk=13)).image.compute()
    b = segment(img, net, roi_size=20, device="cpu", sink=MemorySink(chunk=512)).image.compute()
    np.testing.assert_array_equal(a, b)


def test_real_landsat_cog_matches_monai_and_source_geometry(landsat_path, tmp_path):
    from monai.inferers import sliding_window_inference as monai_swi

    from geomed_seg.io.geotiff import open_geotiff

    img = open_geotiff(landsat_path)
    net = tiny_net(2, img.n_channels, 3, seed=7)
    res = segment(
        img, net, roi_size=(64, 64), output="probabilities", sink=tmp_path / "p.tif",
        device="cpu", batch_size=8,
    )  # fmt: skip
    x = torch.from_numpy(img.compute().astype(np.float32))[None]
    with torch.no_grad():
        ref = monai_swi(
            x, (64, 64), 8, lambda t: torch.softmax(net(t), 1), overlap=0.25, mode="gaussian"
        )
    with rasterio.open(tmp_path / "p.tif") as out, rasterio.open(landsat_path) as src:
        assert out.crs == src.crs and out.transform == src.transform and out.shape == src.shape
        got = out.read()
    valid = img.valid_mask().compute()
    np.testing.assert_allclose(got[:, valid], ref[0].numpy()[:, valid], atol=1e-4)
    assert res.stats["windows_total"] >= 30
