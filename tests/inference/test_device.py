"""The device path on CPU: normalisation, model, blending and labels on torch tensors.

Same code as on CUDA (only the transfer differs), so these CPU tests cover it. References:
MONAI's ``sliding_window_inference`` (probabilities), the card's numpy normalisation and
numpy's argmax, and the host (numpy) blend of the same engine.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.inferers import sliding_window_inference as monai_swi

from geomed_seg.core.image import Image
from geomed_seg.errors import InvalidInputError
from geomed_seg.inference.device import DeviceModel, amp_dtype, auto_batch_size, torch_normaliser
from geomed_seg.inference.device_blend import channel_argmax
from geomed_seg.inference.segment import segment
from geomed_seg.inference.sinks import MemorySink
from geomed_seg.models.card import ModelCard
from tests.inference.conftest import raster, tiny_net, volume


def _monai_probs(x: np.ndarray, net, roi, overlap, mode, act=lambda t: torch.softmax(t, 1)):
    with torch.no_grad():
        out = monai_swi(
            torch.from_numpy(x)[None], roi, 3, lambda t: act(net(t)), overlap=overlap, mode=mode
        )
    return out[0].numpy()


class _Loaded:
    def __init__(self, module, card):
        self.module, self.card = module, card


def _card(classes, norm=None, **kw) -> ModelCard:
    return ModelCard(
        name="t", architecture="custom", spatial_dims=kw.pop("dims", 2), in_channels=3,
        roi_size=kw.pop("roi", [24, 24]), classes=[{"index": i, "name": f"c{i}"} for i in classes],
        normalisation=norm or {"type": "none"}, **kw,
    )  # fmt: skip


@pytest.mark.parametrize(("overlap", "mode"), [(0.25, "gaussian"), (0.5, "constant")])
@pytest.mark.parametrize("channels_last", [True, False])
def test_device_blend_raster_equals_monai(overlap, mode, channels_last):
    img = raster()
    net = tiny_net(2, 3, 4)
    res = segment(
        img, net, roi_size=(24, 24), overlap=overlap, mode=mode, output="probabilities",
        sink=MemorySink(chunk=20), skip="none", device="cpu", batch_size=3, device_blend=True,
        channels_last=channels_last,
    )  # fmt: skip
    ref = _monai_probs(img.compute(), net, (24, 24), overlap, mode)
    np.testing.assert_allclose(res.image.compute(), ref, atol=1e-4, rtol=0)
    assert res.stats["windows_run"] == res.stats["windows_total"]
    assert all(p.is_contiguous() for p in net.parameters())  # the caller's module is untouched


def test_device_blend_volume_with_padding_equals_monai():
    img = volume()  # z = 13 < roi: padded windows are normalised on the host, then padded
    net = tiny_net(3, 2, 3)
    res = segment(
        img, net, roi_size=(16, 10, 8), overlap=0.25, mode="gaussian", output="probabilities",
        sink=MemorySink(chunk=7), skip="none", device="cpu", device_blend=True,
    )  # fmt: skip
    ref = _monai_probs(img.compute(), net, (16, 10, 8), 0.25, "gaussian")
    np.testing.assert_allclose(res.image.compute(), ref, atol=1e-4, rtol=0)


def test_device_labels_with_card_lut_and_meanstd_equal_monai_argmax():
    img = raster()
    net = tiny_net(2, 3, 3, seed=4)
    card = _card([0, 2, 5], {"type": "meanstd", "mean": [0.5], "std": [0.25]}, mode="constant")
    res = segment(img, _Loaded(net, card), sink=MemorySink(chunk=30), device="cpu",
                  device_blend=True)  # fmt: skip
    x = ((img.compute() - 0.5) / 0.25).astype(np.float32)
    probs = _monai_probs(x, net, (24, 24), 0.25, "constant")
    labels = res.image.compute()[0]
    top2 = np.sort(probs, axis=0)[-2:]
    clear = (top2[1] - top2[0]) > 1e-4
    np.testing.assert_array_equal(labels[clear], np.array([0, 2, 5])[probs.argmax(0)][clear])
    assert res.image.dtype == np.uint8


def test_device_logit_blend_and_sigmoid_threshold_equal_monai():
    img = raster()
    net = tiny_net(2, 3, 1, seed=2)
    card = _card([7], blend="logits", mode="gaussian", nodata_label=255)
    for device_blend in (True, False):
        res = segment(img, _Loaded(net, card), device="cpu", output="probabilities",
                      sink=MemorySink(chunk=25), device_blend=device_blend)  # fmt: skip
        logits = _monai_probs(img.compute(), net, (24, 24), 0.25, "gaussian", act=lambda t: t)
        np.testing.assert_allclose(res.image.compute(), 1 / (1 + np.exp(-logits)), atol=1e-4)
        lab = segment(img, _Loaded(net, card), device="cpu", sink=MemorySink(chunk=25),
                      device_blend=device_blend).image.compute()[0]  # fmt: skip
        p = 1 / (1 + np.exp(-logits[0]))
        clear = np.abs(p - 0.5) > 1e-4
        np.testing.assert_array_equal(lab[clear], np.where(p > 0.5, 7, 0)[clear])


def test_device_and_host_blend_give_identical_labels_with_nodata():
    base = raster(shape=(3, 90, 77))
    x = base.compute()
    x[:, :30, :] = -9999.0
    x[:, 50:53, 10:60] = -9999.0
    img = Image.from_array(x, base.grid, nodata=-9999.0, chunks=(3, 25, 33))
    net = tiny_net(2, 3, 3, seed=1)
    card = _card([0, 1, 2], {"type": "meanstd", "mean": [0.5], "std": [0.3]}, nodata_label=9)
    kw = dict(device="cpu", sink=MemorySink(chunk=16), batch_size=5)
    host = segment(img, _Loaded(net, card), device_blend=False, **kw)
    dev = segment(img, _Loaded(net, card), device_blend=True, **kw)
    np.testing.assert_array_equal(dev.image.compute(), host.image.compute())
    assert dev.stats["windows_skipped"] == host.stats["windows_skipped"] > 0
    assert (dev.image.compute()[0][x[0] == -9999.0] == 9).all()


@pytest.mark.parametrize(
    "norm",
    [
        {"type": "meanstd", "mean": [100.0, 200.0, 300.0], "std": [10.0, 20.0, 30.0]},
        {"type": "scale_range", "a_min": 0, "a_max": 4000, "b_min": -1, "b_max": 1, "clip": True},
        {"type": "nonzero_zscore"},
    ],
)
def test_torch_normaliser_equals_card_normalise(norm):
    from geomed_seg.models.case_stats import CaseStatistics

    card = _card([0, 1], norm)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 5000, (4, 3, 16, 16)).astype(np.uint16)
    x[:, :, :4] = 0
    stats = CaseStatistics((1000.0, 2000.0, 1500.0), (300.0, 250.0, 400.0), (1, 1, 1))
    fn = torch_normaliser(card, stats)
    assert fn is not None
    got = fn(torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(got, card.normalise(x, stats=stats))


def test_percentile_normalisation_stays_on_the_host():
    assert torch_normaliser(_card([0, 1], {"type": "percentile", "low": 1, "high": 99})) is None


def test_channel_argmax_equals_numpy_with_ties_and_nan():
    rng = np.random.default_rng(3)
    p = rng.integers(0, 4, (5, 40, 30)).astype(np.float32)  # many ties
    np.testing.assert_array_equal(channel_argmax(torch.from_numpy(p)).numpy(), p.argmax(0))
    p[2, :5] = -np.inf
    np.testing.assert_array_equal(channel_argmax(torch.from_numpy(p)).numpy(), p.argmax(0))


def test_amp_choices_and_cpu_batch_default():
    cpu = torch.device("cpu")
    assert amp_dtype(True, cpu) is None and amp_dtype("off", cpu) is None
    assert amp_dtype("bf16", cpu) is torch.bfloat16
    with pytest.raises(InvalidInputError, match="fp16"):
        amp_dtype("fp16", cpu)
    with pytest.raises(InvalidInputError, match="amp must be one of"):
        amp_dtype("fp8", cpu)
    model = DeviceModel(tiny_net(2, 3, 2), cpu)
    assert auto_batch_size(model, 3, (32, 32)) >= 1
    res = segment(raster(), tiny_net(2, 3, 2), roi_size=(24, 24), device="cpu", batch_size=None)
    assert res.stats["batch_size"] >= 1


def test_bf16_autocast_on_cpu_agrees_with_fp32():
    img = raster()
    net = tiny_net(2, 3, 3)
    kw = dict(roi_size=(24, 24), device="cpu", sink=MemorySink(chunk=32))
    fp32 = segment(img, net, amp="off", **kw).image.compute()
    bf16 = segment(img, net, amp="bf16", device_blend=True, **kw).image.compute()
    assert (fp32 == bf16).mean() > 0.97  # bf16 keeps 8 bits of mantissa: near-ties flip


def test_compile_flag_wraps_the_module(monkeypatch):
    seen = []

    def fake_compile(module, **kw):
        seen.append(module)
        return module

    monkeypatch.setattr(torch, "compile", fake_compile)
    net = tiny_net(2, 3, 2)
    segment(raster(), net, roi_size=(24, 24), device="cpu", compile=True, device_blend=True)
    assert seen and seen[0] is net


def test_device_accumulator_reuses_chunk_buffers():
    from geomed_seg.inference.device_blend import DeviceChunkAccumulator
    from geomed_seg.inference.plan import importance_map, plan_windows, schedule_chunks

    plan = plan_windows((200, 200), (32, 32), 0.25)
    schedule = schedule_chunks(plan, ((40,) * 5, (40,) * 5))
    w = torch.from_numpy(importance_map((32, 32), "gaussian"))
    acc = DeviceChunkAccumulator(plan, schedule, w, 2, background_skips=False)
    done = 0
    ones = torch.ones((2, 32, 32)) * w
    for i in schedule.order:
        for _, _, a, ws, _ in acc.add(i, np.ones((32, 32), bool), ones):
            torch.testing.assert_close(a / ws, torch.ones_like(a))  # 2 * patch invariance
            acc.release(a, ws)
            done += 1
    assert done == 25
    assert acc.allocated <= acc.peak_open + 1 < 25


@pytest.mark.parametrize("blend", ["logits", "probabilities"])
def test_region_sigmoid_card_with_mirror_axes_equal_on_host_and_device(blend):
    """nnU-Net-style region cards: sigmoid per channel, regions painted in order, TTA on some
    axes; the device path gives the host path's labels and probabilities."""
    img = raster()
    net = tiny_net(2, 3, 3, seed=7)
    card = _card([1, 2, 3], activation="sigmoid", blend=blend, mirror_axes=[1])
    kw = dict(device="cpu", sink=MemorySink(chunk=20), tta=True, batch_size=4)
    for output in ("probabilities", "labels"):
        host = segment(img, _Loaded(net, card), output=output, device_blend=False, **kw)
        dev = segment(img, _Loaded(net, card), output=output, device_blend=True, **kw)
        h, d = host.image.compute(), dev.image.compute()
        if output == "probabilities":
            np.testing.assert_allclose(d, h, atol=1e-5)
        else:
            assert (d == h).mean() > 0.999 and set(np.unique(d)) <= {0, 1, 2, 3}


def test_host_channel_argmax_equals_numpy_argmax():
    from geomed_seg.inference.blend import channel_argmax as host_argmax

    rng = np.random.default_rng(4)
    for k in (2, 3, 7):
        p = rng.integers(0, 3, (k, 33, 17)).astype(np.float32)  # many ties
        p[k - 1, :3] = -np.inf
        np.testing.assert_array_equal(host_argmax(p), p.argmax(0))
