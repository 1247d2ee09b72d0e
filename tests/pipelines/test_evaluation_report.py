"""Pipeline reports say what they were evaluated against (issue 14 item 6): report.md names the
reference, the metric set with HD95/NSD in mm, the grid and the input; run.json records the
input actually used (``--input``), not the YAML default; the demo headline names its class."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch

from geomed_seg.cli import main
from geomed_seg.pipelines.runner import run_pipeline
from tests.metrics.data import tumour

LANDSAT = "tests/data/landsat7_olinda_L7_ETMs.tif"


def _case(folder, spacing_xyz=(3.0, 3.0, 3.0), shape=(24, 32, 32)):
    """A tiny four-sequence case (z, y, x) with a bright T2-FLAIR tumour, and its truth."""
    rng = np.random.default_rng(0)
    truth = tumour(shape, (12, 16, 15), (6, 8, 7), rng)
    brain = np.zeros(shape, np.float32)
    brain[2:-2, 3:-3, 3:-3] = 100.0
    folder.mkdir(parents=True)
    aff = np.diag([*spacing_xyz, 1.0])
    for name in ("t1n", "t1c", "t2w", "t2f"):
        vol = brain + (200.0 * (truth > 0) if name == "t2f" else 0.0)
        vol = vol + rng.normal(0, 1, shape).astype(np.float32)
        nib.save(nib.Nifti1Image(vol.transpose(2, 1, 0), aff), folder / f"c-{name}.nii.gz")
    ref = folder.parent / "truth.nii.gz"
    nib.save(nib.Nifti1Image(truth.transpose(2, 1, 0), aff), ref)
    return ref


def test_brats_run_report_names_reference_metrics_grid_and_input(tmp_path, capsys):
    case = tmp_path / "my_case"
    ref = _case(case)
    out = tmp_path / "out"
    args = ["run", "pipelines/brats.yaml", "--input", str(case), "-o", str(out),
            "--set", "model.method=t2f_otsu", "--set", f"evaluation.reference={ref}"]  # fmt: skip
    assert main(args) == 0
    md = (out / "report.md").read_text()
    assert f"evaluated against: `{ref}`" in md
    assert "HD95 in mm" in md and "| HD95 (mm) | NSD |" in md
    assert "spacing(x,y,z)=(3, 3, 3) mm" in md  # the grid
    assert "- class names from: t2f_otsu (its classes)" in md
    assert str(case / "c-t2f.nii.gz") in md  # the input
    report = json.loads((out / "report.json").read_text())
    wt = next(m for m in report["metrics"] if m["what"] == "region WT")
    assert wt["distance_unit"] == "mm" and wt["hd95"] is not None
    assert f"| region WT | {wt['dice']:.4f} | – | {wt['hd95']:.4f} |" in md
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["input"]["folder"] == str(case)  # not the YAML's "case"
    assert sorted(run["inputs"]) == sorted(str(p) for p in case.glob("*.nii.gz"))
    assert list(run["reference"]) == [str(ref)]
    assert "evaluated against" in capsys.readouterr().out


def test_flood_run_json_records_the_given_input(tmp_path):
    scene = tmp_path / "scene copy.tif"
    shutil.copy(LANDSAT, scene)
    sets = ["model.method=ndwi_otsu", "outputs.polygons=false", "outputs.quicklook=false"]
    first = run_pipeline("flood", input=scene, output=tmp_path / "a", overrides=sets)
    run = json.loads((tmp_path / "a" / "run.json").read_text())
    assert run["config"]["input"]["path"] == str(scene)
    assert list(run["inputs"]) == [str(scene)]
    # evaluated against its own labels: every class named, grid and reference in report.md
    ref = first.outputs["labels"]
    again = run_pipeline("flood", input=scene, output=tmp_path / "b",
                         overrides=[*sets, f"evaluation.reference={ref}"])  # fmt: skip
    names = {m["name"]: m["dice"] for m in again.report["metrics"] if m["kind"] == "class"}
    assert names == {"land": 1.0, "water": 1.0}
    md = (tmp_path / "b" / "report.md").read_text()
    assert f"evaluated against: `{ref}`" in md and "EPSG" in md
    assert "- class names from: ndwi_otsu (its classes)" in md


@pytest.mark.slow
def test_demo_flood_headline_names_water(tmp_path, monkeypatch):
    """The U-Net headline was the first class whose name *ends* in "water" ("not water")."""
    from geomed_seg import demo
    from geomed_seg.models.card import ModelCard
    from geomed_seg.models.checkpoint import save_checkpoint
    from geomed_seg.models.registry import build_model

    torch.manual_seed(0)
    torch.set_num_threads(1)
    spec = dict(
        name="water_unet", architecture="monai.UNet", spatial_dims=2, in_channels=6,
        architecture_kwargs={"spatial_dims": 2, "channels": [4, 8], "strides": [2],
                             "num_res_units": 0},
        classes=[{"index": 0, "name": "not water"}, {"index": 1, "name": "water"}],
        roi_size=[64, 64],
    )  # fmt: skip
    module = build_model("monai.UNet", 6, 2, **spec["architecture_kwargs"])
    (tmp_path / "ck").mkdir()
    save_checkpoint(module, ModelCard(**spec), tmp_path / "ck" / "water_unet")
    monkeypatch.setattr(demo, "CHECKPOINTS", tmp_path / "ck")
    res = demo.DemoResult()
    demo._flood(res, demo.SAMPLES, tmp_path / "out", True)
    report = json.loads((tmp_path / "out" / "flood_unet" / "report.json").read_text())
    dice = {m["name"]: m["dice"] for m in report["metrics"] if m["kind"] == "class"}
    assert f"water Dice {dice['water']:.3f}" in res.facts["flood (U-Net)"]
    assert dice["water"] != pytest.approx(dice["not water"], abs=1e-3)
