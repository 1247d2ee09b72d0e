"""Batch outputs: the tiles' mosaics (VRT, optional COG) and ``summary.json``/``summary.md``.

:func:`tile_layout` places the tiles' label rasters on their common pixel grid (same CRS,
pixel size, rotation, data type, whole-pixel offsets in the shared grid's pixel space, so
rotated grids mosaic too); it is shared by the VRT, the COG mosaic and the
merged polygons (:mod:`geomed_seg.batch.vectors`). The VRT XML is written by hand: GDAL's
``gdalbuildvrt`` is not shipped with the rasterio wheels and rasterio has no mosaic-VRT
builder. One ``SimpleSource`` per tile; when the tiles are not on one grid no mosaic is
written and the summary says why, naming two tiles and the differing value. The COG mosaic is rio-cogeo's ``cog_translate`` of the VRT.
Volume tiles (NIfTI) get no mosaic; their summary counts volumes/h and class volumes (mL).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from affine import Affine

from geomed_seg.errors import GeometryError, InvalidInputError, WriteError
from geomed_seg.io.atomic import atomic_output

_GDAL_TYPES = {"uint8": "Byte", "int8": "Int8", "uint16": "UInt16", "int16": "Int16",
               "uint32": "UInt32", "int32": "Int32", "float32": "Float32",
               "float64": "Float64"}  # fmt: skip
#: Label outputs of volume tiles (the pipeline writes NIfTI for volumes).
_VOLUME_LABELS = ("labels.nii.gz", "labels.nii")


@dataclass(frozen=True)
class TilePlace:
    """Where one tile sits in the mosaic: pixel offsets and size (rows, cols)."""

    path: Path
    col_off: int
    row_off: int
    width: int
    height: int


@dataclass(frozen=True)
class TileLayout:
    """Tiles placed on one pixel grid: the mosaic's CRS, affine transform and size."""

    crs: Any
    transform: Affine
    width: int
    height: int
    dtype: str
    nodata: float | None
    places: tuple[TilePlace, ...]
    #: GCPs ``(row, col, x, y, z)`` in the mosaic's pixels when the tiles are GCP-georeferenced
    #: (then ``crs`` is the GCPs' CRS and ``transform`` the first tile's affine fit).
    gcps: tuple[tuple[float, ...], ...] | None = None


#: Largest difference (pixels) accepted between tiles' pixel vectors or whole-pixel offsets.
GRID_TOLERANCE_PX = 1e-6


@dataclass(frozen=True)
class _TileMeta:
    path: Path
    crs: Any
    transform: Affine
    width: int
    height: int
    dtype: str
    nodata: float | None
    georeference: str
    gcps: tuple[tuple[float, ...], ...] = ()


def _read_meta(path: Path) -> _TileMeta:
    import rasterio

    from geomed_seg.io.georef import read_grid

    with rasterio.open(path) as ds:
        grid = read_grid(ds)
        gcps = tuple(tuple(g[:5]) for g in grid.gcps or ())
        crs = grid.crs if grid.georeference == "gcps" else ds.crs
        transform = grid.transform if grid.georeference == "gcps" else ds.transform
        return _TileMeta(Path(path), crs, transform, ds.width, ds.height, ds.dtypes[0],
                         ds.nodata, grid.georeference, gcps)  # fmt: skip


def _gcp_difference(ref: _TileMeta, tile: _TileMeta, pair: str) -> str | None:
    """Why two GCP tiles are not windows of one GCP grid (same ground points, whole-pixel shift)."""
    if tile.crs != ref.crs:
        return f"{pair}: GCP CRS differs ({tile.crs} vs {ref.crs})"
    a, b = ref.gcps, tile.gcps
    ground = [g[2:5] for g in a] == [g[2:5] for g in b]
    if len(a) != len(b) or not ground:
        return f"{pair}: GCPs differ (not the same ground points): tiles cannot be placed"
    dc = {round(ga[1] - gb[1], 9) for ga, gb in zip(a, b, strict=True)}
    dr = {round(ga[0] - gb[0], 9) for ga, gb in zip(a, b, strict=True)}
    if len(dc) != 1 or len(dr) != 1:
        return (
            f"{pair}: GCP pixel positions are not one shift of each other: tiles cannot be placed"
        )
    if tile.dtype != ref.dtype:
        return f"{pair}: data type differs ({tile.dtype} vs {ref.dtype})"
    col, row = dc.pop(), dr.pop()
    frac = (col - round(col), row - round(row))
    if max(abs(f) for f in frac) > GRID_TOLERANCE_PX:
        shown = tuple(round(f, 6) + 0.0 for f in frac)
        return f"{pair}: sub-pixel offset {_fmt(shown)} px (not on one pixel grid)"
    return None


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.10g}" for v in values) + ")"


