"""DICOM series and multi-frame files → volume :class:`Image` (SimpleITK, pydicom, highdicom).

pydicom reads the headers to find series and check their geometry; SimpleITK
(``ImageSeriesReader``) reads the pixels and geometry of single-frame series, in the order we
sort them: by ``ImagePositionPatient`` projected on the slice normal, never by file name or
``InstanceNumber``. Enhanced multi-frame files (per-frame functional groups) go through
highdicom's ``get_volume``. Geometry enters our world through
:meth:`VoxelGrid.from_itk <geomed_seg.core.grid.VoxelGrid.from_itk>`, the one LPS↔RAS place.

Regular single-frame series are lazy: opening reads headers only (pydicom) and SimpleITK's
image information of the first slice; each dask chunk (a slab of whole slices, at most
:data:`~geomed_seg.core.image.DEFAULT_CHUNK_BYTES`) reads its files with SimpleITK when
computed. Multi-frame files and series resampled with ``resample=True`` are read whole.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.errors import InvalidDicomError

from geomed_seg.core.grid import VoxelGrid
from geomed_seg.core.image import DEFAULT_CHUNK_BYTES, Image
from geomed_seg.errors import InvalidInputError, ReadError, UnsupportedFormatError
from geomed_seg.io.dicom_geometry import SliceGeometry, check_slices, resample_slices

logger = logging.getLogger(__name__)

_HEADER_TAGS = (
    "SeriesInstanceUID", "StudyInstanceUID", "SeriesDescription", "SeriesNumber", "Modality",
    "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns",
    "SOPInstanceUID", "FrameOfReferenceUID", "PatientID", "NumberOfFrames", "GantryDetectorTilt",
    "PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence", "SliceThickness",
    "RescaleSlope", "RescaleIntercept",
)  # fmt: skip


@dataclass(frozen=True)
class _File:
    path: Path
    ds: pydicom.Dataset

    def get(self, key: str, default: Any = None) -> Any:
        return self.ds.get(key, default)


@dataclass
class _Series:
    uid: str
    files: list[_File]

    @property
    def first(self) -> pydicom.Dataset:
        return self.files[0].ds

    def describe(self, index: int) -> str:
        d = self.first
        return (
            f"[{index}] {self.uid} '{d.get('SeriesDescription', '')}' "
            f"{d.get('Modality', '?')}, {len(self.files)} file(s)"
        )


def _candidates(
    path_or_paths: str | os.PathLike | Sequence[str | os.PathLike],
) -> tuple[str, list[Path]]:
    if isinstance(path_or_paths, str | os.PathLike):
        root = Path(path_or_paths)
        if not root.exists():
            raise ReadError(f"{root}: no such file or folder")
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        return str(root), files
    files = [Path(p) for p in path_or_paths]
    for p in files:
        if not p.is_file():
            raise ReadError(f"{p}: no such file")
    where = str(files[0].parent) if files else "<empty list>"
    return where, files


def _read_headers(files: list[Path]) -> list[_File]:
    out = []
    for p in files:
        try:
            ds = pydicom.dcmread(p, stop_before_pixels=True, specific_tags=list(_HEADER_TAGS))
        except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError):
            logger.debug("%s: not a DICOM file, skipped", p)
            continue
        if "Rows" in ds and "SeriesInstanceUID" in ds:  # images only (not DICOMDIR, SR...)
            out.append(_File(p, ds))
    return out


def _group(files: list[_File]) -> list[_Series]:
    groups: dict[str, list[_File]] = {}
    for f in files:
        groups.setdefault(str(f.get("SeriesInstanceUID")), []).append(f)
    series = [_Series(uid, fs) for uid, fs in groups.items()]
    series.sort(key=lambda s: (int(s.first.get("SeriesNumber") or 0), s.uid))
    return series


def _choose(series: list[_Series], choice: str | int | None, where: str) -> _Series:
    listing = "; ".join(s.describe(i + 1) for i, s in enumerate(series))
    if choice is None:
        if len(series) == 1:
            return series[0]
        raise InvalidInputError(
            f"{where}: {len(series)} DICOM series found; choose one with series= (--series) "
            f"as a UID, 1-based index or description: {listing}"
        )
    text = str(choice)
    if text.isdigit() and 1 <= int(text) <= len(series) and not any(s.uid == text for s in series):
        return series[int(text) - 1]
    exact = [s for s in series if s.uid == text]
    if exact:
        return exact[0]
    found = [s for s in series if text.lower() in str(s.first.get("SeriesDescription", "")).lower()]
    if len(found) == 1:
        return found[0]
    how = "matches several" if found else "matches none"
    raise InvalidInputError(f"{where}: series {text!r} {how} of: {listing}")


def _sensible_dtype(arr: np.ndarray) -> np.ndarray:
    """Return ``arr`` as int16/uint16/int32 when integer-valued and in range, else float32."""
    if arr.size == 0:
        return arr.astype(np.float32)
    if arr.dtype.kind == "f" and not np.array_equal(arr, np.round(arr)):
        return arr.astype(np.float32)
    lo, hi = float(arr.min()), float(arr.max())
    for dt in (np.int16, np.uint16, np.int32):
        if np.iinfo(dt).min <= lo and hi <= np.iinfo(dt).max:
            return arr.astype(dt)
    return arr.astype(np.float32)


def _is_multiframe(f: _File) -> bool:
    if "PerFrameFunctionalGroupsSequence" in f.ds:
        return True
    try:
        return int(f.get("NumberOfFrames") or 1) > 1
    except ValueError as exc:
        raise InvalidInputError(f"{f.path}: invalid NumberOfFrames ({exc})") from exc


def _itk_message(exc: Exception) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[-1] if lines else type(exc).__name__


def _read_multiframe(f: _File) -> tuple[np.ndarray, VoxelGrid]:
    """Read a multi-frame file; slices ordered along +normal for enhanced files.

    Enhanced files (per-frame functional groups) go through highdicom's ``get_volume``,
    which sorts frames spatially and checks regular spacing; legacy multi-frame files
    (NM, RT dose with ``GridFrameOffsetVector``) through SimpleITK. RT dose values are
    multiplied by ``DoseGridScaling`` (Gy), which SimpleITK leaves out.
    """
    if "PerFrameFunctionalGroupsSequence" not in f.ds:
        try:
            itk = sitk.ReadImage(str(f.path))
        except RuntimeError as exc:
            raise ReadError(f"{f.path}: SimpleITK cannot read it ({_itk_message(exc)})") from exc
        arr = sitk.GetArrayFromImage(itk)
        if arr.ndim != 3 or itk.GetNumberOfComponentsPerPixel() != 1:
            raise UnsupportedFormatError(f"{f.path}: multi-frame image is not a scalar 3D volume")
        scaling = pydicom.dcmread(f.path, stop_before_pixels=True).get("DoseGridScaling")
        if scaling is not None:
            arr = arr * np.float32(scaling)
        grid = VoxelGrid.from_itk(itk.GetOrigin(), itk.GetSpacing(), itk.GetDirection(), arr.shape)
        return arr, grid
    import highdicom as hd

    try:
        vol = hd.imread(f.path).get_volume(dtype=np.float64)
    except (ValueError, RuntimeError, AttributeError, KeyError, sqlite3.Error) as exc:
        raise UnsupportedFormatError(
            f"{f.path}: multi-frame file without a regular 3D volume ({exc})"
        ) from exc
    aff = np.asarray(vol.affine)  # (slice, row, column) indices -> LPS mm
    if np.dot(aff[:3, 0], np.cross(aff[:3, 2], aff[:3, 1])) < 0:
        vol = vol.flip_spatial(0)  # slices along +normal, as for series
        aff = np.asarray(vol.affine)
    axes = aff[:3, [2, 1, 0]]  # our x = column, y = row, z = slice
    spacing = np.linalg.norm(axes, axis=0)
    direction = (axes / spacing).ravel()
    arr = np.asarray(vol.array)
    return arr, VoxelGrid.from_itk(aff[:3, 3], spacing, direction, arr.shape)


def _varying_rescale(files: list[_File]) -> bool:
    pairs = {
        (float(f.get("RescaleSlope") or 1), float(f.get("RescaleIntercept") or 0)) for f in files
    }
    return len(pairs) > 1


def _read_series(files: list[Path], as_float: bool = False) -> sitk.Image:
    """Read sorted files with SimpleITK; ``as_float`` when rescaling differs per slice.

    GDCM picks the output pixel type from the first file, so per-slice slopes (PET) would
    be truncated to that file's integer type without ``as_float``.
    """
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(p) for p in files])
    if as_float:
        reader.SetOutputPixelType(sitk.sitkFloat64)
    try:
        return reader.Execute()
    except RuntimeError as exc:
        bad = next((p for p in files if not _readable(p)), files[0].parent)
        raise ReadError(f"{bad}: SimpleITK cannot read it ({_itk_message(exc)})") from exc


def _read_block(files: list[Path], as_float: bool, dtype: np.dtype) -> np.ndarray:
    """Read sorted ``files`` (one z slab) with SimpleITK; ``(z, y, x)`` in ``dtype``."""
    return sitk.GetArrayFromImage(_read_series(files, as_float)).astype(dtype, copy=False)


def _lazy_series(ordered: list[_File], report: Any, chunks: Any) -> tuple[da.Array, VoxelGrid]:
    """Return a lazy ``(z, y, x)`` dask array of z slabs and the grid, reading no pixels.

    Geometry is SimpleITK's for the first slice (origin, in-plane spacing, direction whose
    third column is the slice normal) with the mean step along the normal between the
    first and last slice, as ``ImageSeriesReader`` computes it. The dtype is the pixel type
    GDCM gives the first slice (float32 for float types or when rescaling differs between
    slices, which GDCM would otherwise truncate).
    """
    paths = [f.path for f in ordered]
    info = sitk.ImageFileReader()
    info.SetFileName(str(paths[0]))
    try:
        info.ReadImageInformation()
    except RuntimeError as exc:
        raise ReadError(f"{paths[0]}: SimpleITK cannot read it ({_itk_message(exc)})") from exc
    if info.GetNumberOfComponents() != 1:
        raise UnsupportedFormatError(
            f"{paths[0].parent}: {info.GetNumberOfComponents()}-component (colour) pixels; "
            "only scalar volumes are supported"
        )
    spacing = list(info.GetSpacing())
    if len(paths) > 1:
        proj = report.projections_mm
        spacing[2] = float(proj[-1] - proj[0]) / (len(paths) - 1)
    as_float = _varying_rescale(ordered)
    dtype = np.dtype(sitk.GetArrayViewFromImage(sitk.Image([1, 1, 1], info.GetPixelID())).dtype)
    if as_float or dtype.kind == "f":
        dtype = np.dtype(np.float32)
    ny, nx = int(ordered[0].get("Rows")), int(ordered[0].get("Columns"))
    shape = (len(paths), ny, nx)
    z_chunk = max(1, DEFAULT_CHUNK_BYTES // (ny * nx * dtype.itemsize))
    if isinstance(chunks, tuple | list) and len(chunks) == 4 and chunks[1] not in (None, -1):
        z_chunk = int(chunks[1])
    blocks = [
        da.from_delayed(
            dask.delayed(_read_block, pure=True)(paths[z0 : z0 + z_chunk], as_float, dtype),
            shape=(len(paths[z0 : z0 + z_chunk]), ny, nx),
            dtype=dtype,
        )
        for z0 in range(0, len(paths), z_chunk)
    ]
    grid = VoxelGrid.from_itk(info.GetOrigin(), spacing, info.GetDirection(), shape)
    return da.concatenate(blocks, axis=0), grid


def _readable(path: Path) -> bool:
    try:
        sitk.ReadImage(str(path))
    except RuntimeError:
        return False
    return True


def _read_slices(files: list[Path]) -> tuple[np.ndarray, tuple[float, float]]:
    """Read slices one by one (SimpleITK, rescaled) for resampling; ``(slice, row, col)``."""
    images = []
    for p in files:
        try:
            images.append(sitk.ReadImage(str(p)))
        except RuntimeError as exc:
            raise ReadError(f"{p}: SimpleITK cannot read it ({_itk_message(exc)})") from exc
    stack = np.concatenate([sitk.GetArrayFromImage(im).astype(np.float64) for im in images])
    return stack, tuple(float(v) for v in images[0].GetSpacing()[:2])  # type: ignore[return-value]


def open_dicom(
    path_or_paths: str | os.PathLike | Sequence[str | os.PathLike],
    series: str | int | None = None,
    chunks: Any = None,
    resample: bool = False,
) -> Image:
    """Return a volume :class:`Image` ``(channel=1, z, y, x)`` of one DICOM series.

    Parameters
    ----------
    path_or_paths : path-like or sequence of path-like
        A folder (searched recursively; non-DICOM files are skipped), one file, or a list.
    series : str or int, optional
        Which series when several are found: a SeriesInstanceUID, a 1-based index in the
        listed order, or a unique SeriesDescription substring.
    chunks : tuple, optional
        Dask chunks ``(channel, z, y, x)``; default whole-slice slabs (series) or
        :func:`~geomed_seg.core.image.default_chunks`.
    resample : bool
        Explicit opt-in for series with uneven spacing, missing slices or gantry tilt: they
        are resampled (linear interpolation, SimpleITK in-plane) onto a regular grid whose
        slice step is the median step and whose first slice is the series' first slice.
        Without it such series raise :class:`GeometryError`.

    Returns
    -------
    Image
        Rescale slope/intercept applied. dtype: for regular series the integer type GDCM
        picks for the rescaled range of the first slice (e.g. int16, int32), float32 when it
        is a float type or slopes differ between slices; for multi-frame and resampled
        data int16 (uint16/int32) when integer-valued, else float32. ``x`` runs along the rows (column index), ``y`` down the
        columns, ``z`` along the slice normal (row × column cosines). ``attrs["dicom"]``:
        series/study/frame-of-reference UIDs, modality, description, patient id, and the
        SOP instance UIDs and files in ``z`` order (for DICOM SEG).

    Raises
    ------
    InvalidInputError
        No DICOM image found, several series and no ``series``, or an unknown ``series``.
    GeometryError
        Uneven spacing, missing slices, gantry tilt (unless ``resample``), mixed
        orientations or mixed rows/columns, duplicate positions.
    """
    where, paths = _candidates(path_or_paths)
    headers = _read_headers(paths)
    if not headers:
        raise InvalidInputError(f"{where}: no DICOM image files found")
    chosen = _choose(_group(headers), series, where)
    where = f"{where} (series {chosen.uid})"
    multi = [f for f in chosen.files if _is_multiframe(f)]
    resampled = False
    if multi:
        if len(chosen.files) != 1:
            raise UnsupportedFormatError(f"{where}: multi-frame files mixed with other files")
        arr, grid = _read_multiframe(multi[0])
        ordered = chosen.files
    else:
        geoms = [SliceGeometry.from_dataset(f.ds, f.path) for f in chosen.files]
        order, report = check_slices(geoms, where, allow_irregular=resample)
        ordered = [chosen.files[i] for i in order]
        if report.regular:
            arr, grid = _lazy_series(ordered, report, chunks)
        else:
            logger.info("%s: resampling onto a regular grid (%s)", where, report.problem)
            resampled = True
            stack, spacing_xy = _read_slices([f.path for f in ordered])
            arr, (origin, spacing, direction) = resample_slices(
                stack, spacing_xy, [geoms[i] for i in order], report
            )
            grid = VoxelGrid.from_itk(origin, spacing, direction, arr.shape)
    if not isinstance(arr, da.Array):
        arr = _sensible_dtype(arr)
    first = chosen.first
    attrs = {
        "dicom": {
            "series_uid": chosen.uid,
            "study_uid": str(first.get("StudyInstanceUID", "")),
            "frame_of_reference_uid": str(first.get("FrameOfReferenceUID", "")),
            "modality": str(first.get("Modality", "")),
            "description": str(first.get("SeriesDescription", "")),
            "patient_id": str(first.get("PatientID", "")),
            "sop_instance_uids": [str(f.get("SOPInstanceUID", "")) for f in ordered],
            "files": [str(f.path) for f in ordered],
            "resampled": resampled,
        },
        "source": str(ordered[0].path.parent),
    }
    return Image.from_array(arr, grid, chunks=chunks, attrs=attrs)
