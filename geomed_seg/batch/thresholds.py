"""Pass 1 of a batch: one Otsu threshold for all tiles or blocks, from merged histograms.

A classical method that derives its threshold from the data (NDWI/MNDWI + Otsu, SAR dB +
Otsu: :data:`geomed_seg.pipelines.methods.SCENE_THRESHOLDS`) would give every tile its own
threshold if each task decided alone: a tile of open sea and a tile of dry land are not
bimodal, and their thresholds fall anywhere. With ``--threshold-scope batch`` (default)
the batch first runs one small task per tile or block that returns the histogram of the
values the method thresholds (blocks: of their **core** only, so no pixel is counted twice)
with fixed bins (:class:`~geomed_seg.classical.histogram.Histogram`); unbounded values (dB)
first get a min/max step whose merged range fixes the bins. The driver merges the
histograms and decides the threshold (:func:`~geomed_seg.classical.histogram.decide`: the
same functions a single scene uses, so a scene and its tiles get the same threshold), which
every task of pass 2 receives as ``model.batch_threshold``.

Every pass-1 result is journalled (``type: "stats"``, with the input's identity), so a
resumed batch skips pass 1 and decides the same threshold. A tile record stores the
threshold it was classified with; a changed input changes the batch threshold, so every
tile runs again. A task whose pass 1 fails (unreadable input) is journalled as failed and
not run in pass 2; the threshold is that of the other inputs (a note says so).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask

from geomed_seg.batch.blocks import Block
from geomed_seg.batch.journal import Journal
from geomed_seg.batch.manifest import Job
from geomed_seg.batch.options import THRESHOLD_SCOPES
from geomed_seg.batch.tasks import run_attempts, worker_config
from geomed_seg.classical.histogram import (
    Histogram,
    ThresholdDecision,
    ValueRange,
    decide,
)
from geomed_seg.core.image import Image
from geomed_seg.errors import InvalidInputError
from geomed_seg.pipelines.schema import PipelineConfig

log = logging.getLogger(__name__)

#: ``--threshold-scope`` values.
SCOPES = THRESHOLD_SCOPES


def task_values(cfg: PipelineConfig, src: Path, block: Block | None) -> Image:
    """Return the 1-band image ``cfg``'s method thresholds, for a tile or a block's core.

    The input is opened and preprocessed as :func:`~geomed_seg.pipelines.run_pipeline`
    does; a block keeps its core window (the values are per pixel, so the core of a block
    equals the same window of the whole scene).
    """
    from geomed_seg.pipelines.cards import load_sensor_card
    from geomed_seg.pipelines.inputs import open_inputs, preprocess
    from geomed_seg.pipelines.methods import SCENE_THRESHOLDS, effective_method

    img, _ = open_inputs(cfg, src)
    if block is not None:
        img = img.sel_window(block.core)
    sensor = load_sensor_card(cfg.sensor) if cfg.sensor else None
    img = preprocess(img, cfg, sensor)
    return SCENE_THRESHOLDS[effective_method(cfg)].values(img, cfg)


def stats_task(
    worker: tuple[str, tuple[str, ...], str],
    path: str,
    block: Block | None,
    step: str,
    value_range: tuple[float, float] | None,
    bins: int,
    retries: int,
) -> dict[str, Any]:
    """Pass-1 task: the min/max (``step="range"``) or histogram (``"hist"``) of one job.

    ``worker`` is ``(config reference, overrides, config hash)``
    (:func:`~geomed_seg.batch.tasks.worker_config`). Returns ``{"status": "done", "result": ..., **input identity}`` or a failed record
    with the error; never raises for the input's own problem.
    """
    from geomed_seg.classical.thresholds import image_histogram, value_range_of

    dask.config.set(scheduler="synchronous")  # a task is one unit of parallelism
    src = Path(path)
    rec: dict[str, Any] = {"status": "failed", "error": None}

    def attempt() -> None:
        values = task_values(worker_config(*worker), src, block)
        if step == "range":
            r = value_range_of(values)
            rec["result"] = {"lo": r.lo, "hi": r.hi}
        else:
            assert value_range is not None
            rec["result"] = image_histogram(values, bins, value_range).to_json()

    run_attempts(rec, src, retries, attempt, what="pass 1 attempt")
    return rec


@dataclass
class Pass1:
    """What pass 1 decided and did."""

    method: str
    decision: ThresholdDecision | None = None
    run: int = 0  # pass-1 tasks run now
    reused: int = 0  # pass-1 results taken from the journal
    failed: dict[str, str] = field(default_factory=dict)  # stem -> error
    attempts: dict[str, int | None] = field(default_factory=dict)  # stem -> tries (failed)
    notes: list[str] = field(default_factory=list)
    inputs: int = 0  # tiles/blocks whose histograms were merged

    def summary(self) -> dict[str, Any]:
        """The ``thresholds`` section of ``summary.json`` (``inputs``: tiles/blocks merged)."""
        d = self.decision.as_dict() if self.decision else {}
        return {"scope": "batch", "method": self.method, **d, "inputs": self.inputs,
                "excluded": sorted(self.failed), "pass1_tasks_run": self.run,
                "pass1_tasks_reused": self.reused}  # fmt: skip


def _step(
    journal: Journal,
    jobs: Sequence[Job],
    step: str,
    key: str,
    submit: Callable[[Job], Any],
    wait: Callable[[list[Any]], Any],
    p1: Pass1,
) -> dict[str, Any]:
    """Run (or reuse from the journal) one pass-1 step for every job; return stem -> result."""
    results: dict[str, Any] = {}
    todo = []
    for j in jobs:
        if j.stem in p1.failed:
            continue
        rec = journal.stats_for(j.stem, step, key, j.path)
        if rec is not None:
            results[j.stem] = rec["result"]
            p1.reused += 1
        else:
            todo.append(j)
    if not todo:
        return results
    futures = {submit(j): j for j in todo}
    for fut in wait(list(futures)):
        j = futures.pop(fut)
        try:
            rec = fut.result()
        except Exception as exc:  # noqa: BLE001 - KilledWorker, CancelledError, ...
            rec = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
        fut.release()
        journal.record_stats({**rec, "stem": j.stem, "input": str(j.path), "step": step,
                              "key": key})  # fmt: skip
        p1.run += 1
        if rec["status"] == "done":
            results[j.stem] = rec["result"]
        else:
            p1.failed[j.stem] = f"pass 1: {rec['error']}"
            p1.attempts[j.stem] = rec.get("attempts")
    return results


def run_pass1(
    cfg: PipelineConfig,
    jobs: Sequence[Job],
    journal: Journal,
    get_client: Callable[[], Any],
    task_args: tuple[str, tuple[str, ...], str],
    retries: int = 1,
) -> Pass1:
    """Decide the batch threshold of ``cfg`` over ``jobs`` (see the module docstring).

    ``get_client()`` returns the dask client (opened on first use: a fully journalled pass
    1 needs none); ``task_args`` = ``(config_ref, overrides, config_hash)``.
    Raises :class:`InvalidInputError` when no input has a valid value to threshold.
    """
    from distributed import as_completed

    from geomed_seg.pipelines.methods import effective_method, scene_threshold

    src = scene_threshold(cfg)
    assert src is not None, "run_pass1 needs a method with a scene-wide threshold"
    p1 = Pass1(effective_method(cfg))
    start = time.perf_counter()

    def submitter(step: str, value_range: tuple[float, float] | None) -> Callable[[Job], Any]:
        def submit(j: Job) -> Any:
            client = get_client()
            return client.submit(stats_task, task_args, str(j.path), j.block, step,
                                 value_range, src.bins, retries,
                                 key=f"pass1-{step}-{j.stem}-{uuid.uuid4().hex[:6]}",
                                 pure=False)  # fmt: skip

        return submit

    def wait(futs: list[Any]) -> Any:
        return as_completed(futs, loop=get_client().loop)

    value_range = src.value_range
    if value_range is None:  # unbounded values: merge min/max first
        ranges = _step(journal, jobs, "range", "range", submitter("range", None), wait, p1)
        merged = ValueRange()
        for r in ranges.values():
            merged = merged.merge(ValueRange(r["lo"], r["hi"]))
        value_range = merged.bounds()
    key = json.dumps({"range": value_range, "bins": src.bins})
    hists = (
        _step(journal, jobs, "hist", key, submitter("hist", value_range), wait, p1)
        if value_range is not None
        else {}
    )
    total = None  # merged one by one: a batch may have many thousand tiles
    for h in hists.values():
        part = Histogram.from_json(h)
        total = part if total is None else total.merge(part)
    if total is None or total.n == 0:
        raise InvalidInputError(
            f"batch of {len(jobs)} inputs ({_names(jobs)}): no valid values to threshold "
            f"with {p1.method}"
            + (f"; pass 1 failed for {_names_of(p1.failed)}" if p1.failed else "")
        )
    p1.decision, p1.inputs = decide(total, src.classes), len(hists)
    journal.record_threshold({"method": p1.method, **p1.decision.as_dict(),
                              "inputs": len(hists), "excluded": sorted(p1.failed)})  # fmt: skip
    log.info(
        "batch threshold (%s over %d inputs): %s; pass 1: %d tasks run, %d from the journal "
        "in %.1f s", p1.method, len(hists), p1.decision.describe(), p1.run, p1.reused,
        time.perf_counter() - start,
    )  # fmt: skip
    if p1.failed:
        p1.notes.append(
            f"pass 1 failed for {len(p1.failed)} inputs ({_names_of(p1.failed)}): the batch "
            "threshold covers the others; those inputs are not classified"
        )
    from geomed_seg.classical.thresholds import warn_separability

    msg = warn_separability(p1.decision, f"batch of {len(hists)} inputs ({_names(jobs)})")
    if msg:
        p1.notes.append(msg)
    return p1


def batch_pass1(
    cfg: PipelineConfig,
    jobs: Sequence[Job],
    journal: Journal,
    get_client: Callable[[], Any],
    task_args: tuple[str, tuple[str, ...], str],
    retries: int,
    scope: str,
) -> tuple[Pass1 | None, float | None, list[str]]:
    """Run pass 1 when ``scope`` and ``cfg``'s method need it.

    Returns ``(Pass1 or None, the batch threshold or None, notes)``; with scope ``tile``
    and blocks, the note (and a warning) that each block decides its own threshold.
    """
    from geomed_seg.pipelines.methods import scene_threshold

    if scene_threshold(cfg) is None:
        return None, None, []
    if scope == "tile":
        if any(j.block is not None for j in jobs) and (note := per_block_note(cfg)):
            log.warning("%s", note)
            return None, None, [note]
        return None, None, []
    pass1 = run_pass1(cfg, jobs, journal, get_client, task_args, retries)
    assert pass1.decision is not None
    return pass1, pass1.decision.thresholds[0], list(pass1.notes)


def per_block_note(cfg: PipelineConfig) -> str | None:
    """With ``--threshold-scope tile``: a note when blocks would each compute their own Otsu
    threshold (on their read window), else None."""
    from geomed_seg.pipelines.methods import effective_method, scene_threshold

    if scene_threshold(cfg) is None:
        return None
    return (
        f"model.method {effective_method(cfg)} with --threshold-scope tile: the Otsu "
        "threshold is computed per block, not scene-wide, so blocks may disagree at their "
        "seams; use --threshold-scope batch (the default) for one scene-wide threshold"
    )


def summary_section(cfg: PipelineConfig, pass1: Pass1 | None) -> dict[str, Any] | None:
    """The summary's ``thresholds``: scope, method and value(s), or None (no threshold).

    Scope ``batch`` (pass 1 ran), ``fixed`` (``model.threshold``), ``tile`` (each task
    its own; the per-tile values are added from the tile reports by ``write_summary``) or
    ``case`` (``t2f_otsu``: each volume on its own).
    """
    from geomed_seg.pipelines.methods import SCENE_THRESHOLDS, effective_method

    method = effective_method(cfg)
    if pass1 is not None:
        return pass1.summary()
    if cfg.model.threshold is not None or cfg.model.batch_threshold is not None:
        t = cfg.model.threshold if cfg.model.threshold is not None else cfg.model.batch_threshold
        return {"scope": "fixed", "method": method, "thresholds": [float(t)]}
    if method in SCENE_THRESHOLDS:
        return {"scope": "tile", "method": method}
    if method == "t2f_otsu":
        return {"scope": "case", "method": method}
    return None


def _names(jobs: Sequence[Job], most: int = 4) -> str:
    paths = list(dict.fromkeys(str(j.path) for j in jobs))
    more = f", ... {len(paths) - most} more" if len(paths) > most else ""
    return ", ".join(paths[:most]) + more


def _names_of(stems: dict[str, str] | Sequence[str], most: int = 4) -> str:
    names = sorted(stems)
    more = f", ... {len(names) - most} more" if len(names) > most else ""
    return ", ".join(names[:most]) + more


def tile_scope_summary(method: str | None, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The ``thresholds`` section for ``--threshold-scope tile``: each tile's own threshold."""
    per_tile = {r["stem"]: {"threshold": r.get("threshold"), "eta": r.get("eta"),
                            "bimodal": r.get("bimodal")}
                for r in rows if r.get("threshold") is not None}  # fmt: skip
    return {"scope": "tile", "method": method, "per_tile": per_tile,
            "not_bimodal": sorted(s for s, v in per_tile.items() if v["bimodal"] is False)}  # fmt: skip
