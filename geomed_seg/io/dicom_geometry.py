"""Slice geometry of a single-frame DICOM series: sort, check, and (opt-in) regularise.

DICOM gives each slice its own ``ImagePositionPatient`` (LPS mm of the first pixel) and
``ImageOrientationPatient`` (row and column cosines). A series is a regular volume only when
all slices share orientation and size and their positions lie on one line along the slice
normal at a constant step. SimpleITK's series reader silently assumes that (it warns and
takes the mean step), so the checks are done here, explicitly, before reading. This is
hand-written because neither SimpleITK nor pydicom reports *why* a series is irregular.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from geomed_seg.errors import GeometryError

#: Orientation cosines may differ by this much and still count as equal.
ORIENTATION_TOL = 1e-4


@dataclass(frozen=True)
class SliceGeometry:
    """Geometry of one slice: position/orientation in LPS mm, size, pixel spacing (row, col) mm."""

    path: Path
    position: np.ndarray | None
    orientation: np.ndarray | None
    rows: int
    columns: int
    pixel_spacing: tuple[float, float] | None
    gantry_tilt_deg: float = 0.0

    @classmethod
    def from_dataset(cls, ds: Any, path: Path) -> SliceGeometry:
        """Read the geometry attributes of a pydicom dataset."""
        try:
            return cls._parse(ds, path)
        except (ValueError, TypeError, IndexError, AttributeError) as exc:
            raise GeometryError(f"{path}: malformed geometry attributes ({exc})") from exc

    @classmethod
    def _parse(cls, ds: Any, path: Path) -> SliceGeometry:
        ipp, iop, ps = (
            ds.get(k) for k in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing")
        )
        if (ipp is not None and len(ipp) != 3) or (iop is not None and len(iop) != 6):
            raise ValueError("ImagePositionPatient needs 3 values, ImageOrientationPatient 6")
        return cls(
            path=path,
            position=None if ipp is None else np.asarray([float(v) for v in ipp]),
            orientation=None if iop is None else np.asarray([float(v) for v in iop]),
            rows=int(ds.Rows),
            columns=int(ds.Columns),
            pixel_spacing=None if ps is None else (float(ps[0]), float(ps[1])),
            gantry_tilt_deg=float(ds.get("GantryDetectorTilt") or 0.0),
        )


@dataclass(frozen=True)
class SeriesReport:
    """Outcome of :func:`check_slices` for slices in sorted order."""

    regular: bool
    problem: str
    projections_mm: np.ndarray  # position · normal, ascending
    step_mm: float  # median step along the normal
    row: np.ndarray  # LPS unit vector along a row (increasing column index, x)
    col: np.ndarray  # LPS unit vector down a column (increasing row index, y)
    normal: np.ndarray  # row × col


def _tolerance_mm(step: float) -> float:
    return max(0.01, 0.01 * abs(step))


def _consistency(geoms: Sequence[SliceGeometry], where: str) -> None:
    sizes = {(g.rows, g.columns) for g in geoms}
    if len(sizes) > 1:
        raise GeometryError(f"{where}: mixed image sizes (rows, columns) {sorted(sizes)}")
    if any(g.position is None or g.orientation is None for g in geoms):
        bad = next(g.path for g in geoms if g.position is None or g.orientation is None)
        raise GeometryError(f"{where}: {bad} has no ImagePositionPatient/ImageOrientationPatient")
    spacings = {g.pixel_spacing for g in geoms}
    if len(spacings) > 1:
        lo, hi = geoms[0], next(g for g in geoms if g.pixel_spacing != geoms[0].pixel_spacing)
        if None in spacings or not np.allclose(
            lo.pixel_spacing,
            hi.pixel_spacing,
            rtol=1e-4,
            atol=1e-6,  # type: ignore[arg-type]
        ):
            raise GeometryError(
                f"{where}: mixed PixelSpacing: {lo.pixel_spacing} in {lo.path.name} vs "
                f"{hi.pixel_spacing} in {hi.path.name}"
            )
    first = geoms[0].orientation
    for g in geoms[1:]:
        if np.max(np.abs(g.orientation - first)) > ORIENTATION_TOL:  # type: ignore[operator]
            raise GeometryError(
                f"{where}: mixed orientations: {first.round(5).tolist()} in {geoms[0].path.name} vs "  # type: ignore[union-attr]
                f"{g.orientation.round(5).tolist()} in {g.path.name}"  # type: ignore[union-attr]
            )


def _irregularity(proj: np.ndarray, inplane: np.ndarray, tilt_deg: float) -> tuple[str, float]:
    """Return (problem or '', median step) for sorted projections and in-plane drifts."""
    steps = np.diff(proj)
    med = float(np.median(steps))
    tol = _tolerance_mm(med)
    if np.max(np.linalg.norm(inplane, axis=1)) > tol:
        drift = float(np.max(np.linalg.norm(inplane, axis=1)))
        return (
            f"gantry tilt: slice positions drift {drift:.3g} mm off the slice normal "
            f"(GantryDetectorTilt {tilt_deg:g} deg)",
            med,
        )
    dev = np.abs(steps - med)
    if np.max(dev) > tol:
        k = int(np.argmax(dev))
        ratio = steps[k] / med
        what = (
            "missing slice(s)"
            if ratio > 1.5 and abs(ratio - round(ratio)) < 0.05
            else "uneven slice spacing"
        )
        return (
            f"{what}: step {steps[k]:.4g} mm between sorted slices {k} and {k + 1}, "
            f"median step {med:.4g} mm (steps {steps.min():.4g}..{steps.max():.4g} mm)",
            med,
        )
    return "", med


def check_slices(
    geoms: Sequence[SliceGeometry], where: str, *, allow_irregular: bool = False
) -> tuple[list[int], SeriesReport]:
    """Return the spatial order of ``geoms`` (along the slice normal) and a report.

    Raises :class:`GeometryError` naming ``where`` for mixed sizes/orientations/pixel
    spacings, duplicate
    positions, and — unless ``allow_irregular`` — uneven steps, gaps and gantry tilt.
    Tolerance: 1% of the median step, at least 0.01 mm.
    """
    if len(geoms) == 1:
        g = geoms[0]
        o = g.orientation if g.orientation is not None else np.array([1.0, 0, 0, 0, 1, 0])
        row, col = o[:3], o[3:]
        return [0], SeriesReport(True, "", np.zeros(1), 0.0, row, col, np.cross(row, col))
    _consistency(geoms, where)
    o = geoms[0].orientation
    row, col = o[:3] / np.linalg.norm(o[:3]), o[3:] / np.linalg.norm(o[3:])  # type: ignore[index]
    normal = np.cross(row, col)
    positions = np.array([g.position for g in geoms])
    proj = positions @ normal
    order = [int(i) for i in np.argsort(proj, kind="stable")]
    proj, positions = proj[order], positions[order]
    if np.min(np.diff(proj)) < 1e-3:
        k = int(np.argmin(np.diff(proj)))
        raise GeometryError(
            f"{where}: {geoms[order[k]].path.name} and {geoms[order[k + 1]].path.name} share a slice "
            "position (several echoes, phases or time points in one series?)"
        )
    rel = positions - positions[0]
    inplane = rel - np.outer(rel @ normal, normal)
    problem, med = _irregularity(proj, inplane, geoms[0].gantry_tilt_deg)
    if problem and not allow_irregular:
        raise GeometryError(
            f"{where}: {problem}; pass resample=True (--resample) to resample onto a regular grid"
        )
    return order, SeriesReport(not problem, problem, proj, med, row, col, normal)


def _shift_slice(slice2d: np.ndarray, offset_px: tuple[float, float], fill: float) -> np.ndarray:
    """Return ``slice2d`` (rows, cols) sampled at ``(col + dx, row + dy)``; SimpleITK linear."""
    img = sitk.GetImageFromArray(slice2d)
    out = sitk.Resample(
        img, img, sitk.TranslationTransform(2, offset_px), sitk.sitkLinear, fill, sitk.sitkFloat64
    )
    return sitk.GetArrayFromImage(out)


def resample_slices(
    src: np.ndarray,
    spacing_xy: tuple[float, float],
    geoms: Sequence[SliceGeometry],
    report: SeriesReport,
) -> tuple[np.ndarray, tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]]:
    """Resample sorted slices onto a regular grid; return ``(array (z, y, x), ITK geometry)``.

    ``src`` holds the slices in sorted order, ``(slice, row, column)``; ``spacing_xy`` is
    the (column, row) pixel spacing in mm.

    The target grid starts at the first slice, keeps its in-plane axes and pixel spacing,
    and steps the median step along the slice normal up to the last slice (so a tilted series becomes
    orthogonal). Each target slice interpolates linearly between the two source slices
    around it along the normal, after shifting them in-plane (SimpleITK linear) to undo
    their drift. Samples from outside a source slice take the series' minimum value.
    ITK geometry is ``(origin, spacing, direction)`` in LPS for :meth:`VoxelGrid.from_itk`.
    The interpolation along the normal is hand-written because an ITK image cannot hold
    unevenly spaced or sheared slices, so SimpleITK's ``Resample`` cannot take them as input.
    """
    src = src.astype(np.float64)
    sx, sy = spacing_xy
    proj, step = report.projections_mm, report.step_mm
    n_out = int(np.floor((proj[-1] - proj[0]) / step + 1e-6)) + 1
    p0 = geoms[0].position
    fill = float(src.min())
    shifted: dict[int, np.ndarray] = {}

    def source(k: int) -> np.ndarray:
        if k not in shifted:
            rel = geoms[k].position - p0  # type: ignore[operator]
            e = rel - (rel @ report.normal) * report.normal
            off = (-float(e @ report.row) / sx, -float(e @ report.col) / sy)
            shifted[k] = src[k] if max(map(abs, off)) < 1e-6 else _shift_slice(src[k], off, fill)
        return shifted[k]

    out = np.empty((n_out, *src.shape[1:]), dtype=np.float64)
    for k in range(n_out):
        t = proj[0] + k * step
        a = int(np.clip(np.searchsorted(proj, t, side="right") - 1, 0, len(proj) - 2))
        w = float(np.clip((t - proj[a]) / (proj[a + 1] - proj[a]), 0.0, 1.0))
        out[k] = (1 - w) * source(a) + w * source(a + 1) if w > 0 else source(a)
    direction = np.column_stack([report.row, report.col, report.normal])
    origin = tuple(float(v) for v in p0)  # type: ignore[union-attr]
    return out, (
        origin,
        (float(sx), float(sy), float(step)),
        tuple(float(v) for v in direction.ravel()),
    )
