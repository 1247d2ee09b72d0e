"""Single DICOM files as volumes: one-slice images, legacy and enhanced multi-frame files.

* A single-frame image is a one-slice volume placed by ``ImagePositionPatient`` (LPS mm of
  the first pixel), ``ImageOrientationPatient`` (row, column cosines) and ``PixelSpacing``
  (row spacing, column spacing). Its slice step is ``SpacingBetweenSlices``, else 1 mm,
  as SimpleITK/GDCM set it (``SliceThickness`` is logged, and kept in
  ``attrs["dicom"]["slice_thickness_mm"]`` for one-slice volumes).
* A legacy multi-frame file (RT Dose, NM) places its frames along the slice normal with
  ``GridFrameOffsetVector`` (relative offsets, or absolute z when the first offset equals
  the ``ImagePositionPatient`` z of an axial grid). Frames must be evenly spaced; files
  whose frames cannot be placed are refused.
* An enhanced multi-frame file (per-frame functional groups) places each frame by its
  Plane Position/Orientation and Pixel Measures groups; frames are sorted and checked like
  the slices of a series, and each keeps its own Pixel Value Transformation (rescale).

Pixels are decoded by :mod:`geomed_seg.io.dicom_pixels` (pydicom, Modality LUT, dose
scaling). Geometry leaves here as ITK-style ``(origin, spacing, direction)`` in LPS for
:meth:`VoxelGrid.from_itk <geomed_seg.core.grid.VoxelGrid.from_itk>`. The placement rules
are hand-written because SimpleITK/GDCM cannot decode every file pydicom can and pads
short pixel data silently.
"""

from __future__ import annotations

import logging
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pydicom

from geomed_seg.core.grid import VoxelGrid
from geomed_seg.errors import GeometryError, UnsupportedFormatError
from geomed_seg.io.dicom_geometry import SliceGeometry, check_slices, resample_slices
from geomed_seg.io.dicom_pixels import (
    check_decodable,
    check_grey,
    check_not_mosaic,
    check_payload,
    decode_values,
    group_item,
    value_dtype,
)

logger = logging.getLogger(__name__)

Itk = tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]


def _floats(ds: pydicom.Dataset, key: str, n: int, path: Path) -> np.ndarray | None:
    value = ds.get(key)
    if value is None or value == "":
        return None
    try:
        arr = np.asarray([float(v) for v in value], dtype=float)
    except (TypeError, ValueError) as exc:
        raise GeometryError(f"{path}: malformed {key} ({exc})") from exc
    if arr.size != n:
        raise GeometryError(f"{path}: {key} needs {n} values, has {arr.size}")
    return arr


def _in_plane(ds: pydicom.Dataset, path: Path) -> tuple[float, float]:
    """Return (column spacing x, row spacing y) in mm."""
    for key in ("PixelSpacing", "ImagerPixelSpacing"):
        ps = _floats(ds, key, 2, path)
        if ps is not None:
            if key != "PixelSpacing":
                logger.warning("%s: no PixelSpacing; using %s (detector plane)", path, key)
            if min(ps) <= 0:
                raise GeometryError(f"{path}: non-positive {key} {ps.tolist()}")
            return float(ps[1]), float(ps[0])
    logger.warning("%s: no PixelSpacing; assuming 1 mm pixels", path)
    return 1.0, 1.0


