"""``sliding_window_inference`` equals MONAI 1.6's on 2D/3D, both blend modes, odd sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.inferers import sliding_window_inference as monai_swi

from geomed_seg.inference.sliding import sliding_window_inference


def _net(ndim: int, cin: int = 2, cout: int = 3) -> torch.nn.Module:
    torch.manual_seed(0)
    conv = torch.nn.Conv2d if ndim == 2 else torch.nn.Conv3d
    return torch.nn.Sequential(conv(cin, 4, 3, padding=1), torch.nn.Tanh(), conv(4, cout, 1)).eval()


CASES_2D = [((37, 53), (16, 16)), ((10, 7), (16, 16)), ((33, 20), (32, -1)), ((64, 48), (16, 24))]
CASES_3D = [((11, 13, 9), (6, 6, 6)), ((4, 17, 7), (6, 8, 8))]


@pytest.mark.parametrize("mode", ["constant", "gaussian"])
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5])
@pytest.mark.parametrize(("shape", "roi"), CASES_2D + CASES_3D)
def test_equals_monai(shape, roi, overlap, mode):
    net = _net(len(shape))
    x = torch.from_numpy(np.random.default_rng(1).random((2, 2, *shape), dtype=np.float32))
    torch.set_num_threads(1)
    with torch.no_grad():
        ref = monai_swi(x, roi, 3, net, overlap=overlap, mode=mode)
        ours = sliding_window_inference(x, roi, 3, net, overlap=overlap, mode=mode)
    assert ours.shape == ref.shape == (2, 3, *shape)
    np.testing.assert_allclose(ours.numpy(), ref.numpy(), atol=1e-4, rtol=0)


def test_equals_monai_padding_modes_and_sigma():
    net = _net(2)
    x = torch.from_numpy(np.random.default_rng(2).random((1, 2, 9, 30), dtype=np.float32))
    with torch.no_grad():
        for pm, cval in (("constant", 0.5), ("replicate", 0.0), ("reflect", 0.0)):
            kw = dict(
                overlap=0.4, mode="gaussian", sigma_scale=(0.2, 0.1), padding_mode=pm, cval=cval
            )
            ref = monai_swi(x, (16, 12), 2, net, **kw)
            ours = sliding_window_inference(x, (16, 12), 2, net, **kw)
            np.testing.assert_allclose(ours.numpy(), ref.numpy(), atol=1e-4, rtol=0)


@pytest.mark.parametrize("mode", ["constant", "gaussian"])
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5, 0.75])
@pytest.mark.parametrize("shape", [(29, 31), (11, 40, 13)])
def test_blending_invariance(shape, overlap, mode):
    x = torch.from_numpy(np.random.default_rng(3).random((1, 1, *shape), dtype=np.float32))
    roi = (12,) * len(shape)
    out = sliding_window_inference(x, roi, 4, lambda t: 2 * t, overlap=overlap, mode=mode)
    np.testing.assert_allclose(out.numpy(), 2 * x.numpy(), rtol=1e-5, atol=1e-6)


def test_bad_predictor_shape_raises():
    # (t[..., :4, :4] used to be the bad output here; it is a valid half-scale output now,
    # blended as MONAI does: see test_sliding_monai_cases.py::test_half_scale_output_equals_monai)
    x = torch.zeros((1, 1, 20, 20))
    with pytest.raises(ValueError, match="roi"):
        sliding_window_inference(x, 8, 1, lambda t: t[..., 0, :])
