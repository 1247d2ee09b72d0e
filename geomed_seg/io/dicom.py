"""DICOM series, single files and multi-frame files → volume :class:`Image` (pydicom).

pydicom reads the headers to find series and check their geometry, and decodes the pixels
(:mod:`geomed_seg.io.dicom_pixels`: ``pixel_array`` with the Modality LUT and RT dose
scaling, for every transfer syntax pydicom has a decoder for), so values always equal
pydicom's. Slices are sorted by ``ImagePositionPatient`` projected on the slice normal,
never by file name or ``InstanceNumber`` (:mod:`geomed_seg.io.dicom_geometry`). A series
of one file, or a single file, is a one-slice volume or a multi-frame volume
(:mod:`geomed_seg.io.dicom_frames`; enhanced multi-frame files placed frame by frame from
their functional groups). Geometry enters our world through
:meth:`VoxelGrid.from_itk <geomed_seg.core.grid.VoxelGrid.from_itk>`, the one LPS↔RAS place.

Opening checks every instance of the chosen series from its header: scalar pixels, a
decoder for its transfer syntax, and Pixel Data exactly as long as Rows × Columns × frames
× samples × bits (native syntaxes). :func:`verify_dicom` (``open_image(verify=True)``)
also decodes every compressed instance once.

Regular single-frame series are lazy: each dask chunk (a slab of whole slices, at most
:data:`~geomed_seg.core.image.DEFAULT_CHUNK_BYTES`) decodes its files when computed.
Single files are one lazy chunk; series resampled with ``resample=True`` are read whole.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from geomed_seg.core.grid import VoxelGrid
from geomed_seg.core.image import DEFAULT_CHUNK_BYTES, Image
from geomed_seg.errors import GeometryError, InvalidInputError, ReadError, UnsupportedFormatError
from geomed_seg.io.dicom_frames import open_file_volume
from geomed_seg.io.dicom_geometry import SliceGeometry, check_slices, resample_slices
from geomed_seg.io.dicom_pixels import (
    check_decodable,
    check_grey,
    check_not_mosaic,
    check_payload,
    decode_values,
    is_encapsulated,
    read_header,
    transfer_syntax,
    value_dtype,
    verify_files,
)
from geomed_seg.io.dicom_series import (
    DicomFile,
    SeriesInfo,
    choose_series,
    group_series,
    series_infos,
)

logger = logging.getLogger(__name__)


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


def _read_headers(files: list[Path], explicit: bool = False) -> list[DicomFile]:
    """Return the image headers among ``files``; non-DICOM files are skipped.

    An image without ``SeriesInstanceUID`` is kept only when ``explicit`` (the user named
    that one file); in a folder it cannot be grouped, so it is skipped with a warning.
    """
    out = []
    for p in files:
        problem = None
        try:
            ds = read_header(p)
        except ReadError as exc:  # DICOM, but cut short: corrupt input, never skipped
            ds, problem = _partial_header(p, exc), exc
        except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError):
            logger.debug("%s: not a DICOM file, skipped", p)
            continue
        if problem is not None:  # set aside with its series: raised if that one is read
            out.append(DicomFile(p, ds, problem))
            continue
        if "Rows" not in ds:  # images only (not DICOMDIR, SR, RT structures...)
            if explicit and "PixelData" in ds:
                raise ReadError(f"{p}: Pixel Data without Rows/Columns (image module incomplete)")
            continue
        if "SeriesInstanceUID" in ds or explicit:
            out.append(DicomFile(p, ds, problem))
        else:
            logger.warning("%s: DICOM image without SeriesInstanceUID, skipped", p)
    return out


def _partial_header(path: Path, problem: ReadError) -> pydicom.Dataset:
    """Return what pydicom read of a truncated file, to tell which series it belongs to.

    Without a SeriesInstanceUID the file cannot be set aside, so ``problem`` is raised.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path, defer_size=4096)
    if "SeriesInstanceUID" not in ds:
        raise problem
    return ds


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