def _pixel_size(t: Affine) -> tuple[float, float]:
    """Lengths (CRS units) of the column and row vectors of ``t``."""
    return (math.hypot(t.a, t.d), math.hypot(t.b, t.e))


def _rotation_deg(t: Affine) -> tuple[float, float]:
    """Directions (degrees) of the column and row vectors of ``t`` (north-up: 0, -90)."""
    return (math.degrees(math.atan2(t.d, t.a)), math.degrees(math.atan2(t.e, t.b)))


def grid_difference(ref: _TileMeta, tile: _TileMeta) -> str | None:
    """Return why ``tile`` is not on ``ref``'s pixel grid (naming both), or None if it is.

    Checked in order: georeference kind, CRS, pixel size, rotation (direction of the pixel
    axes, flips and shear included), data type, sub-pixel offset. Pixel vectors must agree
    to :data:`GRID_TOLERANCE_PX` of a pixel and offsets be whole pixels to the same
    tolerance, measured in ``ref``'s pixel space (so rotated grids are handled alike).
    """
    pair = f"{tile.path} vs {ref.path}"
    if ref.georeference == tile.georeference == "gcps":  # windows of one GCP scene
        return _gcp_difference(ref, tile, pair)
    for m in (ref, tile):
        if m.georeference != "transform":
            how = {"gcps": "GCPs", "rpcs": "RPCs only", "none": "no georeference"}
            return (f"{m.path}: georeferenced by {how[m.georeference]}, not a geotransform: "
                    "tiles cannot be placed on one grid")  # fmt: skip
    if tile.crs != ref.crs:
        return f"{pair}: CRS differs ({tile.crs} vs {ref.crs})"
    t, r = tile.transform, ref.transform
    size_t, size_r = _pixel_size(t), _pixel_size(r)
    tol = GRID_TOLERANCE_PX * min(size_r)
    if any(abs(a - b) > tol for a, b in zip(size_t, size_r, strict=True)):
        return f"{pair}: pixel size differs ({_fmt(size_t)} vs {_fmt(size_r)} CRS units)"
    if any(abs(a - b) > tol for a, b in zip((t.a, t.b, t.d, t.e), (r.a, r.b, r.d, r.e),
                                            strict=True)):  # fmt: skip
        return (f"{pair}: rotation differs (pixel axes at {_fmt(_rotation_deg(t))} vs "
                f"{_fmt(_rotation_deg(r))} degrees)")  # fmt: skip
    if tile.dtype != ref.dtype:
        return f"{pair}: data type differs ({tile.dtype} vs {ref.dtype})"
    col, row = _offset(ref, tile)
    frac = (col - round(col), row - round(row))
    if max(abs(f) for f in frac) > GRID_TOLERANCE_PX:
        shown = tuple(round(f, 6) + 0.0 for f in frac)  # no float noise, no -0
        return f"{pair}: sub-pixel offset {_fmt(shown)} px (not on one pixel grid)"
    return None


def _offset(ref: _TileMeta, tile: _TileMeta) -> tuple[float, float]:
    """Fractional ``(col, row)`` of ``tile``'s origin in ``ref``'s pixel space."""
    if ref.gcps and tile.gcps:  # the same ground point sits at (col - c_off, row - r_off)
        return (ref.gcps[0][1] - tile.gcps[0][1], ref.gcps[0][0] - tile.gcps[0][0])
    return ~ref.transform @ (tile.transform.c, tile.transform.f)


