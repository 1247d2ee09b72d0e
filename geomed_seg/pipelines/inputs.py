"""Open a pipeline's inputs and preprocess them into one model-ready :class:`Image`.

Inputs: one file, a band stack from several single-band files, or named sequences found by
glob in a folder (BraTS ``t1n, t1c, t2w, t2f``). Preprocessing: band selection by name,
DN -> physical rescaling from the sensor card, reprojection to a CRS/resolution
(``rasterio.warp.reproject``), resampling to a voxel spacing (scipy, chunk-wise), intensity
clipping. Reprojection loads the image into memory (documented limit: use it on scenes
that fit; the rest of the pipeline streams); volume respacing is chunk-wise and lazy and
happens in the model step, which returns results on the input grid.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import dask.array as da
import numpy as np

from geomed_seg.core.grid import GeoGrid
from geomed_seg.core.image import Image
from geomed_seg.errors import ConfigError, GeometryError, InvalidInputError
from geomed_seg.pipelines.schema import PipelineConfig

log = logging.getLogger(__name__)


def _open(path: Path) -> Image:
    from geomed_seg.io.registry import open_image

    return open_image(path)


def _stack(images: list[Image], names: list[str], where: str) -> Image:
    first = images[0]
    for name, img in zip(names[1:], images[1:], strict=True):
        if not first.grid.almost_equals(img.grid):
            raise GeometryError(f"{where}: {name} is not on the grid of {names[0]}")
    arr = da.concatenate([img.darray.astype(np.float32) for img in images], axis=0)
    attrs = {**first.attrs, "band_names": list(names)}
    series = [img.attrs["dicom"] for img in images if isinstance(img.attrs.get("dicom"), dict)]
    if len(series) > 1:  # a DICOM SEG of the stack references every source series
        attrs["dicom_series"] = series
    out = Image.from_array(arr, first.grid, nodata=first.nodata, channel_names=names, attrs=attrs)
    return out if first.mask is None else replace(out, mask=first.mask)


def sequence_patterns(channels: list[str]) -> dict[str, str]:
    """Return ``{channel: "*channel*"}``: the glob patterns of a case folder's sequences
    (BraTS names files ``...-t1n.nii.gz``; the bundled ``brats`` pipeline uses the same)."""
    return {c: f"*{c}*" for c in channels}


def _name_tokens(path: Path) -> set[str]:
    import re

    return {t.lower() for t in re.split(r"[^0-9A-Za-z]+", path.name) if t}


def find_sequences(folder: Path, patterns: dict[str, str]) -> dict[str, Path]:
    """Return ``{channel: path}``: exactly one match of each glob pattern in ``folder``.

    When a pattern matches several entries and exactly one of them has the channel name as
    a whole word of its name (``t1`` in ``case_t1.nii.gz`` but not in ``case_t1ce.nii.gz``),
    that one is taken.
    """
    if not folder.is_dir():
        raise InvalidInputError(f"{folder}: input folder does not exist")
    found = {}
    for name, pattern in patterns.items():
        hits = sorted(folder.glob(pattern))
        if len(hits) > 1:
            exact = [h for h in hits if name.lower() in _name_tokens(h)]
            hits = exact if len(exact) == 1 else hits
        if len(hits) != 1:
            what = (
                "no file"
                if not hits
                else f"{len(hits)} files ({', '.join(h.name for h in hits[:4])})"
            )
            raise InvalidInputError(f"{folder}: {what} match {name} pattern {pattern!r}")
        found[name] = hits[0]
    return found


def effective_config(cfg: PipelineConfig, override: Path | None = None) -> PipelineConfig:
    """Return ``cfg`` with ``input`` as actually used: ``override`` (``--input``) replaces the
    path or the sequence folder. Provenance (``run.json``) records this, not the YAML default."""
    spec = cfg.input
    if override is None:
        return cfg
    used = str(cfg.resolve(override))
    if spec.folder or (override.is_dir() and spec.sequences):
        spec = spec.model_copy(update={"folder": used, "path": None})
    else:
        spec = spec.model_copy(update={"path": used, "bands": None, "folder": None})
    return cfg.model_copy(update={"input": spec})


def open_inputs(cfg: PipelineConfig, override: Path | None = None) -> tuple[Image, list[Path]]:
    """Return ``(image, input files)`` for ``cfg``; ``override`` replaces path or folder."""
    spec = effective_config(cfg, override).input
    if spec.path:
        path = cfg.resolve(spec.path)
        img = _open(path)
        if spec.band_names:
            if len(spec.band_names) != img.n_channels:
                raise ConfigError(
                    f"input.band_names: {len(spec.band_names)} names for {img.n_channels} bands of {path}"
                )
            img = replace(
                img,
                data=img.data.assign_coords({img.channel_dim: list(spec.band_names)}),
                attrs={**img.attrs, "band_names": list(spec.band_names)},
            )
        return img, [path]
    if spec.bands:
        paths = [cfg.resolve(p) for p in spec.bands.values()]
        return _stack([_open(p) for p in paths], list(spec.bands), "input.bands"), paths
    if spec.folder and spec.sequences:
        return open_case_folder(cfg.resolve(spec.folder), spec.sequences)
    raise ConfigError(
        f"{cfg.name}: no input given (input.path, input.bands or input.folder, or --input)"
    )


def open_case_folder(folder: Path, patterns: dict[str, str]) -> tuple[Image, list[Path]]:
    """Return ``(image, files)``: one channel per pattern (:func:`find_sequences`), stacked.

    Each sequence is a file (NIfTI, ...) or a DICOM series folder; all must lie on one grid
    (:class:`GeometryError` otherwise). ``image.attrs["dicom_series"]`` lists the DICOM
    series of the stack when there are several.
    """
    found = find_sequences(folder, patterns)
    imgs = [_open(p) for p in found.values()]
    image = _stack(imgs, list(found), str(folder))
    image = replace(image, attrs={**image.attrs, "source": str(folder)})
    return image, list(found.values())


def is_case_folder(folder: Path, patterns: dict[str, str]) -> bool:
    """True when ``folder`` is a folder in which any of the sequence ``patterns`` matches."""
    return folder.is_dir() and any(any(folder.glob(p)) for p in patterns.values())


def select_bands(img: Image, names: list[str]) -> Image:
    """Return the bands ``names`` (by channel name) in that order."""
    have = [n.lower() for n in (img.channel_names or img.attrs.get("band_names") or [])]
    missing = [n for n in names if n.lower() not in have]
    if missing:
        raise ConfigError(f"preprocess.select_bands: {missing} not among the input bands {have}")
    idx = [have.index(n.lower()) for n in names]
    arr = img.darray[idx]
    out = Image.from_array(
        arr,
        img.grid,
        nodata=img.nodata,
        channel_names=names,
        attrs={**img.attrs, "band_names": list(names)},
    )
    return replace(out, mask=img.mask)


def rescale(img: Image, sensor) -> Image:
    """Return ``DN * scale + offset`` per band from the sensor card (float32, NaN nodata)."""
    names = img.channel_names or []
    scales = np.array([sensor.band(n).scale or 1.0 for n in names], np.float32)
    offsets = np.array([sensor.band(n).offset or 0.0 for n in names], np.float32)
    valid = img.valid_mask()
    arr = img.darray.astype(np.float32) * scales[:, None, None] + offsets[:, None, None]
    arr = da.where(valid[None], arr, np.nan)
    return Image.from_array(
        arr, img.grid, nodata=float("nan"), channel_names=names, attrs=dict(img.attrs)
    )


def reproject(img: Image, crs: str | None, resolution: float | None, resampling: str) -> Image:
    """Return ``img`` warped to ``crs`` (default: its own) at ``resolution`` (CRS units)."""
    from rasterio.crs import CRS
    from rasterio.enums import Resampling
    from rasterio.warp import calculate_default_transform
    from rasterio.warp import reproject as rio_reproject

    from geomed_seg.io.georef import write_profile

    grid = img.grid
    dst_crs = CRS.from_user_input(crs) if crs else grid.crs
    if dst_crs is None or grid.crs is None:
        raise ConfigError("preprocess.target_crs: the input has no CRS to reproject from")
    h, w = grid.shape
    kw = {"resolution": resolution} if resolution else {}
    # GCP inputs are warped through GDAL's GCP transformer (never through their affine fit)
    gcps = write_profile(grid)["gcps"] if grid.georeference == "gcps" else None
    if gcps is not None:
        transform, width, height = calculate_default_transform(
            grid.crs, dst_crs, w, h, gcps=gcps, **kw
        )
        src_geo = {"gcps": gcps}
    else:
        transform, width, height = calculate_default_transform(
            grid.crs, dst_crs, w, h, *grid.bounds, **kw
        )
        src_geo = {"src_transform": grid.transform}
    src = img.compute().astype(np.float32)
    nodata = img.nodata if img.nodata is not None else np.nan
    dst = np.full((img.n_channels, height, width), np.nan, np.float32)
    rio_reproject(
        src,
        dst,
        **src_geo,
        src_crs=grid.crs,
        src_nodata=nodata,
        dst_transform=transform,
        dst_crs=dst_crs,
        dst_nodata=np.nan,
        resampling=Resampling[resampling],
    )
    out = GeoGrid(dst_crs, transform, (height, width))
    return Image.from_array(
        dst, out, nodata=float("nan"), channel_names=img.channel_names, attrs=dict(img.attrs)
    )


def respace(img: Image, spacing_mm: list[float]) -> Image:
    """Return ``img`` resampled (trilinear, chunk-wise, lazy) to ``spacing_mm`` in (x, y, z) order.

    Same origin and direction; see :func:`geomed_seg.core.resample_grid.grid_for_spacing`
    and :func:`geomed_seg.core.resample.resample_image` (equal to SimpleITK's linear
    ``Resample``, tested).
    """
    from geomed_seg.core.resample import resample_image
    from geomed_seg.core.resample_grid import grid_for_spacing

    return resample_image(img, grid_for_spacing(img.grid, list(spacing_mm)[::-1]), order=1)


def preprocess(img: Image, cfg: PipelineConfig, sensor=None) -> Image:
    """Apply ``cfg.preprocess`` to ``img`` in a fixed order (select, rescale, warp, clip).

    Volumes keep their grid here: ``target_spacing_mm`` is applied by the model step, which
    returns its labels on the input grid (:func:`geomed_seg.pipelines.methods.run_model`).
    """
    p = cfg.preprocess
    if p.select_bands:
        img = select_bands(img, p.select_bands)
    if p.rescale_from_card:
        if sensor is None:
            raise ConfigError("preprocess.rescale_from_card needs a sensor card (sensor: ...)")
        img = rescale(img, sensor)
    if p.target_crs or p.target_resolution:
        if img.kind != "raster":
            raise ConfigError("preprocess.target_crs/target_resolution apply to rasters")
        img = reproject(img, p.target_crs, p.target_resolution, p.resampling)
    if p.target_spacing_mm and img.kind != "volume":
        raise ConfigError("preprocess.target_spacing_mm applies to volumes")
    # target_spacing_mm is applied by the model step (pipelines.methods.run_model), which
    # resamples to it and brings the results back onto the input grid
    if p.clip:
        lo, hi = p.clip
        img = replace(img, data=img.data.clip(lo, hi))
    return img
