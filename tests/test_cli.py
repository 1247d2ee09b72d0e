"""CLI behaviour: ``info``/``convert`` on real data, and every bad input → exit 2 + one line."""

from __future__ import annotations

import gzip
import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import rasterio

from geomed_seg.cli import main


def _run(capsys, *args):
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_version(capsys):
    rc, out, _ = _run(capsys, "--version")
    assert rc == 0 and out.startswith("geomed-seg ")


def test_info_json_landsat_matches_rasterio(capsys, landsat_path):
    rc, out, err = _run(capsys, "info", landsat_path, "--json", "--stats")
    assert rc == 0, err
    info = json.loads(out)
    with rasterio.open(landsat_path) as ds:
        assert info["shape"] == [ds.count, ds.height, ds.width]
        assert info["crs"]["epsg"] == ds.crs.to_epsg() == 31985
        assert info["transform_gdal"] == list(ds.transform.to_gdal())
        band1 = ds.read(1)
    assert info["stats"][0]["min"] == band1.min() and info["stats"][0]["max"] == band1.max()
    assert info["stats"][0]["mean"] == pytest.approx(band1.mean())


def test_info_table_mni(capsys, mni_t1_path):
    rc, out, err = _run(capsys, "info", mni_t1_path)
    assert rc == 0, err
    assert "RAS" in out and "189" in out and "197" in out


def test_convert_nifti_zarr_nifti_keeps_header_geometry(capsys, mni_t1_path, tmp_path):
    z = tmp_path / "t1.zarr"
    back = tmp_path / "t1.nii.gz"
    assert _run(capsys, "convert", mni_t1_path, z, "-q")[0] == 0
    assert _run(capsys, "convert", z, back, "-q")[0] == 0
    a, b = nib.load(mni_t1_path), nib.load(back)
    assert np.array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj))
    for coded in (a.get_qform(coded=True), a.get_sform(coded=True)):
        assert coded[1] is not None
    assert np.array_equal(a.get_qform(coded=True)[0], b.get_qform(coded=True)[0])
    assert a.get_qform(coded=True)[1] == b.get_qform(coded=True)[1]
    assert np.array_equal(a.get_sform(coded=True)[0], b.get_sform(coded=True)[0])
    assert a.get_sform(coded=True)[1] == b.get_sform(coded=True)[1]
    # a second convert onto the same output refuses, then --overwrite replaces
    rc, _, err = _run(capsys, "convert", z, back)
    assert rc == 2 and "exists" in err and "--overwrite" in err
    assert _run(capsys, "convert", z, back, "--overwrite", "-q")[0] == 0


def test_convert_geotiff_to_cog_keeps_geometry(capsys, landsat_path, tmp_path):
    out = tmp_path / "scene.tif"
    assert _run(capsys, "convert", landsat_path, out, "-q")[0] == 0
    with rasterio.open(landsat_path) as a, rasterio.open(out) as b:
        assert a.crs == b.crs and a.transform == b.transform
        assert np.array_equal(a.read(), b.read())
        assert b.profile["tiled"]
    from rio_cogeo.cogeo import cog_validate

    is_valid, errors, _ = cog_validate(str(out))
    assert is_valid, errors


