"""The README runs top to bottom (issue #17): every ```bash/```sh block, in a copy of the repo.

The copy holds the repo's files (tracked and untracked-but-not-ignored: what a fresh clone
plus the working tree's new files would have), with ``.venv`` linked to the virtualenv that
runs the tests and ``PYTHONPATH`` on the copy, so the commands run this working tree's code.
Lines are run as written, with two exceptions, both about set-up: ``make demo`` runs the
Makefile's demo recipe without re-installing (``make -o .venv/.installed demo``), and
``make test*``/``make lint``/``make bench`` are left out (this test is part of the suite).
Any non-zero exit fails the test with the block, the exit code and the output's tail.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BLOCK = re.compile(r"^```(?:bash|sh)\n(.*?)^```", re.M | re.S)
SKIP = re.compile(r"^\s*make\s+(test|test-all|test-readme|lint|bench)\b")
DEMO = re.compile(r"^(\s*)make\s+demo\b")


def shell_blocks(text: str) -> list[str]:
    """Return the README's bash/sh blocks, with the set-up lines adapted (module docstring)."""
    blocks = []
    for body in BLOCK.findall(text):
        lines = []
        for line in body.splitlines():
            if SKIP.match(line):
                line = f": skipped by tests/test_readme.py: {line.strip()}"
            line = DEMO.sub(r"\1make -o .venv/.installed demo", line)
            lines.append(line)
        blocks.append("\n".join(lines) + "\n")
    return blocks


def test_blocks_are_found_and_adapted():
    blocks = shell_blocks(README.read_text())
    assert len(blocks) >= 5
    text = "\n".join(blocks)
    assert "make -o .venv/.installed demo" in text and "geomed-seg segment" in text
    assert not re.search(r"^\s*make test", text, re.M)
    # no placeholder inputs the repo does not provide (issue #17's list)
    for placeholder in ("dicom_folder/", "case_folder/", "pred.nii.gz", "big.tif",
                        "my_3d_model/", "'tiles/*.tif'", "scene.tif "):  # fmt: skip
        assert placeholder not in text, placeholder


def _repo_files(root: Path) -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root, check=True, capture_output=True,
    ).stdout.decode()  # fmt: skip
    return [f for f in out.split("\0") if f and (root / f).is_file()]


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_readme_runs_top_to_bottom(tmp_path):
    if shutil.which("make") is None or shutil.which("git") is None:
        pytest.skip("make and git are needed to run the README's set-up line")
    copy = tmp_path / "repo"
    for rel in _repo_files(ROOT):
        dst = copy / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, dst)
    (copy / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)
    env = {
        **os.environ,
        "PATH": f"{Path(sys.prefix) / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(copy),
        "MPLBACKEND": "Agg",
    }
    env.pop("VIRTUAL_ENV", None)
    for i, block in enumerate(shell_blocks(README.read_text()), 1):
        proc = subprocess.run(
            ["bash", "-e", "-o", "pipefail", "-c", block],
            cwd=copy, env=env, capture_output=True, text=True, timeout=1800,
        )  # fmt: skip
        tail = (proc.stdout + proc.stderr)[-4000:]
        assert proc.returncode == 0, f"README block {i} exited {proc.returncode}:\n{block}\n{tail}"
