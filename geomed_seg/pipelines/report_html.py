"""``report.html``: one static, self-contained page per run and per batch.

The quicklook is embedded as a ``data:image/png;base64`` URI (the page opens alone, from
e-mail or an archive); every other output is a link relative to the page, so it resolves
wherever the folder is copied. Tables come from ``report.json`` (classes with ground areas or
volumes, metrics, engine) and provenance from ``run.json`` (input SHA-256, model card,
package versions, the validated config). Written by hand with :mod:`html` escaping: no
template engine is a dependency, and the page is a few tables.
"""

from __future__ import annotations

import base64
import html
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from geomed_seg.io.atomic import atomic_output, readable

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.15em;border-bottom:1px solid #ccc;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .6em;
text-align:left}th{background:#f2f2f2}td.n{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;border:1px solid #ddd}.warn{background:#fff3cd;padding:.5em;border:1px solid #e0c060}
pre{background:#f6f6f6;padding:.6em;overflow:auto;font-size:.85em}code{font-size:.9em}
"""


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _num(v: Any, fmt: str = ".4f") -> str:
    if v is None:
        return "–"
    return format(v, fmt) if isinstance(v, float) else _e(v)


def table(head: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """An HTML table; numbers right-aligned, everything escaped."""
    out = ["<table>"]
    if any(head):
        out.append("<tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>")
    for r in rows:
        cells = "".join(
            f'<td class="n">{_num(v)}</td>' if isinstance(v, int | float) else f"<td>{v}</td>"
            for v in r
        )
        out.append(f"<tr>{cells}</tr>")
    return "\n".join(out) + "</table>"


def data_uri(png: Path) -> str:
    """``data:image/png;base64,...`` of a PNG file."""
    return "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode("ascii")


def link(target: str | os.PathLike, folder: Path) -> str:
    """An ``<a>`` to ``target`` with a href relative to ``folder`` (forward slashes)."""
    rel = Path(os.path.relpath(Path(target).resolve(), folder.resolve())).as_posix()
    return f'<a href="{_e(rel)}">{_e(rel)}</a>'


def _class_table(rows: Sequence[Mapping[str, Any]]) -> str:
    if not rows:
        return "<p>no classes</p>"
    r0 = rows[0]
    if "area_km2" in r0:
        return table(["class", "name", "pixels", "km²", "ha"],
                     [(r["index"], _e(r["name"]), r["samples"], r["area_km2"], r["area_ha"])
                      for r in rows])  # fmt: skip
    if "area_crs_units2" in r0:
        return "<p>Areas in CRS units² (no CRS or a local CRS: no ground units).</p>" + table(
            ["class", "name", "pixels", "CRS units²"],
            [(r["index"], _e(r["name"]), r["samples"], r["area_crs_units2"]) for r in rows])  # fmt: skip
    return table(["class", "name", "voxels", "ml"],
                 [(r["index"], _e(r["name"]), r["samples"], r["volume_ml"]) for r in rows])  # fmt: skip


def _metrics_table(metrics: Sequence[Mapping[str, Any]]) -> str:
    keys = [k for k in ("dice", "iou", "hd95", "nsd") if any(m.get(k) is not None for m in metrics)]
    return table(["what", *keys], [(_e(m["what"]), *(m.get(k) for k in keys)) for m in metrics])


def _pre(obj: Any) -> str:
    return f"<pre>{_e(json.dumps(obj, indent=2, default=str))}</pre>"


def _page(title: str, body: list[str]) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")  # fmt: skip


def render_run(
    report: Mapping[str, Any],
    provenance: Mapping[str, Any],
    folder: Path,
    outputs: Mapping[str, Any] | None = None,
) -> str:
    """The HTML page of one run (``report.json`` and ``run.json`` mappings, in ``folder``).

    ``outputs`` (name -> path; default the report's) are linked relative to ``folder``.
    """
    title = f"{report['pipeline']} — run report"
    body = [f"<h1>{_e(title)}</h1>"]
    if report.get("synthetic"):
        body.append('<p class="warn"><b>SYNTHETIC input</b>: no clinical meaning.</p>')
    outputs = dict(report.get("outputs", {}) if outputs is None else outputs)
    ql = outputs.get("quicklook") and readable(outputs["quicklook"])
    if ql and ql.is_file():
        body += ["<h2>Quicklook</h2>", f'<img alt="quicklook" src="{data_uri(ql)}">']
    facts = [("method", _e(report.get("method"))), ("grid", _e(report.get("grid", ""))),
             ("seconds", f"{report.get('seconds', 0):.2f}")]  # fmt: skip
    if report.get("threshold") is not None:
        facts.append(("threshold", f"{report['threshold']:.4f}"))
    body += ["<h2>Run</h2>", table(["", ""], facts)]
    body += [f"<p>note: {_e(n)}</p>" for n in report.get("notes", [])]
    body += ["<h2>Classes</h2>", _class_table(report.get("classes", []))]
    if report.get("metrics"):
        ev = report.get("evaluation") or {}
        body += ["<h2>Evaluation</h2>"]
        if ev.get("reference"):
            body.append(f"<p>against <code>{_e(ev['reference'])}</code></p>")
        body.append(_metrics_table(report["metrics"]))
    if report.get("engine"):
        body += [
            "<h2>Engine</h2>",
            table(["", ""], [(_e(k), _e(v)) for k, v in report["engine"].items()]),
        ]
    body += ["<h2>Outputs</h2>",
             table(["output", "file"], [(_e(k), link(v, folder)) for k, v in outputs.items()])]  # fmt: skip
    body += ["<h2>Provenance</h2>"]
    inputs = provenance.get("inputs", {})
    body.append(
        table(["input", "SHA-256"], [(_e(k), f"<code>{_e(v)}</code>") for k, v in inputs.items()])
    )
    versions = provenance.get("versions", {})
    body.append(table(["package", "version"], [(_e(k), _e(v)) for k, v in versions.items()]))
    body += ["<details><summary>model card</summary>", _pre(provenance.get("model_card")),
             "</details>", "<details><summary>configuration</summary>",
             _pre(provenance.get("config")), "</details>"]  # fmt: skip
    return _page(title, body)


def _when(epoch: Any) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(float(epoch), dt.UTC).isoformat(timespec="seconds")


def render_batch(
    summary: Mapping[str, Any],
    outputs: Mapping[str, Any],
    folder: Path,
    tile_pages: Mapping[str, Path] | None = None,
) -> str:
    """The HTML page of a batch: totals, class totals, notes, one row per tile with a link
    to its own ``report.html`` (``tile_pages``: stem -> path), links to the batch outputs."""
    title = "Batch report"
    body = [f"<h1>{title}</h1>"]
    facts = [(_e(k), _e(_when(v) if k == "finished" else v)) for k, v in summary.items()
             if v is not None and not isinstance(v, dict | list)]  # fmt: skip
    body += ["<h2>Totals</h2>", table(["", ""], facts)]
    for key, unit in (("class_area_km2", "km²"), ("class_volume_ml", "ml")):
        if summary.get(key):
            body += ["<h2>Classes (all done tiles)</h2>",
                     table(["class", unit], [(_e(k), float(v)) for k, v in summary[key].items()])]  # fmt: skip
    body += [f"<p>note: {_e(n)}</p>" for n in summary.get("notes", [])]
    pages = tile_pages or {}
    rows = []
    for r in summary.get("per_tile", []):
        page = pages.get(r["stem"])
        cell = link(page, folder) if page is not None and readable(page).is_file() else "–"
        amount = r.get("area_km2", r.get("volume_ml"))
        rows.append((_e(r["stem"]), _e(r["status"]), r.get("seconds"), amount, cell))
    if rows:
        unit = "ml" if summary.get("kind") == "volume" else "km²"
        body += ["<h2>Tiles</h2>", table(["tile", "status", "seconds", f"classified {unit}",
                                          "report"], rows)]  # fmt: skip
    body += ["<h2>Outputs</h2>", table(["output", "file"],
                                       [(_e(k), link(v, folder)) for k, v in outputs.items()])]  # fmt: skip
    return _page(title, body)


def write_html(text: str, path: Path, overwrite: bool) -> Path:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_output(path, overwrite) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")
    return path
