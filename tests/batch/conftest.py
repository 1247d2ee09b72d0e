"""Fixtures for the batch tests."""

from __future__ import annotations

import os
import signal
import stat
from pathlib import Path

import pytest

from tests.batch.data import FAST, cut_tiles


@pytest.fixture
def tiles(tmp_path, landsat_path) -> list[Path]:
    """Six 116 x 175 tiles of the Landsat scene in ``tmp_path/tiles``."""
    return cut_tiles(landsat_path, tmp_path / "tiles")


@pytest.fixture
def fast() -> tuple[str, ...]:
    """Config overrides that keep test runs fast."""
    return FAST


# fake batch-system commands for dask-jobqueue (tests/batch/test_cluster.py, test_cli.py)
SUBMIT = r"""#!/usr/bin/env bash
# fake {submit}: copy the job script (the caller deletes it) and run it in the background
set -e
dir="{queue}"
exec 9> "$dir/.lock"
flock 9  # dask-jobqueue submits jobs concurrently: number them one at a time
n=$(ls "$dir" | grep -c '\.sh$' || true)
cp "$1" "$dir/job-$n.sh"
flock -u 9
setsid nohup bash "$dir/job-$n.sh" > "$dir/job-$n.log" 2>&1 < /dev/null &
echo $! >> "$dir/pids"
echo "{echo}"
"""
CANCEL = r"""#!/usr/bin/env bash
# fake {cancel}: terminate the job's process group
id="${{1%%.*}}"
echo "$id" >> "{queue}/cancelled"
kill -TERM -- "-$id" 2>/dev/null || true
"""
QUEUES = {
    "slurm": ("sbatch", "scancel", "Submitted batch job $!"),
    "pbs": ("qsub", "qdel", "$!.server"),
}


@pytest.fixture
def fake_queue(tmp_path, monkeypatch):
    """Install fake submit/cancel commands for a queue system; kill leftovers afterwards."""
    queue = tmp_path / "queue"
    queue.mkdir()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")

    def install(name: str) -> Path:
        submit, cancel, echo = QUEUES[name]
        for cmd, text in ((submit, SUBMIT.format(submit=submit, queue=queue, echo=echo)),
                          (cancel, CANCEL.format(cancel=cancel, queue=queue))):  # fmt: skip
            path = bin_dir / cmd
            path.write_text(text)
            path.chmod(path.stat().st_mode | stat.S_IXUSR)
        return queue

    yield install
    for pid in queue_pids(queue):
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def queue_pids(queue: Path) -> list[int]:
    """Process groups (job ids) that the fake submit command started."""
    f = queue / "pids"
    return [int(x) for x in f.read_text().split()] if f.exists() else []
