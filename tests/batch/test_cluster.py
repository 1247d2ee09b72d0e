"""Cluster backends: machine sizing, external scheduler, SLURM/PBS through fake queue commands.

The SLURM/PBS tests run dask-jobqueue for real against fake ``sbatch``/``scancel`` and
``qsub``/``qdel`` scripts that run the job script in the background, in its own process
group (the "job id" is that group), as a batch system would on a compute node.
"""

from __future__ import annotations

import os
import sys
import time

import dask
import dask_jobqueue  # noqa: F401 - its config defaults must exist before tests set keys
import pytest

from geomed_seg.batch.cluster import MIN_WORKER_MEMORY, open_client, size_local_cluster
from geomed_seg.errors import ConfigError
from tests.batch.conftest import QUEUES
from tests.batch.conftest import queue_pids as _pids

GB = 10**9
GiB = 2**30


# ---------------------------------------------------------------- size_local_cluster
@pytest.mark.parametrize(
    ("cpus", "threads", "workers"), [(2, 1, 2), (2, 2, 1), (16, 1, 16), (16, 2, 8), (3, 2, 1)]
)
def test_size_local_cluster_workers_from_cpus(cpus, threads, workers):
    n, limit = size_local_cluster(cpus, 64 * GiB, threads)
    assert n == workers
    assert limit == int(0.9 * 64 * GiB) // workers


