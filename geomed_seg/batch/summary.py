"""Batch summary: ``summary.json`` and ``summary.md`` from the journal and the tile reports.

Class areas (km²) of raster tiles or volumes (mL) of volume tiles (NIfTI) are summed from
each done tile's ``report.json``; throughput (km²/s, volumes/h), per-tile seconds and worker
memory come from the journal. The mosaics themselves are :mod:`geomed_seg.batch.mosaic`.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geomed_seg.batch.mosaic import write_mosaics
from geomed_seg.io.atomic import atomic_output

#: Label outputs of volume tiles (the pipeline writes NIfTI for volumes).
_VOLUME_LABELS = ("labels.nii.gz", "labels.nii")


def _tile_report(out: Path, rec: dict[str, Any]) -> dict[str, Any] | None:
    rep = rec.get("outputs", {}).get("report.json")
    if rep is None:
        return None
    try:
        return json.loads((out / rep["path"]).read_text())
    except (OSError, ValueError):
        return None


@dataclass
class _Tally:
    """Per-tile rows and totals of a batch, gathered from the journal and tile reports."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    area_km2: dict[str, float] = field(default_factory=dict)
    volume_ml: dict[str, float] = field(default_factory=dict)
    processed_km2: float = 0.0
    processed_volumes: int = 0
    labels: list[Path] = field(default_factory=list)
    gpkgs: list[Path | None] = field(default_factory=list)
    items: list[Path] = field(default_factory=list)
    volume_tiles: int = 0


def _tally(out: Path, journal: Any, stems: Sequence[str], result: Any) -> _Tally:
    t = _Tally()
    for stem in stems:
        rec = journal.records.get(stem, {})
        status = "skipped" if stem in result.skipped else rec.get("status", "not run")
        row = {"stem": stem, "status": status, "input": rec.get("input"),
               "seconds": rec.get("seconds"), "attempts": rec.get("attempts"),
               "error": rec.get("error"),
               "worker_peak_rss_mb": rec.get("worker_peak_rss_mb")}  # fmt: skip
        done = rec.get("status") == "done"
        rep = _tile_report(out, rec) if done else None
        files = rec.get("outputs", {})
        is_volume = "labels.tif" not in files and (
            any(k in files for k in _VOLUME_LABELS)
            or any("volume_ml" in c for c in (rep or {}).get("classes", []))
        )
        if rep is not None:
            _threshold_facts(row, rep)
            key, totals = ("volume_ml", t.volume_ml) if is_volume else ("area_km2", t.area_km2)
            amount = 0.0
            for c in rep.get("classes", []):
                if key in c:
                    totals[c["name"]] = totals.get(c["name"], 0.0) + c[key]
                    amount += c[key]
            row[key] = amount
            if stem in result.done and not is_volume:
                t.processed_km2 += amount
        if done and "item.json" in files:
            t.items.append(out / files["item.json"]["path"])
        if done and is_volume:
            t.volume_tiles += 1
            t.processed_volumes += stem in result.done
        elif done and "labels.tif" in files:
            t.labels.append(out / files["labels.tif"]["path"])
            gpkg = files.get("polygons.gpkg")
            t.gpkgs.append(out / gpkg["path"] if gpkg else None)
        t.rows.append(row)
    return t


def _threshold_facts(row: dict[str, Any], rep: dict[str, Any]) -> None:
    """Copy a tile report's threshold and its separability into the tile's summary row."""
    if rep.get("threshold") is None:
        return
    facts = rep.get("thresholding") or {}
    row.update(threshold=rep["threshold"], eta=facts.get("eta"), bimodal=facts.get("bimodal"))


