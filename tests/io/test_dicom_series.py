"""DICOM series listing and ``--series`` choice (issue #17).

The listing is checked against pydicom reading every file itself (independent grouping by
SeriesInstanceUID), on a generated multi-series folder and on pydicom's own test folders
(real CR/CT/MR exams with localizers beside the volumes).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pydicom
import pytest
from typer.testing import CliRunner

from geomed_seg import cli
from geomed_seg.errors import InvalidInputError
from geomed_seg.io.dicom import list_series, open_dicom
from tests.io.dicom_data import make_series

PYDICOM_DIRS = Path(pydicom.__file__).parent / "data" / "test_files" / "dicomdirtests"


def _truth(folder: Path) -> dict[str, dict]:
    """Group the image files under ``folder`` with pydicom alone: uid -> facts."""
    out: dict[str, dict] = defaultdict(lambda: {"files": 0})
    for p in sorted(folder.rglob("*")):
        if not p.is_file():
            continue
        try:
            ds = pydicom.dcmread(p, stop_before_pixels=True)
        except pydicom.errors.InvalidDicomError:
            continue
        if "Rows" not in ds:
            continue
        row = out[str(ds.SeriesInstanceUID)]
        row["files"] += 1
        row.update(number=ds.get("SeriesNumber"), modality=ds.Modality,
                   description=str(ds.get("SeriesDescription", "")).strip())  # fmt: skip
    return dict(out)


@pytest.fixture
def exam(tmp_path: Path) -> Path:
    """Five series: numbers 3, 1, 2, 2 (UIDs ...9 and ...10: numeric order) and none."""
    root = tmp_path / "exam"
    make_series(root / "a", shape=(5, 8, 10), series_uid="1.2.826.0.1.77", description="CT",
                series_number=3)  # fmt: skip
    make_series(root / "b", shape=(1, 8, 10), series_uid="1.2.826.0.1.5",
                description="CT localizer", series_number=1)  # fmt: skip
    make_series(root / "c", shape=(3, 8, 10), series_uid="1.2.826.0.1.10",
                description="Bone kernel", series_number=2)  # fmt: skip
    make_series(root / "d", shape=(2, 8, 10), series_uid="1.2.826.0.1.9",
                description="Soft kernel", series_number=2)  # fmt: skip
    make_series(root / "e", shape=(4, 8, 10), series_uid="1.2.826.0.1.3", description="",
                series_number=None, modality="MR")  # fmt: skip
    return root


def test_listing_order_and_facts_match_pydicom(exam: Path) -> None:
    listing = list_series(exam)
    truth = _truth(exam)
    assert [s.uid for s in listing] == [
        "1.2.826.0.1.3",  # no SeriesNumber: first, as 0
        "1.2.826.0.1.5",  # number 1
        "1.2.826.0.1.9",  # number 2, UID component 9 < 10 (numbers, not text)
        "1.2.826.0.1.10",
        "1.2.826.0.1.77",  # number 3
    ]
    assert [s.index for s in listing] == [1, 2, 3, 4, 5]
    for s in listing:
        t = truth[s.uid]
        assert (s.files, s.slices) == (t["files"], t["files"])
        assert s.modality == t["modality"] and s.description == t["description"]
        assert s.number == (None if t["number"] is None else int(t["number"]))


def test_choice_by_index_uid_and_description(exam: Path) -> None:
    listing = list_series(exam)
    for s in listing:  # the index opens the series listed at that index
        assert open_dicom(exam, series=s.index).attrs["dicom"]["series_uid"] == s.uid
        assert open_dicom(exam, series=s.uid).attrs["dicom"]["series_uid"] == s.uid
    # an exact description wins over the substring it is part of; case-insensitive
    assert open_dicom(exam, series="ct").attrs["dicom"]["series_uid"] == "1.2.826.0.1.77"
    assert open_dicom(exam, series="LOCAL").attrs["dicom"]["series_uid"] == "1.2.826.0.1.5"
    assert open_dicom(exam, series="bone").grid.shape == (3, 8, 10)


def test_ambiguous_choice_lists_only_the_candidates(exam: Path) -> None:
    with pytest.raises(InvalidInputError, match="fits 2 series") as err:
        open_dicom(exam, series="kernel")
    msg = str(err.value)
    assert "1.2.826.0.1.9" in msg and "1.2.826.0.1.10" in msg
    assert "1.2.826.0.1.77" not in msg and "localizer" not in msg


def test_no_match_lists_every_series(exam: Path) -> None:
    for choice in ("DWI", "6", "0"):
        with pytest.raises(InvalidInputError, match="matches none") as err:
            open_dicom(exam, series=choice)
        assert all(s.uid in str(err.value) for s in list_series(exam))


def test_info_lists_series_table_and_json(exam: Path) -> None:
    cli._register()
    runner = CliRunner()
    result = runner.invoke(cli.app, ["info", str(exam), "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["series"]
    assert [r["uid"] for r in rows] == [s.uid for s in list_series(exam)]
    assert rows[4] == {"index": 5, "number": 3, "uid": "1.2.826.0.1.77", "modality": "CT",
                       "description": "CT", "slices": 5, "files": 5}  # fmt: skip
    table = runner.invoke(cli.app, ["info", str(exam)], env={"COLUMNS": "200"})
    assert table.exit_code == 0, table.output
    assert "5 DICOM series" in table.stdout and "Soft kernel" in table.stdout
    one = runner.invoke(cli.app, ["info", str(exam), "--series", "soft", "--json"])
    assert one.exit_code == 0, one.output
    assert json.loads(one.stdout)["shape"][1] == 2  # (channel, z, y, x): its 2 slices


@pytest.mark.skipif(not PYDICOM_DIRS.is_dir(), reason="pydicom's test folders not installed")
@pytest.mark.parametrize("exam_id", ["77654033", "98892001", "98892003"])
def test_pydicom_exams_listing_matches_pydicom(exam_id: str) -> None:
    folder = PYDICOM_DIRS / exam_id
    listing = list_series(folder)
    truth = _truth(folder)
    assert sorted(s.uid for s in listing) == sorted(truth)
    keys = [(s.number or 0, tuple(int(p) for p in s.uid.split("."))) for s in listing]
    assert keys == sorted(keys)
    for s in listing:
        assert s.slices == truth[s.uid]["files"] and s.modality == truth[s.uid]["modality"]


@pytest.mark.skipif(not PYDICOM_DIRS.is_dir(), reason="pydicom's test folders not installed")
def test_pydicom_ct_chosen_by_description_not_the_scout() -> None:
    """98892001: a 2-image CT scout and a 5-slice CT; the description picks the CT."""
    folder = PYDICOM_DIRS / "98892001"
    image = open_dicom(folder, series="smartscore")
    files = sorted(p for p in (folder / "CT5N").iterdir())
    ref = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert image.grid.shape == (len(files), ref.Rows, ref.Columns)
    assert image.attrs["dicom"]["series_uid"] == ref.SeriesInstanceUID
    with pytest.raises(InvalidInputError, match="2 DICOM series"):
        open_dicom(folder)
