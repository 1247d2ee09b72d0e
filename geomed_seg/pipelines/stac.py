"""STAC Items of a run's (and a batch's) outputs, built with pystac.

One ``item.json`` beside the outputs it lists, so a catalogue (STAC browser, pystac,
QGIS's STAC source) finds them with their place and time:

* **geometry / bbox**: the raster's outline (17 points per edge, 65 through GCPs or RPCs as
  GDAL maps them) in WGS 84 longitude/latitude; ``null`` for a raster without a CRS
  and for volumes (patient space is not on the Earth);
* **projection extension** (v2.0): ``proj:code`` (``EPSG:n``, or ``proj:wkt2`` for a CRS
  without a code), ``proj:shape`` ``[rows, cols]``, ``proj:transform`` (GDAL order
  ``a, b, c, d, e, f`` of the affine, pixel corner) and ``proj:bbox`` in the CRS;
* **datetime**: the acquisition time the input records (:func:`acquisition_datetime`), with
  ``geomed_seg:datetime_source`` saying where it was read; without one, ``datetime`` is
  ``null`` and ``start_datetime``/``end_datetime`` span the run that made the outputs, and
  ``geomed_seg:datetime_source`` says so;
* **assets / links**: hrefs *relative to the item's folder* (``./labels.tif``,
  ``../scene.tif``), so the folder can move and every href still resolves.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from geomed_seg.core.grid import GeoGrid
from geomed_seg.core.image import Image
from geomed_seg.io.atomic import data_stem

log = logging.getLogger(__name__)

#: Classification extension (class values and names of the label assets).
CLASSIFICATION_SCHEMA = "https://stac-extensions.github.io/classification/v2.0.0/schema.json"

#: Media types of the outputs (by suffix).
MEDIA_TYPES = {
    ".tif": "image/tiff; application=geotiff; profile=cloud-optimized",
    ".vrt": "application/xml",
    ".gpkg": "application/geopackage+sqlite3",
    ".png": "image/png",
    ".json": "application/json",
    ".md": "text/markdown",
    ".nii.gz": "application/gzip",  # NIfTI-1 has no registered media type
    ".nii": "application/octet-stream",
    ".zarr": "application/vnd+zarr",
    ".dcm": "application/dicom",
    ".qml": "application/xml",
    ".aux.xml": "application/xml",
    ".label.txt": "text/plain",
    ".ctbl": "text/plain",
}
#: Roles of the outputs (by the run's output key).
ROLES = {
    "labels": ["data", "labels"], "probabilities": ["data"], "polygons": ["data", "labels"],
    "quicklook": ["overview", "visual"], "provenance": ["metadata"], "DICOM SEG": ["data"],
    "mosaic": ["data", "labels"], "cog": ["data", "labels"],
}  # fmt: skip
#: GeoTIFF / GDAL metadata items that hold the acquisition time (first found wins).
_TAG_KEYS = (
    "ACQUISITIONDATETIME", "ACQUISITION_DATETIME", "DATATAKE_1_DATATAKE_SENSING_START",
    "SENSING_TIME", "PRODUCT_START_TIME", "DATE_TIME", "ACQUISITION_DATE", "DATE_ACQUIRED",
)  # fmt: skip
#: Product names that carry their acquisition date: Landsat Collection 2 ids
#: (``LC08_L2SP_217065_20200101_...``) and Sentinel-2 SAFE names (``S2A_MSIL2A_20200101T...``).
_NAME_PATTERNS = (
    (re.compile(r"\b(?:L[COTEM]0\d)_L\w{3}_\d{6}_(\d{8})_"), "%Y%m%d", "Landsat product id"),
    (re.compile(r"\bS2[ABCD]_MSIL\w{2}_(\d{8}T\d{6})_"), "%Y%m%dT%H%M%S", "Sentinel-2 product name"),
)  # fmt: skip


def _utc(value: dt.datetime) -> dt.datetime:
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value


def _parse_time(text: str) -> dt.datetime | None:
    """Return an aware datetime from ISO 8601 / ``YYYY:MM:DD HH:MM:SS`` / ``YYYY-MM-DD``."""
    t = text.strip().replace("Z", "+00:00")
    m = re.fullmatch(r"(\d{4}):(\d{2}):(\d{2})[ T](\d{2}:\d{2}:\d{2})", t)  # TIFF DateTime
    if m:
        t = f"{m[1]}-{m[2]}-{m[3]}T{m[4]}"
    t = re.sub(r"(\.\d{6})\d+", r"\1", t)  # Landsat's 7-digit fractions
    try:
        return _utc(dt.datetime.fromisoformat(t))
    except ValueError:
        return None


def _dicom_time(meta: Mapping[str, Any]) -> tuple[dt.datetime, str] | None:
    for what in ("acquisition", "series", "study"):
        date = str(meta.get(f"{what}_date") or "")
        if not re.fullmatch(r"\d{8}", date):
            continue
        clock = re.match(r"(\d{2})(\d{2})?(\d{2})?", str(meta.get(f"{what}_time") or ""))
        hh, mm, ss = ((clock.group(i) or "00") for i in (1, 2, 3)) if clock else ("00",) * 3
        value = dt.datetime.strptime(f"{date}{hh}{mm}{ss}", "%Y%m%d%H%M%S")
        offset = str(meta.get("timezone_offset") or "")
        tz = re.fullmatch(r"([+-])(\d{2})(\d{2})", offset)
        if tz:
            sign = 1 if tz[1] == "+" else -1
            delta = dt.timedelta(hours=int(tz[2]), minutes=int(tz[3]))
            value = value.replace(tzinfo=dt.timezone(sign * delta))
            zone = f"TimezoneOffsetFromUTC {offset}"
        else:
            zone = "scanner local time; no TimezoneOffsetFromUTC, written as UTC"
        name = what.capitalize()
        return _utc(value), f"DICOM {name}Date/{name}Time ({zone})"
    return None


def acquisition_datetime(
    image: Image, files: Sequence[str | os.PathLike] = ()
) -> tuple[dt.datetime | None, str]:
    """Return ``(acquisition time (UTC-aware) or None, where it was read / why there is none)``.

    Looked for, in order: DICOM Acquisition/Series/Study Date+Time (``attrs["dicom"]``);
    GDAL metadata items of the input that name the acquisition (Landsat ``DATE_ACQUIRED`` +
    ``SCENE_CENTER_TIME``, Sentinel-2 ``PRODUCT_START_TIME``, ``ACQUISITIONDATETIME``...);
    a Landsat product id or Sentinel-2 product name in the input's file names; the TIFF
    ``DateTime`` tag (``TIFFTAG_DATETIME``: the image's creation time, said so).
    """
    dicom = image.attrs.get("dicom")
    if isinstance(dicom, Mapping):
        found = _dicom_time(dicom)
        if found:
            return found
    tags = {str(k).upper(): str(v) for k, v in (image.attrs.get("tags") or {}).items()}
    for key in _TAG_KEYS:
        if key in tags:
            text = tags[key]
            if key == "DATE_ACQUIRED" and "SCENE_CENTER_TIME" in tags:
                text = f"{text}T{tags['SCENE_CENTER_TIME'].strip(chr(34))}"
            value = _parse_time(text)
            if value is not None:
                return value, f"input metadata item {key}"
    names = [Path(f).name for f in files] or [Path(str(image.attrs.get("source", ""))).name]
    for name in names:
        for pattern, fmt, what in _NAME_PATTERNS:
            m = pattern.search(name)
            if m:
                return _utc(dt.datetime.strptime(m[1], fmt)), f"{what} in the file name {name}"
    if "TIFFTAG_DATETIME" in tags:
        value = _parse_time(tags["TIFFTAG_DATETIME"])
        if value is not None:
            return value, "TIFF DateTime tag (the image file's creation time, not an acquisition)"
    return None, "the input records no acquisition time"


def _outline(grid: GeoGrid) -> np.ndarray:
    """The grid's outline ``(n, 2)`` in its map CRS, ring order: 17 points per edge (65 for
    GCP/RPC grids, whose polynomial bends more), enough to follow a projection's curvature."""
    from geomed_seg.io.georef import pixel_to_map

    h, w = grid.shape
    t = np.linspace(0.0, 1.0, 65 if grid.georeference in ("gcps", "rpcs") else 17)
    cols = np.concatenate([t * w, 0 * t + w, (1 - t) * w, 0 * t])
    rows = np.concatenate([0 * t, t * h, 0 * t + h, (1 - t) * h])
    return pixel_to_map(grid)(np.column_stack([cols, rows]))