def _bad_inputs(tmp_path, landsat_path, mni_t1_path):
    cases = {}
    cases["missing"] = tmp_path / "nope.tif"
    empty = tmp_path / "empty.nii"
    empty.write_bytes(b"")
    cases["zero-byte"] = empty
    trunc_tif = tmp_path / "trunc.tif"
    data = landsat_path.read_bytes()
    trunc_tif.write_bytes(data[: len(data) // 2])
    cases["truncated tif"] = trunc_tif
    trunc_nii = tmp_path / "trunc.nii.gz"
    raw = mni_t1_path.read_bytes()
    trunc_nii.write_bytes(raw[: len(raw) // 3])
    cases["truncated nifti"] = trunc_nii
    text = tmp_path / "notes.tif"
    text.write_text("this is not a GeoTIFF\n")
    cases["text named tif"] = text
    folder = tmp_path / "no_dicom"
    folder.mkdir()
    (folder / "readme.txt").write_text("nothing here")
    cases["folder without DICOM"] = folder
    unknown = tmp_path / "image.xyz"
    unknown.write_bytes(b"\x00\x01\x02\x03" * 100)
    cases["unknown suffix"] = unknown
    return cases


@pytest.mark.parametrize(
    "case",
    [
        "missing",
        "zero-byte",
        "truncated tif",
        "truncated nifti",
        "text named tif",
        "folder without DICOM",
        "unknown suffix",
    ],
)
def test_bad_input_exit_2_one_line(capsys, tmp_path, landsat_path, mni_t1_path, case):
    path = _bad_inputs(tmp_path, landsat_path, mni_t1_path)[case]
    rc, out, err = _run(capsys, "info", path, "--stats")
    assert rc == 2, (case, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert path.name in lines[0]
    assert "Traceback" not in err


def test_bad_convert_leaves_no_output(capsys, tmp_path, landsat_path):
    text = tmp_path / "broken.tif"
    text.write_text("not a tiff")
    out = tmp_path / "out.zarr"
    rc, _, err = _run(capsys, "convert", text, out)
    assert rc == 2 and not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.tif"]


def test_mixed_dicom_series_lists_them(capsys, tmp_path):
    from pydicom.data import get_testdata_file

    folder = tmp_path / "mixed"
    folder.mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), folder / "a.dcm")
    shutil.copy(get_testdata_file("MR_small.dcm"), folder / "b.dcm")
    # info lists the series (issue #17: was exit 2); a command that needs one refuses
    rc, out, err = _run(capsys, "info", folder)
    assert rc == 0, err
    assert "2 DICOM series" in out and "CT" in out and "MR" in out
    rc, _, err = _run(capsys, "convert", folder, tmp_path / "x.nii.gz")
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "series" in err.lower() and "mixed" in err


def test_debug_shows_traceback(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "nope.nii.gz"
    res = subprocess.run(
        [sys.executable, "-m", "geomed_seg.cli", "--debug", "info", str(path)],
        capture_output=True,
        text=True,
    )
    assert res.returncode != 0 and "Traceback" in res.stderr
    res = subprocess.run(
        [sys.executable, "-m", "geomed_seg.cli", "info", str(path)], capture_output=True, text=True
    )
    assert res.returncode == 2 and "Traceback" not in res.stderr and "nope.nii.gz" in res.stderr


def test_gzip_helper_is_not_nifti(capsys, tmp_path):
    path = tmp_path / "thing.nii.gz"
    with gzip.open(path, "wb") as f:
        f.write(b"hello world" * 100)
    rc, _, err = _run(capsys, "info", path)
    assert rc == 2 and "thing.nii.gz" in err


def test_nested_dicom_folder_and_resample_opt_in(capsys, tmp_path):
    """A PACS-style nested export is found; an uneven series needs --resample."""
    import nibabel as nib

    from tests.io.dicom_data import make_series

    nested = tmp_path / "DICOM" / "ST0" / "SE0"
    nested.mkdir(parents=True)
    make_series(nested, shape=(6, 8, 10), spacing=(0.8, 0.8, 2.0), uneven=True)
    rc, _, err = _run(capsys, "info", tmp_path / "DICOM")
    assert rc == 2 and "--resample" in err and len(err.strip().splitlines()) == 1
    out = tmp_path / "ct.nii.gz"
    rc, _, err = _run(capsys, "convert", tmp_path / "DICOM", out, "--resample", "-q")
    assert rc == 0, err
    zooms = nib.load(out).header.get_zooms()
    assert zooms[0] == pytest.approx(0.8) and zooms[1] == pytest.approx(0.8)


def test_resample_refused_for_non_dicom(capsys, landsat_path):
    rc, _, err = _run(capsys, "info", landsat_path, "--resample")
    assert rc == 2 and "DICOM" in err
