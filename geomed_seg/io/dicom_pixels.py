"""DICOM pixel payloads: integrity checks and decoding to physical values, with pydicom.

pydicom's decoded array (``pixel_array``) is the reference for every transfer syntax we
accept; the Modality LUT (``RescaleSlope``/``RescaleIntercept`` or a Modality LUT Sequence)
is applied with :func:`pydicom.pixels.apply_modality_lut` and RT Dose values are multiplied
by ``DoseGridScaling`` (Gy). SimpleITK/GDCM is not used for pixels: it silently pads short
Pixel Data and misreads some big-endian files.

Integrity, per instance:

* native (uncompressed) syntaxes: the Pixel Data value length against
  Rows x Columns x frames x samples x bits (:func:`pydicom.pixels.utils.get_expected_length`;
  one trailing pad byte allowed), and the value against the file's size. Checked from the
  header alone (:func:`check_payload`), so opening stays lazy.
* encapsulated syntaxes: a decoder must exist (:func:`check_decodable`) and decoding must
  succeed (:func:`decode_values`; :func:`verify_files` decodes every frame once).

Decoders' own warnings (pydicom plugins) are captured and logged at debug level, never
printed before our one-line error.
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, get_decoder
from pydicom.pixels.utils import get_expected_length

from geomed_seg.errors import ReadError, UnsupportedFormatError

logger = logging.getLogger(__name__)

_PIXEL_TAGS = {
    0x7FE00010: "PixelData",
    0x7FE00008: "FloatPixelData",
    0x7FE00009: "DoubleFloatPixelData",
}
_UNDEFINED = 0xFFFFFFFF
#: Values read from the header only; larger values (Pixel Data) stay deferred on disk.
DEFER_BYTES = 4096


#: Third-party loggers whose records (e.g. a decoder's traceback) are demoted to debug.
_NOISY_LOGGERS = ("pydicom", "highdicom")
# warnings filters and logger settings are process-wide: one decoding section at a time
_QUIET = threading.RLock()


class _ToDebug(logging.Handler):
    """Forward third-party log records to this module's logger at debug level."""

    def __init__(self, path: Path) -> None:
        super().__init__(logging.DEBUG)
        self.path = path

    def emit(self, record: logging.LogRecord) -> None:
        logger.debug("%s: %s: %s", self.path, record.name, record.getMessage())


@contextmanager
def quiet_decoders(path: Path) -> Iterator[list[warnings.WarningMessage]]:
    """Capture warnings and pydicom/highdicom log records while reading ``path``.

    Yields the list the warnings are recorded in. They are logged at debug level (``--debug`` shows them), so a decoder's own messages
    and tracebacks never print before the one-line error that names the file.
    """
    with _QUIET:
        handler = _ToDebug(path)
        saved = []
        for name in _NOISY_LOGGERS:
            lg = logging.getLogger(name)
            saved.append((lg, lg.propagate))
            lg.addHandler(handler)
            lg.propagate = False
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                yield caught
        finally:
            for lg, propagate in saved:
                lg.removeHandler(handler)
                lg.propagate = propagate
        for w in caught:
            logger.debug("%s: %s", path, w.message)


def read_header(path: Path) -> pydicom.Dataset:
    """Return ``path``'s dataset with Pixel Data left deferred (value not read).

    Raises the usual pydicom/OS errors for non-DICOM files (callers decide to skip them),
    and :class:`ReadError` for a DICOM file that ends inside its data set (pydicom only
    warns, or says nothing when the cut falls between elements, and returns what it read):
    an image SOP class without Pixel Data is a truncated file.
    """
    with quiet_decoders(path) as caught:
        ds = pydicom.dcmread(path, defer_size=DEFER_BYTES)
    early = [str(w.message) for w in caught if "End of file reached" in str(w.message)]
    if early:
        raise ReadError(f"{path}: truncated DICOM file ({early[0].split(' in file ')[0]})")
    if not any(t in ds for t in _PIXEL_TAGS):
        # pydicom returns a partial data set, silently, for a file cut between elements
        sop = ds.get("SOPClassUID") or getattr(ds, "file_meta", {}).get("MediaStorageSOPClassUID")
        name = pydicom.uid.UID(str(sop)).name if sop else ""
        if "Image Storage" in name:
            raise ReadError(
                f"{path}: truncated DICOM file ({name} without Pixel Data; the data set ends "
                f"after {os.path.getsize(path)} bytes)"
            )
    return ds


