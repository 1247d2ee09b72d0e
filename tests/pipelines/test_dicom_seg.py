"""DICOM SEG output: validated by dicom3tools' dciodvfy, references the source series,
and its frames decode (highdicom) to the label volume on the source slices."""

from __future__ import annotations

import shutil
import subprocess

import highdicom as hd
import numpy as np
import pydicom
import pytest

from geomed_seg.core.labels import ClassInfo
from geomed_seg.io.dicom import open_dicom
from geomed_seg.io.dicom_seg import write_dicom_seg
from geomed_seg.pipelines import run_pipeline
from tests.io.dicom_data import make_series

CLASSES = [ClassInfo(0, "background"), ClassInfo(1, "NETC"), ClassInfo(2, "SNFH"),
           ClassInfo(3, "ET")]  # fmt: skip


def _values(shape=(8, 24, 28)):
    z, y, x = np.indices(shape)
    rng = np.random.default_rng(0)
    v = 10 + rng.integers(0, 5, shape)
    head = ((y - 12) / 10) ** 2 + ((x - 14) / 12) ** 2 < 1
    v[head] = 400 + 200 * (x[head] > 14)
    blob = (z - 4) ** 2 + (y - 12) ** 2 + (x - 10) ** 2 < 9
    v[blob] = 1000
    return v.astype(np.int16), blob


@pytest.fixture()
def series(tmp_path):
    values, blob = _values()
    files, stored = make_series(tmp_path / "series", shape=values.shape, values=values,
                                modality="MR", spacing=(0.9, 0.9, 3.0))  # fmt: skip
    return tmp_path / "series", files, blob


def _labels(img, blob):
    lab = np.zeros(img.spatial_shape, np.uint8)
    lab[blob] = 2
    lab[blob & (np.indices(lab.shape)[2] < 10)] = 3
    return img.with_data(lab[None], attrs={})


def _dciodvfy(path):
    exe = shutil.which("dciodvfy")
    if exe is None:
        pytest.skip("dciodvfy (Debian package dicom3tools) is not installed")
    proc = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)
    errors = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.startswith("Error")]
    return errors, proc.stdout + proc.stderr


def test_seg_references_source_and_decodes_to_labels(series, tmp_path):
    folder, files, blob = series
    img = open_dicom(folder)
    labels = _labels(img, blob)
    path = write_dicom_seg(labels, img.attrs["dicom"], tmp_path / "seg.dcm", classes=CLASSES)
    ds = pydicom.dcmread(path)
    assert ds.Modality == "SEG"
    src_uid = img.attrs["dicom"]["series_uid"]
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == src_uid
    referenced = {
        i.ReferencedSOPInstanceUID
        for i in ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    }
    assert referenced == set(img.attrs["dicom"]["sop_instance_uids"])  # fmt: skip
    assert ds.StudyInstanceUID == img.attrs["dicom"]["study_uid"]
    assert [s.SegmentLabel for s in ds.SegmentSequence] == ["NETC", "SNFH", "ET"]
    seg = hd.seg.segread(path)
    sop_uids = img.attrs["dicom"]["sop_instance_uids"]
    vol = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=sop_uids, combine_segments=True, relabel=False
    )
    # segment numbers 1..3 map back to the class indices 1..3 in z order
    np.testing.assert_array_equal(vol, labels.compute()[0])


def test_seg_validates_with_dciodvfy(series, tmp_path):
    folder, files, blob = series
    img = open_dicom(folder)
    path = write_dicom_seg(_labels(img, blob), img.attrs["dicom"], tmp_path / "seg.dcm",
                           classes=CLASSES)  # fmt: skip
    errors, text = _dciodvfy(path)
    assert not errors, text
    # negative control: the same check flags a SEG with a type 1 attribute removed
    ds = pydicom.dcmread(path)
    del ds.SegmentSequence[0].SegmentLabel
    ds.save_as(tmp_path / "broken.dcm")
    errors, _ = _dciodvfy(tmp_path / "broken.dcm")
    assert any("SegmentLabel" in e for e in errors)


def test_volume_pipeline_on_dicom_writes_seg(series, tmp_path):
    folder, files, blob = series
    cfg = {
        "name": "t2f-dicom",
        "kind": "volume",
        "input": {"path": str(folder), "band_names": ["t2f"]},
        "model": {"method": "t2f_otsu"},
        "outputs": {"quicklook": False},
    }
    run = run_pipeline(cfg, output=tmp_path / "out")
    seg = pydicom.dcmread(run.outputs["DICOM SEG"])
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == open_dicom(folder).attrs[
        "dicom"]["series_uid"]  # fmt: skip
    found = hd.seg.segread(run.outputs["DICOM SEG"]).get_pixels_by_source_instance(
        source_sop_instance_uids=open_dicom(folder).attrs["dicom"]["sop_instance_uids"],
        combine_segments=True,
    )
    assert np.array_equal(found > 0, blob)
    assert (tmp_path / "out" / "labels.nii.gz").exists()
