"""BraTS case folders everywhere: the bundled SYNTHETIC case through ``segment`` and ``run``
(nibabel + NumPy Dice against its truth), the bundled model's rescale invariance, and a DICOM
SEG made from four series that references all four (pydicom, highdicom, dciodvfy)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest

from geomed_seg.cli import main
from geomed_seg.pipelines import run_pipeline
from tests.io.dicom_data import make_series

ROOT = Path(__file__).resolve().parents[2]
CASE = ROOT / "tests" / "data" / "brats_case"
TRUTH = next(CASE.glob("*-seg.nii.gz"))
BRATS_UNET = ROOT / "checkpoints" / "brats_unet"
SEQ = ["t1n", "t1c", "t2w", "t2f"]


def _dice(pred: np.ndarray, truth: np.ndarray, labels: list[int]) -> float:
    p, t = np.isin(pred, labels), np.isin(truth, labels)
    return float(2 * (p & t).sum() / (p.sum() + t.sum()))


def test_segment_takes_the_bundled_case_folder(tmp_path):
    out = tmp_path / "labels.nii.gz"
    assert main(["segment", str(CASE), "-m", str(BRATS_UNET), "-o", str(out), "-q",
                 "--device", "cpu"]) == 0  # fmt: skip
    lab, ref = nib.load(out), nib.load(next(CASE.glob("*-t1n.nii.gz")))
    assert lab.shape == ref.shape and np.allclose(lab.affine, ref.affine, atol=1e-6)
    pred, truth = np.asarray(lab.dataobj), np.asarray(nib.load(TRUTH).dataobj)
    for labels in ([1, 2, 3], [1, 3], [3]):  # WT, TC, ET
        assert _dice(pred, truth, labels) > 0.85, labels


def test_segment_case_folder_errors_name_the_folder(tmp_path, capsys):
    folder = tmp_path / "case"
    folder.mkdir()
    for name in SEQ[:3]:
        shutil.copy(next(CASE.glob(f"*-{name}.nii.gz")), folder)
    rc = main(["segment", str(folder), "-m", str(BRATS_UNET), "-o", str(tmp_path / "x.nii.gz")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "no file match t2f" in err[0] and str(folder) in err[0]


def test_run_brats_pipeline_on_the_bundled_case(tmp_path):
    run = run_pipeline("brats", input=CASE, output=tmp_path / "out",
                       overrides=[f"evaluation.reference={TRUTH}", "engine.device=cpu"])  # fmt: skip
    assert run.report["method"] == "checkpoint:brats_unet"
    pred = np.asarray(nib.load(run.outputs["labels"]).dataobj)
    truth = np.asarray(nib.load(TRUTH).dataobj)
    wt = next(m for m in run.report["metrics"] if m["what"] == "region WT")
    assert wt["dice"] == pytest.approx(_dice(pred, truth, [1, 2, 3]), abs=1e-6)
    assert wt["dice"] > 0.9


def _segment(img):
    from geomed_seg.inference.segment import segment
    from geomed_seg.models.checkpoint import load_checkpoint

    model = load_checkpoint(BRATS_UNET)
    return segment(img, model, device="cpu", amp=False, foreground_threshold=0.0).image.compute()[0]


@pytest.fixture(scope="module")
def case_and_labels():
    from geomed_seg.pipelines.inputs import open_case_folder

    img, _ = open_case_folder(CASE, {s: f"*{s}*" for s in SEQ})
    img = img.with_data(img.compute())
    return img, _segment(img)


@pytest.mark.parametrize("factor", [0.5, 3.0])
def test_bundled_model_labels_survive_a_global_intensity_rescale(case_and_labels, factor):
    img, base = case_and_labels
    other = _segment(img.with_data(img.darray * np.float32(factor)))
    assert (other == base).mean() >= 0.99
    tumour = (base > 0) | (other > 0)  # the fraction that matters: the tumour voxels
    assert tumour.sum() > 100 and (other[tumour] == base[tumour]).mean() >= 0.99
    netc = [(lab == 1).sum() for lab in (base, other)]
    assert netc[1] == pytest.approx(netc[0], rel=0.01)


# -- DICOM: one series per sequence --------------------------------------------------------
def _dicom_case(root: Path) -> tuple[Path, dict[str, dict]]:
    """Four MR series (same study, frame of reference and grid) in sub-folders t1n..t2f."""
    z, y, x = np.indices((6, 20, 22))
    head = ((y - 10) / 8) ** 2 + ((x - 11) / 9) ** 2 < 1
    blob = (z - 3) ** 2 + (y - 10) ** 2 + (x - 9) ** 2 < 8
    study, frame = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    series = {}
    for i, name in enumerate(SEQ):
        noise = np.random.default_rng(i).normal(0, 15, head.shape)
        values = 20 + 400 * head + (600 if name == "t2f" else 100 * i) * blob + noise
        values = values.clip(0).astype(np.int16)
        files, _ = make_series(root / name, shape=values.shape, values=values, modality="MR",
                               spacing=(0.9, 0.9, 3.0), seed=i)  # fmt: skip
        for f in files:  # one study, one frame of reference, numbered series
            ds = pydicom.dcmread(f)
            ds.StudyInstanceUID, ds.FrameOfReferenceUID, ds.SeriesNumber = study, frame, i + 1
            ds.SeriesDescription = name
            ds.save_as(f, enforce_file_format=True)
        heads = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
        series[name] = {
            "uid": heads[0].SeriesInstanceUID,
            "sops": {h.SOPInstanceUID for h in heads},
        }
    return root, series


def _dciodvfy_errors(path: Path) -> list[str]:
    exe = shutil.which("dciodvfy")
    if exe is None:
        pytest.skip("dciodvfy (Debian package dicom3tools) is not installed")
    proc = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)
    return [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.startswith("Error")]


def dicom_case_config(folder: Path) -> dict:
    """A T2-FLAIR baseline pipeline over the four DICOM series of :func:`_dicom_case`."""
    return {
        "name": "t2f-dicom-case", "kind": "volume",
        "input": {"folder": str(folder), "sequences": {s: s for s in SEQ}},
        "model": {"method": "t2f_otsu"}, "outputs": {"quicklook": False},
    }  # fmt: skip


def test_seg_from_four_series_references_all_four(tmp_path):
    folder, series = _dicom_case(tmp_path / "case")
    run = run_pipeline(dicom_case_config(folder), output=tmp_path / "out")
    seg = pydicom.dcmread(run.outputs["DICOM SEG"])
    referenced = {
        s.SeriesInstanceUID: {i.ReferencedSOPInstanceUID for i in s.ReferencedInstanceSequence}
        for s in seg.ReferencedSeriesSequence
    }
    assert referenced == {v["uid"]: v["sops"] for v in series.values()}
    sources = {i.ReferencedSOPInstanceUID for i in seg.SourceImageSequence}
    assert sources == set().union(*(v["sops"] for v in series.values()))
    # highdicom reads it back; frames decode onto the first series' slices
    back = hd.seg.segread(run.outputs["DICOM SEG"])
    assert {s.SeriesInstanceUID for s in back.ReferencedSeriesSequence} == {
        v["uid"] for v in series.values()
    }
    assert not _dciodvfy_errors(run.outputs["DICOM SEG"])