def _is_multiframe(f: DicomFile) -> bool:
    if "PerFrameFunctionalGroupsSequence" in f.ds:
        return True
    try:
        return int(f.get("NumberOfFrames") or 1) > 1
    except ValueError as exc:
        raise InvalidInputError(f"{f.path}: invalid NumberOfFrames ({exc})") from exc


def _read_block(files: list[Path], as_float: bool, dtype: np.dtype) -> np.ndarray:
    """Read sorted ``files`` (one z slab) with pydicom; ``(z, y, x)`` physical values in ``dtype``.

    ``as_float``: slopes differ between slices, so ``dtype`` is a float type (kept for
    callers that want to know why).
    """
    return np.concatenate([decode_values(p, dtype)[:1] for p in files])


def _lazy_series(ordered: list[DicomFile], report: Any, chunks: Any) -> tuple[da.Array, VoxelGrid]:
    """Return a lazy ``(z, y, x)`` dask array of z slabs and the grid, reading no pixels.

    Geometry: origin at the first sorted slice's ``ImagePositionPatient``, in-plane axes
    from its orientation, in-plane spacing from ``PixelSpacing`` and the mean step along
    the normal between the first and last slice (as SimpleITK's ``ImageSeriesReader``).
    dtype: :func:`~geomed_seg.io.dicom_pixels.value_dtype` over every slice (float32 when
    rescaling differs between slices).
    """
    paths = [f.path for f in ordered]
    first = ordered[0]
    ps = first.get("PixelSpacing")
    if ps is None:
        raise GeometryError(f"{first.path}: no PixelSpacing; cannot build a series volume")
    proj = report.projections_mm
    spacing = (float(ps[1]), float(ps[0]), float(proj[-1] - proj[0]) / (len(paths) - 1))
    as_float = _varying_rescale(ordered)
    dtype = value_dtype([f.ds for f in ordered])
    ny, nx = int(first.get("Rows")), int(first.get("Columns"))
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
    direction = np.column_stack([report.row, report.col, report.normal]).ravel()
    origin = [float(v) for v in first.get("ImagePositionPatient")]
    grid = VoxelGrid.from_itk(origin, spacing, direction, shape)
    return da.concatenate(blocks, axis=0), grid


def _varying_rescale(files: list[DicomFile]) -> bool:
    pairs = {
        (float(f.get("RescaleSlope") or 1), float(f.get("RescaleIntercept") or 0)) for f in files
    }
    return len(pairs) > 1


def _read_slices(files: list[Path]) -> tuple[np.ndarray, tuple[float, float]]:
    """Read slices one by one (pydicom, rescaled) for resampling; ``(slice, row, col)``."""
    stack = np.concatenate([decode_values(p, np.dtype(np.float64)) for p in files])
    ps = read_header(files[0]).get("PixelSpacing")
    if ps is None:
        raise GeometryError(f"{files[0]}: no PixelSpacing; cannot resample the series")
    return stack, (float(ps[1]), float(ps[0]))


def _thickness(ds: pydicom.Dataset) -> float | None:
    try:
        value = ds.get("SliceThickness")
        return None if value in (None, "") else float(value)
    except (TypeError, ValueError):
        return None


def _check_instances(files: list[DicomFile]) -> None:
    """Refuse truncated files, colour pixels and short/long Pixel Data (header only)."""
    for f in files:
        if f.problem is not None:
            raise f.problem
        check_grey(f.ds, f.path)
        check_not_mosaic(f.ds, f.path)
        check_payload(f.ds, f.path)
        check_decodable(f.ds, f.path)


