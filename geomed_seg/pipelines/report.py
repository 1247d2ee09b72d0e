"""Run reports: class areas/volumes in physical units, decisions, timing, metrics, provenance.

``report.json`` is the machine-readable truth; ``report.md`` renders it for people;
``run.json`` records provenance (package versions, the validated config, input SHA-256,
the model card) so a run can be repeated and audited.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np

from geomed_seg.core.grid import GeoGrid
from geomed_seg.core.ground import label_areas
from geomed_seg.core.image import Image
from geomed_seg.core.labels import ClassInfo
from geomed_seg.io.atomic import atomic_output

PACKAGES = (
    "geomed-seg",
    "numpy",
    "dask",
    "xarray",
    "rasterio",
    "nibabel",
    "SimpleITK",
    "pydicom",
    "highdicom",
    "scikit-image",
    "torch",
    "monai",
    "segmentation-models-pytorch",
    "pyogrio",
    "shapely",
)


def class_measures(labels: Image, classes: Sequence[ClassInfo]) -> list[dict[str, Any]]:
    """Return per-class sample counts and true ground areas or volumes.

    Rasters: ``area_m2``, ``area_km2``, ``area_ha`` (sums of each pixel's ground area,
    :mod:`geomed_seg.core.ground`: geodesic where the CRS's scale varies); a grid without a
    ground (no CRS, local CRS) gives ``area_crs_units2`` only. Every raster row names its
    ``area_unit`` and ``area_method``. Volumes: ``volume_mm3``, ``volume_ml``.
    Counts and areas are streamed per chunk; nodata samples are not counted.
    """
    arr = labels.darray[0]
    valid = labels.valid_mask()
    flat = da.where(valid, arr, 0).astype(np.int64)
    counts = da.bincount(flat.ravel(), weights=valid.ravel().astype(np.float64)).compute()
    raster = isinstance(labels.grid, GeoGrid)
    if raster:
        gu = labels.grid.ground
        areas = label_areas(labels.grid, flat, valid)
    names = {c.index: c.name for c in classes}
    rows = []
    for idx in sorted(set(names) | {i for i, n in enumerate(counts) if n > 0}):
        n = int(counts[idx]) if idx < len(counts) else 0
        row: dict[str, Any] = {"index": idx, "name": names.get(idx, str(idx)), "samples": n}
        if raster:
            a = float(areas[idx]) if idx < len(areas) else 0.0
            if gu.metric:
                row.update(area_m2=a, area_km2=a / 1e6, area_ha=a / 1e4)
            else:
                row.update(area_crs_units2=a)
            row.update(area_unit=gu.area_unit, area_method=gu.method)
        else:
            v = n * labels.grid.voxel_volume
            row.update(volume_mm3=v, volume_ml=v / 1000)
        rows.append(row)
    return rows


def sha256(path: Path) -> str:
    """Return the SHA-256 of a file, or of a folder's files in sorted order (hex)."""
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def versions() -> dict[str, str]:
    """Installed versions of the packages a run depends on."""
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, float) and not np.isfinite(x):
        return None
    if isinstance(x, Path):
        return str(x)
    return x


def write_json(data: dict[str, Any], path: str | os.PathLike, overwrite: bool) -> Path:
    """Write ``data`` as indented JSON atomically."""
    with atomic_output(path, overwrite) as tmp:
        Path(tmp).write_text(json.dumps(_jsonable(data), indent=2) + "\n")
    return Path(path)


