"""``geomed-seg batch`` from the command line: exit codes, resume, kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from geomed_seg.batch.journal import file_sha256
from geomed_seg.cli import main
from tests.batch.data import cut_tiles

EXE = Path(sys.executable).parent / "geomed-seg"


def _labels(out: Path) -> dict[str, str]:
    return {p.parent.name: file_sha256(p) for p in sorted((out / "tiles").glob("*/labels.tif"))}


def _sets(fast):
    return [a for o in fast for a in ("--set", o)]


def test_cli_partial_failure_exits_1(tiles, tmp_path, fast, capsys):
    (tmp_path / "tiles" / "zz_corrupt.tif").write_text("not a tiff")
    out = tmp_path / "out"
    args = ["batch", "flood", "--inputs", str(tmp_path / "tiles" / "*.tif"), "-o", str(out)]
    rc = main([*args, *_sets(fast), "--retries", "0"])
    text = capsys.readouterr().out
    assert rc == 1
    assert "6 done" in text and "1 failed" in text and "failed: zz_corrupt" in text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["failed_tiles"].keys() == {"zz_corrupt"} and summary["done"] == 6
    # rerun: the done tiles are skipped, the corrupt one tried again, still exit 1
    rc = main([*args, *_sets(fast), "--retries", "0", "--quiet"])
    assert rc == 1 and capsys.readouterr().out == ""
    assert json.loads((out / "summary.json").read_text())["skipped"] == 6


def test_cli_changed_config_exit_2(tiles, tmp_path, fast, capsys):
    lst = tmp_path / "files.txt"
    lst.write_text("\n".join(str(p) for p in tiles[:2]))
    base = ["batch", "flood", "--list", str(lst), "-o", str(tmp_path / "out"), *_sets(fast)]
    assert main([*base, "-q"]) == 0
    changed = [*base, "--set", "postprocess.min_object_size=0", "-q"]
    assert main(changed) == 2
    assert "--restart" in capsys.readouterr().err
    assert main([*changed, "--restart"]) == 0


@pytest.mark.slow
def test_kill_9_then_resume_is_identical(tmp_path, landsat_path, fast):
    tiles = cut_tiles(landsat_path, tmp_path / "tiles", rows=4, cols=4)
    args = [str(EXE), "batch", "flood", "--inputs", str(tmp_path / "tiles" / "*.tif"),
            *_sets(fast), "--workers", "1", "-q"]  # fmt: skip
    full = tmp_path / "full"
    subprocess.run([*args, "-o", str(full)], check=True, timeout=300)
    out = tmp_path / "out"
    proc = subprocess.Popen([*args, "-o", str(out)], start_new_session=True)
    journal = out / "journal.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # kill once some but not all tiles are journalled
        if journal.exists() and journal.read_text().count('"type": "tile"') >= 3:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the batch and its worker processes
    proc.wait()
    done_before = journal.read_text().count('"type": "tile"')
    assert 3 <= done_before < len(tiles)
    subprocess.run([*args, "-o", str(out)], check=True, timeout=300)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["skipped"] >= done_before and summary["done"] + summary["skipped"] == 16
    assert _labels(out) == _labels(full) and len(_labels(full)) == 16
    assert not list((out / "tiles").glob(".*"))
