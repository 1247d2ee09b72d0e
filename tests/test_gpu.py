"""GPU checks (skipped without CUDA): the engine on CUDA agrees with CPU and with MONAI.

Run on a GPU machine with ``pytest -m gpu tests/test_gpu.py``; recorded in
benchmarks/RESULTS.md. Without a GPU every test here is skipped, never silently passed.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from affine import Affine

from geomed_seg.core import GeoGrid, Image, VoxelGrid
from geomed_seg.inference.segment import segment
from geomed_seg.inference.sliding import sliding_window_inference

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _net2d(in_ch: int = 3, classes: int = 3) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(in_ch, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, classes, 3, padding=1),
    ).eval()


def _net3d(in_ch: int = 2, classes: int = 3) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv3d(in_ch, 4, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv3d(4, classes, 3, padding=1),
    ).eval()


@pytest.mark.parametrize("mode", ["gaussian", "constant"])
def test_sliding_window_cuda_equals_monai_cuda(mode):
    from monai.inferers import sliding_window_inference as monai_swi

    net = _net2d().cuda()
    x = torch.rand(1, 3, 301, 257, device="cuda")
    with torch.inference_mode():
        ours = sliding_window_inference(x, (64, 64), 4, net, overlap=0.5, mode=mode)
        ref = monai_swi(x, (64, 64), 4, net, overlap=0.5, mode=mode)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)


def test_segment_cuda_fp32_equals_cpu_probabilities():
    rng = np.random.default_rng(0)
    arr = rng.random((3, 300, 260), dtype=np.float32)
    img = Image.from_array(
        arr, GeoGrid(None, Affine(10, 0, 0, 0, -10, 0), (300, 260)), chunks=(3, 128, 128)
    )
    net = _net2d()
    kw = dict(roi_size=(64, 64), overlap=0.25, mode="gaussian", output="probabilities", amp=False)
    cpu = segment(img, net, device="cpu", **kw).image.compute()
    gpu = segment(img, net, device="cuda", **kw)
    assert gpu.stats["device"].startswith("cuda")
    np.testing.assert_allclose(gpu.image.compute(), cpu, atol=1e-4)


def test_segment_cuda_amp_labels_agree_with_cpu():
    rng = np.random.default_rng(1)
    arr = rng.random((2, 48, 64, 64), dtype=np.float32)
    img = Image.from_array(arr, VoxelGrid(np.diag([1.0, 1.0, 2.0, 1.0]), (48, 64, 64)))
    net = _net3d()
    kw = dict(roi_size=(32, 32, 32), overlap=0.25, skip="none")
    cpu = segment(img, net, device="cpu", amp=False, **kw).image.compute()
    amp = segment(img, net, device="cuda", amp=True, **kw).image.compute()
    assert (cpu == amp).mean() > 0.99  # fp16/bf16 may flip near-ties only


def _card(in_ch: int = 3, classes: int = 3):
    from geomed_seg.models import ModelCard

    return ModelCard(
        name="t", architecture="custom", spatial_dims=2, in_channels=in_ch, roi_size=[64, 64],
        classes=[{"index": i, "name": f"c{i}"} for i in range(classes)], nodata_label=255,
        normalisation={"type": "meanstd", "mean": [1000.0], "std": [300.0]},
    )  # fmt: skip


class _Loaded:
    def __init__(self, module, card):
        self.module, self.card = module, card


def _uint16_raster(seed: int = 0) -> Image:
    rng = np.random.default_rng(seed)
    arr = rng.normal(1000, 300, (3, 300, 260)).clip(1, 4000).astype(np.uint16)
    arr[:, :40] = 0  # nodata strip: skipped windows
    grid = GeoGrid(None, Affine(10, 0, 0, 0, -10, 0), (300, 260))
    return Image.from_array(arr, grid, nodata=0, chunks=(3, 128, 128))


@pytest.mark.parametrize("channels_last", [True, False])
def test_device_path_cuda_fp32_equals_cpu_host_path(channels_last):
    """Raw uint16 windows staged through pinned buffers, normalised, blended and reduced on
    the GPU give the CPU host path's probabilities and labels."""
    img = _uint16_raster()
    kw = dict(roi_size=(64, 64), overlap=0.25, mode="gaussian", amp="off", batch_size=5)
    for output in ("probabilities", "labels"):
        cpu = segment(img, _Loaded(_net2d(), _card()), device="cpu", device_blend=False,
                      output=output, **kw)  # fmt: skip
        gpu = segment(img, _Loaded(_net2d(), _card()), device="cuda", device_blend=True,
                      channels_last=channels_last, output=output, **kw)  # fmt: skip
        assert gpu.stats["device_blend"] is True
        a, b = gpu.image.compute(), cpu.image.compute()
        if output == "probabilities":
            np.testing.assert_allclose(a, b, atol=1e-4, equal_nan=True)
        else:
            assert (a == b).mean() > 0.999


def test_device_path_fp16_labels_and_auto_batch_size():
    img = _uint16_raster(1)
    kw = dict(roi_size=(64, 64), overlap=0.25)
    cpu = segment(img, _Loaded(_net2d(), _card()), device="cpu", amp="off", **kw)
    gpu = segment(img, _Loaded(_net2d(), _card()), device="cuda", amp="fp16", batch_size=None, **kw)
    assert gpu.stats["batch_size"] >= 1
    assert (cpu.image.compute() == gpu.image.compute()).mean() > 0.99


def test_device_path_3d_background_skip_on_cuda():
    vol = np.zeros((2, 64, 96, 96), np.float32)
    vol[:, 10:30, 10:40, 10:40] = np.random.default_rng(2).random((2, 20, 30, 30)) + 0.1
    img = Image.from_array(vol, VoxelGrid(np.eye(4), (64, 96, 96)))
    net = _net3d()
    kw = dict(roi_size=(32, 32, 32), overlap=0.5, amp="off")
    cpu = segment(img, net, device="cpu", device_blend=False, **kw)
    gpu = segment(img, net.cuda(), device="cuda", device_blend=True, **kw)
    assert gpu.stats["windows_skipped"] == cpu.stats["windows_skipped"] > 0
    assert (cpu.image.compute() == gpu.image.compute()).mean() > 0.999