def render_markdown(report: dict[str, Any]) -> str:
    """Return ``report`` as Markdown (title, decisions, class table, engine, metrics)."""
    lines = [f"# {report['pipeline']} — run report", ""]
    if report.get("synthetic"):
        lines += ["**SYNTHETIC input** (phantom tumour in real anatomy): no clinical meaning.", ""]
    lines += [f"- input: `{p}`" for p in report.get("inputs", [])]
    if report.get("grid"):
        lines.append(f"- grid: {report['grid']}")
    lines += [f"- method: {report['method']}", f"- seconds: {report['seconds']:.2f}"]
    if report.get("threshold") is not None:
        lines.append(f"- threshold: {report['threshold']:.4f}")
    lines += [f"- note: {n}" for n in report.get("notes", [])]
    lines += ["", "## Classes", ""]
    rows = report.get("classes", [])
    if rows and "area_km2" in rows[0]:
        lines += ["| class | name | pixels | km² | ha |", "|---|---|---|---|---|"]
        lines += [
            f"| {r['index']} | {r['name']} | {r['samples']} | {r['area_km2']:.4f} | "
            f"{r['area_ha']:.2f} |"
            for r in rows
        ]
    elif rows and "area_crs_units2" in rows[0]:
        lines += [
            "Areas in CRS units² (the grid has no CRS or a local CRS: no ground units).",
            "",
            "| class | name | pixels | CRS units² |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {r['index']} | {r['name']} | {r['samples']} | {r['area_crs_units2']:.6g} |"
            for r in rows
        ]
    elif rows:
        lines += ["| class | name | voxels | ml |", "|---|---|---|---|"]
        lines += [
            f"| {r['index']} | {r['name']} | {r['samples']} | {r['volume_ml']:.2f} |" for r in rows
        ]
    if report.get("engine"):
        lines += ["", "## Engine", ""]
        lines += [f"- {k}: {v}" for k, v in report["engine"].items()]
    if report.get("metrics"):
        lines += ["", "## Evaluation", ""] + _evaluation_header(report.get("evaluation") or {})
        unit = next((m.get("distance_unit") for m in report["metrics"] if m.get("distance_unit")),
                    None)  # fmt: skip
        distances = any(m.get("hd95") is not None for m in report["metrics"])
        head = "| what | Dice | IoU |"
        if distances:
            head += f" HD95 ({unit}) | NSD |"
        lines += ["", head, "|" + "---|" * (head.count("|") - 1)]
        for m in report["metrics"]:
            row = f"| {m['what']} | {_f(m.get('dice'))} | {_f(m.get('iou'))} |"
            if distances:
                row += f" {_f(m.get('hd95'))} | {_f(m.get('nsd'))} |"
            lines.append(row)
    if report.get("outputs"):
        lines += ["", "## Outputs", ""]
        lines += [f"- {k}: `{v}`" for k, v in report["outputs"].items()]
    return "\n".join(lines) + "\n"


def _evaluation_header(ev: dict[str, Any]) -> list[str]:
    """Lines naming the reference, grid, class names and metric set of an evaluation."""
    out = []
    if ev.get("reference"):
        out.append(f"- evaluated against: `{ev['reference']}`")
    if ev.get("grid"):
        out.append(f"- on the grid: {ev['grid']}")
    if ev.get("classes_source"):
        out.append(f"- class names from: {ev['classes_source']}")
    out += [f"- metrics: {m}" for m in ev.get("metric_set", [])]
    return out


def _f(v: Any) -> str:
    return "–" if v is None else f"{v:.4f}"


def write_report(report: dict[str, Any], folder: Path, overwrite: bool) -> dict[str, Path]:
    """Write ``report.json`` and ``report.md`` into ``folder``; return their paths."""
    md = folder / "report.md"
    with atomic_output(md, overwrite) as tmp:
        Path(tmp).write_text(render_markdown(report))
    return {
        "report (JSON)": write_json(report, folder / "report.json", overwrite),
        "report (Markdown)": md,
    }


def write_html(
    report: dict[str, Any],
    provenance: dict[str, Any],
    folder: Path,
    outputs: dict[str, Any],
    overwrite: bool,
) -> Path:
    """Write ``report.html`` (:mod:`geomed_seg.pipelines.report_html`) into ``folder``."""
    from geomed_seg.pipelines import report_html

    text = report_html.render_run(report, provenance, folder, outputs)
    return report_html.write_html(text, folder / "report.html", overwrite)
