"""The demo's model branches: with (random-init) `water_unet` and `brats_unet` checkpoints
in place, `run_demo` runs the U-Net flood map and the 3D U-Net BraTS step end to end."""

from __future__ import annotations

import json

import pytest
import rasterio
import torch

from geomed_seg import demo
from geomed_seg.models.card import ModelCard
from geomed_seg.models.checkpoint import save_checkpoint
from geomed_seg.models.registry import build_model

WATER = dict(
    name="water_unet",
    architecture="monai.UNet",
    architecture_kwargs={
        "spatial_dims": 2,
        "channels": [4, 8],
        "strides": [2],
        "num_res_units": 0,
    },  # fmt: skip
    spatial_dims=2,
    in_channels=6,
    classes=[{"index": 0, "name": "land"}, {"index": 1, "name": "water"}],
    roi_size=[64, 64],
)
BRATS = dict(
    name="brats_unet",
    architecture="monai.UNet",
    architecture_kwargs={
        "spatial_dims": 3,
        "channels": [4, 8],
        "strides": [2],
        "num_res_units": 0,
    },  # fmt: skip
    spatial_dims=3,
    in_channels=4,
    band_names=["t1n", "t1c", "t2w", "t2f"],
    classes=[{"index": i, "name": n} for i, n in enumerate(["background", "NETC", "SNFH", "ET"])],
    roi_size=[32, 32, 32],
)


def _save(spec, folder):
    torch.manual_seed(0)
    card = ModelCard(**spec)
    module = build_model(spec["architecture"], spec["in_channels"], len(spec["classes"]),
                         **spec["architecture_kwargs"])  # fmt: skip
    save_checkpoint(module, card, folder / spec["name"])


@pytest.mark.slow
def test_demo_uses_checkpoints_when_present(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    _save(WATER, ckpts)
    _save(BRATS, ckpts)
    monkeypatch.setattr(demo, "CHECKPOINTS", ckpts)
    res = demo.run_demo(tmp_path / "out")
    assert "skipped" not in res.facts["flood (U-Net)"]
    with rasterio.open(res.outputs["flood U-Net labels"]) as lab:
        assert lab.count == 1 and set(lab.colormap(1)) >= {0, 1}
    report = json.loads((tmp_path / "out" / "brats" / "report.json").read_text())
    assert report["method"] == "checkpoint:brats_unet"
    assert report["engine"]["windows_total"] >= 1
    assert {m["what"] for m in report["metrics"]} >= {"region WT", "region TC", "region ET"}
