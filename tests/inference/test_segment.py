"""Streaming ``segment`` equals MONAI's in-memory blend; skips, TTA, labels, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.inferers import sliding_window_inference as monai_swi

from geomed_seg.core.image import Image
from geomed_seg.errors import InvalidInputError, ModelError
from geomed_seg.inference.segment import segment
from geomed_seg.inference.sinks import MemorySink
from geomed_seg.models.card import ModelCard
from tests.inference.conftest import raster, tiny_net, volume


def _monai_probs(x: np.ndarray, net, roi, overlap, mode) -> np.ndarray:
    def pred(t):
        return torch.softmax(net(t), 1)

    with torch.no_grad():
        out = monai_swi(torch.from_numpy(x)[None], roi, 3, pred, overlap=overlap, mode=mode)
    return out[0].numpy()


@pytest.mark.parametrize(
    ("overlap", "mode"), [(0.25, "gaussian"), (0.5, "constant"), (0.0, "gaussian")]
)
@pytest.mark.parametrize("chunk", [20, 512])
def test_streamed_raster_equals_monai(overlap, mode, chunk):
    img = raster()
    net = tiny_net(2, 3, 4)
    res = segment(
        img, net, roi_size=(24, 24), overlap=overlap, mode=mode, output="probabilities",
        sink=MemorySink(chunk=chunk), skip="none", device="cpu", batch_size=3,
    )  # fmt: skip
    ref = _monai_probs(img.compute(), net, (24, 24), overlap, mode)
    got = res.image.compute()
    assert got.shape == ref.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)
    assert res.image.grid == img.grid
    assert res.stats["windows_total"] == res.stats["windows_run"] > 1


@pytest.mark.parametrize("mode", ["gaussian", "constant"])
def test_streamed_volume_equals_monai_with_padding(mode):
    img = volume()  # z = 13 is smaller than the roi: MONAI pads, then crops
    net = tiny_net(3, 2, 3)
    roi = (16, 10, 8)
    res = segment(
        img, net, roi_size=roi, overlap=0.25, mode=mode, output="probabilities",
        sink=MemorySink(chunk=7), skip="none", device="cpu",
    )  # fmt: skip
    ref = _monai_probs(img.compute(), net, roi, 0.25, mode)
    np.testing.assert_allclose(res.image.compute(), ref, atol=1e-4, rtol=0)
    assert res.image.grid.almost_equals(img.grid)


def test_labels_are_argmax_of_monai_probs_with_card_classes():
    img = raster()
    net = tiny_net(2, 3, 3, seed=4)
    card = ModelCard(
        name="t", architecture="custom", spatial_dims=2, in_channels=3, roi_size=[24, 24],
        classes=[{"index": 0, "name": "bg"}, {"index": 2, "name": "water"}, {"index": 5, "name": "x"}],
        normalisation={"type": "meanstd", "mean": [0.5], "std": [0.25]}, mode="constant",
    )  # fmt: skip

    class Loaded:
        module, card_ = net, card

    model = Loaded()
    model.card = card
    res = segment(img, model, sink=MemorySink(chunk=30), device="cpu")
    x = (img.compute() - 0.5) / 0.25
    probs = _monai_probs(x.astype(np.float32), net, (24, 24), 0.25, "constant")
    labels = res.image.compute()[0]
    assert res.image.dtype == np.uint8 and res.image.nodata == 255
    top2 = np.sort(probs, axis=0)[-2:]
    clear = (top2[1] - top2[0]) > 1e-4
    np.testing.assert_array_equal(labels[clear], np.array([0, 2, 5])[probs.argmax(0)][clear])
    assert res.image.attrs["classes"][1]["name"] == "water"


def _with_nodata(img: Image, seed: int, frac_rows: float) -> tuple[Image, np.ndarray]:
    x = img.compute()
    rng = np.random.default_rng(seed)
    h, w = x.shape[1:]
    bad = np.zeros((h, w), bool)
    bad[: int(frac_rows * h)] = True  # a block of rows
    for _ in range(3):  # random stripes and blocks
        r, c = rng.integers(0, h), rng.integers(0, w)
        bad[r : r + rng.integers(1, 30), c : c + rng.integers(1, 30)] = True
    bad[:, rng.integers(0, w)] = True
    x[:, bad] = -9999.0
    return Image.from_array(x, img.grid, nodata=-9999.0, chunks=(3, 25, 33)), bad


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_skip_never_changes_valid_pixels(seed):
    img, bad = _with_nodata(raster(shape=(3, 120, 90)), seed, 0.4)
    net = tiny_net(2, 3, 2)
    kw = dict(roi_size=(16, 16), output="probabilities", device="cpu", sink=MemorySink(chunk=24))
    full = segment(img, net, skip="none", **kw)
    fast = segment(img, net, skip="auto", **kw)
    assert fast.stats["windows_skipped"] > 0
    assert fast.stats["windows_run"] + fast.stats["windows_skipped"] == fast.stats["windows_total"]
    a, b = full.image.compute(), fast.image.compute()
    np.testing.assert_allclose(b[:, ~bad], a[:, ~bad], atol=1e-6)
    assert np.isnan(b[:, bad]).all() and np.isnan(a[:, bad]).all()
    lab = segment(img, net, roi_size=(16, 16), device="cpu").image.compute()[0]
    assert (lab[bad] == 255).all() and (lab[~bad] < 2).all()


def test_nan_nodata_does_not_poison_windows():
    """NaN input samples (float rasters with NaN nodata) enter the model as 0, as MONAI gets
    them here; before, every window touching one gave NaN probabilities (labelled class 0)."""
    img = raster(shape=(3, 48, 40))
    x = img.compute()
    x[:, 10:14, 5:30] = np.nan
    nan_img = Image.from_array(x, img.grid, nodata=float("nan"), chunks=(3, 16, 16))
    net = tiny_net(2, 3, 2)
    kw = dict(roi_size=(16, 16), device="cpu", skip="none", sink=MemorySink(chunk=16))
    got = segment(nan_img, net, output="probabilities", **kw).image.compute()
    ref = _monai_probs(np.nan_to_num(x, nan=0.0), net, (16, 16), 0.25, "gaussian")
    valid = ~np.isnan(x[0])
    np.testing.assert_allclose(got[:, valid], ref[:, valid], atol=1e-4, rtol=0)
    assert np.isnan(got[:, ~valid]).all()
    lab = segment(nan_img, net, **kw).image.compute()[0]
    np.testing.assert_array_equal(lab[valid], ref.argmax(0)[valid])
    assert (lab[~valid] == 255).all()


def test_single_valid_pixel_is_segmented():
    img = raster(shape=(3, 64, 64))
    x = np.full((3, 64, 64), np.nan, np.float32)
    x[:, 40, 17] = 0.3
    img = Image.from_array(x, img.grid, chunks=(3, 16, 16))
    res = segment(img, tiny_net(2, 3, 2), roi_size=(16, 16), device="cpu", sink=MemorySink(8))
    lab = res.image.compute()[0]
    assert lab[40, 17] in (0, 1)
    assert (lab == 255).sum() == 64 * 64 - 1
    assert 1 <= res.stats["windows_run"] < res.stats["windows_total"]


def test_volume_threshold_skip_keeps_foreground():
    x = np.zeros((1, 24, 30, 28), np.float32)
    x[0, 3:8, 5:12, 4:9] = np.random.default_rng(0).random((5, 7, 5)) + 0.5
    img = volume(shape=(1, 24, 30, 28))
    img = Image.from_array(x, img.grid, chunks=(1, 8, 8, 8))
    net = tiny_net(3, 1, 3)
    kw = dict(roi_size=(8, 8, 8), output="probabilities", device="cpu", sink=MemorySink(8))
    full = segment(img, net, skip="none", **kw).image.compute()
    res = segment(img, net, foreground_threshold=0.1, **kw)
    fast = res.image.compute()
    assert res.stats["windows_skipped"] > 0
    fg = x[0] > 0.1
    np.testing.assert_allclose(fast[:, fg], full[:, fg], atol=1e-6)
    np.testing.assert_allclose(fast[0, 20:, 20:, 20:], 1.0)  # only skipped windows: background


def test_tta_equivariant_model_equals_plain_and_asymmetric_differs():
    img = raster(shape=(2, 40, 44), chunks=(2, 20, 20))
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(2, 3, 3, padding=1)
    with torch.no_grad():
        w = conv.weight
        w += torch.flip(w, (-1,))
        w += torch.flip(w, (-2,))
    kw = dict(roi_size=(16, 16), output="probabilities", device="cpu", skip="none")
    plain = segment(img, conv, tta=False, **kw).image.compute()
    tta = segment(img, conv, tta=True, **kw).image.compute()
    np.testing.assert_allclose(tta, plain, atol=1e-5)
    asym = tiny_net(2, 2, 3)
    a = segment(img, asym, tta=False, **kw).image.compute()
    b = segment(img, asym, tta=True, **kw).image.compute()
    assert np.abs(a - b).max() > 1e-3


def test_progress_callback_and_errors():
    img = raster(shape=(3, 40, 40))
    net = tiny_net(2, 3, 2)
    seen = []
    segment(img, net, roi_size=16, device="cpu", progress=lambda d, t: seen.append((d, t)))
    assert seen[-1][0] == seen[-1][1] == 9
    with pytest.raises(InvalidInputError, match="roi_size"):
        segment(img, net, device="cpu")
    with pytest.raises(InvalidInputError, match="output"):
        segment(img, net, roi_size=16, output="logits")
    with pytest.raises(ModelError, match="channels|window"):
        segment(img, tiny_net(2, 2, 2), roi_size=16, device="cpu")


def test_mask_prepass_skips_windows_without_reading_them():
    import dataclasses

    import dask.array as da
    import xarray as xr

    base = raster(shape=(3, 96, 64))
    x = base.compute()
    reads: list[tuple[int, int]] = []

    def load(block, block_info=None):
        loc = block_info[None]["array-location"]
        reads.append((loc[1][0], loc[2][0]))
        return block

    data = da.from_array(x, chunks=(3, 16, 16)).map_blocks(load, dtype=np.float32)
    valid = np.ones((96, 64), bool)
    valid[:48] = False
    mask = xr.DataArray(da.from_array(valid, chunks=16), dims=("y", "x"))
    img = dataclasses.replace(Image.from_array(data, base.grid), mask=mask)
    net = tiny_net(2, 3, 2)
    kw = dict(roi_size=(16, 16), output="probabilities", device="cpu", sink=MemorySink(32))
    fast = segment(img, net, **kw)
    assert fast.stats["windows_skipped"] > 0
    assert all(row >= 32 for row, _ in reads)  # rows 0..31: only fully masked windows
    full = segment(img, net, skip="none", **kw).image.compute()
    np.testing.assert_allclose(fast.image.compute()[:, 48:], full[:, 48:], atol=1e-6)
    assert np.isnan(fast.image.compute()[:, :48]).all()