def tile_layout(tiles: Sequence[Path]) -> TileLayout:
    """Return the placement of single-band ``tiles`` on their common pixel grid.

    Tiles share a grid when they have a geotransform with the same CRS, pixel size and
    rotation (the pixel vectors ``a, b, d, e`` agree) and their origins are whole-pixel
    offsets in the first tile's pixel space: rotated and south-up grids mosaic like
    north-up ones. The mosaic's transform is the first tile's, moved to the top-left tile
    of the layout (taken exactly from a tile that sits there, when one does).

    Raises
    ------
    GeometryError
        When there are no tiles, or two tiles differ in georeference kind, CRS, pixel size,
        rotation, data type or sub-pixel offset; the message names both tiles and the
        differing value (:func:`grid_difference`).
    """
    if not tiles:
        raise GeometryError("no label tiles")
    metas = [_read_meta(Path(t)) for t in tiles]
    ref = metas[0]
    offsets = []
    for m in metas:
        why = grid_difference(ref, m)
        if why:
            raise GeometryError(why)
        col, row = _offset(ref, m)
        offsets.append((round(col), round(row)))
    mx, my = min(o[0] for o in offsets), min(o[1] for o in offsets)
    corner = next((m for m, o in zip(metas, offsets, strict=True) if o == (mx, my)), None)
    origin = ref.transform @ Affine.translation(mx, my)
    transform = corner.transform if corner is not None else origin
    places = tuple(
        TilePlace(m.path, ix - mx, iy - my, m.width, m.height)
        for m, (ix, iy) in zip(metas, offsets, strict=True)
    )
    gcps = None
    if ref.georeference == "gcps":  # mosaic pixel = reference pixel - (mx, my)
        gcps = tuple((g[0] - my, g[1] - mx, *g[2:5]) for g in ref.gcps)
    return TileLayout(
        crs=ref.crs,
        transform=Affine(*tuple(transform)[:6]),
        width=max(p.col_off + p.width for p in places),
        height=max(p.row_off + p.height for p in places),
        dtype=ref.dtype,
        nodata=ref.nodata,
        places=places,
        gcps=gcps,
    )


def _tile_classes(tile: Path) -> tuple[str | None, dict[int, tuple[int, ...]] | None]:
    """The ``GEOMED_CLASSES`` tag and band-1 colour table of a label tile (None when absent)."""
    import rasterio

    from geomed_seg.io.cog import CLASSES_TAG

    with rasterio.open(tile) as src:
        tag = src.tags().get(CLASSES_TAG)
        try:
            cmap = src.colormap(1)
        except ValueError:  # no colour table
            cmap = None
    return tag, cmap


def _vrt_metadata(tile: Path) -> list[str]:
    """Dataset ``<Metadata>`` of the VRT: the tiles' class table tag (JSON)."""
    from geomed_seg.io.cog import CLASSES_TAG

    tag, _ = _tile_classes(tile)
    if not tag:
        return []
    return ["  <Metadata>", f'    <MDI key="{CLASSES_TAG}">{escape(tag)}</MDI>', "  </Metadata>"]


def _vrt_band_classes(tile: Path) -> list[str]:
    """Band-1 ``<CategoryNames>`` and palette ``<ColorTable>`` of the VRT, from a label tile.

    So ``mosaic.vrt`` opens in GDAL/QGIS with the same colours and class names as the tiles.
    """
    import json

    from geomed_seg.core.labels import parse_classes

    tag, cmap = _tile_classes(tile)
    lines: list[str] = []
    classes = parse_classes(json.loads(tag)) if tag else []
    if classes:
        by_index = {c.index: c.name for c in classes}
        lines.append("    <CategoryNames>")
        lines += [f"      <Category>{escape(by_index.get(i, ''))}</Category>"
                  for i in range(max(by_index) + 1)]  # fmt: skip
        lines.append("    </CategoryNames>")
    if cmap:
        lines.append("    <ColorInterp>Palette</ColorInterp>")
        lines.append("    <ColorTable>")
        for i in range(max(cmap) + 1):
            rgba = tuple(cmap.get(i, (0, 0, 0, 0))) + (255,) * (4 - len(cmap.get(i, (0,) * 4)))
            lines.append('      <Entry c1="{}" c2="{}" c3="{}" c4="{}"/>'.format(*rgba[:4]))
        lines.append("    </ColorTable>")
    return lines