def list_series(
    path_or_paths: str | os.PathLike | Sequence[str | os.PathLike],
) -> list[SeriesInfo]:
    """Return the DICOM image series under a folder (or among files), in the listed order.

    Headers only (no pixel is read). The order, series number then SeriesInstanceUID, gives
    each series its 1-based index, which ``open_dicom(series=N)`` / ``--series N`` takes
    (:mod:`geomed_seg.io.dicom_series`).

    Raises
    ------
    InvalidInputError
        No DICOM image file found.
    """
    where, paths = _candidates(path_or_paths)
    named = not (isinstance(path_or_paths, str | os.PathLike) and Path(path_or_paths).is_dir())
    headers = _read_headers(paths, explicit=named)
    if not headers:
        raise InvalidInputError(f"{where}: no DICOM image files found")
    return series_infos(group_series(headers))


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
        Which series when several are found: a SeriesInstanceUID, the 1-based index in the
        order of :func:`list_series` (series number, then UID), or a SeriesDescription
        (exact, else a substring; case-insensitive) that fits one series only.
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
        Values are pydicom's ``pixel_array`` with the Modality LUT (rescale slope and
        intercept) and RT Dose ``DoseGridScaling`` applied. dtype: the smallest integer type
        holding the rescaled range of the stored bits (as GDCM picks, e.g. int16, int32),
        float32 for fractional rescaling, dose scaling or slopes that differ between slices;
        enhanced multi-frame and resampled data int16 (uint16/int32) when integer-valued,
        else float32. ``x`` runs along the rows (column index), ``y`` down the
        columns, ``z`` along the slice normal (row × column cosines). ``attrs["dicom"]``:
        series/study/frame-of-reference UIDs, modality, description, patient id, and the
        SOP instance UIDs and files in ``z`` order (for DICOM SEG).

    Raises
    ------
    InvalidInputError
        No DICOM image found, several series and no ``series``, or an unknown ``series``.
    ReadError
        An instance's Pixel Data is shorter or longer than its header promises, or a
        file is truncated.
    UnsupportedFormatError
        Colour pixels, a transfer syntax pydicom has no decoder for (the message names
        the missing package), frames that cannot be placed in patient space,
        big-endian enhanced multi-frame files.
    GeometryError
        Uneven spacing, missing slices, gantry tilt (unless ``resample``), mixed
        orientations or mixed rows/columns, duplicate positions.
    """
    where, paths = _candidates(path_or_paths)
    named = not (isinstance(path_or_paths, str | os.PathLike) and Path(path_or_paths).is_dir())
    headers = _read_headers(paths, explicit=named)
    if not headers:
        raise InvalidInputError(f"{where}: no DICOM image files found")
    chosen = choose_series(group_series(headers), series, where)
    where = f"{where} (series {chosen.uid})"
    _check_instances(chosen.files)
    multi = [f for f in chosen.files if _is_multiframe(f)]
    resampled = False
    if len(chosen.files) == 1:
        arr, grid = open_file_volume(chosen.files[0].path, chosen.files[0].ds, resample)
        ordered = chosen.files
    elif multi:
        raise UnsupportedFormatError(f"{where}: multi-frame files mixed with other files")
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
            "transfer_syntaxes": sorted({str(transfer_syntax(f.ds)) for f in ordered}),
            "compressed": any(is_encapsulated(f.ds) for f in ordered),
            "slice_thickness_mm": _thickness(first),
            **_dates(first),
        },
        "source": str(ordered[0].path.parent),
    }
    return Image.from_array(arr, grid, chunks=chunks, attrs=attrs)


def _dates(ds: Any) -> dict[str, str]:
    """Acquisition/Series/Study Date and Time (DA/TM strings) and TimezoneOffsetFromUTC."""
    out = {}
    for what in ("Acquisition", "Series", "Study"):
        for part in ("Date", "Time"):
            value = str(ds.get(f"{what}{part}", "") or "").strip()
            if value:
                out[f"{what.lower()}_{part.lower()}"] = value
    tz = str(ds.get("TimezoneOffsetFromUTC", "") or "").strip()
    if tz:
        out["timezone_offset"] = tz
    return out


def verify_dicom(path: Any, image: Image) -> None:
    """Raise :class:`ReadError` unless every instance behind ``image`` decodes completely.

    The header checks (Pixel Data length, file size) ran when the series was opened; when
    any instance is compressed (``attrs["dicom"]["compressed"]``) this decodes each one once,
    so a corrupt codestream is refused before anything is written.
    """
    meta = image.attrs["dicom"]
    if meta.get("compressed", True):
        verify_files(meta["files"])
