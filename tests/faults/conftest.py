"""Fault-suite helpers: run the CLI in-process or as a subprocess, and check what it left.

Every fault case asserts the same contract: the expected exit code, exactly ONE line on
stderr (``error: ...``), no traceback, no temporary file or stage left anywhere under the
output folder, and every file that was there before unchanged (no clobbering).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.faults import corpus

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str

    @property
    def lines(self) -> list[str]:
        return [ln for ln in self.stderr.splitlines() if ln.strip()]


def snapshot(folder: Path) -> dict[str, str]:
    """Return ``{relative path: sha256 or 'dir'}`` of everything under ``folder`` (hidden too)."""
    if not folder.exists():
        return {}
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def leftovers(folder: Path) -> list[str]:
    """Hidden temporary names (``.x.tmp-*``, ``.x.part-*``, stages) under ``folder``."""
    if not folder.exists():
        return []
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob(".*"))


def assert_one_line_error(res: Outcome, code: int = 2, match: str | None = None) -> None:
    """Exit ``code``, one ``error:`` line on stderr, no traceback."""
    assert res.code == code, (res.code, res.stderr[-3000:])
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    assert len(res.lines) == 1, res.lines
    assert res.lines[0].startswith("error: "), res.lines
    if match is not None:
        assert match.lower() in res.lines[0].lower(), res.lines[0]


@pytest.fixture()
def cli(capsys):
    """Run ``geomed-seg ARGS`` in this process (same CLI path); return an :class:`Outcome`."""
    from geomed_seg.cli import main

    def run(*args: str | os.PathLike) -> Outcome:
        capsys.readouterr()
        code = main([str(a) for a in args])
        out = capsys.readouterr()
        return Outcome(code, out.out, out.err)

    return run


def subprocess_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def cli_cmd(*args: str | os.PathLike) -> list[str]:
    return [sys.executable, "-m", "geomed_seg.cli", *map(str, args)]


def run_subprocess(*args: str | os.PathLike, timeout: float = 180, **env: str) -> Outcome:
    proc = subprocess.run(cli_cmd(*args), capture_output=True, text=True, timeout=timeout,
                          env=subprocess_env(**env))  # fmt: skip
    return Outcome(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture(scope="session")
def hostile(tmp_path_factory) -> Path:
    """The generated corpus (see corpus.py), written once per session."""
    folder = tmp_path_factory.mktemp("corpus")
    corpus.main(str(folder))
    return folder