def write_vrt(tiles: Sequence[Path], path: Path) -> str | None:
    """Write a mosaic VRT of single-band ``tiles`` at ``path``; return a note if not possible.

    Source file names are written relative to the VRT's folder. The first tile's colour
    table, category names and ``GEOMED_CLASSES`` tag are copied into the VRT, so the mosaic
    shows the tiles' classes.
    """
    try:
        lay = tile_layout(tiles)
    except GeometryError as exc:
        return f"{exc}: no mosaic"
    t = lay.transform
    base = path.parent.resolve()
    lines = [f'<VRTDataset rasterXSize="{lay.width}" rasterYSize="{lay.height}">']
    if lay.gcps is not None:  # GCP tiles: the mosaic keeps their GCPs (shifted), no transform
        wkt = escape(lay.crs.to_wkt(), {'"': "&quot;"}) if lay.crs is not None else ""
        lines.append(f'  <GCPList Projection="{wkt}">')
        lines += [f'    <GCP Id="{i + 1}" Pixel="{c!r}" Line="{r!r}" X="{x!r}" Y="{y!r}" '
                  f'Z="{z!r}"/>' for i, (r, c, x, y, z) in enumerate(lay.gcps)]  # fmt: skip
        lines.append("  </GCPList>")
    else:
        if lay.crs is not None:
            lines.append(f"  <SRS>{escape(lay.crs.to_wkt())}</SRS>")
        lines.append(
            f"  <GeoTransform>{t.c!r}, {t.a!r}, {t.b!r}, {t.f!r}, {t.d!r}, {t.e!r}</GeoTransform>"
        )
    lines += _vrt_metadata(lay.places[0].path)
    lines.append(f'  <VRTRasterBand dataType="{_GDAL_TYPES[lay.dtype]}" band="1">')
    if lay.nodata is not None:
        lines.append(f"    <NoDataValue>{lay.nodata!r}</NoDataValue>")
    lines += _vrt_band_classes(lay.places[0].path)
    for p in lay.places:
        rel = os.path.relpath(p.path.resolve(), base)
        lines += [
            "    <SimpleSource>",
            f'      <SourceFilename relativeToVRT="1">{escape(rel)}</SourceFilename>',
            "      <SourceBand>1</SourceBand>",
            f'      <SrcRect xOff="0" yOff="0" xSize="{p.width}" ySize="{p.height}"/>',
            f'      <DstRect xOff="{p.col_off}" yOff="{p.row_off}" xSize="{p.width}" '
            f'ySize="{p.height}"/>',
            "    </SimpleSource>",
        ]
    lines += ["  </VRTRasterBand>", "</VRTDataset>", ""]
    with atomic_output(path, overwrite=True) as tmp:
        tmp.write_text("\n".join(lines), encoding="utf-8")
    return None


