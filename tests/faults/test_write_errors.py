"""Disk full and I/O errors while writing: one WriteError line naming the output, nothing left.

Three ways to make the fault, from most to least real:

- a real tmpfs of a few KiB, mounted in a private user+mount namespace (``unshare -rm``),
  so GDAL, pyogrio, zarr, nibabel and matplotlib meet a real ENOSPC (skipped where user
  namespaces are not allowed);
- ``RLIMIT_FSIZE`` in a subprocess: every write past the limit fails with EFBIG in
  whichever library is writing (works on any Linux);
- the ``GEOMED_SEG_FAULTS`` hook in the write path for errno values a test cannot make as
  root (EROFS, EACCES, ENOTDIR, EEXIST).
"""

from __future__ import annotations

import functools
import resource
import shutil
import subprocess

import pytest

from tests.faults.conftest import (
    assert_one_line_error,
    cli_cmd,
    leftovers,
    run_subprocess,
    snapshot,
    subprocess_env,
)


@functools.lru_cache(maxsize=1)
def _can_mount_tmpfs() -> bool:
    if shutil.which("unshare") is None:
        return False
    try:
        r = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=16k t /mnt"],
                           capture_output=True, timeout=20)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


def _on_tmpfs(size_kb: int, mount: str, *args: str) -> subprocess.CompletedProcess:
    """Run the CLI with ``mount`` a fresh tmpfs of ``size_kb``; print its listing after."""
    cmd = " ".join(f"'{a}'" for a in cli_cmd(*args))
    script = (f"mount -t tmpfs -o size={size_kb}k tmpfs '{mount}' && {{ {cmd}; echo rc=$?; "
              f"find '{mount}' -mindepth 1 | sort | sed 's/^/left: /'; }}")  # fmt: skip
    return subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True,
                          text=True, timeout=240, env=subprocess_env())  # fmt: skip


@pytest.mark.slow
@pytest.mark.skipif(not _can_mount_tmpfs(), reason="cannot mount a tmpfs in a user namespace")
@pytest.mark.parametrize("size_kb", [8, 24, 48])
def test_run_on_a_full_tmpfs(hostile, tmp_path, size_kb):
    mount = tmp_path / "mnt"
    mount.mkdir()
    r = _on_tmpfs(size_kb, str(mount), "run", "flood", "--input", hostile / "scene.tif",
                  "-o", mount / "out")  # fmt: skip
    lines = r.stdout.splitlines()
    rc = next(ln for ln in lines if ln.startswith("rc="))
    left = [ln for ln in lines if ln.startswith("left: ")]
    errs = [ln for ln in r.stderr.splitlines() if ln.strip()]
    if rc == "rc=0":  # it fitted: then the whole set is there
        assert any(ln.endswith("/out/run.json") for ln in left), left
        return
    assert rc == "rc=2", (rc, r.stderr[-2000:])
    assert "Traceback" not in r.stderr and len(errs) == 1, errs
    assert "no space left on device" in errs[0], errs
    assert left == [], left


@pytest.mark.skipif(not _can_mount_tmpfs(), reason="cannot mount a tmpfs in a user namespace")
def test_convert_zarr_on_a_full_tmpfs(hostile, tmp_path):
    mount = tmp_path / "mnt"
    mount.mkdir()
    r = _on_tmpfs(8, str(mount), "convert", hostile / "scene.tif", mount / "o.zarr")
    errs = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert "rc=2" in r.stdout, (r.stdout, r.stderr[-2000:])
    assert len(errs) == 1 and "no space left" in errs[0] and "o.zarr" in errs[0], errs
    assert "left: " not in r.stdout


def _limited(limit: int):
    def pre() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return pre


@pytest.mark.parametrize(
    "suffix", [".tif", pytest.param(".zarr", marks=pytest.mark.slow), ".nii.gz"]
)
def test_file_size_limit_while_converting(hostile, tmp_path, suffix):
    from tests.faults import corpus

    src = corpus.nifti(tmp_path, "vol.nii.gz") if suffix == ".nii.gz" else hostile / "scene.tif"
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.run(cli_cmd("convert", src, out / f"o{suffix}"), capture_output=True,
                          text=True, timeout=180, env=subprocess_env(),
                          preexec_fn=_limited(2048))  # fmt: skip
    errs = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(errs) == 1 and "Traceback" not in proc.stderr, errs
    assert f"o{suffix}" in errs[0] and "too large" in errs[0], errs
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("code,words", [("EROFS", "read-only"), ("EACCES", "permission"),
                                        ("ENOTDIR", "not a folder"), ("EEXIST", "appeared"),
                                        pytest.param("ENOSPC", "no space",
                                                     marks=pytest.mark.slow)])  # fmt: skip
def test_errno_hook_in_a_run(cli, hostile, tmp_path, monkeypatch, code, words):
    from geomed_seg.io import faults

    out = tmp_path / "out"
    assert cli("run", "flood", "--input", hostile / "scene.tif", "-o", out, "-q").code == 0
    before = snapshot(out)
    monkeypatch.setenv("GEOMED_SEG_FAULTS", f"commit:quicklook.png:errno={code}")
    faults._rules.cache_clear()
    try:
        res = cli("run", "flood", "--input", hostile / "scene.tif", "-o", out, "--overwrite",
                  "--set", "postprocess.min_object_size=0")  # fmt: skip
    finally:
        monkeypatch.delenv("GEOMED_SEG_FAULTS")
        faults._rules.cache_clear()
    assert_one_line_error(res, match=words)
    assert "quicklook.png" in res.lines[0]
    assert snapshot(out) == before  # the previous complete set, untouched
    assert leftovers(out) == []


@pytest.mark.parametrize("name", ["polygons.gpkg", "labels.tif", "run.json"])
def test_enospc_in_each_writer_of_a_run(cli, hostile, tmp_path, monkeypatch, name):
    from geomed_seg.io import faults

    monkeypatch.setenv("GEOMED_SEG_FAULTS", f"commit:{name}:errno=ENOSPC")
    faults._rules.cache_clear()
    try:
        res = cli("run", "flood", "--input", hostile / "scene.tif", "-o", tmp_path / "out")
    finally:
        monkeypatch.delenv("GEOMED_SEG_FAULTS")
        faults._rules.cache_clear()
    assert_one_line_error(res, match="no space left")
    assert name in res.lines[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_window_write_failure_in_segment(hostile, tmp_path):
    res = run_subprocess("segment", hostile / "scene.tif", "-m", "checkpoints/water_unet",
                         "-o", tmp_path / "s.tif", "-q",
                         GEOMED_SEG_FAULTS="window:s.tif:errno=ENOSPC")  # fmt: skip
    assert_one_line_error(res, match="no space left")
    assert list(tmp_path.iterdir()) == []