def _pixel_element(ds: pydicom.Dataset) -> tuple[str, Any] | None:
    for tag, name in _PIXEL_TAGS.items():
        if tag in ds:
            return name, ds.get_item(tag, keep_deferred=True)
    return None


def transfer_syntax(ds: pydicom.Dataset) -> pydicom.uid.UID:
    """Return the dataset's transfer syntax UID; refuse a file meta without one."""
    meta = getattr(ds, "file_meta", None)
    uid = meta.get("TransferSyntaxUID") if meta is not None else None
    if not uid:
        raise UnsupportedFormatError(
            f"{getattr(ds, 'filename', '?')}: no (0002,0010) Transfer Syntax UID in the file "
            "meta information; the pixel encoding is unknown"
        )
    return pydicom.uid.UID(str(uid))


def is_encapsulated(ds: pydicom.Dataset) -> bool:
    """Return True when the pixel data are compressed (encapsulated transfer syntax)."""
    return transfer_syntax(ds).is_encapsulated


def check_grey(ds: pydicom.Dataset, path: Path) -> None:
    """Raise :class:`UnsupportedFormatError` unless ``ds`` holds scalar (grey-level) pixels."""
    spp = int(ds.get("SamplesPerPixel") or 1)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip()
    if spp != 1:
        raise UnsupportedFormatError(
            f"{path}: {spp}-component ({photometric}) colour pixels; only scalar "
            "(grey-level) images are supported"
        )
    if photometric == "PALETTE COLOR":
        raise UnsupportedFormatError(
            f"{path}: PALETTE COLOR pixels are colour indices; only scalar (grey-level) "
            "images are supported"
        )


def check_not_mosaic(ds: pydicom.Dataset, path: Path) -> None:
    """Raise :class:`UnsupportedFormatError` for a Siemens mosaic (many slices tiled in one image).

    A mosaic's Rows x Columns hold a grid of slices (``ImageType`` contains ``MOSAIC``;
    private ``(0019,100A)`` NumberOfImagesInMosaic), and its ImagePositionPatient is that
    of the whole tile, so reading it as one slice gives a wrong volume and geometry with
    no error (SimpleITK/GDCM do the same). Unpacking needs the Siemens CSA header (slice
    normal, slice order): dcm2niix or ``nibabel.nicom`` do it.
    """
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
    if "MOSAIC" not in image_type:
        return
    n = ds.get((0x0019, 0x100A))
    count = f"{int(n.value)} slices" if n is not None and str(n.value).strip() else "slices"
    raise UnsupportedFormatError(
        f"{path}: Siemens mosaic ({count} tiled in one {ds.get('Rows')}x{ds.get('Columns')} "
        "image); unpack it to one slice per image first (e.g. dcm2niix or nibabel.nicom)"
    )


def check_payload(ds: pydicom.Dataset, path: Path) -> None:
    """Raise :class:`ReadError` when the Pixel Data of a native syntax is short or long.

    ``ds`` comes from :func:`read_header` (Pixel Data deferred). Encapsulated data are
    checked by decoding (:func:`check_decodable`, :func:`decode_values`).
    """
    found = _pixel_element(ds)
    if found is None:
        raise ReadError(f"{path}: image without Pixel Data")
    name, elem = found
    length = int(getattr(elem, "length", 0) or 0)
    if length == _UNDEFINED or (name == "PixelData" and is_encapsulated(ds)):
        return
    try:
        frames = int(ds.get("NumberOfFrames") or 1)
    except ValueError as exc:
        raise ReadError(f"{path}: invalid NumberOfFrames {ds.get('NumberOfFrames')!r}") from exc
    try:
        expected = int(get_expected_length(ds, unit="bytes"))
    except (AttributeError, TypeError, ValueError, KeyError) as exc:
        raise ReadError(f"{path}: image pixel attributes incomplete ({exc})") from exc
    if length != expected and not (expected % 2 == 1 and length == expected + 1):
        what = (
            "truncated or corrupt pixel data"
            if length < expected
            else "extra bytes: wrong Rows/Columns/BitsAllocated or corrupt pixel data"
        )
        raise ReadError(
            f"{path}: {name} holds {length} bytes but Rows x Columns x frames x samples x bits "
            f"= {ds.Rows} x {ds.Columns} x {frames} x {ds.get('SamplesPerPixel', 1)} x "
            f"{ds.BitsAllocated} bits needs {expected} ({what})"
        )
    tell = getattr(elem, "value_tell", None)
    if tell is None or transfer_syntax(ds) == pydicom.uid.DeflatedExplicitVRLittleEndian:
        return  # offsets of a deflated data set are in the inflated stream
    size = os.path.getsize(path)
    if int(tell) + length > size:
        raise ReadError(
            f"{path}: file ends {int(tell) + length - size} bytes before the end of its "
            f"{name} (truncated file)"
        )