def _percentiles(values: Sequence[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    import numpy as np

    p50, p95 = np.percentile(np.asarray(values, dtype=float), [50, 95])
    return float(p50), float(p95)


def write_summary(
    out: Path,
    journal: Any,
    stems: Sequence[str],
    result: Any,
    *,
    polygons: bool = True,
    cog: bool = False,
    thresholds: dict[str, Any] | None = None,
) -> tuple[dict[str, Path], list[str]]:
    """Write the batch mosaics and ``summary.json``/``summary.md`` into ``out``; return them.

    Raster tiles give ``mosaic.vrt`` (when on one grid), ``polygons.gpkg`` (``polygons``
    and the tiles have polygons: regions cut by tile edges joined,
    :func:`geomed_seg.batch.vectors.merge_polygons`) and ``mosaic.tif`` (``cog``:
    :func:`geomed_seg.batch.mosaic.write_cog_mosaic`); volume tiles give none of them (a note
    says so). Class areas (km²) or volumes (mL) are summed over every done tile of the
    manifest from its ``report.json``; throughput (km²/s, volumes/h) counts only the tiles processed in this
    run (wall s of ``result``). Per-tile seconds p50/p95 are over the done tiles;
    ``peak_worker_rss_mb`` is the largest ``worker_peak_rss_mb`` of the tile records.
    ``thresholds`` (:func:`geomed_seg.batch.runner.run_batch`) says which classical
    threshold(s) were used, their scope and separability; with scope ``tile`` each tile's
    own threshold is listed (from its report) and tiles whose histogram is not bimodal
    get a note (``thresholds`` is updated in place with them).
    ``item.json`` is the batch's STAC Item linking every done tile's item
    (:func:`geomed_seg.pipelines.stac.write_batch_item`).
    ``report.html`` is the batch's page (:func:`geomed_seg.pipelines.report_html.render_batch`).
    Returns ``({"mosaic"|"polygons"|"cog"|"summary"|"summary_md"|"stac"|"report_html": path},
    notes)``.
    """
    t = _tally(out, journal, stems, result)
    if t.volume_tiles:
        outputs: dict[str, Path] = {}
        notes = [f"{t.volume_tiles} volume tiles: no VRT, COG or polygon mosaic (rasters only)"]
    else:
        outputs, notes = write_mosaics(out, t.labels, t.gpkgs, polygons=polygons, cog=cog)
    _tile_thresholds(thresholds, t, notes)
    summary = _summary(t, journal, stems, result, outputs, notes, thresholds)
    with atomic_output(out / "summary.json", overwrite=True) as tmp:
        tmp.write_text(json.dumps(summary, indent=2, sort_keys=True), encoding="utf-8")
    outputs["summary"] = out / "summary.json"
    with atomic_output(out / "summary.md", overwrite=True) as tmp:
        tmp.write_text(_markdown(summary), encoding="utf-8")
    outputs["summary_md"] = out / "summary.md"
    from geomed_seg.pipelines.stac import write_batch_item

    started = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=result.seconds or 0.0)
    item = write_batch_item(out, t.items, outputs, started)
    if item is not None:
        outputs["stac"] = item
    outputs["report_html"] = _write_html(out, journal, stems, summary, outputs)
    return outputs, notes


def _write_html(
    out: Path, journal: Any, stems: Sequence[str], summary: dict, outputs: dict
) -> Path:
    """``report.html`` of the batch, linking each done tile's own report.html."""
    from geomed_seg.pipelines import report_html

    pages = {}
    for stem in stems:
        files = journal.records.get(stem, {}).get("outputs", {})
        rep = files.get("report.html") or files.get("report.json")
        if rep and rep.get("path"):
            pages[stem] = (out / rep["path"]).with_name("report.html")
    text = report_html.render_batch(summary, outputs, out, pages)
    return report_html.write_html(text, out / "report.html", overwrite=True)


def _tile_thresholds(thresholds: dict[str, Any] | None, t: _Tally, notes: list[str]) -> None:
    """With threshold scope ``tile``: list each tile's threshold, note the non-bimodal ones."""
    if thresholds is None or thresholds.get("scope") != "tile":
        return
    from geomed_seg.batch.thresholds import tile_scope_summary

    thresholds.update(tile_scope_summary(thresholds.get("method"), t.rows))
    bad = thresholds["not_bimodal"]
    if bad:
        notes.append(f"threshold scope tile: {len(bad)} tiles have a histogram that is not "
                     f"bimodal ({', '.join(bad)}): their Otsu thresholds are doubtful")  # fmt: skip


def _summary(
    t: _Tally,
    journal: Any,
    stems: Sequence[str],
    result: Any,
    outputs: dict[str, Path],
    notes: list[str],
    thresholds: dict[str, Any] | None,
) -> dict[str, Any]:
    """The ``summary.json`` mapping: counts, class totals, throughput, per-tile rows."""
    secs = [r["seconds"] for r in t.rows if r["status"] in ("done", "skipped") and r["seconds"]]
    p50, p95 = _percentiles(secs)
    rss = [r["worker_peak_rss_mb"] for r in t.rows if r["worker_peak_rss_mb"] is not None]
    per_s = result.seconds or None
    per_km2, per_vol = (None, per_s) if t.volume_tiles else (per_s, None)
    return {
        "config_hash": (journal.header or {}).get("config_hash"),
        "finished": time.time(),
        "kind": "volume" if t.volume_tiles else ("raster" if t.labels else None),
        "tiles": len(stems),
        "done": len(result.done),
        "skipped": len(result.skipped),
        "failed": len(result.failed),
        "failed_tiles": result.failed,
        "class_area_km2": t.area_km2,
        "class_volume_ml": t.volume_ml,
        "processed_km2": t.processed_km2,
        "processed_volumes": t.processed_volumes,
        "seconds": result.seconds,
        "throughput_km2_per_s": t.processed_km2 / per_km2 if per_km2 else None,
        "throughput_volumes_per_h": t.processed_volumes * 3600 / per_vol if per_vol else None,
        "tile_seconds_p50": p50,
        "tile_seconds_p95": p95,
        "peak_worker_rss_mb": max(rss) if rss else None,
        "dashboard": result.dashboard,
        "outputs": {k: p.name for k, p in outputs.items()},
        "notes": notes,
        "thresholds": thresholds,
        "per_tile": t.rows,
    }


def _num(v: float | None, fmt: str) -> str:
    return "–" if v is None else format(v, fmt)


def _threshold_lines(th: dict[str, Any] | None) -> list[str]:
    """``summary.md`` lines for the thresholds section (none without a threshold)."""
    if not th:
        return []
    head = f"- threshold ({th.get('method')}, scope {th['scope']})"
    if th["scope"] == "batch":
        sep = (
            f"separability eta {_num(th.get('eta'), '.3f')}, valley {_num(th.get('valley'), '.2f')}"
        )
        return [f"{head}: {_num(th['thresholds'][0], '.4f')} over {th.get('inputs')} inputs "
                f"({th.get('n')} px; {sep}; bimodal: {th.get('bimodal')})"]  # fmt: skip
    if th["scope"] == "fixed":
        return [f"{head}: {th['thresholds'][0]:.4f} (model.threshold)"]
    if th["scope"] == "tile":
        return [f"{head}: {stem} {_num(v['threshold'], '.4f')} (eta {_num(v['eta'], '.3f')})"
                for stem, v in th.get("per_tile", {}).items()] or [head]  # fmt: skip
    return [f"{head}: each case on its own"]


def _markdown(s: dict[str, Any]) -> str:
    """``summary.md``: totals, throughput, notes and one table row per tile."""
    volume = s["kind"] == "volume"
    if volume:
        speed = _num(s["throughput_volumes_per_h"] if s["processed_volumes"] else None, ".1f")
        speed += " volumes/h"
    else:
        speed = _num(s["throughput_km2_per_s"] if s["processed_km2"] else None, ".3f") + " km²/s"
    md = [
        "# Batch summary",
        "",
        f"- tiles: {s['tiles']} (done {s['done']}, skipped {s['skipped']}, failed {s['failed']})",
        f"- wall time: {s['seconds']:.1f} s; throughput: {speed}",
        f"- seconds per tile: p50 {_num(s['tile_seconds_p50'], '.2f')}, "
        f"p95 {_num(s['tile_seconds_p95'], '.2f')}; peak worker RSS: "
        f"{_num(s['peak_worker_rss_mb'], '.0f')} MB",
        *[f"- class {name}: {km2:.4f} km²" for name, km2 in sorted(s["class_area_km2"].items())],
        *[f"- class {name}: {ml:.2f} mL" for name, ml in sorted(s["class_volume_ml"].items())],
        *_threshold_lines(s.get("thresholds")),
        *[f"- output: {name}" for name in s["outputs"].values()],
        *[f"- note: {n}" for n in s["notes"]],
        "",
        f"| tile | status | seconds | {'volume mL' if volume else 'area km²'} | "
        "peak RSS MB | error |",
        "|---|---|---|---|---|---|",
    ]
    for r in s["per_tile"]:
        amount = r.get("volume_ml", r.get("area_km2"))
        md.append(
            f"| {r['stem']} | {r['status']} | {_num(r['seconds'], '.2f').replace('–', '')} | "
            f"{_num(amount, '.2f' if volume else '.4f').replace('–', '')} | "
            f"{_num(r['worker_peak_rss_mb'], '.0f').replace('–', '')} | {r['error'] or ''} |"
        )
    return "\n".join(md) + "\n"
