"""Batch manifests: the list of input tiles from a glob, a text list, a VRT or a STAC file.

Every manifest resolves to absolute, existing file paths in a stable order; missing files
raise :class:`~geomed_seg.errors.InvalidInputError` naming them. The VRT and STAC readers
parse XML / JSON with the standard library: rasterio exposes a VRT's sources only through
GDAL's file list (which includes the .vrt itself), and pystac is not a dependency.

:func:`build_jobs` turns the manifest into one :class:`Job` per task: a whole input, or one
block (core + halo, :mod:`geomed_seg.batch.blocks`) of an input larger than ``block_size``.
"""

from __future__ import annotations

import glob as _glob
import json
import logging
import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from geomed_seg.batch.blocks import Block, aligned_block_size, plan_blocks
from geomed_seg.errors import InvalidInputError
from geomed_seg.pipelines.schema import PipelineConfig

log = logging.getLogger(__name__)

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
    vrt_as_scene: bool = False,
) -> list[Path]:
    """Return the input tiles from exactly one of ``inputs`` (glob), ``list_file``, ``vrt``, ``stac``.

    A VRT means its source files, unless ``vrt_as_scene``: then the VRT itself is the one
    input (GDAL reads it as a single scene; used with blocks).
    """
    given = [(k, v) for k, v in (("inputs", inputs), ("list", list_file), ("vrt", vrt),
                                 ("stac", stac)) if v]  # fmt: skip
    if len(given) != 1:
        raise InvalidInputError(
            f"batch: give exactly one of --inputs, --list, --vrt, --stac (got {len(given)})"
        )
    kind, value = given[0]
    reader = {"inputs": from_glob, "list": from_list, "vrt": from_vrt, "stac": from_stac}[kind]
    if kind == "vrt" and vrt_as_scene:
        reader = _vrt_scene
    paths = reader(value)
    stems = {}
    for q in paths:
        if q.stem in stems:
            raise InvalidInputError(f"{q}: same name as {stems[q.stem]} (outputs are per stem)")
        stems[q.stem] = q
    return paths


def _vrt_scene(path: str | os.PathLike) -> list[Path]:
    p = Path(path).resolve()
    from_vrt(p)  # the sources must exist
    return [p]


@dataclass(frozen=True)
class Job:
    """One batch task: ``path`` whole (``block=None``) or one block of it; outputs per ``stem``."""

    stem: str
    path: Path
    block: Block | None = None


def default_halo(cfg: PipelineConfig) -> int:
    """Return the default block halo in pixels: the largest halo any pipeline step asks for.

    The steps say it themselves (:func:`geomed_seg.pipelines.steps.pipeline_halo`): the
    model step its largest engine window side (``engine.roi_size``, else the checkpoint
    card's ``roi_size``), so a block's read window holds every engine window that touches
    its core in a whole-scene run; post-processing ``2 * (opening + closing radii) + 1``
    px, what morphology needs to match a whole-scene run.
    """
    from geomed_seg.pipelines.steps import pipeline_halo

    return pipeline_halo(cfg)


def _raster_layout(path: Path) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """Return ``((height, width), (tile rows, tile cols))`` of a GeoTIFF/VRT, else None."""
    import rasterio
    from rasterio.errors import RasterioError

    from geomed_seg.errors import GeomedSegError
    from geomed_seg.io.registry import detect_format

    try:
        if detect_format(path) not in ("geotiff", "vrt"):
            return None
        with rasterio.open(path) as ds:
            shape, tile = (ds.height, ds.width), ds.block_shapes[0]
    except (GeomedSegError, RasterioError, OSError):
        return None  # unreadable: the task fails and journals why
    # strips span the full width: no constraint on the block width
    align = (tile[0], 1 if tile[1] >= shape[1] else tile[1])
    return shape, align


def build_jobs(
    paths: Sequence[Path],
    *,
    block_size: int | Sequence[int] | None = None,
    halo: int | None = None,
    config: PipelineConfig | None = None,
    align: bool = True,
) -> list[Job]:
    """Return the batch tasks of ``paths``: whole inputs, or blocks of the large ones.

    Parameters
    ----------
    paths : sequence of Path
        Inputs from :func:`build_manifest` (unique stems).
    block_size : int or (rows, cols), optional
        Split every raster whose height or width exceeds it into blocks of this core size
        (pixels); smaller inputs stay whole. ``None``: every input is one task.
    halo : int, optional
        Context pixels read around each core; default :func:`default_halo` of ``config``.
    config : PipelineConfig, optional
        The pipeline (for the default halo).
    align : bool
        Round the block size up to whole internal tiles of each source.

    Block stems are ``f"{path.stem}_r{row:04d}_c{col:04d}"``. Unreadable or non-raster
    inputs stay whole (their task reports the problem).
    """
    if block_size is None:
        return [Job(p.stem, p) for p in paths]
    if halo is None:
        halo = default_halo(config) if config is not None else 0
    jobs: list[Job] = []
    for p in paths:
        layout = _raster_layout(p)
        if layout is None:
            log.info("%s: not a readable GeoTIFF/VRT; kept whole", p)
            jobs.append(Job(p.stem, p))
            continue
        shape, tile = layout
        blocks = plan_blocks(shape, block_size, halo, align=tile if align else None)
        size = aligned_block_size(block_size, tile if align else None)
        if len(blocks) == 1:
            log.info("%s: %d x %d px fits one block of %d x %d; kept whole", p, *shape, *size)
            jobs.append(Job(p.stem, p))
            continue
        log.info(
            "%s: %d x %d px -> %d blocks of %d x %d px with a %d px halo",
            p, *shape, len(blocks), *size, halo,
        )  # fmt: skip
        jobs += [Job(f"{p.stem}_r{b.index[0]:04d}_c{b.index[1]:04d}", p, b) for b in blocks]
    seen: dict[str, Path] = {}
    for job in jobs:
        if job.stem in seen:
            raise InvalidInputError(
                f"{job.path}: task name {job.stem} also used by {seen[job.stem]}"
            )
        seen[job.stem] = job.path
    return jobs