def footprint(grid: Any) -> tuple[dict[str, Any] | None, list[float] | None]:
    """Return ``(GeoJSON polygon, bbox)`` of a raster grid in WGS 84 lon/lat, or ``(None, None)``.

    ``None`` for volumes and rasters without a CRS. A footprint across the antimeridian is
    not split (its bbox then spans the long way round; a warning names it).
    """
    if not isinstance(grid, GeoGrid) or grid.crs is None:
        return None, None
    from pyproj import CRS, Transformer

    from geomed_seg.io.georef import map_crs

    xy = _outline(grid)
    to_wgs84 = Transformer.from_crs(CRS.from_user_input(map_crs(grid).to_wkt()),
                                    CRS.from_epsg(4326), always_xy=True)  # fmt: skip
    lon, lat = to_wgs84.transform(xy[:, 0], xy[:, 1])
    if not (np.isfinite(lon).all() and np.isfinite(lat).all()):
        log.warning("%s: outline not mappable to WGS 84; item without geometry", grid.describe())
        return None, None
    if float(np.ptp(lon)) > 180.0:
        log.warning("%s: footprint crosses the antimeridian; not split", grid.describe())
    ring = [[float(a), float(b)] for a, b in zip(lon, lat, strict=True)]
    ring.append(ring[0])
    bbox = [float(lon.min()), float(lat.min()), float(lon.max()), float(lat.max())]
    return {"type": "Polygon", "coordinates": [ring]}, bbox


