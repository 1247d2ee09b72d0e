"""3D background skipping on zero-background (skull-stripped) volumes, against MONAI's full run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.inferers import sliding_window_inference as monai_swi

from geomed_seg.core.grid import VoxelGrid
from geomed_seg.core.image import Image
from geomed_seg.inference.segment import segment
from geomed_seg.inference.sinks import MemorySink
from tests.inference.conftest import tiny_net


class Counting(torch.nn.Module):
    """Wraps a net and counts the windows it is run on."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net, self.windows = net, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.windows += x.shape[0]
        return self.net(x)


def _brain(shape=(40, 64, 56), seed=0) -> tuple[np.ndarray, np.ndarray]:
    """2-channel volume: positive values inside a small off-centre ellipsoid, exact 0 outside."""
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    inside = ((z - 14) / 10.0) ** 2 + ((y - 20) / 14.0) ** 2 + ((x - 18) / 12.0) ** 2 <= 1
    rng = np.random.default_rng(seed)
    vol = np.zeros((2, *shape), np.float32)
    vol[:, inside] = rng.gamma(4.0, 0.25, size=(2, int(inside.sum()))).astype(np.float32) + 0.01
    return vol, inside


@pytest.mark.parametrize("device_blend", [False, True])
def test_zero_background_windows_are_not_run_and_brain_labels_equal_monai(device_blend):
    vol, inside = _brain()
    img = Image.from_array(vol, VoxelGrid(np.diag([1.0, 1.0, 1.0, 1.0]), vol.shape[1:]),
                           chunks=(2, 20, 32, 28))  # fmt: skip
    net = Counting(tiny_net(3, 2, 3, seed=5))
    roi = (16, 16, 16)
    res = segment(img, net, roi_size=roi, overlap=0.5, mode="gaussian", device="cpu",
                  sink=MemorySink(chunk=16), batch_size=4, device_blend=device_blend)  # fmt: skip
    st = res.stats
    assert st["windows_skipped"] > st["windows_total"] // 3  # most of the box is background
    # + 1: a bare module is probed once for its number of output channels
    assert net.windows - 1 == st["windows_run"] == st["windows_total"] - st["windows_skipped"]

    with torch.no_grad():
        ref = monai_swi(torch.from_numpy(vol)[None], roi, 4,
                        lambda t: torch.softmax(net.net(t), 1), overlap=0.5, mode="gaussian")  # fmt: skip
    probs = ref[0].numpy()
    labels = res.image.compute()[0]
    top2 = np.sort(probs, axis=0)[-2:]
    clear = inside & ((top2[1] - top2[0]) > 1e-4)
    assert clear.sum() > 0.9 * inside.sum()
    np.testing.assert_array_equal(labels[clear], probs.argmax(0)[clear])
    # voxels that only skipped windows cover are background
    far = np.zeros_like(inside)
    far[:, 44:, :] = True
    assert (labels[far] == 0).all()


def test_skip_none_runs_every_window():
    vol, _ = _brain(shape=(20, 32, 32))
    img = Image.from_array(vol, VoxelGrid(np.eye(4), vol.shape[1:]))
    net = Counting(tiny_net(3, 2, 2))
    res = segment(img, net, roi_size=(16, 16, 16), overlap=0.5, device="cpu", skip="none")
    assert net.windows - 1 == res.stats["windows_total"] == res.stats["windows_run"]
