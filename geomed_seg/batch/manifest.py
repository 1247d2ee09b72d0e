"""Batch manifests: the list of input tiles from a glob, a text list, a VRT or a STAC file.

Every manifest resolves to absolute, existing file paths in a stable order; missing files
raise :class:`~geomed_seg.errors.InvalidInputError` naming them. The VRT and STAC readers
parse XML / JSON with the standard library: rasterio exposes a VRT's sources only through
GDAL's file list (which includes the .vrt itself), and pystac is not a dependency.
"""

from __future__ import annotations

import glob as _glob
import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path

from geomed_seg.errors import InvalidInputError

_TIFF_TYPES = ("image/tiff", "image/geotiff")


def _check(paths: list[Path], where: str) -> list[Path]:
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise InvalidInputError(f"{where}: missing input files: {', '.join(missing)}")
    if not paths:
        raise InvalidInputError(f"{where}: no input files")
    seen: set[Path] = set()
    out = []
    for p in paths:
        if p not in seen:
            seen.add(p)
            out.append(p)
    return out


def from_glob(pattern: str) -> list[Path]:
    """Return the files matching ``pattern`` (``**`` recursive), sorted."""
    paths = sorted(
        Path(p).resolve() for p in _glob.glob(os.path.expanduser(pattern), recursive=True)
    )
    if not paths:
        raise InvalidInputError(f"{pattern}: no files match")
    return _check(paths, pattern)


def from_list(path: str | os.PathLike) -> list[Path]:
    """Return the files named in a text file, one per line (``#`` comments, relative to it)."""
    p = Path(path)
    try:
        lines = p.read_text().splitlines()
    except OSError as exc:
        raise InvalidInputError(f"{p}: cannot read the file list ({exc.strerror})") from exc
    base = p.resolve().parent
    paths = []
    for line in lines:
        line = line.strip()
        if line and not line.startswith("#"):
            q = Path(os.path.expanduser(line))
            paths.append((q if q.is_absolute() else base / q).resolve())
    return _check(paths, str(p))


def from_vrt(path: str | os.PathLike) -> list[Path]:
    """Return the source files of a GDAL VRT (``SourceFilename``; relativeToVRT honoured)."""
    p = Path(path)
    try:
        root = ET.parse(p).getroot()
    except (OSError, ET.ParseError) as exc:
        raise InvalidInputError(f"{p}: cannot read the VRT ({exc})") from exc
    base = p.resolve().parent
    paths = []
    for el in root.iter("SourceFilename"):
        name = (el.text or "").strip()
        rel = el.get("relativeToVRT", "0") == "1"
        q = Path(name)
        paths.append((base / q if rel or not q.is_absolute() else q).resolve())
    return _check(paths, str(p))


def _asset_href(item: dict) -> str | None:
    assets = item.get("assets") or {}
    for key, asset in assets.items():
        if key == "data" or "data" in (asset.get("roles") or []):
            return asset.get("href")
    for asset in assets.values():
        kind = str(asset.get("type", "")).split(";")[0].strip()
        href = str(asset.get("href", ""))
        if kind in _TIFF_TYPES or href.lower().endswith((".tif", ".tiff")):
            return href
    return None


def from_stac(path: str | os.PathLike) -> list[Path]:
    """Return one local asset per STAC item (key/role ``data``, else the first GeoTIFF)."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"{p}: cannot read the STAC file ({exc})") from exc
    items = doc.get("features") if isinstance(doc, dict) and "features" in doc else [doc]
    base = p.resolve().parent
    paths = []
    for item in items:
        href = _asset_href(item) if isinstance(item, dict) else None
        if href is None:
            raise InvalidInputError(f"{p}: item {item.get('id', '?')!r} has no data/GeoTIFF asset")
        if href.startswith("file://"):
            href = href[len("file://") :]
        if "://" in href:
            raise InvalidInputError(f"{p}: remote asset {href} (download it first)")
        q = Path(href)
        paths.append((q if q.is_absolute() else base / q).resolve())
    return _check(paths, str(p))


def build_manifest(
    *,
    inputs: str | None = None,
    list_file: str | os.PathLike | None = None,
    vrt: str | os.PathLike | None = None,
    stac: str | os.PathLike | None = None,
) -> list[Path]:
    """Return the input tiles from exactly one of ``inputs`` (glob), ``list_file``, ``vrt``, ``stac``."""
    given = [(k, v) for k, v in (("inputs", inputs), ("list", list_file), ("vrt", vrt),
                                 ("stac", stac)) if v]  # fmt: skip
    if len(given) != 1:
        raise InvalidInputError(
            f"batch: give exactly one of --inputs, --list, --vrt, --stac (got {len(given)})"
        )
    kind, value = given[0]
    reader = {"inputs": from_glob, "list": from_list, "vrt": from_vrt, "stac": from_stac}[kind]
    paths = reader(value)
    stems = {}
    for q in paths:
        if q.stem in stems:
            raise InvalidInputError(f"{q}: same name as {stems[q.stem]} (outputs are per stem)")
        stems[q.stem] = q
    return paths
