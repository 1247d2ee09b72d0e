"""``evaluate()`` on Images and files, grid checks, resampling, folders and the CLI."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS
from sklearn.metrics import f1_score

from geomed_seg.cli import main
from geomed_seg.core.grid import GeoGrid, VoxelGrid
from geomed_seg.core.image import Image
from geomed_seg.errors import GeometryError
from geomed_seg.metrics.evaluate import evaluate, evaluate_folder
from geomed_seg.metrics.report import FORMATS, render
from tests.metrics.data import brats_case

UTM = CRS.from_epsg(32633)
TRANSFORM = Affine(30.0, 0, 500000.0, 0, -30.0, 4000000.0)


def _labels(shape=(40, 50), seed=0):
    rng = np.random.default_rng(seed)
    ref = np.zeros(shape, np.uint8)
    ref[5:25, 10:35] = 1
    ref[28:36, 3:20] = 2
    pred = ref.copy()
    noise = rng.random(shape) < 0.1
    pred[noise] = rng.integers(0, 3, int(noise.sum()))
    return pred, ref


def _write_tif(path, arr, transform=TRANSFORM, crs=UTM, nodata=None):
    with rasterio.open(
        path, "w", driver="GTiff", width=arr.shape[1], height=arr.shape[0], count=1,
        dtype=arr.dtype, crs=crs, transform=transform, nodata=nodata,
    ) as dst:  # fmt: skip
        dst.write(arr, 1)
    return path


def test_raster_images_areas_in_m2_and_ha():
    pred, ref = _labels()
    grid = GeoGrid(UTM, TRANSFORM, ref.shape)
    res = evaluate(
        Image.from_array(pred, grid), Image.from_array(ref, grid), classes="0:bg,1:water,2:urban"
    )
    assert [c.name for c in res.overlap.classes] == ["bg", "water", "urban"]
    np.testing.assert_allclose(
        [c.dice for c in res.overlap.classes],
        f1_score(ref.ravel(), pred.ravel(), average=None),
        atol=1e-6,
    )
    assert res.overlap.area_unit == "m2"
    assert res.overlap.classes[1].ref_area == pytest.approx(np.count_nonzero(ref == 1) * 900.0)
    assert res.distance_unit == "m" and res.spacing == (30.0, 30.0)
    water = [r for r in res.rows() if r.get("name") == "water"][0]
    assert water["ref_area_ha"] == pytest.approx(water["ref_area"] / 1e4)
    assert water["pred_area_km2"] == pytest.approx(water["pred_area"] / 1e6)


def test_reference_nodata_excluded(tmp_path):
    pred, ref = _labels(seed=1)
    ref = ref.copy()
    ref[:, :4] = 255
    p = _write_tif(tmp_path / "p.tif", pred)
    r = _write_tif(tmp_path / "r.tif", ref, nodata=255)
    res = evaluate(p, r)
    keep = ref != 255
    assert res.overlap.labels == [0, 1, 2]
    np.testing.assert_allclose(
        [c.dice for c in res.overlap.classes],
        f1_score(ref[keep], pred[keep], average=None),
        atol=1e-6,
    )


def test_mismatched_grids_raise_and_cli_exits_2(tmp_path, capsys):
    pred, ref = _labels()
    p = _write_tif(tmp_path / "p.tif", pred, transform=TRANSFORM @ Affine.translation(3, 0))
    r = _write_tif(tmp_path / "r.tif", ref)
    with pytest.raises(GeometryError, match="GeoGrid.*vs.*GeoGrid"):
        evaluate(p, r)
    assert main(["evaluate", str(p), str(r)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "differ" in err[0]


def test_resample_to_reference_raster_uses_nearest(tmp_path):
    pred, ref = _labels()
    # The prediction at half resolution (60 m) covering the same extent: nearest upsampling.
    coarse = pred[::2, ::2]
    p = _write_tif(
        tmp_path / "p.tif", coarse, transform=Affine(60.0, 0, 500000.0, 0, -60.0, 4000000.0)
    )
    r = _write_tif(tmp_path / "r.tif", ref)
    res = evaluate(p, r, resample_to="reference")
    up = np.repeat(np.repeat(coarse, 2, 0), 2, 1)
    np.testing.assert_allclose(
        [c.dice for c in res.overlap.classes],
        f1_score(ref.ravel(), up.ravel(), average=None),
        atol=1e-6,
    )


def test_resample_to_reference_volume_with_simpleitk():
    pred, ref = brats_case("several", shape=(16, 20, 20))
    ref_grid = VoxelGrid(np.diag([1.0, 1.0, 1.0, 1.0]), ref.shape)
    shifted = ref_grid.affine.copy()
    shifted[:3, 3] = (2.0, 0.0, 0.0)  # prediction grid shifted by 2 voxels along x
    pred_img = Image.from_array(pred, VoxelGrid(shifted, pred.shape))
    with pytest.raises(GeometryError):
        evaluate(pred_img, Image.from_array(ref, ref_grid))
    res = evaluate(pred_img, Image.from_array(ref, ref_grid), resample_to="reference")
    moved = np.zeros_like(pred)
    moved[:, :, 2:] = pred[:, :, :-2]
    assert res.overlap.confusion[:, :-1].sum() == ref.size
    np.testing.assert_allclose(
        [c.dice for c in res.overlap.classes],
        f1_score(ref.ravel(), moved.ravel(), labels=res.overlap.labels, average=None),
        atol=1e-6,
    )


def test_volume_surface_and_brats_from_nifti(tmp_path):
    pred, ref = brats_case("false_positive")
    affine = np.diag([1.2, 1.0, 1.5, 1.0])  # spacing (x, y, z)
    for name, vol in (("p", pred), ("r", ref)):
        nib.save(nib.Nifti1Image(vol.transpose(2, 1, 0), affine), tmp_path / f"{name}.nii.gz")
    res = evaluate(
        tmp_path / "p.nii.gz", tmp_path / "r.nii.gz", surface=True, brats="2023", lesion_wise=True
    )
    assert res.spacing == pytest.approx((1.5, 1.0, 1.2))
    assert res.overlap.area_unit == "mm3"
    et = [r for r in res.rows() if r.get("index") == 3][0]
    assert et["ref_area_ml"] == pytest.approx(np.count_nonzero(ref == 3) * 1.8 / 1000)
    assert set(res.surface) == {1, 2, 3}
    assert [r.region for r in res.brats] == ["WT", "TC", "ET"]
    assert res.brats[0].fp == 1
    for fmt in FORMATS:
        assert render(res, fmt)
    json.loads(render(res, "json"))


def test_cli_brats_lesion_wise_json(tmp_path, capsys):
    pred, ref = brats_case("missed")
    for name, vol in (("p", pred), ("r", ref)):
        nib.save(nib.Nifti1Image(vol.transpose(2, 1, 0), np.eye(4)), tmp_path / f"{name}.nii.gz")
    args = ["evaluate", str(tmp_path / "p.nii.gz"), str(tmp_path / "r.nii.gz"), "--format", "json"]
    assert main([*args, "--brats", "2023", "--lesion-wise"]) == 0
    regions = {r["region"]: r for r in json.loads(capsys.readouterr().out)["brats"]}
    assert regions["WT"]["fn"] == 1 and regions["WT"]["tp"] == 1
    assert main([*args, "--brats", "2023", "--lesion-wise", "--brats-protocol", "brats2023"]) == 0
    wt = {r["region"]: r for r in json.loads(capsys.readouterr().out)["brats"]}["WT"]
    assert wt["lesionwise_hd95_mean"] > 100  # the missed lesion scores the 373 mm penalty
    assert main([*args, "--brats", "1999"]) == 2


def test_folders_pair_by_name_and_report_missing(tmp_path, capsys):
    pdir, rdir = tmp_path / "pred", tmp_path / "ref"
    pdir.mkdir()
    rdir.mkdir()
    for i in range(3):
        pred, ref = _labels(seed=i)
        _write_tif(rdir / f"case{i}.tif", ref)
        if i != 2:
            _write_tif(pdir / f"case{i}.tif", pred)
    out = evaluate_folder(pdir, rdir)
    assert sorted(out.cases) == ["case0", "case1"] and out.missing_pred == ["case2"]
    mean = [s for s in out.summary() if s["stat"] == "mean" and s["name"] == "1"][0]
    dices = [out.cases[c].overlap.classes[1].dice for c in ("case0", "case1")]
    assert mean["dice"] == pytest.approx(np.mean(dices))
    csv_path = tmp_path / "cases.csv"
    rc = main(["evaluate", str(pdir), str(rdir), "--format", "csv", "-o", str(csv_path)])
    assert rc == 1  # a missing pair is an error the caller must see
    assert "case0" in csv_path.read_text()
    summary = (tmp_path / "cases_summary.csv").read_text().splitlines()
    assert summary[0].startswith("kind,name,stat,n") and any(",median," in line for line in summary)
    rc = main(["evaluate", str(pdir), str(rdir)])
    assert "MISSING prediction for: case2" in capsys.readouterr().out


def test_cli_single_pair_json_and_plot(tmp_path, capsys):
    pred, ref = _labels()
    p = _write_tif(tmp_path / "p.tif", pred)
    r = _write_tif(tmp_path / "r.tif", ref)
    png = tmp_path / "cm.png"
    rc = main(["evaluate", str(p), str(r), "--format", "json", "--tversky", "0.3,0.7",
               "--classes", "0:bg,1:water,2:urban", "--surface", "--plot", str(png)])  # fmt: skip
    assert rc == 0
    data = json.loads(capsys.readouterr().out)
    water = data["overlap"]["classes"][1]
    assert water["name"] == "water"
    assert water["tversky"] == pytest.approx(
        water["tp"] / (water["tp"] + 0.3 * water["fp"] + 0.7 * water["fn"])
    )
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["evaluate", str(p), str(r), "--tversky", "0.3"]) == 2


def test_evaluate_command_does_not_import_torch():
    import subprocess
    import sys

    code = (
        "import sys; from geomed_seg.cli import _register; _register(); "
        "import geomed_seg.metrics.evaluate, geomed_seg.metrics.report; "
        "assert 'torch' not in sys.modules and 'monai' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_folder_report_states_each_cases_brats_nsd_tolerance(tmp_path):
    """Cases at different spacings: the report gives each its own tolerance (half its smallest
    spacing, brats-evaluation's 0.5 voxel), not the first case's for all."""
    pred, ref = brats_case("false_positive")
    pdir, rdir = tmp_path / "pred", tmp_path / "ref"
    pdir.mkdir()
    rdir.mkdir()
    spacings = {"a_3mm": (3.0, 3.0, 3.0), "b_aniso": (1.5, 2.0, 3.0)}  # (x, y, z) mm
    for case, sp in spacings.items():
        affine = np.diag([*sp, 1.0])
        for folder, vol in ((pdir, pred), (rdir, ref)):
            nib.save(nib.Nifti1Image(vol.transpose(2, 1, 0), affine), folder / f"{case}.nii.gz")
    out = evaluate_folder(pdir, rdir, brats="2023")
    for fmt in ("table", "md"):
        text = render(out, fmt)
        for case, sp in spacings.items():
            tol = 0.5 * min(sp)
            assert any(
                line.startswith(f"metrics ({case}): BraTS") and f"NSD at {tol:g} mm" in line
                for line in text.splitlines()
            ), (case, text)
        assert "metrics: overlap per class" in text  # lines shared by all cases appear once
