"""Put a prediction on its reference's grid before scoring: check, or resample nearest-neighbour.

Label images must never be interpolated, so resampling is nearest neighbour only, done by
the field's libraries: ``rasterio.warp.reproject`` for rasters (any CRS / transform) and
SimpleITK's ``ResampleImageFilter`` for volumes (any affine, via the LPS conversion of
:meth:`VoxelGrid.to_itk`).
"""

from __future__ import annotations

import logging

import numpy as np

from geomed_seg.core.grid import GeoGrid, VoxelGrid, check_same_grid
from geomed_seg.core.image import Image
from geomed_seg.errors import GeometryError, InvalidInputError
from geomed_seg.io.georef import write_profile

logger = logging.getLogger(__name__)


def _resample_raster(pred: Image, grid: GeoGrid) -> np.ndarray:
    from rasterio.enums import Resampling
    from rasterio.warp import reproject

    src = pred.compute()
    fill = pred.nodata if pred.nodata is not None else 0
    out = np.full((src.shape[0], *grid.shape), fill, dtype=src.dtype)
    if pred.grid.crs is None or grid.crs is None:
        raise GeometryError(
            f"cannot resample without a CRS: {pred.grid.describe()} -> {grid.describe()}"
        )
    if grid.georeference != "transform" or pred.grid.rpcs is not None:
        raise GeometryError(
            f"cannot resample onto a grid georeferenced by {grid.georeference} "
            f"({grid.describe()}); give the prediction the reference's own grid"
        )
    # a GCP-georeferenced prediction is warped through GDAL's GCP transformer, not its fit
    src_geo = (
        {"gcps": write_profile(pred.grid)["gcps"]}
        if pred.grid.georeference == "gcps"
        else {"src_transform": pred.grid.transform}
    )
    reproject(
        src,
        out,
        **src_geo,
        src_crs=pred.grid.crs,
        dst_transform=grid.transform,
        dst_crs=grid.crs,
        src_nodata=pred.nodata,
        dst_nodata=fill,
        resampling=Resampling.nearest,
    )
    return out


def _resample_volume(pred: Image, grid: VoxelGrid) -> np.ndarray:
    import SimpleITK as sitk

    src = pred.compute()
    out = []
    for ch in src:
        img = sitk.GetImageFromArray(np.ascontiguousarray(ch))
        origin, spacing, direction = pred.grid.to_itk()
        img.SetOrigin(origin)
        img.SetSpacing(spacing)
        img.SetDirection(direction)
        f = sitk.ResampleImageFilter()
        o, s, d = grid.to_itk()
        f.SetOutputOrigin(o)
        f.SetOutputSpacing(s)
        f.SetOutputDirection(d)
        f.SetSize([int(v) for v in grid.shape[::-1]])
        f.SetInterpolator(sitk.sitkNearestNeighbor)
        f.SetDefaultPixelValue(float(pred.nodata) if pred.nodata is not None else 0.0)
        out.append(sitk.GetArrayFromImage(f.Execute(img)))
    return np.stack(out)


def align_to_reference(pred: Image, ref: Image, resample_to: str | None = None) -> Image:
    """Return ``pred`` on ``ref``'s grid.

    ``resample_to=None``: raise :class:`GeometryError` (naming both grids) unless the grids
    agree within tolerance. ``resample_to="reference"``: resample ``pred`` with nearest
    neighbour onto the reference grid.
    """
    if type(pred.grid) is not type(ref.grid):
        raise GeometryError(
            f"prediction and reference differ in kind: {pred.grid.describe()} vs {ref.grid.describe()}"
        )
    if resample_to is None:
        check_same_grid(pred.grid, ref.grid, "prediction and reference grids")
        return pred
    if resample_to != "reference":
        raise InvalidInputError(f"resample_to must be None or 'reference', got {resample_to!r}")
    if pred.grid.almost_equals(ref.grid):
        return pred
    logger.info("resampling prediction %s onto %s", pred.grid.describe(), ref.grid.describe())
    if isinstance(ref.grid, GeoGrid):
        data = _resample_raster(pred, ref.grid)
    else:
        data = _resample_volume(pred, ref.grid)
    return Image.from_array(data, ref.grid, nodata=pred.nodata, attrs=dict(pred.attrs))