def write_cog_mosaic(
    vrt: Path, path: Path, *, classes_from: Path | None = None, overwrite: bool = True
) -> Path:
    """Write the mosaic ``vrt`` as one Cloud-Optimised GeoTIFF at ``path``; return the path.

    rio-cogeo's ``cog_translate`` streams the VRT block by block (through a temporary GeoTIFF
    beside ``path`` when the mosaic is large) into 512-pixel DEFLATE tiles with internal
    overviews ("mode" for integer labels, else "nearest") and the VRT's nodata. From
    ``classes_from`` (a label tile written by :mod:`geomed_seg.io.cog`) come the colour table,
    the ``GEOMED_CLASSES`` tag and the category names / attribute table sidecar
    ``<path>.aux.xml``, as :mod:`geomed_seg.io.cog` writes them. Written atomically.
    """
    import warnings

    import numpy as np
    import rasterio
    from rasterio.errors import RasterioError
    from rio_cogeo.cogeo import cog_translate
    from rio_cogeo.profiles import cog_profiles

    from geomed_seg.core.labels import parse_classes
    from geomed_seg.io.cog import CLASSES_TAG, _pam_xml, gdal_message

    tag, cmap = None, None
    if classes_from is not None:
        with rasterio.open(classes_from) as src:
            tag = src.tags().get(CLASSES_TAG)
            try:
                cmap = src.colormap(1)
            except ValueError:  # no colour table
                cmap = None
    classes = parse_classes(json.loads(tag)) if tag else []
    with rasterio.open(vrt) as src:
        nodata, dtype = src.nodata, np.dtype(src.dtypes[0])
        has_gcps = bool(src.gcps[0])
    profile = cog_profiles.get("deflate")
    integer = np.issubdtype(dtype, np.integer)
    profile.update(BIGTIFF="IF_SAFER", predictor=2 if integer else 3)
    with atomic_output(path, overwrite) as tmp:
        try:
            with warnings.catch_warnings():  # "color interpretation was set to Palette"
                warnings.simplefilter("ignore", UserWarning)
                if (
                    has_gcps
                ):  # rio-cogeo turns GCPs into an affine fit: GDAL's COG driver keeps them
                    _gdal_cog(vrt, tmp, integer)
                else:
                    cog_translate(
                        str(vrt),
                        str(tmp),
                        profile,
                        nodata=nodata,
                        resampling="nearest",
                        overview_resampling="mode" if integer else "nearest",
                        colormap=cmap,
                        additional_cog_metadata={CLASSES_TAG: tag} if tag else None,
                        quiet=True,
                    )
        except RasterioError as exc:
            raise WriteError(f"{path}: COG mosaic failed: {gdal_message(exc)}") from exc
        aux = Path(f"{path}.aux.xml")
        if classes:
            with atomic_output(aux, overwrite=True) as tmp_aux:
                tmp_aux.write_text(_pam_xml(classes), encoding="utf-8")
        elif aux.exists():  # sidecar of the mosaic being replaced
            aux.unlink()
    return path


def _gdal_cog(vrt: Path, tmp: Path, integer: bool) -> None:
    """Copy ``vrt`` (GCPs, colour table, tags) to a COG at ``tmp`` with GDAL's COG driver."""
    import rasterio.shutil

    from geomed_seg.io.atomic import _remove

    try:
        rasterio.shutil.copy(vrt, tmp, driver="COG", BLOCKSIZE=512, COMPRESS="DEFLATE",
                             PREDICTOR="STANDARD" if integer else "FLOATING_POINT",
                             OVERVIEW_RESAMPLING="MODE" if integer else "NEAREST",
                             BIGTIFF="IF_SAFER")  # fmt: skip
    finally:
        _remove(Path(f"{tmp}.aux.xml"))  # category names: our own sidecar is written after


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


def _drop(path: Path) -> None:
    """Remove a mosaic output of an earlier run that can no longer be rebuilt."""
    for p in (path, Path(f"{path}.aux.xml")):
        p.unlink(missing_ok=True)


def _overlap_note(labels: list[Path]) -> str | None:
    """Note for tiles of one grid that overlap: the class totals count the overlap per tile."""
    from geomed_seg.batch.vectors import check_disjoint  # imports this module

    try:
        check_disjoint(tile_layout(labels))
    except (GeometryError, InvalidInputError) as exc:
        if "overlap" not in str(exc):
            return None
        return (f"{exc}: the class areas are sums of the tile reports and count each "
                "overlapping pixel once per tile that holds it")  # fmt: skip
    return None