def _placement(ds: pydicom.Dataset, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Return (origin LPS mm, 3x3 direction with row, column, normal as columns)."""
    ipp = _floats(ds, "ImagePositionPatient", 3, path)
    iop = _floats(ds, "ImageOrientationPatient", 6, path)
    if ipp is None or iop is None:
        logger.warning(
            "%s: no ImagePositionPatient/ImageOrientationPatient (no patient geometry); "
            "placed at the origin with identity orientation",
            path,
        )
        return np.zeros(3), np.eye(3)
    row, col = iop[:3], iop[3:]
    if min(np.linalg.norm(row), np.linalg.norm(col)) < 1e-6:
        raise GeometryError(f"{path}: degenerate ImageOrientationPatient {iop.tolist()}")
    row, col = row / np.linalg.norm(row), col / np.linalg.norm(col)
    if abs(float(row @ col)) > 1e-3:
        raise GeometryError(f"{path}: ImageOrientationPatient row and column are not orthogonal")
    return ipp, np.column_stack([row, col, np.cross(row, col)])


def _single_step(ds: pydicom.Dataset, path: Path) -> float:
    value = ds.get("SpacingBetweenSlices")
    if value not in (None, "") and abs(float(value)) > 0:
        return abs(float(value))
    thickness = ds.get("SliceThickness")
    logger.info(
        "%s: one-slice volume without SpacingBetweenSlices: slice step 1 mm as SimpleITK/GDCM "
        "(SliceThickness %s mm)",
        path,
        thickness,
    )
    return 1.0


def _frame_offsets(ds: pydicom.Dataset, path: Path, n: int, origin: np.ndarray) -> np.ndarray:
    """Return the frames' offsets along the normal (mm, first = 0) from GridFrameOffsetVector."""
    gfov = ds.get("GridFrameOffsetVector")
    if gfov is None:
        raise UnsupportedFormatError(
            f"{path}: {n} frames without GridFrameOffsetVector or per-frame functional "
            "groups; cannot place the frames in patient space"
        )
    offsets = np.asarray([float(v) for v in gfov], dtype=float)
    if offsets.size != n:
        raise GeometryError(
            f"{path}: GridFrameOffsetVector has {offsets.size} values for {n} frames"
        )
    if abs(offsets[0]) > 1e-6 and abs(offsets[0] - origin[2]) > 1e-3:
        raise GeometryError(
            f"{path}: GridFrameOffsetVector starts at {offsets[0]:g}, neither 0 (relative) nor "
            f"the ImagePositionPatient z {origin[2]:g} (absolute)"
        )
    return offsets - offsets[0]


def _regular_step(rel: np.ndarray, path: Path) -> float:
    steps = np.diff(rel)
    med = float(np.median(steps))
    if abs(med) < 1e-6 or np.max(np.abs(steps - med)) > max(0.01, 0.01 * abs(med)):
        raise GeometryError(
            f"{path}: frames are not evenly spaced (GridFrameOffsetVector steps "
            f"{steps.min():.4g}..{steps.max():.4g} mm)"
        )
    return med


def _legacy_geometry(ds: pydicom.Dataset, path: Path, n: int) -> tuple[Itk, bool]:
    """Return (ITK geometry, reversed) of a single-frame or legacy multi-frame file."""
    sx, sy = _in_plane(ds, path)
    origin, direction = _placement(ds, path)
    reverse = False
    if n == 1:
        step = _single_step(ds, path)
    else:
        if "ImagePositionPatient" not in ds:
            raise UnsupportedFormatError(
                f"{path}: {n} frames without ImagePositionPatient; cannot place them"
            )
        rel = _frame_offsets(ds, path, n, origin)
        step = _regular_step(rel, path)
        if step < 0:  # slices along +normal, as for series
            origin, step, reverse = origin + rel[-1] * direction[:, 2], -step, True
    itk = (
        tuple(float(v) for v in origin),
        (sx, sy, float(step)),
        tuple(float(v) for v in direction.ravel()),
    )
    return itk, reverse


def _frame_geometry(ds: pydicom.Dataset, path: Path, k: int) -> SliceGeometry:
    """Return frame ``k``'s geometry from the functional groups (per-frame, else shared)."""
    pos = group_item(ds, k, "PlanePositionSequence")
    ori = group_item(ds, k, "PlaneOrientationSequence")
    if pos is None or ori is None or "ImagePositionPatient" not in pos:
        raise UnsupportedFormatError(
            f"{path}: enhanced multi-frame file without Plane Position/Orientation for frame "
            f"{k + 1}; cannot place it in patient space"
        )
    frame = pydicom.Dataset()
    frame.ImagePositionPatient = pos.ImagePositionPatient
    frame.ImageOrientationPatient = ori.ImageOrientationPatient
    measures = group_item(ds, k, "PixelMeasuresSequence")
    if measures is not None and "PixelSpacing" in measures:
        frame.PixelSpacing = measures.PixelSpacing
    frame.Rows, frame.Columns = ds.Rows, ds.Columns
    return SliceGeometry.from_dataset(frame, path.with_name(f"{path.name} frame {k + 1}"))


def _enhanced(
    path: Path, ds: pydicom.Dataset, resample: bool
) -> tuple[da.Array | np.ndarray, VoxelGrid]:
    """Place an enhanced multi-frame file's frames like a series; slices along +normal.

    Each frame's position, orientation and pixel spacing come from its functional groups
    (Plane Position, Plane Orientation, Pixel Measures); the frames are sorted and checked
    like the slices of a series (:func:`~geomed_seg.io.dicom_geometry.check_slices`), so
    several frames at one position (echoes, time points, segments) are refused. Values are
    pydicom's with each frame's Pixel Value Transformation. Written here rather than with
    highdicom's ``get_volume``, which dropped the rescale of enhanced MR frames and reads
    little-endian files only.
    """
    n = int(ds.get("NumberOfFrames") or 1)
    geoms = [_frame_geometry(ds, path, k) for k in range(n)]
    order, report = check_slices(geoms, str(path), allow_irregular=resample)
    first = geoms[order[0]]
    sy, sx = first.pixel_spacing or (None, None)
    if sx is None:
        raise GeometryError(f"{path}: no PixelSpacing in the Pixel Measures functional group")
    if n == 1:
        measures = group_item(ds, 0, "PixelMeasuresSequence")
        step = _single_step(measures if measures is not None else ds, path)
    else:
        step = float(report.projections_mm[-1] - report.projections_mm[0]) / (n - 1)
    direction = np.column_stack([report.row, report.col, report.normal]).ravel()
    dtype = value_dtype([ds])
    shape = (n, int(ds.Rows), int(ds.Columns))
    if not report.regular:
        logger.info("%s: resampling frames onto a regular grid (%s)", path, report.problem)
        stack = decode_values(path, np.dtype(np.float64))[order]
        arr, (origin, spacing, dirs) = resample_slices(
            stack, (sx, sy), [geoms[i] for i in order], report
        )
        return arr, VoxelGrid.from_itk(origin, spacing, dirs, arr.shape)
    arr = da.from_delayed(
        dask.delayed(decode_values, pure=True)(path, dtype), shape=shape, dtype=dtype
    )
    if order != list(range(n)):
        arr = arr[order]
    origin = tuple(float(v) for v in first.position)  # type: ignore[union-attr]
    return arr, VoxelGrid.from_itk(origin, (sx, sy, step), direction, shape)


def open_file_volume(
    path: Path, ds: pydicom.Dataset, resample: bool = False
) -> tuple[da.Array | np.ndarray, VoxelGrid]:
    """Return ``((z, y, x) values, grid)`` of one DICOM image file.

    ``ds`` is its header (pixel data deferred). Lazy: one dask chunk, decoded by pydicom
    when computed. ``resample`` regularises enhanced multi-frame files whose frames are
    unevenly spaced (as for series); without it they are refused.

    Raises
    ------
    UnsupportedFormatError
        Colour pixels, no decoder for the transfer syntax, frames that cannot be placed.
    ReadError
        Pixel Data shorter or longer than the header promises.
    GeometryError
        Malformed or inconsistent geometry attributes.
    """
    check_grey(ds, path)
    check_not_mosaic(ds, path)
    check_payload(ds, path)
    check_decodable(ds, path)
    if "PerFrameFunctionalGroupsSequence" in ds:
        return _enhanced(path, ds, resample)
    try:
        n = int(ds.get("NumberOfFrames") or 1)
    except ValueError as exc:
        raise GeometryError(f"{path}: invalid NumberOfFrames ({exc})") from exc
    (origin, spacing, direction), reverse = _legacy_geometry(ds, path, n)
    dtype = value_dtype([ds])
    shape = (n, int(ds.Rows), int(ds.Columns))
    arr = da.from_delayed(
        dask.delayed(decode_values, pure=True)(path, dtype), shape=shape, dtype=dtype
    )
    if reverse:
        arr = arr[::-1]
    return arr, VoxelGrid.from_itk(origin, spacing, direction, shape)


__all__ = ["open_file_volume"]