def check_decodable(ds: pydicom.Dataset, path: Path) -> None:
    """Raise :class:`UnsupportedFormatError` when pydicom has no decoder for the syntax."""
    uid = transfer_syntax(ds)
    if not uid.is_encapsulated:
        return
    try:
        decoder = get_decoder(uid)
    except NotImplementedError as exc:
        raise UnsupportedFormatError(
            f"{path}: transfer syntax {uid.name} ({uid}) is not supported ({exc})"
        ) from exc
    plugins = list(getattr(decoder, "available_plugins", ()))
    bits = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 8)
    if uid == pydicom.uid.JPEGExtended12Bit and bits > 8 and plugins == ["pillow"]:
        raise UnsupportedFormatError(
            f"{path}: 12-bit JPEG Extended decoder missing (Pillow decodes 8-bit JPEG only; "
            "pydicom needs pylibjpeg-libjpeg or gdcm for 12-bit samples)"
        )
    if not decoder.is_available:
        needs = "; ".join(str(d) for d in decoder.missing_dependencies) or "a decoding plugin"
        raise UnsupportedFormatError(
            f"{path}: {uid.name} decoder missing (pydicom needs one of: {needs})"
        )


def _decode_reason(exc: Exception) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return " ".join(lines[-2:]) if len(lines) > 1 else (lines[0] if lines else type(exc).__name__)


def group_item(ds: pydicom.Dataset, k: int, name: str) -> pydicom.Dataset | None:
    """Return frame ``k``'s item of functional group ``name`` (per-frame first, then shared)."""
    for key in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
        groups = ds.get(key)
        if not groups:
            continue
        item = groups[k] if key.startswith("PerFrame") else groups[0]
        seq = item.get(name)
        if seq:
            return seq[0]
    return None


def frame_rescales(ds: pydicom.Dataset) -> list[tuple[float, float]] | None:
    """Return each frame's (RescaleSlope, RescaleIntercept) of an enhanced multi-frame file.

    From the Pixel Value Transformation functional group (per-frame, else shared), else the
    top-level attributes; ``None`` for files without functional groups.
    """
    if "PerFrameFunctionalGroupsSequence" not in ds:
        return None
    top = (float(ds.get("RescaleSlope") or 1.0), float(ds.get("RescaleIntercept") or 0.0))
    out = []
    for k in range(int(ds.get("NumberOfFrames") or 1)):
        pvt = group_item(ds, k, "PixelValueTransformationSequence")
        if pvt is None:
            out.append(top)
        else:
            out.append(
                (float(pvt.get("RescaleSlope") or 1.0), float(pvt.get("RescaleIntercept") or 0.0))
            )
    return out


def _modality(arr: np.ndarray, ds: pydicom.Dataset) -> np.ndarray:
    rescales = frame_rescales(ds)
    if rescales is not None:  # enhanced: the functional groups' rescale, frame by frame
        if any(r != (1.0, 0.0) for r in rescales):
            arr = arr.reshape(len(rescales), *arr.shape[-2:]).astype(np.float64)
            slopes, inters = (np.asarray(v)[:, None, None] for v in zip(*rescales, strict=True))
            arr = arr * slopes + inters
        return arr
    if "RescaleSlope" in ds or "RescaleIntercept" in ds or "ModalityLUTSequence" in ds:
        arr = apply_modality_lut(arr, ds)
    scaling = ds.get("DoseGridScaling")
    if scaling is not None and str(ds.get("Modality", "")) == "RTDOSE":
        arr = arr * float(scaling)
    return arr


