"""Run one pipeline over many tiles on dask.distributed, resumably.

Each tile is one task: the pipeline runs into a temporary folder under ``OUT/tiles`` that is
renamed to ``OUT/tiles/<stem>`` when complete (never a partial tile folder). The driver
appends one journal record per finished tile (:mod:`geomed_seg.batch.journal`); a rerun skips
tiles whose record is ``done`` and whose outputs still match their SHA-256. A failing tile is
retried ``retries`` times, then recorded as failed; the others go on.

Inside a task the pipeline computes its dask graphs with the synchronous scheduler (one tile
per worker thread): nested submission to the cluster from a task could deadlock it.

With ``block_size`` a large scene (or a VRT) is split into blocks
(:func:`geomed_seg.batch.manifest.build_jobs`): each task reads its block's window with a
halo, runs the pipeline on it and keeps the core (``run_pipeline(core=...)``), so the block
label tiles tile the scene and the mosaic VRT reassembles it. The block layout (size, halo)
is part of the journal's config hash.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import dask

from geomed_seg.batch.blocks import Block, aligned_block_size, plan_blocks
from geomed_seg.batch.journal import Journal, config_hash, file_sha256
from geomed_seg.batch.manifest import Job, build_jobs, default_halo
from geomed_seg.batch.options import BatchOptions, ClusterOptions
from geomed_seg.batch.tasks import run_attempts
from geomed_seg.batch.tasks import worker_config as _worker_config
from geomed_seg.errors import ConfigError, InvalidInputError
from geomed_seg.io.atomic import atomic_output
from geomed_seg.io.transaction import sweep_stages
from geomed_seg.pipelines.schema import PipelineConfig, load_config

log = logging.getLogger(__name__)


@dataclass
class BatchResult:
    """What a batch did: tiles ``done`` (this run), ``skipped`` (done before), ``failed``."""

    out: Path
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    dashboard: str | None = None
    seconds: float = 0.0
    outputs: dict[str, Path] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: the summary's ``thresholds`` section (scope, method, value(s), separability) or None
    thresholds: dict[str, Any] | None = None


#: A block's read window up to this size (bytes, all bands) is read into memory once.
BLOCK_READ_BYTES = 512 * 2**20


def _rss_mb() -> tuple[float, float]:
    """Return ``(peak, current)`` resident memory of this process in MiB."""
    import resource  # POSIX only: imported here so the module still imports elsewhere

    import psutil

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    peak_mb = peak / 2**20 if sys.platform == "darwin" else peak / 1024
    return peak_mb, psutil.Process().memory_info().rss / 2**20


def _run_block(cfg: PipelineConfig, src: Path, block: Block, folder: Path) -> None:
    """Run the pipeline on ``block`` of scene ``src`` (read window with halo) into ``folder``."""
    from geomed_seg.pipelines.inputs import open_inputs
    from geomed_seg.pipelines.methods import materialise
    from geomed_seg.pipelines.runner import run_pipeline

    img, _ = open_inputs(cfg, src)  # lazy: only the read window's chunks are read
    # read the window once, not once per pipeline step, when it fits BLOCK_READ_BYTES
    sub = materialise(img.sel_window(block.read), BLOCK_READ_BYTES)
    info = {"scene": str(src), "index": list(block.index), **block.offsets()}
    sub = replace(sub, attrs={**sub.attrs, "block": info})
    run_pipeline(cfg, image=sub, output=folder, core=block.core_in_read)


@dataclass(frozen=True)
class TileTask:
    """The arguments of one pass-2 task (picklable: sent to a dask worker).

    ``config_ref``, ``overrides`` and ``config_hash`` rebuild the config on the worker
    (:func:`geomed_seg.batch.tasks.worker_config`); ``path`` is the tile, ``out`` the batch
    folder, ``block`` the part of the tile to run (None: all of it), ``stem`` the tile's
    folder name, ``batch_threshold`` pass 1's threshold (becomes ``model.batch_threshold``).
    """

    config_ref: str
    overrides: tuple[str, ...]
    config_hash: str
    path: str
    out: str
    retries: int
    block: Block | None = None
    stem: str | None = None
    batch_threshold: float | None = None


def run_tile(task: TileTask) -> dict[str, Any]:
    """Run the pipeline on one tile (or one ``block`` of it) into ``out/tiles/<stem>``.

    Returns the tile's journal record, with the worker's peak and current RSS (MiB) at the
    end of the task. Never raises for a tile's own failure: the record has
    ``status="failed"`` and the error.
    """
    from geomed_seg.pipelines.runner import run_pipeline

    dask.config.set(scheduler="synchronous")  # see the module docstring
    src, root = Path(task.path), Path(task.out)
    block, batch_threshold = task.block, task.batch_threshold
    stem = task.stem or src.stem
    tiles = root / "tiles"
    tiles.mkdir(parents=True, exist_ok=True)
    final = tiles / stem
    rec: dict[str, Any] = {"stem": stem, "input": str(src), "status": "failed",
                           "outputs": {}, "error": None, "worker_pid": os.getpid(),
                           "batch_threshold": batch_threshold}  # fmt: skip
    if block is not None:
        rec["block"] = {"index": list(block.index), **block.offsets()}

    def attempt() -> None:
        cfg = _worker_config(task.config_ref, task.overrides, task.config_hash)
        if batch_threshold is not None:
            model = cfg.model.model_copy(update={"batch_threshold": batch_threshold})
            cfg = cfg.model_copy(update={"model": model})
        with atomic_output(final, overwrite=True) as tmp:
            if block is None:
                run_pipeline(cfg, input=src, output=tmp)
            else:
                _run_block(cfg, src, block, tmp)
        files = sorted(p for p in final.rglob("*") if p.is_file())
        rec["outputs"] = {
            p.relative_to(final).as_posix(): {
                "path": p.relative_to(root).as_posix(),
                "sha256": file_sha256(p),
            }
            for p in files
        }

    run_attempts(rec, src, task.retries, attempt)
    rec["worker_peak_rss_mb"], rec["worker_rss_mb"] = _rss_mb()
    return rec


def _result(fut: Any, job: Job) -> dict[str, Any]:
    """The record of a finished task; a lost task (worker killed, e.g. out of memory) fails."""
    try:
        return fut.result()
    except Exception as exc:  # noqa: BLE001 - KilledWorker, CancelledError, ...
        error = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
        return {"stem": job.stem, "input": str(job.path), "status": "failed", "outputs": {},
                "error": error, "attempts": None, "seconds": None}  # fmt: skip


def _plan_jobs(
    cfg: PipelineConfig,
    paths: Sequence[Path],
    block_size: int | Sequence[int] | None,
    halo: int | None,
) -> tuple[list[Job], dict[str, Any] | None]:
    """Return the tasks and the block layout (``None`` without blocks) after checking them."""
    if block_size is None:
        return build_jobs(paths), None
    if cfg.kind != "raster":
        raise InvalidInputError(
            f"{cfg.name}: --block-size splits rasters only; run {cfg.kind} pipelines without it"
        )
    p = cfg.preprocess
    if p.target_crs or p.target_resolution:
        raise ConfigError(
            f"{cfg.name}: --block-size needs a pipeline that keeps the input grid, but "
            "preprocess.target_crs/target_resolution reproject; drop them or run without blocks"
        )
    halo = default_halo(cfg) if halo is None else halo
    plan_blocks((1, 1), block_size, halo)  # validates both with clear messages
    jobs = build_jobs(paths, block_size=block_size, halo=halo, config=cfg)
    return jobs, {"block_size": list(aligned_block_size(block_size)), "halo": halo}


def _layout_hash(chash: str, layout: dict[str, Any] | None) -> str:
    """The journal's hash: the config hash, combined with the block layout when there is one."""
    if layout is None:
        return chash
    text = json.dumps({"config_hash": chash, "blocks": layout}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _config_ref(config: str | os.PathLike) -> str:
    p = Path(config)
    return str(p.resolve()) if p.exists() else str(config)


@dataclass
class _BatchRun:
    """One batch while it runs: what pass 2 needs besides the jobs."""

    journal: Journal
    get_client: Callable[[], Any]
    task_args: tuple[str, tuple[str, ...], str]  # (config_ref, overrides, config hash)
    root: Path
    options: BatchOptions
    result: BatchResult


def run_batch(
    config: str | os.PathLike,
    paths: Sequence[Path],
    out: str | os.PathLike,
    options: BatchOptions | None = None,
    **changes: Any,
) -> BatchResult:
    """Run ``config`` on every tile of ``paths`` into ``out``; skip tiles already done.

    Parameters
    ----------
    config : name or path
        A bundled pipeline name (``"flood"``) or a pipeline YAML path.
    paths : sequence of Path
        Input tiles (see :func:`geomed_seg.batch.manifest.build_manifest`); unique stems.
    out : path
        Output folder: ``tiles/<stem>/``, ``journal.jsonl``, ``mosaic.vrt``, ``summary.*``.
    options : BatchOptions, optional
        How and where the batch runs (:class:`~geomed_seg.batch.options.BatchOptions`:
        overrides, retries, restart, block_size, halo, cog, threshold_scope, the cluster,
        progress callbacks).
    **changes
        Options by name instead (``overrides=[...]``, ``processes=False``, ``workers=2``...),
        applied on top of ``options`` (:meth:`BatchOptions.of`).
    """
    from geomed_seg.batch.summary import write_summary
    from geomed_seg.batch.thresholds import summary_section

    opts = BatchOptions.of(options, **changes)
    start = time.perf_counter()
    root = Path(out).resolve()
    ref = _config_ref(config)
    cfg = load_config(ref, opts.overrides)
    chash = config_hash(cfg)
    jobs, layout = _plan_jobs(cfg, paths, opts.block_size, opts.halo)
    journal = Journal(root)
    journal.open(_layout_hash(chash, layout), opts.restart)
    for stale in (root / "tiles").glob(".*.tmp-*"):  # left by a killed run
        shutil.rmtree(stale, ignore_errors=True)
    result = BatchResult(root)
    pass1 = _run_passes(cfg, jobs, (ref, opts.overrides, chash), journal, opts, result)
    result.seconds = time.perf_counter() - start
    stems = [j.stem for j in jobs]
    result.thresholds = summary_section(cfg, pass1)
    result.outputs, notes = write_summary(root, journal, stems, result, cog=opts.cog,
                                          thresholds=result.thresholds)  # fmt: skip
    result.notes = [*result.notes, *notes]
    return result


def _run_passes(
    cfg: PipelineConfig,
    jobs: Sequence[Job],
    task_args: tuple[str, tuple[str, ...], str],
    journal: Journal,
    opts: BatchOptions,
    result: BatchResult,
) -> Any:
    """Run pass 1 (batch thresholds) and pass 2 (the tiles) on one cluster, opened lazily;
    return pass 1's result (None without one)."""
    from geomed_seg.batch.thresholds import batch_pass1

    saved = dask.config.get("scheduler", None)
    try:
        with contextlib.ExitStack() as stack:
            get_client = _lazy_client(stack, result, opts.cluster)
            pass1, batch_threshold, notes = batch_pass1(
                cfg, jobs, journal, get_client, task_args, opts.retries, opts.threshold_scope
            )
            result.notes.extend(notes)
            run = _BatchRun(journal, get_client, task_args, result.out, opts, result)
            _pass2(run, jobs, batch_threshold, pass1)
    except BaseException:
        # Ctrl-C/SIGTERM/SIGHUP or a failure: the workers are stopped by now (the client
        # closed with the stack); a worker killed mid-tile could not remove its staged folder
        for left in sweep_stages(result.out / "tiles"):
            log.debug("batch: removed %s left by a stopped worker", left)
        raise
    finally:
        dask.config.set(scheduler=saved)
    return pass1


def _lazy_client(
    stack: contextlib.ExitStack, result: BatchResult, cluster: ClusterOptions
) -> Callable[[], Any]:
    """Return ``get_client()``: the cluster is opened on first use (a resume with nothing
    left to do opens none) and closed with ``stack``; with ``cluster.devices`` each worker
    is pinned to its device."""
    from geomed_seg.batch.cluster import open_client, pin_devices

    if cluster.devices:
        from geomed_seg.inference.multi import resolve_devices

        cluster = replace(cluster, devices=resolve_devices(cluster.devices))
    kw = cluster.client_kwargs()

    box: dict[str, Any] = {}

    def get_client() -> Any:
        if "client" not in box:
            # distributed sets its loggers to INFO on import; follow the application's level
            dlog = logging.getLogger("distributed")
            dlog.setLevel(max(dlog.level, logging.getLogger().getEffectiveLevel()))
            # workers' warnings (e.g. tasks cancelled while a SIGTERM stops the batch) are
            # library noise before our one line unless -v/--debug asked for them
            quiet_logs = (
                False if log.isEnabledFor(logging.DEBUG)
                else logging.WARNING if log.isEnabledFor(logging.INFO) else logging.ERROR
            )  # fmt: skip
            box["client"] = stack.enter_context(open_client(silence_logs=quiet_logs, **kw))
            if cluster.devices:
                pin_devices(box["client"], cluster.devices)
            result.dashboard = box["client"].dashboard_link
        return box["client"]

    return get_client


def _pass2(run: _BatchRun, jobs: Sequence[Job], batch_threshold: float | None, pass1: Any) -> None:
    """Run the pipeline on every job not done yet (with ``batch_threshold``); journal each."""
    from distributed import as_completed

    journal, result, opts = run.journal, run.result, run.options
    todo = _todo(run, jobs, batch_threshold, pass1)
    log.info(
        "batch: %d tiles, %d done before, %d to run", len(jobs), len(result.skipped), len(todo)
    )
    if not todo:
        if opts.on_start:
            opts.on_start(len(jobs), 0, None)
        return
    client = run.get_client()
    if opts.on_start:
        opts.on_start(len(jobs), len(todo), result.dashboard)
    ref, ovr, chash = run.task_args
    futures = {}
    for j in todo:
        task = TileTask(ref, ovr, chash, str(j.path), str(run.root), opts.retries, j.block,
                        j.stem, batch_threshold)  # fmt: skip
        key = f"tile-{j.stem}-{uuid.uuid4().hex[:6]}"
        futures[client.submit(run_tile, task, key=key, pure=False)] = j
    for fut in as_completed(list(futures), loop=client.loop):
        rec = _result(fut, futures.pop(fut))
        # drop the finished task's result from the cluster: a result still held
        # is recomputed (the whole tile again) if its worker dies later
        fut.release()
        journal.record(rec)
        if rec["status"] == "done":
            result.done.append(rec["stem"])
        else:
            result.failed[rec["stem"]] = rec["error"]
        if opts.on_tile:
            opts.on_tile(rec)


def _todo(
    run: _BatchRun, jobs: Sequence[Job], batch_threshold: float | None, pass1: Any
) -> list[Job]:
    """Return the jobs pass 2 must run; record pass-1 failures and count tiles done before."""
    todo = []
    failed_pass1 = pass1.failed if pass1 is not None else {}
    for j in jobs:
        if j.stem in failed_pass1:
            rec = {"stem": j.stem, "input": str(j.path), "status": "failed", "outputs": {},
                   "error": failed_pass1[j.stem], "attempts": pass1.attempts.get(j.stem),
                   "seconds": None}  # fmt: skip
            run.journal.record(rec)
            run.result.failed[j.stem] = rec["error"]
        elif run.journal.is_done(j.stem, j.path, batch_threshold):
            run.result.skipped.append(j.stem)
        else:
            todo.append(j)
    return todo
