"""Render evaluation results: rich table, JSON, CSV, Markdown, and a confusion-matrix plot.

Every view says what it measured against what: the prediction and reference, the grid, where
the class names come from, the metric set with units (table and Markdown headers carry the
area and distance units), and a headline that names each class or region. A folder of cases
renders one row per case plus the mean (:meth:`FolderResult.case_table`).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Sequence
from typing import Any

from geomed_seg.errors import InvalidInputError
from geomed_seg.metrics.evaluate import EvaluationResult, FolderResult, rows_to_columns

FORMATS = ("table", "json", "csv", "md")

#: Output suffix -> format, for ``-o``.
SUFFIX_FORMATS = {".csv": "csv", ".json": "json", ".md": "md", ".txt": "table"}

#: Metrics shown per case in the folder table / Markdown views (CSV and JSON keep everything).
_CASE_METRICS = ("dice", "hd95", "nsd", "global_dsc", "global_hd95", "global_nsd", "f1",
                 "lesionwise_dsc_mean", "lesionwise_hd95_mean")  # fmt: skip
_DISTANCE_COLS = {"hd", "hd95", "assd", "global_hd95", "lesionwise_hd95_mean",
                  "lesionwise_hd95_std"}  # fmt: skip

#: Columns shown in the table / Markdown views (CSV and JSON keep everything).
_CLASS_COLS = ("index", "name", "dice", "iou", "tversky", "precision", "recall", "specificity",
               "ref_area", "pred_area", "hd", "hd95", "assd", "nsd")  # fmt: skip
_REGION_COLS = ("region", "global_dsc", "global_nsd", "global_hd95", "tp", "fp", "fn", "f1",
                "lesionwise_dsc_mean", "lesionwise_nsd_mean", "lesionwise_hd95_mean")  # fmt: skip


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
    return v


def format_for(path: str | os.PathLike, fmt: str | None = None) -> str:
    """Return the format of an output file: its suffix decides; ``fmt`` must agree if given."""
    suffix = os.path.splitext(str(path))[1].lower()
    by_suffix = SUFFIX_FORMATS.get(suffix)
    if by_suffix is None:
        known = ", ".join(SUFFIX_FORMATS)
        raise InvalidInputError(f"{path}: unknown report suffix {suffix!r}; use one of {known}")
    if fmt is not None and fmt != by_suffix:
        raise InvalidInputError(f"{path}: --format {fmt} contradicts the {suffix} suffix")
    return by_suffix


def _units(col: str, result: EvaluationResult | FolderResult) -> str:
    """Column header with its unit (``hd95 (mm)``, ``ref_area (mm3)``)."""
    first = next(iter(result.cases.values()), None) if isinstance(result, FolderResult) else result
    if first is None:
        return col
    if any(col.endswith(d) for d in _DISTANCE_COLS) and first.distance_unit:
        return f"{col} ({first.distance_unit})"
    if col.endswith(("ref_area", "pred_area")):
        return f"{col} ({first.overlap.area_unit})"
    return col


def _tables(result: EvaluationResult | FolderResult) -> list[tuple[str, list[str], list[dict]]]:
    if isinstance(result, FolderResult):
        rows = result.case_table(_CASE_METRICS)
        return [("per case, then the mean over cases", rows_to_columns(rows), rows)]
    rows = result.rows()
    cls = [r for r in rows if r["kind"] == "class"]
    reg = [r for r in rows if r["kind"] == "region"]
    out = [("classes", [c for c in _CLASS_COLS if any(c in r for r in cls)], cls)]
    if reg:
        out.append((f"BraTS {result.brats_convention} regions", list(_REGION_COLS), reg))
    return out


def render(result: EvaluationResult | FolderResult, fmt: str = "table") -> str:
    """Return ``result`` as text in ``fmt`` (table, json, csv or md)."""
    if fmt not in FORMATS:
        raise InvalidInputError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt == "json":
        if isinstance(result, FolderResult):
            data: Any = {
                "per_case": result.case_table(),
                "cases": {k: v.to_dict() for k, v in result.cases.items()},
                "summary": result.summary(),
                "missing_pred": result.missing_pred,
                "missing_ref": result.missing_ref,
            }
        else:
            data = result.to_dict()
        return json.dumps(_deep_clean(data), indent=2)
    if fmt == "csv":
        rows = result.case_table() if isinstance(result, FolderResult) else result.rows()
        return to_csv(rows)
    if fmt == "md":
        parts = []
        for title, cols, rows in _tables(result):
            parts.append(f"**{title}**\n")
            parts.append("| " + " | ".join(_units(c, result) for c in cols) + " |")
            parts.append("|" + "---|" * len(cols))
            parts.extend("| " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |" for r in rows)
            parts.append("")
        parts.extend(_extra_lines(result))
        return "\n".join(parts)
    return _rich_table(result)


def _deep_clean(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _deep_clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_deep_clean(v) for v in x]
    if hasattr(x, "item") and not isinstance(x, (str, bytes)):
        try:
            x = x.item()
        except (ValueError, AttributeError):
            pass
    return _clean(x)


def _folder_metric_lines(result: FolderResult) -> list[str]:
    """Metric-set lines of a folder run: once when all cases share them, else per case.

    Cases at different spacings have different BraTS NSD tolerances (half the smallest
    spacing), so the first case's line would misstate the others'.
    """
    sets = {case: res.metric_set() for case, res in result.cases.items()}
    common = [m for m in next(iter(sets.values()), []) if all(m in v for v in sets.values())]
    lines = [f"metrics: {m}" for m in common]
    for case, metric_set in sets.items():
        lines += [f"metrics ({case}): {m}" for m in metric_set if m not in common]
    return lines


def _extra_lines(result: EvaluationResult | FolderResult) -> list[str]:
    lines = []
    if isinstance(result, FolderResult):
        lines.append(f"cases evaluated: {len(result.cases)}")
        lines += _folder_metric_lines(result)
        if result.missing_pred:
            lines.append(f"MISSING prediction for: {', '.join(result.missing_pred)}")
        if result.missing_ref:
            lines.append(f"MISSING reference for: {', '.join(result.missing_ref)}")
    else:
        lines.append(f"prediction: {result.pred_path or 'in memory'}")
        lines.append(f"reference: {result.ref_path or 'in memory'}")
        lines.append(f"grid: {result.grid}")
        lines += [f"metrics: {m}" for m in result.metric_set()]
        lines += result.headline()
        ov = result.overlap
        if ov.nodata_pred or ov.outside_pred or ov.n_excluded:
            lines.append(
                f"confusion: {ov.nodata_pred} samples predicted nodata and "
                f"{sum(ov.outside_pred.values())} with an unknown label count as misses; "
                f"{ov.n_excluded} reference samples outside the classes excluded"
            )
    return lines


def _rich_table(result: EvaluationResult | FolderResult) -> str:
    from rich.console import Console
    from rich.table import Table

    buf = io.StringIO()
    console = Console(file=buf, width=200, force_terminal=False, color_system=None)
    for title, cols, rows in _tables(result):
        table = Table(title=title)
        for c in cols:
            table.add_column(
                _units(c, result),
                justify="right" if c not in ("name", "region", "kind", "stat", "case") else "left",
            )
        for r in rows:
            table.add_row(*(_fmt(r.get(c, "")) for c in cols))
        console.print(table)
    for line in _extra_lines(result):
        console.print(line)
    return buf.getvalue()


def to_csv(rows: Sequence[dict[str, Any]]) -> str:
    """Rows as CSV text (header = union of keys), floats at full precision (``repr``)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=rows_to_columns(rows), extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: repr(float(v)) if isinstance(v, float) else v for k, v in r.items()})
    return buf.getvalue()


