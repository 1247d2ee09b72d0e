"""Open a pipeline's inputs and preprocess them into one model-ready :class:`Image`.

Inputs: one file, a band stack from several single-band files, or named sequences found by
glob in a folder (BraTS ``t1n, t1c, t2w, t2f``). Preprocessing: band selection by name,
DN -> physical rescaling from the sensor card, reprojection to a CRS/resolution
(``rasterio.warp.reproject``), resampling to a voxel spacing (SimpleITK), intensity
clipping. Reprojection and respacing load the image into memory (documented limit:
use them on scenes that fit; the rest of the pipeline streams).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import dask.array as da
import numpy as np

from geomed_seg.core.grid import GeoGrid, VoxelGrid
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
    out = Image.from_array(arr, first.grid, nodata=first.nodata, channel_names=names, attrs=attrs)
    return out if first.mask is None else replace(out, mask=first.mask)


def find_sequences(folder: Path, patterns: dict[str, str]) -> dict[str, Path]:
    """Return ``{channel: path}``: exactly one match of each glob pattern in ``folder``."""
    if not folder.is_dir():
        raise InvalidInputError(f"{folder}: input folder does not exist")
    found = {}
    for name, pattern in patterns.items():
        hits = sorted(folder.glob(pattern))
        if len(hits) != 1:
            what = (
                "no file"
                if not hits
                else f"{len(hits)} files ({', '.join(h.name for h in hits[:4])})"
            )
            raise InvalidInputError(f"{folder}: {what} match {name} pattern {pattern!r}")
        found[name] = hits[0]
    return found


def open_inputs(cfg: PipelineConfig, override: Path | None = None) -> tuple[Image, list[Path]]:
    """Return ``(image, input files)`` for ``cfg``; ``override`` replaces path or folder."""
    spec = cfg.input
    if override is not None:
        if spec.folder or (override.is_dir() and spec.sequences):
            spec = spec.model_copy(update={"folder": str(override), "path": None})
        else:
            spec = spec.model_copy(update={"path": str(override), "bands": None, "folder": None})
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
        found = find_sequences(cfg.resolve(spec.folder), spec.sequences)
        imgs = [_open(p) for p in found.values()]
        return _stack(imgs, list(found), str(cfg.resolve(spec.folder))), list(found.values())
    raise ConfigError(
        f"{cfg.name}: no input given (input.path, input.bands or input.folder, or --input)"
    )


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
    """Return ``img`` resampled (linear, SimpleITK) to ``spacing_mm`` in (x, y, z) order."""
    import SimpleITK as sitk

    grid = img.grid
    origin, spacing, direction = grid.to_itk()
    size = [
        int(round(n * s / t)) for n, s, t in zip(grid.shape[::-1], spacing, spacing_mm, strict=True)
    ]
    chans = []
    for c in range(img.n_channels):
        src = sitk.GetImageFromArray(np.asarray(img.darray[c].compute(), np.float32))
        src.SetOrigin(origin)
        src.SetSpacing(spacing)
        src.SetDirection(direction)
        res = sitk.Resample(
            src,
            size,
            sitk.Transform(),
            sitk.sitkLinear,
            origin,
            list(spacing_mm),
            direction,
            0.0,
            sitk.sitkFloat32,
        )
        chans.append(sitk.GetArrayFromImage(res))
    arr = np.stack(chans)
    out = VoxelGrid.from_itk(origin, spacing_mm, direction, arr.shape[1:])
    return Image.from_array(arr, out, channel_names=img.channel_names, attrs=dict(img.attrs))


def preprocess(img: Image, cfg: PipelineConfig, sensor=None) -> Image:
    """Apply ``cfg.preprocess`` to ``img`` in a fixed order (select, rescale, warp, clip)."""
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
    if p.target_spacing_mm:
        if img.kind != "volume":
            raise ConfigError("preprocess.target_spacing_mm applies to volumes")
        img = respace(img, p.target_spacing_mm)
    if p.clip:
        lo, hi = p.clip
        img = replace(img, data=img.data.clip(lo, hi))
    return img
