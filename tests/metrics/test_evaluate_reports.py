"""`geomed-seg evaluate` output says what it is (issue 14 item 6): class and region names,
a self-describing confusion matrix, -o format from the suffix, one CSV row per case plus the
mean, and prediction labels outside the classes refused (or counted with --allow-unknown).
CSV is read back with the csv module, JSON with json, scores checked with scikit-learn."""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, f1_score

from geomed_seg.cli import main
from geomed_seg.core.image import Image
from geomed_seg.core.labels import ClassInfo
from geomed_seg.io.registry import write_image
from geomed_seg.metrics.evaluate import evaluate
from geomed_seg.metrics.overlap import OUTSIDE_COLUMN
from tests.metrics.data import brats_case
from tests.metrics.test_evaluate import TRANSFORM, UTM, _labels, _write_tif


def _pair(tmp_path, pred, ref, **kw):
    return _write_tif(tmp_path / "p.tif", pred, **kw), _write_tif(tmp_path / "r.tif", ref)


def test_unknown_prediction_label_is_exit_2_naming_file_value_count(tmp_path, capsys):
    pred, ref = _labels()
    pred[:3, :4] = 7  # 12 samples of a label that is no class
    p, r = _pair(tmp_path, pred, ref)
    args = ["evaluate", str(p), str(r), "--classes", "0:bg,1:water,2:urban"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert str(p) in err and "7 (12 samples)" in err and "--allow-unknown" in err


def test_allow_unknown_warns_and_counts_them_as_misses(tmp_path, capsys):
    pred, ref = _labels()
    pred[:3, :4] = 7
    p, r = _pair(tmp_path, pred, ref)
    args = ["evaluate", str(p), str(r), "--classes", "0:bg,1:water,2:urban", "--format", "json"]
    assert main([*args, "--allow-unknown"]) == 0
    captured = capsys.readouterr()
    assert "WARNING" in captured.err and "7 (12 samples)" in captured.err
    data = json.loads(captured.out)
    cm = data["overlap"]["confusion"]
    assert cm["rows"] == "reference class" and cm["columns"] == "predicted class"
    assert cm["row_labels"] == ["0 bg", "1 water", "2 urban"]
    assert cm["column_labels"] == ["0 bg", "1 water", "2 urban", OUTSIDE_COLUMN]
    assert cm["prediction_unknown_labels"] == {"7": 12}
    want = confusion_matrix(ref.ravel(), pred.ravel(), labels=[0, 1, 2, 7])
    np.testing.assert_array_equal(np.asarray(cm["counts"]), want[:3])
    dice = [c["dice"] for c in data["overlap"]["classes"]]
    np.testing.assert_allclose(dice, f1_score(ref.ravel(), pred.ravel(), labels=[0, 1, 2],
                                              average=None), atol=1e-9)  # fmt: skip


def test_prediction_nodata_is_a_miss_not_an_unknown_label(tmp_path):
    pred, ref = _labels()
    pred[:2, :5] = 255
    p, r = _pair(tmp_path, pred, ref, nodata=255)
    res = evaluate(p, r, classes="0:bg,1:water,2:urban")
    assert res.overlap.nodata_pred == 10 and res.overlap.outside_pred == {}
    assert res.overlap.confusion[:, -1].sum() == 10
    assert [c.index for c in res.overlap.classes] == [0, 1, 2]


def test_class_names_from_the_reference_file(tmp_path):
    pred, ref = _labels()
    classes = [ClassInfo(0, "land"), ClassInfo(1, "water"), ClassInfo(2, "urban")]
    from geomed_seg.core.grid import GeoGrid

    grid = GeoGrid(UTM, TRANSFORM, ref.shape)
    r = write_image(Image.from_array(ref[None], grid), tmp_path / "r.tif", classes=classes)
    p = _write_tif(tmp_path / "p.tif", pred)
    res = evaluate(p, r)
    assert res.overlap.names == ["land", "water", "urban"]
    assert "class table of the reference" in res.classes_source
    pred[0, 0] = 9
    p = _write_tif(tmp_path / "p9.tif", pred)
    with pytest.raises(ValueError, match="9 \\(1 samples\\)"):
        evaluate(p, r)


def _nifti(path, vol, spacing_xyz=(1.0, 1.0, 1.0)):
    nib.save(nib.Nifti1Image(vol.transpose(2, 1, 0), np.diag([*spacing_xyz, 1.0])), path)
    return path


def test_brats_table_names_classes_regions_and_units(tmp_path, capsys):
    pred, ref = brats_case("several", (24, 32, 32))
    p = _nifti(tmp_path / "p.nii.gz", pred, (1.0, 1.0, 3.0))
    r = _nifti(tmp_path / "r.nii.gz", ref, (1.0, 1.0, 3.0))
    assert main(["evaluate", str(p), str(r), "--brats", "2023"]) == 0
    out = capsys.readouterr().out
    for name in ("background", "NETC", "SNFH", "ET", "WT", "TC"):
        assert name in out
    assert "global_hd95 (mm)" in out and "dataset card brats2023" in out
    assert "region WT: Dice" in out and f"reference: {r}" in out
    assert "spacing(x,y,z)=(1, 1, 3) mm" in out
    pred[0, 0, 0] = 4  # not a 2023 label
    _nifti(tmp_path / "p.nii.gz", pred, (1.0, 1.0, 3.0))
    assert main(["evaluate", str(p), str(r), "--brats", "2023"]) == 2
    assert "4 (1 samples)" in capsys.readouterr().err


@pytest.fixture
def folders(tmp_path):
    pdir, rdir = tmp_path / "pred", tmp_path / "ref"
    pdir.mkdir()
    rdir.mkdir()
    for i in range(3):
        pred, ref = _labels(seed=i)
        _write_tif(rdir / f"case{i}.tif", ref)
        _write_tif(pdir / f"case{i}.tif", pred)
    return pdir, rdir


def test_folder_csv_one_row_per_case_plus_mean(folders, tmp_path, capsys):
    pdir, rdir = folders
    out = tmp_path / "per_case.csv"
    assert main(["evaluate", str(pdir), str(rdir), "--classes", "0:bg,1:water,2:urban",
                 "-o", str(out)]) == 0  # fmt: skip
    rows = list(csv.DictReader(out.read_text().splitlines()))
    assert [r["case"] for r in rows] == ["case0", "case1", "case2", "mean"]
    dices = []
    for i, row in enumerate(rows[:3]):
        pred, ref = _labels(seed=i)
        want = f1_score(ref.ravel(), pred.ravel(), average=None)[1]
        assert float(row["class_water_dice"]) == pytest.approx(want, abs=1e-12)
        dices.append(want)
    assert float(rows[3]["class_water_dice"]) == pytest.approx(np.mean(dices), abs=1e-12)
    assert rows[3]["n_cases"] == "3"
    assert (tmp_path / "per_case_summary.csv").exists()
    assert "case0" in capsys.readouterr().out  # the terminal still gets the table


def test_output_format_follows_the_suffix(folders, tmp_path, capsys):
    pdir, rdir = folders
    j = tmp_path / "r.json"
    assert main(["evaluate", str(pdir), str(rdir), "-o", str(j)]) == 0
    data = json.loads(j.read_text())
    assert {"per_case", "cases", "summary", "missing_pred"} <= set(data)
    assert [r["case"] for r in data["per_case"]][-1] == "mean"
    md = tmp_path / "r.md"
    assert main(["evaluate", str(pdir), str(rdir), "-o", str(md)]) == 0
    text = md.read_text()
    assert text.startswith("**per case") and "| mean |" in text
    p, r = pdir / "case0.tif", rdir / "case0.tif"
    one = tmp_path / "one.csv"
    assert main(["evaluate", str(p), str(r), "-o", str(one)]) == 0
    rows = list(csv.DictReader(one.read_text().splitlines()))
    assert [row["name"] for row in rows] == ["0", "1", "2"]
    capsys.readouterr()
    assert (
        main(["evaluate", str(p), str(r), "-o", str(tmp_path / "x.csv"), "--format", "json"]) == 2
    )
    assert "contradicts" in capsys.readouterr().err
    assert main(["evaluate", str(p), str(r), "-o", str(tmp_path / "x.xlsx")]) == 2