def projection_fields(grid: Any) -> dict[str, Any]:
    """Return the projection-extension fields of a raster grid (empty for volumes / no CRS)."""
    if not isinstance(grid, GeoGrid) or grid.crs is None:
        return {}
    epsg = grid.crs.to_epsg()
    out: dict[str, Any] = {"proj:code": f"EPSG:{epsg}" if epsg else None}
    if epsg is None:
        out["proj:wkt2"] = grid.crs.to_wkt()
    out["proj:shape"] = [int(n) for n in grid.shape]
    if grid.transform is not None and grid.georeference not in ("gcps", "rpcs"):
        t = grid.transform
        out["proj:transform"] = [float(v) for v in (t.a, t.b, t.c, t.d, t.e, t.f)]
    out["proj:bbox"] = [float(v) for v in grid.bounds]
    return out


def _media_type(path: Path) -> str | None:
    name = path.name.lower()
    for suffix in sorted(MEDIA_TYPES, key=len, reverse=True):
        if name.endswith(suffix):
            return MEDIA_TYPES[suffix]
    return None


def _rel(target: Path, folder: Path) -> str:
    rel = os.path.relpath(os.path.abspath(target), os.path.abspath(folder))
    return rel if rel.startswith("..") else f"./{rel}"


def build_item(
    item_id: str,
    grid: Any,
    assets: Mapping[str, Path],
    item_path: Path,
    *,
    when: tuple[dt.datetime | None, str],
    span: tuple[dt.datetime, dt.datetime],
    sources: Sequence[str | os.PathLike] = (),
    properties: Mapping[str, Any] | None = None,
    classes: Sequence[Any] = (),
) -> Any:
    """Return a :class:`pystac.Item` for ``assets`` (key → final path) written at ``item_path``.

    ``when`` is :func:`acquisition_datetime`'s answer; ``span`` the (start, end) of the run,
    used as ``start_datetime``/``end_datetime`` when there is no acquisition time. Asset and
    ``derived_from`` hrefs are relative to ``item_path``'s folder; asset keys are the titles
    in snake case. ``classes`` (:class:`~geomed_seg.core.labels.ClassInfo`) go on the label
    assets as ``classification:classes`` (classification extension v2.0).
    """
    import pystac
    from pystac.extensions.projection import ProjectionExtension

    geometry, bbox = footprint(grid)
    acquired, source = when
    props: dict[str, Any] = {"created": _iso(span[1]), "geomed_seg:datetime_source": source}
    if acquired is None:
        props["start_datetime"], props["end_datetime"] = _iso(span[0]), _iso(span[1])
        props["geomed_seg:datetime_source"] = (
            f"{source}: datetime is null; start/end_datetime are when this run made the outputs"
        )
    props.update(properties or {})
    item = pystac.Item(item_id, geometry, bbox, acquired, props)
    folder = item_path.parent
    for title, path in assets.items():
        key = _asset_key(title)
        asset = pystac.Asset(_rel(path, folder), title=title, media_type=_media_type(path),
                             roles=ROLES.get(title, ["metadata"]))  # fmt: skip
        if classes and key in ("labels", "mosaic", "cog"):
            asset.extra_fields["classification:classes"] = _class_entries(classes)
        item.add_asset(key, asset)
    if classes:
        item.stac_extensions.append(CLASSIFICATION_SCHEMA)
    proj = projection_fields(grid)
    if proj:
        ProjectionExtension.add_to(item)
        item.properties.update(proj)
    for src in sources:
        media = _media_type(Path(src))
        if media and "cloud-optimized" in media:  # an input is not known to be a COG
            media = "image/tiff; application=geotiff"
        item.add_link(pystac.Link("derived_from", _rel(Path(src), folder), media_type=media))
    return item


