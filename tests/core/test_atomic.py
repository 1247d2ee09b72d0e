"""Atomic outputs: nothing partial, nothing overwritten unless asked."""

from __future__ import annotations

import pytest

from geomed_seg.errors import OutputExistsError, WriteError
from geomed_seg.io.atomic import atomic_output


def test_success_renames_and_keeps_suffix(tmp_path):
    out = tmp_path / "labels.nii.gz"
    with atomic_output(out) as tmp:
        assert tmp.parent == tmp_path and tmp.name.endswith(".nii.gz") and tmp != out
        tmp.write_bytes(b"x")
    assert out.read_bytes() == b"x"
    assert [p.name for p in tmp_path.iterdir()] == ["labels.nii.gz"]


def test_failure_leaves_nothing(tmp_path):
    out = tmp_path / "a.tif"
    with pytest.raises(RuntimeError), atomic_output(out) as tmp:
        tmp.write_bytes(b"partial")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_existing_output_not_clobbered(tmp_path):
    out = tmp_path / "a.tif"
    out.write_bytes(b"user data")
    with pytest.raises(OutputExistsError, match="a.tif"):
        with atomic_output(out):
            pass
    assert out.read_bytes() == b"user data"
    with atomic_output(out, overwrite=True) as tmp:
        tmp.write_bytes(b"new")
    assert out.read_bytes() == b"new"


def test_folder_outputs_replace_atomically(tmp_path):
    out = tmp_path / "store.zarr"
    out.mkdir()
    (out / "old").write_text("1")
    with atomic_output(out, overwrite=True) as tmp:
        tmp.mkdir()
        (tmp / "new").write_text("2")
    assert [p.name for p in out.iterdir()] == ["new"]
    assert [p.name for p in tmp_path.iterdir()] == ["store.zarr"]


def test_missing_parent_and_no_output(tmp_path):
    with pytest.raises(WriteError, match="does not exist"):
        with atomic_output(tmp_path / "nope" / "a.tif"):
            pass
    with pytest.raises(WriteError, match="no output"):
        with atomic_output(tmp_path / "a.tif"):
            pass
