"""Run one pipeline over many tiles on dask.distributed, resumably.

Each tile is one task: the pipeline runs into a temporary folder under ``OUT/tiles`` that is
renamed to ``OUT/tiles/<stem>`` when complete (never a partial tile folder). The driver
appends one journal record per finished tile (:mod:`geomed_seg.batch.journal`); a rerun skips
tiles whose record is ``done`` and whose outputs still match their SHA-256. A failing tile is
retried ``retries`` times, then recorded as failed; the others go on.

Inside a task the pipeline computes its dask graphs with the synchronous scheduler (one tile
per worker thread): nested submission to the cluster from a task could deadlock it.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask

from geomed_seg.batch.journal import Journal, config_hash, file_sha256, input_identity
from geomed_seg.io.atomic import atomic_output
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


@functools.lru_cache(maxsize=8)
def _worker_config(config_ref: str, overrides: tuple[str, ...], chash: str) -> PipelineConfig:
    """Load the config once per worker process (keyed by the config hash)."""
    cfg = load_config(config_ref, overrides)
    if config_hash(cfg) != chash:  # the file changed under a running batch
        raise RuntimeError(f"{config_ref}: config changed since the batch started")
    return cfg


def run_tile(
    config_ref: str, overrides: tuple[str, ...], chash: str, path: str, out: str, retries: int
) -> dict[str, Any]:
    """Run the pipeline on one tile into ``out/tiles/<stem>``; return its journal record.

    Never raises for a tile's own failure: the record has ``status="failed"`` and the error.
    """
    from geomed_seg.pipelines.runner import run_pipeline

    dask.config.set(scheduler="synchronous")  # see the module docstring
    src, root = Path(path), Path(out)
    tiles = root / "tiles"
    tiles.mkdir(parents=True, exist_ok=True)
    final = tiles / src.stem
    rec: dict[str, Any] = {"stem": src.stem, "input": str(src), "status": "failed",
                           "outputs": {}, "error": None, "worker_pid": os.getpid()}  # fmt: skip
    start = time.perf_counter()
    for attempt in range(1, retries + 2):
        rec["attempts"] = attempt
        try:
            rec.update(input_identity(src))
            cfg = _worker_config(config_ref, overrides, chash)
            with atomic_output(final, overwrite=True) as tmp:
                run_pipeline(cfg, input=src, output=tmp)
            files = sorted(p for p in final.rglob("*") if p.is_file())
            rec["outputs"] = {
                p.relative_to(final).as_posix(): {
                    "path": p.relative_to(root).as_posix(),
                    "sha256": file_sha256(p),
                }
                for p in files
            }
            rec["status"], rec["error"] = "done", None
            break
        except Exception as exc:  # noqa: BLE001 - a tile's failure is data, not a crash
            rec["error"] = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
            log.warning("%s: attempt %d failed: %s", src, attempt, rec["error"])
    rec["seconds"] = time.perf_counter() - start
    return rec


def _result(fut: Any, path: Path) -> dict[str, Any]:
    """The record of a finished task; a lost task (worker killed, e.g. out of memory) fails."""
    try:
        return fut.result()
    except Exception as exc:  # noqa: BLE001 - KilledWorker, CancelledError, ...
        error = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
        return {"stem": path.stem, "input": str(path), "status": "failed", "outputs": {},
                "error": error, "attempts": None, "seconds": None}  # fmt: skip


def _config_ref(config: str | os.PathLike) -> str:
    p = Path(config)
    return str(p.resolve()) if p.exists() else str(config)


def run_batch(
    config: str | os.PathLike,
    paths: Sequence[Path],
    out: str | os.PathLike,
    *,
    overrides: Sequence[str] = (),
    workers: int = 2,
    threads: int = 1,
    memory_limit: str | None = "2GB",
    scheduler: str | None = None,
    processes: bool = True,
    retries: int = 1,
    restart: bool = False,
    on_start: Callable[[int, int, str | None], None] | None = None,
    on_tile: Callable[[dict[str, Any]], None] | None = None,
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
    overrides : sequence of str
        ``key.sub=value`` config edits (part of the config hash).
    workers, threads, memory_limit, processes :
        The ``distributed.LocalCluster`` started when no ``scheduler`` is given
        (``memory_limit`` per worker, e.g. ``"2GB"``).
    scheduler : str, optional
        Address of an existing scheduler (``tcp://host:port``) to use instead.
    retries : int
        Extra attempts for a failing tile before it is recorded as failed.
    restart : bool
        Discard the journal and tile outputs (needed when the config hash changed).
    on_start, on_tile : callables, optional
        ``on_start(total, todo, dashboard_link)`` once; ``on_tile(record)`` per finished tile.
    """
    from distributed import Client, LocalCluster, as_completed

    from geomed_seg.batch.mosaic import write_summary

    start = time.perf_counter()
    root = Path(out).resolve()
    ref = _config_ref(config)
    ovr = tuple(overrides)
    cfg = load_config(ref, ovr)
    chash = config_hash(cfg)
    journal = Journal(root)
    journal.open(chash, restart)
    for stale in (root / "tiles").glob(".*.tmp-*"):  # left by a killed run
        shutil.rmtree(stale, ignore_errors=True)
    result = BatchResult(root)
    todo = []
    for p in paths:
        (result.skipped if journal.is_done(p.stem, p) else todo).append(p)
    result.skipped = [p.stem for p in result.skipped]
    log.info(
        "batch: %d tiles, %d done before, %d to run", len(paths), len(result.skipped), len(todo)
    )
    if todo:
        saved = dask.config.get("scheduler", None)
        cluster = None
        try:
            # distributed sets its loggers to INFO on import; follow the application's level
            dlog = logging.getLogger("distributed")
            dlog.setLevel(max(dlog.level, logging.getLogger().getEffectiveLevel()))
            quiet_logs = False if log.isEnabledFor(logging.DEBUG) else logging.WARNING
            if scheduler:
                client = Client(scheduler, set_as_default=False)
            else:
                cluster = LocalCluster(n_workers=workers, threads_per_worker=threads,
                                       memory_limit=memory_limit, processes=processes,
                                       dashboard_address=":0", silence_logs=quiet_logs)  # fmt: skip
                client = Client(cluster, set_as_default=False)
            with client:
                result.dashboard = client.dashboard_link
                if on_start:
                    on_start(len(paths), len(todo), result.dashboard)
                futures = {
                    client.submit(run_tile, ref, ovr, chash, str(p), str(root), retries,
                                  key=f"tile-{p.stem}-{uuid.uuid4().hex[:6]}", pure=False): p
                    for p in todo
                }  # fmt: skip
                for fut in as_completed(list(futures), loop=client.loop):
                    rec = _result(fut, futures[fut])
                    journal.record(rec)
                    if rec["status"] == "done":
                        result.done.append(rec["stem"])
                    else:
                        result.failed[rec["stem"]] = rec["error"]
                    if on_tile:
                        on_tile(rec)
        finally:
            if cluster is not None:
                cluster.close()
            dask.config.set(scheduler=saved)
    elif on_start:
        on_start(len(paths), 0, None)
    result.seconds = time.perf_counter() - start
    stems = [p.stem for p in paths]
    result.outputs, result.notes = write_summary(root, journal, stems, result)
    return result