def _class_entries(classes: Sequence[Any]) -> list[dict[str, Any]]:
    from geomed_seg.core.labels import stac_class

    return [stac_class(c) for c in sorted(classes, key=lambda c: c.index)]


def _iso(value: dt.datetime) -> str:
    return _utc(value).astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def write_item(item: Any, path: Path, overwrite: bool) -> Path:
    """Write ``item`` as JSON at ``path`` atomically (hrefs as built: relative); return the path."""
    import json

    from geomed_seg.io.atomic import atomic_output

    data = item.to_dict(include_self_link=False, transform_hrefs=False)
    with atomic_output(path, overwrite) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return path


def sidecar_files(labels: Path, classes: Sequence[Any]) -> dict[str, Path]:
    """Return the class-table sidecars the label writer puts beside ``labels`` (key → path)."""
    from geomed_seg.io.atomic import companion_path
    from geomed_seg.io.sidecars import ITKSNAP, QML, SLICER

    if not classes:
        return {}
    if labels.suffix in (".tif", ".tiff", ".vrt"):
        out = {"QGIS style": companion_path(labels, QML)}
        if labels.suffix != ".vrt":
            out["GDAL category names"] = Path(f"{labels}.aux.xml")
        return out
    return {"ITK-SNAP labels": companion_path(labels, ITKSNAP),
            "Slicer colour table": companion_path(labels, SLICER)}  # fmt: skip


__all__ = [
    "acquisition_datetime", "build_item", "footprint", "projection_fields", "sidecar_files",
    "write_item",
]  # fmt: skip


