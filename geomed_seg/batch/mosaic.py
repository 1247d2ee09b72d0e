"""Batch outputs: a VRT mosaic of the tiles' label rasters, and ``summary.json``/``summary.md``.

The VRT XML is written by hand: GDAL's ``gdalbuildvrt`` is not shipped with the rasterio
wheels and rasterio has no mosaic-VRT builder. One ``SimpleSource`` per tile, placed by its
geotransform; tiles must share CRS and pixel size and sit on one pixel grid, else no VRT is
written and the summary says why.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from geomed_seg.io.atomic import atomic_output

_GDAL_TYPES = {"uint8": "Byte", "int8": "Int8", "uint16": "UInt16", "int16": "Int16",
               "uint32": "UInt32", "int32": "Int32", "float32": "Float32",
               "float64": "Float64"}  # fmt: skip


def write_vrt(tiles: Sequence[Path], path: Path) -> str | None:
    """Write a mosaic VRT of single-band ``tiles`` at ``path``; return a note if not possible.

    Source file names are written relative to the VRT's folder.
    """
    import rasterio

    if not tiles:
        return "no label tiles: no mosaic"
    metas = []
    for t in tiles:
        with rasterio.open(t) as ds:
            metas.append((t, ds.crs, ds.transform, ds.width, ds.height, ds.dtypes[0], ds.nodata))
    _, crs, tr0, *_ = metas[0]
    dtype, nodata = metas[0][5], metas[0][6]
    for t, c, tr, _w, _h, dt, _nd in metas:
        if c != crs:
            return f"{t}: CRS {c} differs from {crs}: no mosaic"
        if tr.b or tr.d or not (math.isclose(tr.a, tr0.a) and math.isclose(tr.e, tr0.e)):
            return f"{t}: pixel size/rotation {tuple(tr)[:6]} differs: no mosaic"
        if dt != dtype:
            return f"{t}: data type {dt} differs from {dtype}: no mosaic"
    x0 = min(tr.c for _, _, tr, *_ in metas)
    y0 = max(tr.f for _, _, tr, *_ in metas)  # north-up: e < 0
    places, width, height = [], 0, 0
    for t, _c, tr, w, h, *_ in metas:
        fx, fy = (tr.c - x0) / tr0.a, (tr.f - y0) / tr0.e
        ix, iy = round(fx), round(fy)
        if abs(fx - ix) > 1e-6 or abs(fy - iy) > 1e-6:
            return f"{t}: not on the pixel grid of {metas[0][0]}: no mosaic"
        places.append((t, ix, iy, w, h))
        width, height = max(width, ix + w), max(height, iy + h)
    base = path.parent.resolve()
    lines = [f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">']
    if crs is not None:
        lines.append(f"  <SRS>{escape(crs.to_wkt())}</SRS>")
    lines.append(f"  <GeoTransform>{x0!r}, {tr0.a!r}, 0.0, {y0!r}, 0.0, {tr0.e!r}</GeoTransform>")
    lines.append(f'  <VRTRasterBand dataType="{_GDAL_TYPES[dtype]}" band="1">')
    if nodata is not None:
        lines.append(f"    <NoDataValue>{nodata!r}</NoDataValue>")
    for t, ix, iy, w, h in places:
        rel = os.path.relpath(Path(t).resolve(), base)
        lines += [
            "    <SimpleSource>",
            f'      <SourceFilename relativeToVRT="1">{escape(rel)}</SourceFilename>',
            "      <SourceBand>1</SourceBand>",
            f'      <SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/>',
            f'      <DstRect xOff="{ix}" yOff="{iy}" xSize="{w}" ySize="{h}"/>',
            "    </SimpleSource>",
        ]
    lines += ["  </VRTRasterBand>", "</VRTDataset>", ""]
    with atomic_output(path, overwrite=True) as tmp:
        tmp.write_text("\n".join(lines), encoding="utf-8")
    return None


def _tile_report(out: Path, rec: dict[str, Any]) -> dict[str, Any] | None:
    rep = rec.get("outputs", {}).get("report.json")
    if rep is None:
        return None
    try:
        return json.loads((out / rep["path"]).read_text())
    except (OSError, ValueError):
        return None


def write_summary(out: Path, journal, stems: Sequence[str], result) -> tuple[dict, list[str]]:
    """Write ``mosaic.vrt`` (when possible), ``summary.json`` and ``summary.md`` into ``out``.

    Class areas (km²) are summed over every done tile of the manifest from its
    ``report.json``; throughput counts only the tiles processed in this run (km² / wall s).
    """
    notes: list[str] = []
    areas: dict[str, float] = {}
    tiles, labels, processed_km2 = [], [], 0.0
    for stem in stems:
        rec = journal.records.get(stem, {})
        status = "skipped" if stem in result.skipped else rec.get("status", "not run")
        row = {"stem": stem, "status": status, "input": rec.get("input"),
               "seconds": rec.get("seconds"), "attempts": rec.get("attempts"),
               "error": rec.get("error")}  # fmt: skip
        rep = _tile_report(out, rec) if rec.get("status") == "done" else None
        if rep is not None:
            km2 = 0.0
            for c in rep.get("classes", []):
                if "area_km2" in c:
                    areas[c["name"]] = areas.get(c["name"], 0.0) + c["area_km2"]
                    km2 += c["area_km2"]
            row["area_km2"] = km2
            if stem in result.done:
                processed_km2 += km2
        lab = rec.get("outputs", {}).get("labels.tif")
        if rec.get("status") == "done" and lab:
            labels.append(out / lab["path"])
        tiles.append(row)
    outputs: dict[str, Path] = {}
    note = write_vrt(labels, out / "mosaic.vrt")
    if note:
        notes.append(note)
    else:
        outputs["mosaic"] = out / "mosaic.vrt"
    summary = {
        "config_hash": (journal.header or {}).get("config_hash"),
        "finished": time.time(),
        "tiles": len(stems),
        "done": len(result.done),
        "skipped": len(result.skipped),
        "failed": len(result.failed),
        "failed_tiles": result.failed,
        "class_area_km2": areas,
        "processed_km2": processed_km2,
        "seconds": result.seconds,
        "throughput_km2_per_s": processed_km2 / result.seconds if result.seconds else None,
        "dashboard": result.dashboard,
        "notes": notes,
        "per_tile": tiles,
    }
    with atomic_output(out / "summary.json", overwrite=True) as tmp:
        tmp.write_text(json.dumps(summary, indent=2, sort_keys=True), encoding="utf-8")
    outputs["summary"] = out / "summary.json"
    md = [
        "# Batch summary",
        "",
        f"- tiles: {len(stems)} (done {len(result.done)}, skipped {len(result.skipped)}, "
        f"failed {len(result.failed)})",
        f"- wall time: {result.seconds:.1f} s; throughput: "
        + (f"{summary['throughput_km2_per_s']:.3f} km²/s" if processed_km2 else "–"),
        *[f"- class {name}: {km2:.4f} km²" for name, km2 in sorted(areas.items())],
        *[f"- note: {n}" for n in notes],
        "",
        "| tile | status | seconds | area km² | error |",
        "|---|---|---|---|---|",
    ]
    for r in tiles:
        sec = "" if r["seconds"] is None else f"{r['seconds']:.2f}"
        area = f"{r['area_km2']:.4f}" if "area_km2" in r else ""
        md.append(f"| {r['stem']} | {r['status']} | {sec} | {area} | {r['error'] or ''} |")
    with atomic_output(out / "summary.md", overwrite=True) as tmp:
        tmp.write_text("\n".join(md) + "\n", encoding="utf-8")
    outputs["summary_md"] = out / "summary.md"
    return outputs, notes
