"""SIGTERM, SIGHUP and SIGINT mid-write: the output folder is left as it was.

Each case starts the real CLI in a subprocess with a ``pause`` fault point at the moment
named (a window half-written into the GeoTIFF, or an output complete under its temporary
name while the others wait in the stage), waits until the temporary files exist, sends the
signal, and lists the folder: fresh stays empty, an earlier complete set stays byte-equal.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.faults.conftest import cli_cmd, run_subprocess, snapshot, subprocess_env

CODES = {signal.SIGTERM: 143, signal.SIGHUP: 129, signal.SIGINT: 130}


def _signal_mid_write(args, folder: Path, fault: str, sig: int, wait_for: str) -> tuple:
    """Start ``geomed-seg ARGS``; when ``wait_for`` (glob under folder) exists, send ``sig``."""
    proc = subprocess.Popen(cli_cmd(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=subprocess_env(GEOMED_SEG_FAULTS=fault))  # fmt: skip
    deadline = time.monotonic() + 240
    try:
        while not list(folder.glob(wait_for)):
            if proc.poll() is not None:
                out, err = proc.communicate()
                pytest.fail(
                    f"finished before the fault point (rc {proc.returncode}): {err[-2000:]}"
                )
            if time.monotonic() > deadline:
                pytest.fail("the fault point was never reached")
            time.sleep(0.05)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, [ln for ln in err.splitlines() if ln.strip()]


def _check(rc, lines, sig):
    assert rc == CODES[sig], (rc, lines)
    assert len(lines) == 1 and lines[0].startswith("error: interrupted by "), lines
    assert signal.Signals(sig).name in lines[0]


@pytest.mark.parametrize(
    "sig", [signal.SIGTERM, pytest.param(signal.SIGHUP, marks=pytest.mark.slow)]
)
def test_run_killed_while_staging_leaves_previous_set(hostile, tmp_path, sig):
    out = tmp_path / "out"
    assert run_subprocess("run", "flood", "--input", hostile / "scene.tif", "-o", out,
                          "-q").code == 0  # fmt: skip
    before = snapshot(out)
    rc, lines = _signal_mid_write(
        ["run", "flood", "--input", hostile / "scene.tif", "-o", out, "--overwrite", "-q",
         "--set", "postprocess.min_object_size=0"],
        out, "commit:quicklook.png:pause=60", sig, ".geomed-stage-*/.quicklook.tmp-*",
    )  # fmt: skip
    _check(rc, lines, sig)
    assert snapshot(out) == before


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_run_fresh_folder_killed_leaves_nothing(hostile, tmp_path, sig):
    out = tmp_path / "out"
    rc, lines = _signal_mid_write(
        ["run", "flood", "--input", hostile / "scene.tif", "-o", out, "-q"],
        tmp_path, "commit:polygons.gpkg:pause=60", sig, "out/.geomed-stage-*/.polygons.tmp-*",
    )  # fmt: skip
    _check(rc, lines, sig)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "suffix,wait",
    [(".tif", ".o.part-*"), pytest.param(".zarr", ".o.tmp-*", marks=pytest.mark.slow)],
)
def test_convert_killed_mid_write(hostile, tmp_path, suffix, wait):
    fault = "window:o.tif:pause=60" if suffix == ".tif" else "commit:o.zarr:pause=60"
    rc, lines = _signal_mid_write(["convert", hostile / "scene.tif", tmp_path / f"o{suffix}"],
                                  tmp_path, fault, signal.SIGTERM, wait)  # fmt: skip
    _check(rc, lines, signal.SIGTERM)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_segment_killed_mid_write_keeps_old_output(hostile, tmp_path):
    out = tmp_path / "s.tif"
    args = ["segment", hostile / "scene.tif", "-m", "checkpoints/water_unet", "-o", out, "-q"]
    assert run_subprocess(*args).code == 0
    before = snapshot(tmp_path)
    rc, lines = _signal_mid_write([*args, "--overwrite"], tmp_path, "window:s.tif:pause=60",
                                  signal.SIGTERM, ".s.part-*")  # fmt: skip
    _check(rc, lines, signal.SIGTERM)
    assert snapshot(tmp_path) == before


@pytest.mark.slow
def test_batch_killed_mid_tile_leaves_no_temporaries(hostile, tmp_path):
    tiles = tmp_path / "tiles_in"
    tiles.mkdir()
    for k in range(2):
        (tiles / f"t{k}.tif").write_bytes((hostile / "scene.tif").read_bytes())
    out = tmp_path / "out"
    rc, lines = _signal_mid_write(
        ["batch", "flood", "--inputs", str(tiles / "*.tif"), "-o", out, "--workers", "1",
         "--quiet"],
        out, "commit:quicklook.png:pause=120", signal.SIGTERM, "tiles/.*/.geomed-stage-*/*",
    )  # fmt: skip
    _check(rc, lines, signal.SIGTERM)
    assert [p for p in out.rglob(".*") if p.name != ".journal.lock"] == []
    assert not list((out / "tiles").glob("t*")) if (out / "tiles").exists() else True
