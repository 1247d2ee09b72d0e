"""Batch mosaics: the label tiles as one VRT, one Cloud-Optimised GeoTIFF and merged polygons.

The tiles are placed by :func:`geomed_seg.batch.layout.tile_layout`. The VRT XML is written
by hand: GDAL's ``gdalbuildvrt`` is not shipped with the rasterio wheels and rasterio has no
mosaic-VRT builder. One ``SimpleSource`` per tile; when the tiles are not on one grid no
mosaic is written and a note says why, naming two tiles and the differing value. The COG
mosaic is rio-cogeo's ``cog_translate`` of the VRT (GDAL's COG driver for GCP tiles).
:func:`write_mosaics` builds all of them for a batch; the summary is
:mod:`geomed_seg.batch.summary`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from xml.sax.saxutils import escape

from geomed_seg.batch.layout import tile_layout
from geomed_seg.batch.vectors import check_disjoint, merge_polygons
from geomed_seg.core.labels import parse_classes
from geomed_seg.errors import GeometryError, InvalidInputError, WriteError
from geomed_seg.io.atomic import atomic_output, companion_path
from geomed_seg.io.sidecars import RASTER_SIDECARS, sidecar_texts, write_sidecars

_GDAL_TYPES = {"uint8": "Byte", "int8": "Int8", "uint16": "UInt16", "int16": "Int16",
               "uint32": "UInt32", "int32": "Int32", "float32": "Float32",
               "float64": "Float64"}  # fmt: skip


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
        from geomed_seg.io.cog import CLASS_ITEM

        lines.append("    <Metadata>")  # the class names as band items, as the tiles have them
        lines += [f'      <MDI key="{CLASS_ITEM}{c.index}">{escape(c.name)}</MDI>'
                  for c in classes]  # fmt: skip
        lines.append("    </Metadata>")
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
    table, category names, band-1 ``CLASS_<value>`` items and ``GEOMED_CLASSES`` tag are
    copied into the VRT, and its QGIS style ``<stem>.qml`` is written beside it
    (:mod:`geomed_seg.io.sidecars`), so the mosaic shows the tiles' classes.
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
    tag, _ = _tile_classes(lay.places[0].path)
    style = sidecar_texts(path, parse_classes(json.loads(tag)) if tag else [], "raster")
    # <stem>.qml: QGIS's default style of mosaic.vrt, and of mosaic.tif (same stem)
    with atomic_output(path, overwrite=True, companions=RASTER_SIDECARS) as tmp:
        tmp.write_text("\n".join(lines), encoding="utf-8")
        write_sidecars(tmp, style)
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
    from geomed_seg.io.cog import CLASSES_TAG, gdal_message, pam_xml

    tag, cmap = _tile_classes(classes_from) if classes_from is not None else (None, None)
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
                        forward_band_tags=True,  # band-1 CLASS_<value> items
                        quiet=True,
                    )
        except RasterioError as exc:
            raise WriteError(f"{path}: COG mosaic failed: {gdal_message(exc)}") from exc
        aux = Path(f"{path}.aux.xml")
        if classes:
            with atomic_output(aux, overwrite=True) as tmp_aux:
                tmp_aux.write_text(pam_xml(classes), encoding="utf-8")
        elif aux.exists():  # sidecar of the mosaic being replaced
            aux.unlink()
    return path


def _gdal_cog(vrt: Path, tmp: Path, integer: bool) -> None:
    """Copy ``vrt`` (GCPs, colour table, tags) to a COG at ``tmp`` with GDAL's COG driver."""
    import rasterio.shutil

    try:
        rasterio.shutil.copy(vrt, tmp, driver="COG", BLOCKSIZE=512, COMPRESS="DEFLATE",
                             PREDICTOR="STANDARD" if integer else "FLOATING_POINT",
                             OVERVIEW_RESAMPLING="MODE" if integer else "NEAREST",
                             BIGTIFF="IF_SAFER")  # fmt: skip
    finally:
        # category names: our own sidecar is written after
        Path(f"{tmp}.aux.xml").unlink(missing_ok=True)


def _drop(path: Path) -> None:
    """Remove a mosaic output of an earlier run that can no longer be rebuilt.

    The VRT takes its QGIS style with it (``mosaic.tif`` is only built from the VRT).
    """
    sides = [Path(f"{path}.aux.xml")]
    if path.suffix == ".vrt":
        sides += [companion_path(path, c) for c in RASTER_SIDECARS]
    for p in (path, *sides):
        p.unlink(missing_ok=True)


def _overlap_note(labels: Sequence[Path]) -> str | None:
    """Note for tiles of one grid that overlap: the class totals count the overlap per tile."""
    try:
        check_disjoint(tile_layout(labels))
    except (GeometryError, InvalidInputError) as exc:
        if "overlap" not in str(exc):
            return None
        return (f"{exc}: the class areas are sums of the tile reports and count each "
                "overlapping pixel once per tile that holds it")  # fmt: skip
    return None


def write_mosaics(
    out: Path,
    labels: Sequence[Path],
    gpkgs: Sequence[Path | None],
    *,
    polygons: bool = True,
    cog: bool = False,
) -> tuple[dict[str, Path], list[str]]:
    """Build ``mosaic.vrt``, ``polygons.gpkg`` and ``mosaic.tif`` in ``out`` where possible.

    Parameters
    ----------
    out
        Batch output folder.
    labels
        The done tiles' label rasters (single band).
    gpkgs
        Each tile's ``polygons.gpkg`` (None where the tile has none), in the order of
        ``labels``.
    polygons, cog
        Also merge the tiles' polygons / write the COG mosaic.

    Returns
    -------
    ``({"mosaic"|"polygons"|"cog": path}, notes)``; an output that cannot be built gets a
    note instead and a stale copy of it from an earlier run is removed.
    """
    outputs: dict[str, Path] = {}
    notes: list[str] = []
    note = write_vrt(labels, out / "mosaic.vrt")
    if note:
        notes.append(note)
        _drop(out / "mosaic.vrt")
    else:
        outputs["mosaic"] = out / "mosaic.vrt"
        overlap = _overlap_note(labels)
        if overlap:
            notes.append(overlap)
    with_gpkg = [(lab, g) for lab, g in zip(labels, gpkgs, strict=True) if g is not None]
    if polygons and with_gpkg:
        if len(with_gpkg) < len(labels):
            notes.append(f"polygons: {len(labels) - len(with_gpkg)} done tiles have no "
                         "polygons.gpkg; merged the others")  # fmt: skip
        try:
            tiles, tile_gpkgs = zip(*with_gpkg, strict=True)
            merge_polygons(tiles, tile_gpkgs, out / "polygons.gpkg", overwrite=True)
            outputs["polygons"] = out / "polygons.gpkg"
        except (GeometryError, InvalidInputError) as exc:
            notes.append(f"{exc}: no merged polygons")
            _drop(out / "polygons.gpkg")
    if cog and "mosaic" in outputs:
        try:
            outputs["cog"] = write_cog_mosaic(out / "mosaic.vrt", out / "mosaic.tif",
                                              classes_from=labels[0])  # fmt: skip
        except WriteError as exc:
            notes.append(str(exc))
            _drop(out / "mosaic.tif")
    elif cog:
        notes.append("no VRT mosaic: no COG mosaic")
        _drop(out / "mosaic.tif")
    return outputs, notes
