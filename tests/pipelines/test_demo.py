"""`geomed-seg demo` end to end, with the BraTS phantom's scores recomputed from the files
with nibabel + NumPy (independent of our metrics code)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pyogrio
import pytest
import rasterio

from geomed_seg.cli import main


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--output", str(out)]) == 0
    return out


def test_demo_writes_everything(demo_out, capsys):
    for rel in ("flood/labels.tif", "flood/polygons.gpkg", "flood/quicklook.png",
                "flood/report.md", "flood/run.json", "brats/labels.nii.gz",
                "brats/quicklook.png", "brats/report.json",
                "conversions/landsat_cog.tif", "flood/labels.qml", "brats/labels.label.txt",
                "brats/labels.ctbl"):  # fmt: skip
        assert (demo_out / rel).exists(), rel
    with rasterio.open(demo_out / "conversions" / "landsat_cog.tif") as src:
        # no band_1..6 invented: the ETM+ bands the sample's notice lists, from the sensor card
        assert src.descriptions == ("blue", "green", "red", "nir", "swir1", "swir2")
    assert pyogrio.read_info(demo_out / "flood" / "polygons.gpkg")["features"] > 0


def test_demo_brats_scores_match_numpy(demo_out):
    report = json.loads((demo_out / "brats" / "report.json").read_text())
    assert report["synthetic"] is True
    assert "SYNTHETIC" in (demo_out / "brats" / "report.md").read_text()
    pred = np.asarray(nib.load(demo_out / "brats" / "labels.nii.gz").dataobj)
    truth_file = next((demo_out / "brats_phantom").glob("*-seg.nii.gz"))
    truth = np.asarray(nib.load(truth_file).dataobj)
    assert pred.shape == truth.shape
    wt_p, wt_t = pred > 0, truth > 0
    dice = 2 * (wt_p & wt_t).sum() / (wt_p.sum() + wt_t.sum())
    wt = next(m for m in report["metrics"] if m["what"] == "region WT")
    assert wt["dice"] == pytest.approx(dice, abs=1e-6)
    assert dice > 0.5  # the baseline (or model) finds the synthetic tumour
    zooms = nib.load(demo_out / "brats" / "labels.nii.gz").header.get_zooms()
    for row in report["classes"]:
        n = int((pred == row["index"]).sum())
        assert row["volume_ml"] == pytest.approx(n * float(np.prod(zooms)) / 1000)