def confusion_figure(result: EvaluationResult, classes_source: str | None = None):
    """Return the figure of :func:`plot`: confusion matrix and per-class Dice / IoU bars.

    Axes are labelled ``"index name"``; each cell shows the row fraction and the sample
    count; the title names where the class names come from. Rows are the reference,
    columns the prediction (samples predicted outside the classes are counted in the label).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    ov = result.overlap
    n = len(ov.labels)
    ticks = [f"{i} {name}" for i, name in zip(ov.labels, ov.names, strict=True)]
    conf = ov.confusion[:, :n].astype(float)
    norm = conf / np.maximum(conf.sum(axis=1, keepdims=True), 1)
    side = max(4.5, 0.55 * n + 3)
    fig, (a0, a1) = plt.subplots(1, 2, figsize=(2 * side + 1.5, side), layout="constrained")
    im = a0.imshow(norm, cmap="viridis", vmin=0, vmax=1)
    a0.set_xticks(range(n), ticks, rotation=45, ha="right", rotation_mode="anchor")
    a0.set_yticks(range(n), ticks)
    if n <= 12:
        for r in range(n):
            for c in range(n):
                a0.text(c, r, f"{norm[r, c]:.2f}\n{int(conf[r, c])}", ha="center", va="center",
                        fontsize=7, color="white" if norm[r, c] < 0.6 else "black")  # fmt: skip
    outside = int(ov.confusion[:, n:].sum())
    a0.set_xlabel("prediction" + (f" ({outside} samples outside the classes)" if outside else ""))
    a0.set_ylabel("reference")
    source = classes_source or getattr(result, "classes_source", "") or "the labels"
    a0.set_title(f"confusion (row-normalised; fraction and count)\nclass names from {source}",
                 fontsize=9)  # fmt: skip
    fig.colorbar(im, ax=a0, label="row fraction")
    x = np.arange(n)
    a1.bar(x - 0.2, [c.dice for c in ov.classes], 0.4, label="Dice")
    a1.bar(x + 0.2, [c.iou for c in ov.classes], 0.4, label="IoU")
    a1.set_xticks(x, ticks, rotation=45, ha="right", rotation_mode="anchor")
    a1.set_ylim(0, 1)
    a1.set_ylabel("score")
    a1.legend()
    a1.set_title("per-class scores", fontsize=9)
    return fig


def plot(result: EvaluationResult, path: str | os.PathLike) -> None:
    """Save a PNG with the row-normalised confusion matrix and per-class Dice / IoU bars.

    Saved with ``bbox_inches="tight"`` so long class names and axis labels are never clipped.
    """
    import matplotlib.pyplot as plt

    fig = confusion_figure(result)
    fig.savefig(path, dpi=100, bbox_inches="tight", pad_inches=0.15)
    plt.close(fig)
