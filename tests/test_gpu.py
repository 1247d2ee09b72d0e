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