def decode_values(path: Path, dtype: np.dtype | None = None) -> np.ndarray:
    """Return the physical values of ``path``'s frames, ``(frame, row, column)``.

    pydicom's ``pixel_array`` (native byte order), then the Modality LUT (for enhanced
    multi-frame files the functional groups' rescale, frame by frame) and RT Dose
    ``DoseGridScaling``; cast to ``dtype`` when given. Decoding failures and short
    payloads raise :class:`ReadError` naming the file; colour raises
    :class:`UnsupportedFormatError`.
    """
    with quiet_decoders(path):
        try:
            ds = pydicom.dcmread(path)
        except (InvalidDicomError, EOFError, OSError, ValueError) as exc:
            raise ReadError(f"{path}: cannot read DICOM file ({exc})") from exc
        check_grey(ds, path)
        check_not_mosaic(ds, path)
        check_payload(ds, path)
        check_decodable(ds, path)
        try:
            arr = ds.pixel_array
        except (RuntimeError, ValueError, NotImplementedError, AttributeError, OSError) as exc:
            raise ReadError(
                f"{path}: cannot decode {transfer_syntax(ds).name} pixel data "
                f"({_decode_reason(exc)})"
            ) from exc
        arr = arr.astype(arr.dtype.newbyteorder("="), copy=False)
        arr = _modality(arr, ds)
    if arr.ndim == 2:
        arr = arr[None]
    if dtype is None:
        return arr
    if np.dtype(dtype).kind in "iu" and arr.size:
        info = np.iinfo(dtype)
        lo, hi = arr.min(), arr.max()
        if lo < info.min or hi > info.max:  # e.g. bits set above BitsStored
            raise ReadError(
                f"{path}: pixel values {lo}..{hi} exceed the range its header declares "
                f"(BitsStored {ds.get('BitsStored')}, rescale) for {np.dtype(dtype)}"
            )
    return arr.astype(dtype, copy=False)


def _stored_range(ds: pydicom.Dataset) -> tuple[float, float] | None:
    bits = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 16)
    if "PixelData" not in ds:  # float pixel data
        return None
    if int(ds.get("PixelRepresentation") or 0) == 1:
        return -(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1
    return 0.0, 2.0**bits - 1


def _smallest_int(lo: float, hi: float) -> np.dtype | None:
    for dt in (np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32):
        if np.iinfo(dt).min <= lo and hi <= np.iinfo(dt).max:
            return np.dtype(dt)
    return None


def value_dtype(datasets: Sequence[pydicom.Dataset]) -> np.dtype:
    """Return the dtype that holds every physical value of these instances exactly.

    Integer stored values with integer (or no) rescale: the smallest of uint8, int8,
    uint16, int16, uint32, int32 holding the rescaled range of the stored bits (GDCM's
    choice); Modality LUT Sequence: the range of its LUT data. Anything else (fractional
    slope or intercept, slopes that differ between instances, RT dose scaling, float
    pixel data) is float32.
    """
    pairs = set()
    lo, hi = np.inf, -np.inf
    for ds in datasets:
        stored = _stored_range(ds)
        if stored is None or (ds.get("DoseGridScaling") is not None):
            return np.dtype(np.float32)
        if "ModalityLUTSequence" in ds:
            lut = np.asarray(apply_modality_lut(np.asarray([0]), ds))  # dtype probe
            return np.dtype(np.float32) if lut.dtype.kind == "f" else np.dtype(np.int32)
        rescales = frame_rescales(ds) or [
            (float(ds.get("RescaleSlope") or 1.0), float(ds.get("RescaleIntercept") or 0.0))
        ]
        for slope, inter in rescales:
            pairs.add((slope, inter))
            ends = (stored[0] * slope + inter, stored[1] * slope + inter)
            lo, hi = min(lo, *ends), max(hi, *ends)
    if len(pairs) != 1:
        return np.dtype(np.float32)
    slope, inter = pairs.pop()
    if slope != round(slope) or inter != round(inter):
        return np.dtype(np.float32)
    return _smallest_int(lo, hi) or np.dtype(np.float32)


def verify_files(paths: Sequence[str | os.PathLike]) -> None:
    """Decode every encapsulated instance in ``paths`` once; raise :class:`ReadError` on failure.

    Native instances were length-checked when opened (:func:`check_payload`); their values
    are read again only when computed.
    """
    for p in map(Path, paths):
        ds = read_header(p)
        check_payload(ds, p)
        if is_encapsulated(ds):
            decode_values(p)


__all__ = [
    "check_decodable",
    "check_grey",
    "check_not_mosaic",
    "check_payload",
    "decode_values",
    "frame_rescales",
    "group_item",
    "is_encapsulated",
    "quiet_decoders",
    "read_header",
    "transfer_syntax",
    "value_dtype",
    "verify_files",
]