def _asset_key(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def _item_stem(files: Sequence[str | os.PathLike], folder: Path) -> str:
    """The input's name without suffixes (a batch tile runs in a temporary folder), else the
    output folder's name."""
    if files:
        return data_stem(Path(files[0]).name) or Path(files[0]).name
    return folder.resolve().name


def write_run_item(
    cfg: Any,
    source: Image,
    classes: Sequence[Any],
    outputs: Mapping[str, Path],
    folder: Path,
    files: Sequence[str | os.PathLike],
    overwrite: bool,
    started: dt.datetime,
) -> Path:
    """Write ``folder/item.json``, the STAC Item of one run's ``outputs`` (+ ``run.json``).

    Geometry and projection fields are the source grid's (the labels keep it); ``files`` are
    the inputs, linked as ``derived_from``; the class-table sidecars beside the labels are
    assets too. Returns the item's path.
    """
    assets = {k: Path(v) for k, v in outputs.items()}
    if "labels" in outputs:
        assets.update(sidecar_files(Path(outputs["labels"]), classes))
    assets["provenance"] = folder / "run.json"
    stem = Path(files[0]).name if files else str(source.attrs.get("source") or "in-memory")
    props = {"geomed_seg:pipeline": cfg.name, "title": f"{cfg.name} on {stem}"}
    path = folder / "item.json"
    item = build_item(
        f"{cfg.name}-{_item_stem(files, folder)}", source.grid, assets, path,
        when=acquisition_datetime(source, files),
        span=(started, dt.datetime.now(dt.UTC)), sources=files, properties=props,
        classes=classes,
    )  # fmt: skip
    return write_item(item, path, overwrite)


def _item_times(item: Mapping[str, Any]) -> list[dt.datetime]:
    p = item.get("properties", {})
    values = [p.get("datetime")] if p.get("datetime") else [p.get("start_datetime"),
                                                            p.get("end_datetime")]  # fmt: skip
    return [t for t in (_parse_time(v) for v in values if v) if t is not None]


def write_batch_item(
    out: Path, tile_items: Sequence[Path], outputs: Mapping[str, Path], started: dt.datetime
) -> Path | None:
    """Write ``out/item.json``: the batch's STAC Item (mosaics, polygons, summary) linking
    every done tile's own item (``rel: item``); return its path (None without tile items).

    Geometry: the tiles' footprints (a MultiPolygon; bbox their union); the projection
    fields are the mosaic VRT's when there is one. ``datetime`` is the tiles' common
    acquisition time, else null with ``start/end_datetime`` spanning the tiles' times.
    """
    import json

    import pystac

    items = [(p, json.loads(p.read_text(encoding="utf-8"))) for p in tile_items if p.is_file()]
    if not items:
        return None
    polys = [i["geometry"]["coordinates"] for _, i in items if i.get("geometry")]
    boxes = np.asarray([i["bbox"] for _, i in items if i.get("bbox")], dtype=float)
    geometry = {"type": "MultiPolygon", "coordinates": polys} if polys else None
    bbox = ([float(boxes[:, 0].min()), float(boxes[:, 1].min()), float(boxes[:, 2].max()),
             float(boxes[:, 3].max())] if len(boxes) else None)  # fmt: skip
    acquired = {i["properties"].get("datetime") for _, i in items}
    times = [t for _, i in items for t in _item_times(i)]
    props: dict[str, Any] = {"created": _iso(dt.datetime.now(dt.UTC)),
                             "title": f"batch of {len(items)} tiles"}  # fmt: skip
    when = (
        _parse_time(next(iter(acquired))) if len(acquired) == 1 and None not in acquired else None
    )
    if when is not None:
        props["geomed_seg:datetime_source"] = "the tiles' common acquisition time"
    else:
        span = (min(times), max(times)) if times else (started, dt.datetime.now(dt.UTC))
        props["start_datetime"], props["end_datetime"] = _iso(span[0]), _iso(span[1])
        props["geomed_seg:datetime_source"] = (
            "datetime is null: start/end_datetime span the tiles' times" if times
            else "no tile has a time: start/end_datetime are when this batch ran"
        )  # fmt: skip
    item = pystac.Item(f"batch-{out.resolve().name}", geometry, bbox, when, props)
    assets = dict(outputs)
    vrt = outputs.get("mosaic")
    if vrt is not None:
        from geomed_seg.io.atomic import companion_path
        from geomed_seg.io.sidecars import QML

        if companion_path(vrt, QML).exists():
            assets["QGIS style"] = companion_path(vrt, QML)
        if Path(f"{out / 'mosaic.tif'}.aux.xml").exists() and "cog" in outputs:
            assets["mosaic COG category names"] = Path(f"{out / 'mosaic.tif'}.aux.xml")
    for title, path in assets.items():
        item.add_asset(_asset_key(title), pystac.Asset(
            _rel(Path(path), out), title=title, media_type=_media_type(Path(path)),
            roles=ROLES.get(title, ["metadata"])))  # fmt: skip
    if vrt is not None:
        import rasterio

        from geomed_seg.io.georef import read_grid

        with rasterio.open(vrt) as src:
            proj = projection_fields(read_grid(src))
        if proj:
            from pystac.extensions.projection import ProjectionExtension

            ProjectionExtension.add_to(item)
            item.properties.update(proj)
    for path, tile in items:
        item.add_link(pystac.Link("item", _rel(path, out), media_type="application/geo+json",
                                  title=tile.get("id")))  # fmt: skip
    return write_item(item, out / "item.json", overwrite=True)