def _mosaics(out: Path, t: _Tally, polygons: bool, cog: bool) -> tuple[dict[str, Path], list[str]]:
    """Build ``mosaic.vrt``, ``polygons.gpkg`` and ``mosaic.tif`` where possible."""
    from geomed_seg.batch.vectors import merge_polygons  # imports this module

    outputs: dict[str, Path] = {}
    if t.volume_tiles:
        return outputs, [f"{t.volume_tiles} volume tiles: no VRT, COG or polygon mosaic "
                         "(rasters only)"]  # fmt: skip
    notes: list[str] = []
    note = write_vrt(t.labels, out / "mosaic.vrt")
    if note:
        notes.append(note)
        _drop(out / "mosaic.vrt")
    else:
        outputs["mosaic"] = out / "mosaic.vrt"
        overlap = _overlap_note(t.labels)
        if overlap:
            notes.append(overlap)
    with_gpkg = [(lab, g) for lab, g in zip(t.labels, t.gpkgs, strict=True) if g is not None]
    if polygons and with_gpkg:
        if len(with_gpkg) < len(t.labels):
            notes.append(f"polygons: {len(t.labels) - len(with_gpkg)} done tiles have no "
                         "polygons.gpkg; merged the others")  # fmt: skip
        try:
            labels, gpkgs = zip(*with_gpkg, strict=True)
            merge_polygons(labels, gpkgs, out / "polygons.gpkg", overwrite=True)
            outputs["polygons"] = out / "polygons.gpkg"
        except (GeometryError, InvalidInputError) as exc:
            notes.append(f"{exc}: no merged polygons")
            _drop(out / "polygons.gpkg")
    if cog and "mosaic" in outputs:
        try:
            outputs["cog"] = write_cog_mosaic(out / "mosaic.vrt", out / "mosaic.tif",
                                              classes_from=t.labels[0])  # fmt: skip
        except WriteError as exc:
            notes.append(str(exc))
            _drop(out / "mosaic.tif")
    elif cog:
        notes.append("no VRT mosaic: no COG mosaic")
        _drop(out / "mosaic.tif")
    return outputs, notes


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
    :func:`write_cog_mosaic`); volume tiles give none of them (a note says so). Class areas
    (km²) or volumes (mL) are summed over every done tile of the manifest from its
    ``report.json``; throughput (km²/s, volumes/h) counts only the tiles processed in this
    run (wall s of ``result``). Per-tile seconds p50/p95 are over the done tiles;
    ``peak_worker_rss_mb`` is the largest ``worker_peak_rss_mb`` of the tile records.
    ``thresholds`` (:func:`geomed_seg.batch.runner.run_batch`) says which classical
    threshold(s) were used, their scope and separability; with scope ``tile`` each tile's
    own threshold is listed (from its report) and tiles whose histogram is not bimodal
    get a note (``thresholds`` is updated in place with them).
    Returns ``({"mosaic"|"polygons"|"cog"|"summary"|"summary_md": path}, notes)``.
    """
    t = _tally(out, journal, stems, result)
    outputs, notes = _mosaics(out, t, polygons, cog)
    if thresholds is not None and thresholds.get("scope") == "tile":
        from geomed_seg.batch.thresholds import tile_scope_summary

        thresholds.update(tile_scope_summary(thresholds.get("method"), t.rows))
        if thresholds["not_bimodal"]:
            notes.append(f"threshold scope tile: {len(thresholds['not_bimodal'])} tiles have a "
                         f"histogram that is not bimodal ({', '.join(thresholds['not_bimodal'])})"
                         ": their Otsu thresholds are doubtful")  # fmt: skip
    secs = [r["seconds"] for r in t.rows if r["status"] in ("done", "skipped") and r["seconds"]]
    p50, p95 = _percentiles(secs)
    rss = [r["worker_peak_rss_mb"] for r in t.rows if r["worker_peak_rss_mb"] is not None]
    per_s = result.seconds or None
    per_km2, per_vol = (None, per_s) if t.volume_tiles else (per_s, None)
    summary = {
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
    with atomic_output(out / "summary.json", overwrite=True) as tmp:
        tmp.write_text(json.dumps(summary, indent=2, sort_keys=True), encoding="utf-8")
    outputs["summary"] = out / "summary.json"
    with atomic_output(out / "summary.md", overwrite=True) as tmp:
        tmp.write_text(_markdown(summary), encoding="utf-8")
    outputs["summary_md"] = out / "summary.md"
    return outputs, notes


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