def test_size_local_cluster_explicit_overrides():
    assert size_local_cluster(16, 64 * GiB, 1, workers=3) == (3, int(0.9 * 64 * GiB) // 3)
    assert size_local_cluster(16, 64 * GiB, 2, memory_limit="2GB") == (8, 2 * GB)
    assert size_local_cluster(2, 1 * GiB, 1, workers=5, memory_limit=123456) == (5, 123456)
    # explicit memory is kept even when it oversubscribes the machine
    assert size_local_cluster(2, 1 * GiB, 1, memory_limit="4GiB") == (2, 4 * GiB)


def test_size_local_cluster_tiny_memory():
    # 1 GiB for 16 CPUs: 0.9 GiB // 512 MiB -> 1 worker with all of it, not 16 starving ones
    assert size_local_cluster(16, 1 * GiB, 1) == (1, int(0.9 * GiB))
    assert size_local_cluster(16, 4 * GiB, 1)[0] == int(0.9 * 4 * GiB) // MIN_WORKER_MEMORY
    # below the minimum there is still one worker
    assert size_local_cluster(2, 100 * 2**20, 1) == (1, int(0.9 * 100 * 2**20))


@pytest.mark.parametrize(
    "kwargs", [{"threads": 0}, {"threads": 1, "workers": 0}, {"threads": 1, "memory_limit": "x"}]
)
def test_size_local_cluster_rejects(kwargs):
    with pytest.raises(ConfigError):
        size_local_cluster(4, GiB, **kwargs)


def test_size_local_cluster_zero_memory():
    with pytest.raises(ConfigError, match="positive"):
        size_local_cluster(4, 0, 1)


# ---------------------------------------------------------------- local / external
def test_local_cluster_sized_to_the_machine(monkeypatch):
    import geomed_seg.batch.cluster as cluster

    monkeypatch.setattr(cluster, "machine_resources", lambda: (2, 2 * GiB))
    with open_client(processes=False) as client:
        info = client.scheduler_info(n_workers=-1)["workers"].values()
        assert sorted(w["nthreads"] for w in info) == [1, 1]
        assert {w["memory_limit"] for w in info} == {int(0.9 * 2 * GiB) // 2}
        assert client.submit(lambda x: x + 1, 1).result() == 2


def test_external_scheduler_is_left_running():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, processes=False, dashboard_address=":0") as external:
        with open_client(scheduler=external.scheduler_address) as client:
            assert client.submit(lambda: 42).result() == 42
        assert client.status == "closed"
        with Client(external.scheduler_address, set_as_default=False) as again:
            assert again.submit(lambda: 7).result() == 7  # still serving
            assert len(again.scheduler_info()["workers"]) == 1


def test_unreachable_scheduler_fails_quickly():
    start = time.perf_counter()
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        with pytest.raises(ConfigError, match=r"tcp://127\.0\.0\.1:1: cannot reach"):
            with open_client(scheduler="tcp://127.0.0.1:1"):
                pass
    assert time.perf_counter() - start < 8


def test_scheduler_and_jobqueue_together():
    with pytest.raises(ConfigError, match="choose one"):
        with open_client(scheduler="tcp://127.0.0.1:8786", jobqueue="slurm"):
            pass


# ---------------------------------------------------------------- jobqueue errors
def test_unknown_jobqueue_lists_choices():
    with pytest.raises(ConfigError, match=r"'lsf'.*\['pbs', 'slurm'\]"):
        with open_client(jobqueue="lsf"):
            pass


@pytest.mark.parametrize("name", ["slurm", "pbs"])
def test_submit_command_missing(name, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty bin folder
    submit = QUEUES[name][0]
    with pytest.raises(ConfigError, match=f"{name}: {submit} not found on PATH"):
        with open_client(jobqueue=name, threads=1, memory_limit="1GB"):
            pass


@pytest.mark.parametrize("name", ["slurm", "pbs"])
def test_missing_cores_memory_names_the_keys(name, fake_queue):
    fake_queue(name)
    unset = {f"jobqueue.{name}.cores": None, f"jobqueue.{name}.memory": None}
    with dask.config.set(unset):
        with pytest.raises(ConfigError) as err:
            with open_client(jobqueue=name):
                pass
        msg = str(err.value)
        assert f"jobqueue.{name}.cores" in msg and f"jobqueue.{name}.memory" in msg
        assert os.path.join(dask.config.PATH, "jobqueue.yaml") in msg
        with pytest.raises(ConfigError, match=rf"jobqueue\.{name}\.memory not set"):
            with open_client(jobqueue=name, threads=2):
                pass


# ---------------------------------------------------------------- jobqueue end to end
def _alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _where() -> tuple[int, int, str]:
    return os.getpid(), os.getpgid(0), sys.executable


@pytest.mark.parametrize("name", ["slurm", "pbs"])
def test_jobqueue_end_to_end(name, fake_queue):
    queue = fake_queue(name)
    with open_client(jobqueue=name, workers=1, threads=1, memory_limit="1GB") as client:
        workers = client.scheduler_info(n_workers=-1)["workers"]
        assert len(workers) == 1
        (worker,) = workers.values()
        assert worker["nthreads"] == 1
        # dask-jobqueue passes memory to the worker rounded to 2 decimals ("0.93GiB")
        assert worker["memory_limit"] == pytest.approx(GB, rel=0.01)
        pid, pgid, python = client.submit(_where, pure=False).result(timeout=60)
        jobs = _pids(queue)
        assert pid != os.getpid()
        assert jobs == [pgid]  # the worker runs inside the one submitted job
        assert python == sys.executable
        script = (queue / "job-0.sh").read_text()
        assert f"{sys.executable} -m distributed.cli.dask_worker" in script
        header = "#SBATCH" if name == "slurm" else "#PBS"
        assert header in script
    # closing cancels the job and its worker process group
    assert (queue / "cancelled").read_text().split() == [str(pgid)]
    deadline = time.monotonic() + 15
    while _alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(pgid)


def test_jobqueue_takes_settings_from_dask_config(fake_queue):
    queue = fake_queue("slurm")
    settings = {
        "jobqueue.slurm.cores": 1,
        "jobqueue.slurm.memory": "1500MB",
        "jobqueue.slurm.queue": "gpu-short",
        "jobqueue.slurm.account": "proj42",
        "jobqueue.slurm.walltime": "01:02:03",
        "jobqueue.slurm.job-extra-directives": ["--constraint=ssd"],
    }
    with dask.config.set(settings):
        with open_client(jobqueue="slurm") as client:
            (worker,) = client.scheduler_info(n_workers=-1)["workers"].values()
            assert worker["memory_limit"] == pytest.approx(1500 * 10**6, rel=0.01)
    script = (queue / "job-0.sh").read_text()
    for line in ("-p gpu-short", "-A proj42", "-t 01:02:03", "--constraint=ssd"):
        assert f"#SBATCH {line}" in script


def test_jobqueue_no_worker_times_out(fake_queue, tmp_path):
    queue = fake_queue("slurm")
    # a job that never starts a worker: the python in the job script does not exist
    with dask.config.set({"jobqueue.slurm.python": str(tmp_path / "no-python")}):
        with pytest.raises(ConfigError, match=r"slurm: no worker started within 3 s"):
            with open_client(jobqueue="slurm", threads=1, memory_limit="1GB", wait_timeout=3):
                pass
    assert len(_pids(queue)) == 1
    assert (queue / "cancelled").exists()


def test_jobqueue_refused_submission_fails_at_once(fake_queue):
    queue = fake_queue("slurm")
    sbatch = queue.parent / "bin" / "sbatch"
    sbatch.write_text('#!/usr/bin/env bash\necho "sbatch: error: invalid partition" >&2\nexit 1\n')
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=r"slurm: sbatch refused the job: .*invalid partition"):
        with open_client(jobqueue="slurm", threads=1, memory_limit="1GB", wait_timeout=60):
            pass
    assert time.perf_counter() - start < 30


def test_jobqueue_yaml_from_dask_config_folder(fake_queue, tmp_path):
    """A ``jobqueue.yaml`` in ``$DASK_CONFIG`` (as docs/batch.md shows) drives the job."""
    import subprocess

    queue = fake_queue("slurm")
    config_dir = tmp_path / "dask"
    config_dir.mkdir()
    (config_dir / "jobqueue.yaml").write_text(
        "jobqueue:\n  slurm:\n    queue: compute\n    account: proj42\n    cores: 1\n"
        '    memory: 1GB\n    walltime: "02:00:00"\n'
        '    job-extra-directives: ["--constraint=ssd"]\n'
        f"    local-directory: {tmp_path / 'scratch'}\n"
    )
    code = (
        "from geomed_seg.batch.cluster import open_client\n"
        "with open_client(jobqueue='slurm', wait_timeout=60) as c:\n"
        "    print('threads', sum(c.nthreads().values()))\n"
    )
    env = dict(os.environ, DASK_CONFIG=str(config_dir))
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert "threads 1" in run.stdout
    script = (queue / "job-0.sh").read_text()
    for line in ("-p compute", "-A proj42", "--cpus-per-task=1", "-t 02:00:00"):
        assert f"#SBATCH {line}" in script
    assert f"--local-directory {tmp_path / 'scratch'}" in script


@pytest.mark.parametrize("kind", [{}, {"jobqueue": "slurm"}, {"scheduler": "tcp://127.0.0.1:1"}])
def test_open_client_rejects_zero_threads(kind):
    with pytest.raises(ConfigError, match="threads=0"):
        with open_client(threads=0, **kind):
            pass


def test_jobqueue_workers_are_jobs(fake_queue):
    queue = fake_queue("pbs")
    with open_client(jobqueue="pbs", workers=2, threads=1, memory_limit="1GB") as client:
        client.wait_for_workers(2, timeout=60)
        where = client.run(_where)  # on every worker
        assert sorted(pgid for _, pgid, _ in where.values()) == sorted(_pids(queue))
        assert len(set(_pids(queue))) == 2
    assert sorted((queue / "cancelled").read_text().split()) == sorted(map(str, _pids(queue)))
