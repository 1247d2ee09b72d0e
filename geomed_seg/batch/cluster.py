"""Where batch tasks run: a machine-sized ``LocalCluster``, an existing scheduler, or SLURM/PBS.

:func:`open_client` is the one entry point. It yields a ``distributed.Client`` and, on exit,
closes the cluster it started itself (never an external scheduler given by address).

* Default: a ``distributed.LocalCluster`` sized to the machine by
  :func:`size_local_cluster` from the usable CPUs (``dask.system.cpu_count``: affinity and
  cgroup CPU quota) and the usable memory (``distributed.system.memory_limit``: cgroup
  v1/v2 limit, RSS rlimit, else physical memory). Both library helpers are used rather
  than reading ``/sys/fs/cgroup`` here, as they already cover cgroup v1/v2 and affinity.
* ``scheduler="tcp://host:8786"``: join an existing cluster.
* ``jobqueue="slurm"|"pbs"``: a ``dask_jobqueue.SLURMCluster``/``PBSCluster`` whose queue,
  account, walltime, directives... come from the user's dask config (``jobqueue.slurm`` /
  ``jobqueue.pbs`` in ``~/.config/dask/jobqueue.yaml`` or ``$DASK_CONFIG``); one worker
  process per job. dask-jobqueue is imported only on this path.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import dask
from dask.utils import format_bytes, parse_bytes, parse_timedelta

from geomed_seg.errors import ConfigError

if TYPE_CHECKING:
    from distributed import Client

log = logging.getLogger(__name__)

#: Fraction of the usable memory shared among local workers; the rest is left to the
#: driver (scheduler, journal, the progress display) and the operating system.
MEMORY_FRACTION = 0.9
#: An automatically sized local cluster has fewer workers rather than workers below this.
MIN_WORKER_MEMORY = 512 * 2**20
#: Seconds to wait for an external scheduler unless ``distributed.comm.timeouts.connect``
#: is set in the dask config (distributed's own default, 30 s, is too long to report a typo).
CONNECT_TIMEOUT = 10.0
#: Queue systems: name -> (dask_jobqueue cluster class, submit command, status command).
JOBQUEUES = {"slurm": ("SLURMCluster", "sbatch", "squeue"), "pbs": ("PBSCluster", "qsub", "qstat")}


def size_local_cluster(
    cpus: int,
    memory_bytes: int,
    threads: int,
    workers: int | None = None,
    memory_limit: str | int | None = None,
) -> tuple[int, int]:
    """Return ``(workers, memory_limit_bytes)`` of a local cluster that fits the machine.

    Pure arithmetic, no I/O. Written here because ``LocalCluster``'s own defaults
    (``memory_limit="auto"``) hand all memory to the workers, leaving none to the driver,
    and start one worker per core even when memory cannot feed them:

    * ``workers`` (when None) = ``max(1, cpus // threads)``, lowered so that each worker
      gets at least :data:`MIN_WORKER_MEMORY` (512 MiB) when memory is that tight.
    * ``memory_limit`` per worker (when None) = ``MEMORY_FRACTION * memory_bytes // workers``
      (90 % of the usable memory shared equally).

    Parameters
    ----------
    cpus : int
        Usable CPU cores (affinity / cgroup quota applied).
    memory_bytes : int
        Usable memory of the process in bytes (cgroup limit applied).
    threads : int
        Threads per worker (>= 1).
    workers : int, optional
        Explicit number of workers (>= 1); kept as given.
    memory_limit : str or int, optional
        Explicit memory per worker (``"2GB"`` or bytes); kept as given.
    """
    if threads < 1:
        raise ConfigError(f"threads={threads}: need at least 1 thread per worker")
    if workers is not None and workers < 1:
        raise ConfigError(f"workers={workers}: need at least 1 worker")
    budget = int(MEMORY_FRACTION * max(0, memory_bytes))
    if workers is None:
        workers = max(1, max(1, cpus) // threads)
        if memory_limit is None:
            workers = max(1, min(workers, budget // MIN_WORKER_MEMORY))
    if memory_limit is None:
        limit = budget // workers
    else:
        try:
            limit = parse_bytes(memory_limit) if isinstance(memory_limit, str) else memory_limit
        except ValueError as exc:
            raise ConfigError(f"memory_limit={memory_limit!r}: not a size ({exc})") from exc
    if limit <= 0:
        raise ConfigError(f"memory_limit={memory_limit!r}: memory per worker must be positive")
    return workers, int(limit)


def machine_resources() -> tuple[int, int]:
    """Return ``(cpus, memory_bytes)`` usable by this process (affinity and cgroups applied)."""
    from dask.system import cpu_count
    from distributed.system import memory_limit

    return cpu_count(), memory_limit()


@contextlib.contextmanager
def open_client(
    *,
    scheduler: str | None = None,
    jobqueue: str | None = None,
    workers: int | None = None,
    threads: int | None = None,
    memory_limit: str | None = None,
    processes: bool = True,
    silence_logs: int | bool = logging.WARNING,
    wait_timeout: float = 600,
) -> Iterator[Client]:
    """Yield a ``distributed.Client``; close the cluster started for it on exit.

    Parameters
    ----------
    scheduler : str, optional
        Address of an existing scheduler (``tcp://host:8786``); it is left running.
    jobqueue : {"slurm", "pbs"}, optional
        Start workers as batch jobs with dask-jobqueue (settings from the dask config).
    workers : int, optional
        Local: worker processes (default: sized to the machine). Jobqueue: jobs (default 1).
    threads : int, optional
        Threads per worker. Local default 1; jobqueue default: ``cores`` from the config.
    memory_limit : str, optional
        Memory per worker (``"4GB"``). Local default: 90 % of usable memory / workers;
        jobqueue default: ``memory`` from the config.
    processes : bool
        Local only: workers are processes (True) or threads of this process (False).
    silence_logs : int or bool
        Log level below which distributed's worker/scheduler logs are silenced.
    wait_timeout : float
        Jobqueue only: seconds to wait for the first worker to connect.

    Raises
    ------
    ConfigError
        Both ``scheduler`` and ``jobqueue``; an unreachable scheduler; an unknown queue
        system, its submit command missing from PATH, missing ``cores``/``memory`` settings,
        or no worker started within ``wait_timeout``.
    """
    if scheduler and jobqueue:
        raise ConfigError(
            f"scheduler={scheduler!r} and jobqueue={jobqueue!r}: choose one "
            "(--scheduler joins a running cluster, --jobqueue starts one)"
        )
    if threads is not None and threads < 1:
        raise ConfigError(f"threads={threads}: need at least 1 thread per worker")
    if scheduler:
        if workers is not None or threads is not None or memory_limit is not None:
            log.warning("%s: workers/threads/memory_limit are set by that cluster; ignored",
                        scheduler)  # fmt: skip
        cm = _external_client(scheduler)
    elif jobqueue:
        cm = _jobqueue_client(jobqueue, workers, threads, memory_limit, silence_logs, wait_timeout)
    else:
        cm = _local_client(workers, threads or 1, memory_limit, processes, silence_logs)
    with cm as client:
        yield client


def pin_devices(client: Any, devices: Sequence[str], timeout: float = 120) -> None:
    """Pin each worker of ``client`` to one of ``devices`` (``batch --devices``).

    The device is stored on the worker object, where
    :func:`geomed_seg.inference.options.worker_device` finds it for every task that worker
    runs (processes or threads alike). Workers are taken in address order; ``timeout``
    is how long to wait (s) for one worker per device to connect.

    Raises
    ------
    ConfigError
        The cluster does not have one worker per device.
    """
    from distributed.exceptions import WorkerStartTimeoutError

    from geomed_seg.inference.options import WORKER_DEVICE_ATTR

    try:
        client.wait_for_workers(len(devices), timeout=timeout)
    except (TimeoutError, WorkerStartTimeoutError):
        pass  # the count check below names the problem
    workers = sorted(client.scheduler_info()["workers"])
    if len(workers) != len(devices):
        raise ConfigError(
            f"--devices {','.join(devices)}: the cluster has {len(workers)} workers, "
            f"need one per device"
        )
    for address, device in zip(workers, devices, strict=True):
        client.run(_pin_worker, WORKER_DEVICE_ATTR, device, workers=[address])
    log.info("cluster: workers pinned to %s", ", ".join(devices))


def _pin_worker(attr: str, device: str, dask_worker: Any = None) -> None:
    setattr(dask_worker, attr, device)


def _connect_timeout() -> float:
    """The scheduler connect timeout: the dask config's when the user set one, else 10 s."""
    key = "distributed.comm.timeouts.connect"
    default = dask.config.get(key, config=dask.config.merge(*dask.config.defaults), default=None)
    value = dask.config.get(key, default=None)
    if value is None or value == default:
        return CONNECT_TIMEOUT
    return float(parse_timedelta(value, default="seconds"))


@contextlib.contextmanager
def _external_client(address: str) -> Iterator[Any]:
    from distributed import Client

    timeout = _connect_timeout()
    try:
        client = Client(address, set_as_default=False, timeout=timeout)
    except (OSError, TimeoutError, ValueError) as exc:
        problem = " ".join(str(exc).split()) or type(exc).__name__
        raise ConfigError(
            f"{address}: cannot reach the dask scheduler ({problem}; waited up to "
            f"{timeout:g} s, set distributed.comm.timeouts.connect to wait longer)"
        ) from exc
    with client:
        log.info("cluster: external scheduler %s, dashboard %s", address, client.dashboard_link)
        yield client


@contextlib.contextmanager
def _local_client(
    workers: int | None,
    threads: int,
    memory_limit: str | None,
    processes: bool,
    silence_logs: int | bool,
) -> Iterator[Any]:
    from distributed import Client, LocalCluster

    cpus, memory = machine_resources()
    n, limit = size_local_cluster(cpus, memory, threads, workers, memory_limit)
    cluster = LocalCluster(n_workers=n, threads_per_worker=threads, memory_limit=limit,
                           processes=processes, dashboard_address=":0",
                           silence_logs=silence_logs)  # fmt: skip
    try:
        with Client(cluster, set_as_default=False) as client:
            log.info(
                "cluster: local, %d workers x %d threads, %s per worker "
                "(machine: %d CPUs, %s), dashboard %s",
                n, threads, format_bytes(limit), cpus, format_bytes(memory),
                client.dashboard_link,
            )  # fmt: skip
            yield client
    finally:
        cluster.close()


def _jobqueue_cluster(
    name: str, threads: int | None, memory_limit: str | None, silence_logs: int | bool
) -> Any:
    """A SLURMCluster/PBSCluster from the dask config, one worker process per job."""
    cls_name, submit, _ = JOBQUEUES[name]
    if shutil.which(submit) is None:
        raise ConfigError(
            f"{name}: {submit} not found on PATH (run on a node that can submit "
            f"{name.upper()} jobs, or drop --jobqueue for a local cluster)"
        )
    yaml = os.path.join(dask.config.PATH, "jobqueue.yaml")
    import dask_jobqueue  # noqa: F401 - also loads dask-jobqueue's config defaults

    section = f"jobqueue.{name}"
    cores = threads if threads is not None else dask.config.get(f"{section}.cores", None)
    memory = (
        memory_limit if memory_limit is not None else dask.config.get(f"{section}.memory", None)
    )
    missing = [k for k, v in (("cores", cores), ("memory", memory)) if v is None]
    if missing:
        keys = ", ".join(f"{section}.{k}" for k in missing)
        raise ConfigError(
            f"{name}: {keys} not set; set them in {yaml} (or pass --threads / --memory-limit)"
        )
    options = dict(dask.config.get(f"{section}.scheduler-options", None) or {})
    options.setdefault("dashboard_address", ":0")
    cls = getattr(dask_jobqueue, cls_name)
    job_cls = _recording_job(cls.job_cls)
    try:
        return cls(cores=cores, memory=memory, processes=1, silence_logs=silence_logs,
                   scheduler_options=options, job_cls=job_cls)  # fmt: skip
    except (ValueError, TypeError) as exc:
        problem = " ".join(str(exc).split())
        raise ConfigError(f"{name}: invalid dask-jobqueue settings in {yaml} ({problem})") from exc


def _recording_job(base: type) -> type:
    """``base`` (a dask-jobqueue Job class) that keeps the error of a refused submission.

    ``SpecCluster.scale`` submits in the background and only logs a failing ``sbatch``; the
    job keeps status "created", which ``SpecCluster.close()`` then refuses (assertion).
    This subclass marks it failed and keeps the error, so that :func:`_wait_for_worker`
    reports it at once instead of after ``wait_timeout``.
    """
    from distributed.core import Status

    class RecordingJob(base):  # type: ignore[misc, valid-type]
        submit_error: Exception | None = None

        async def start(self) -> None:
            try:
                await super().start()
            except Exception as exc:  # noqa: BLE001 - recorded, then raised again
                self.submit_error, self.status = exc, Status.failed
                raise

    RecordingJob.__name__ = RecordingJob.__qualname__ = base.__name__
    return RecordingJob


def _wait_for_worker(client: Any, cluster: Any, name: str, jobs: int, timeout: float) -> None:
    """Return once a worker is connected; ConfigError on a refused job or after ``timeout`` s."""
    _, submit, status = JOBQUEUES[name]
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.wait_for_workers(1, timeout=max(0.05, min(1.0, deadline - time.monotonic())))
            return
        except TimeoutError as exc:
            errors = [j.submit_error for j in cluster.workers.values() if j.submit_error]
            if errors:
                stderr = " ".join(str(errors[0]).rpartition("stderr:")[2].split())
                raise ConfigError(f"{name}: {submit} refused the job: {stderr}") from errors[0]
            if time.monotonic() >= deadline:
                raise ConfigError(
                    f"{name}: no worker started within {timeout:g} s of submitting "
                    f"{jobs} job(s) with {submit} (check {status} and the job logs)"
                ) from exc


@contextlib.contextmanager
def _jobqueue_client(
    jobqueue: str,
    workers: int | None,
    threads: int | None,
    memory_limit: str | None,
    silence_logs: int | bool,
    wait_timeout: float,
) -> Iterator[Any]:
    from distributed import Client

    name = str(jobqueue).lower()
    if name not in JOBQUEUES:
        raise ConfigError(f"jobqueue={jobqueue!r}: unknown; choose one of {sorted(JOBQUEUES)}")
    if workers is not None and workers < 1:
        raise ConfigError(f"workers={workers}: need at least 1 job")
    jobs = workers or 1
    cluster = _jobqueue_cluster(name, threads, memory_limit, silence_logs)
    try:
        log.debug("%s job script:\n%s", name, cluster.job_script())
        cluster.scale(jobs=jobs)
        with Client(cluster, set_as_default=False) as client:
            _wait_for_worker(client, cluster, name, jobs, wait_timeout)
            job = cluster._dummy_job
            log.info(
                "cluster: %s, %d jobs x 1 worker x %d threads, %s per worker, dashboard %s",
                name, jobs, job.worker_process_threads, job.worker_process_memory,
                client.dashboard_link,
            )  # fmt: skip
            yield client
    finally:
        cluster.close()
