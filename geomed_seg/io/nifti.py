"""NIfTI-1/2 volumes (``.nii``, ``.nii.gz``) with nibabel, header geometry kept bit-exact.

Reading wraps nibabel's lazy :class:`~nibabel.arrayproxy.ArrayProxy` in dask, so a chunk
reads only its bytes (for ``.nii.gz`` a chunk decompresses the stream up to its slab; the
default chunks are whole ``z`` slabs, the slowest NIfTI axis, which keeps that cheap).
nibabel's ``arr[i, j, k(, t)]`` becomes our ``(channel, z, y, x)`` = ``arr.transpose(3, 2, 1, 0)``;
the :class:`~geomed_seg.core.grid.VoxelGrid` affine is nibabel's best affine (sform if its
code > 0, else qform), converted to mm when ``xyzt_units`` says metres or microns. Everything a writer needs to reproduce the header geometry exactly
(raw quaternion/srow fields, codes, pixdim, units) travels in ``attrs["nifti"]``.
"""

from __future__ import annotations

import gzip
import logging
import os
import zlib
from pathlib import Path
from typing import Any

import dask.array as da
import nibabel as nib
import numpy as np
from dask.base import tokenize
from nibabel.filebasedimages import ImageFileError
from nibabel.openers import Opener
from nibabel.spatialimages import HeaderDataError

from geomed_seg.core.grid import VoxelGrid
from geomed_seg.core.image import DEFAULT_CHUNK_BYTES, Image
from geomed_seg.core.labels import parse_classes
from geomed_seg.errors import (
    GeometryError,
    InvalidInputError,
    ReadError,
    UnsupportedFormatError,
    WriteError,
)
from geomed_seg.io.atomic import atomic_output, check_output
from geomed_seg.io.sidecars import (
    VOLUME_SIDECARS,
    check_sidecars,
    sidecar_texts,
    write_sidecars,
)

logger = logging.getLogger(__name__)

#: Raw header fields copied verbatim when the written affine equals the source's.
GEOMETRY_FIELDS = (
    "quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y", "qoffset_z",
    "srow_x", "srow_y", "srow_z", "qform_code", "sform_code", "xyzt_units", "dim_info",
)  # fmt: skip
_READ_ERRORS = (EOFError, zlib.error, gzip.BadGzipFile, OSError, ValueError)
#: Millimetres per header spatial unit (``xyzt_units``); "unknown" is read as mm, as ITK does.
_MM_PER_UNIT = {"meter": 1000.0, "mm": 1.0, "micron": 1e-3, "unknown": 1.0}


def affine_mm(img: Any) -> np.ndarray:
    """Return nibabel's best affine of ``img`` converted to millimetres.

    nibabel returns the affine in the header's spatial unit (``xyzt_units``: metre, mm
    or micron) without converting; ITK/SimpleITK scale it to mm. Our grids are always in
    mm, so a file in metres or microns is scaled here (linear part and offset alike).

    Parameters
    ----------
    img : nibabel.Nifti1Image or nibabel.Nifti2Image

    Returns
    -------
    numpy.ndarray
        (4, 4) voxel ``(i, j, k)`` -> RAS+ mm affine.
    """
    unit = img.header.get_xyzt_units()[0]
    factor = _MM_PER_UNIT.get(unit, 1.0)
    affine = np.asarray(img.affine, dtype=float).copy()
    affine[:3, :] *= factor
    return affine


def _jsonable(value: Any) -> Any:
    arr = np.asarray(value)
    if arr.dtype.kind == "S":
        return arr.item().decode("latin-1").rstrip("\x00")
    if arr.ndim == 0:
        return arr.item()
    return arr.tolist()


def _header_meta(img: Any) -> dict[str, Any]:
    """Return the JSON-serialisable header description kept in ``attrs["nifti"]``."""
    hdr = img.header
    fields = (*GEOMETRY_FIELDS, "pixdim", "intent_code", "intent_p1", "intent_p2", "intent_p3",
              "intent_name", "descrip", "cal_min", "cal_max")  # fmt: skip
    meta = {key: _jsonable(hdr[key]) for key in fields}
    qform, qcode = hdr.get_qform(coded=True)
    sform, scode = hdr.get_sform(coded=True)
    meta.update(
        version=2 if isinstance(img, nib.Nifti2Image) else 1,
        affine=affine_mm(img).tolist(),
        qform=None if qform is None else qform.tolist(),
        sform=None if sform is None else sform.tolist(),
        data_dtype=hdr.get_data_dtype().newbyteorder("=").str,
        scl_slope=float(img.dataobj.slope),
        scl_inter=float(img.dataobj.inter),
        shape=list(img.shape),
    )
    meta["qform_code"], meta["sform_code"] = int(qcode), int(scode)
    return meta


class _ProxyReader:
    """Array-like over a nibabel proxy that casts to ``dtype`` and names the file on errors."""

    def __init__(self, proxy: Any, path: Path, dtype: np.dtype) -> None:
        self.proxy, self.path, self.dtype = proxy, path, np.dtype(dtype)
        self.shape, self.ndim = tuple(proxy.shape), len(proxy.shape)

    def __getitem__(self, index: Any) -> np.ndarray:
        try:
            block = np.asarray(self.proxy[index])
        except _READ_ERRORS as exc:
            raise ReadError(f"{self.path}: cannot read NIfTI data ({exc})") from exc
        return block.astype(self.dtype, copy=False)


def _check_file(path: Path) -> None:
    if not path.exists():
        raise ReadError(f"{path}: file not found")
    if path.is_dir():
        raise ReadError(f"{path}: is a folder, not a NIfTI file")
    if path.stat().st_size == 0:
        raise ReadError(f"{path}: empty file (0 bytes)")


def _data_end(img: Any) -> int:
    """Return the byte offset where the header says the voxel data end."""
    return int(img.dataobj.offset) + int(np.prod(img.shape)) * img.header.get_data_dtype().itemsize


def _gunzipped_size(path: Path) -> int:
    """Return the uncompressed size of ``path``, reading the gzip stream to its end once.

    Streamed in 16 MiB pieces, nothing kept: Python's :mod:`gzip` checks the CRC-32 and
    length (ISIZE) of every member at its end and refuses trailing garbage, so a flipped
    byte or a truncated stream raises :class:`ReadError` naming the file.
    """
    total = 0
    try:
        with gzip.open(path, "rb") as f:
            while chunk := f.read(2**24):
                total += len(chunk)
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise ReadError(f"{path}: truncated or corrupt gzip stream ({exc})") from exc
    return total


def _check_size(path: Path, img: Any) -> bool:
    """Raise :class:`ReadError` when the file holds fewer bytes than the header promises.

    ``.nii``: file size vs ``vox_offset + data bytes``. ``.nii.gz``: the gzip trailer's
    uncompressed size (ISIZE, mod 2**32) is compared first (cheap); only on mismatch — a
    truncated stream, or a legitimate multi-member gzip — is the stream decompressed once.
    A corrupt stream with an intact trailer is found by :func:`verify_nifti`.

    Returns True when the whole gzip stream was read here (CRC-32 and length of every
    member checked), so :func:`verify_nifti` need not read it again.
    """
    need = _data_end(img)
    size = path.stat().st_size
    if not _is_gzip(path):
        if size < need:
            raise ReadError(f"{path}: truncated NIfTI ({size} bytes, header needs {need})")
        return False
    with open(path, "rb") as f:
        f.seek(-4, os.SEEK_END)
        isize = int.from_bytes(f.read(4), "little")
    if isize == need % 2**32:
        return False
    total = _gunzipped_size(path)
    if total < need:
        raise ReadError(
            f"{path}: truncated NIfTI ({total} bytes uncompressed, header needs {need})"
        )
    return True


def verify_nifti(path: str | os.PathLike, image: Image | None = None) -> None:
    """Raise :class:`ReadError` unless ``path``'s voxel data are complete and intact.

    ``.nii.gz``: the whole gzip stream is read once, streamed (CRC-32 and length of every
    member, see :func:`_gunzipped_size`), and must hold the header's ``vox_offset`` plus
    data bytes. ``.nii``: the file size (already checked by :func:`open_nifti`).
    ``image`` (the opened image, for the registry's ``verify`` hook): when its
    ``attrs["nifti"]["gzip_verified"]`` says :func:`open_nifti` already read the whole stream
    (a multi-member gzip), it is not read a second time.
    """
    path = Path(path)
    if not _is_gzip(path):
        return
    if image is not None and image.attrs.get("nifti", {}).get("gzip_verified"):
        return
    try:
        need = _data_end(nib.load(path))
    except (ImageFileError, HeaderDataError) as exc:
        raise UnsupportedFormatError(f"{path}: not a NIfTI file ({exc})") from exc
    except _READ_ERRORS as exc:
        raise ReadError(f"{path}: cannot read NIfTI header ({exc})") from exc
    total = _gunzipped_size(path)
    if total < need:
        raise ReadError(
            f"{path}: truncated NIfTI ({total} bytes uncompressed, header needs {need})"
        )


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def _nib_chunks(shape: tuple[int, ...], itemsize: int, chunks: Any) -> tuple[int, ...]:
    """Chunks in nibabel order ``(i, j, k, c)`` from our ``(c, z, y, x)`` request or defaults."""
    ni, nj, nk, nc = shape
    if chunks is None:
        slab = max(1, DEFAULT_CHUNK_BYTES // max(ni * nj * nc * itemsize, 1))
        return (ni, nj, min(nk, slab), nc)
    if isinstance(chunks, int):
        chunks = (nc, chunks, chunks, chunks)
    if isinstance(chunks, dict):
        chunks = tuple(chunks.get(d) for d in ("channel", "z", "y", "x"))
    c, z, y, x = (
        s if s not in (None, -1) else n for s, n in zip(chunks, (nc, nk, nj, ni), strict=True)
    )
    return (x, y, z, c)


def open_nifti(path: str | os.PathLike, chunks: Any = None) -> Image:
    """Return a lazy volume :class:`Image` of a NIfTI-1/2 file, dims ``(channel, z, y, x)``.

    Parameters
    ----------
    path : path-like
        ``.nii`` or ``.nii.gz`` file.
    chunks : tuple, dict or int, optional
        Dask chunks in our order ``(channel, z, y, x)`` (or by dim name; ``None``/-1 = whole
        axis; an int applies to the spatial axes); default whole ``z`` slabs of at most
        :data:`~geomed_seg.core.image.DEFAULT_CHUNK_BYTES`, all channels together.

    Returns
    -------
    Image
        3D files have one channel; 4D ``(i, j, k, t)`` gives ``t`` channels; 5D
        ``(i, j, k, 1, c)`` (vector intent) gives ``c`` channels. Scaling (scl_slope/inter)
        is applied as nibabel does; unscaled data keep the header's data dtype. Affine is
        nibabel's best affine in RAS+ mm (a header in metres or microns, ``xyzt_units``,
        is converted to mm as ITK does). ``attrs["nifti"]`` holds the header geometry.

    Raises
    ------
    ReadError
        Missing, empty or truncated file (``.nii.gz`` truncation that escapes the cheap
        check surfaces at compute time, still as ``ReadError`` naming the file).
    UnsupportedFormatError
        The content is not NIfTI, or has an unsupported dimensionality.
    """
    path = Path(path)
    _check_file(path)
    try:
        img = nib.load(path)
    except (ImageFileError, HeaderDataError) as exc:
        raise UnsupportedFormatError(f"{path}: not a NIfTI file ({exc})") from exc
    except _READ_ERRORS as exc:
        raise ReadError(f"{path}: cannot read NIfTI header ({exc})") from exc
    single = isinstance(img, nib.Nifti1Image | nib.Nifti2Image)  # Nifti1Image is a Nifti1Pair
    if not single and isinstance(img, nib.Nifti1Pair | nib.Nifti2Pair):
        raise UnsupportedFormatError(
            f"{path}: NIfTI pair (.hdr + .img) not supported; save it as one .nii/.nii.gz "
            "file (e.g. nibabel.save(nibabel.load(path), 'volume.nii.gz'))"
        )
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise UnsupportedFormatError(f"{path}: {type(img).__name__} is not NIfTI")
    stream_read = _check_size(path, img)
    shape = tuple(int(s) for s in img.shape)
    proxy = img.dataobj
    if len(shape) == 5 and shape[3] == 1:
        proxy, shape = proxy.reshape(shape[:3] + shape[4:]), shape[:3] + shape[4:]
    if len(shape) < 3:
        shape = shape + (1,) * (3 - len(shape))
        proxy = proxy.reshape(shape)
    if len(shape) == 3:
        shape = shape + (1,)
        proxy = proxy.reshape(shape)
    if len(shape) != 4:
        raise UnsupportedFormatError(f"{path}: {len(img.shape)}D NIfTI {img.shape} not supported")
    scaled = not (proxy.slope == 1 and proxy.inter == 0)
    if scaled:
        dtype = np.asarray(proxy[(slice(0, 1),) * 4]).dtype
    else:
        dtype = img.header.get_data_dtype().newbyteorder("=")
    reader = _ProxyReader(proxy, path, dtype)
    st = path.stat()
    nib_chunks = _nib_chunks(shape, dtype.itemsize, chunks)
    token = tokenize(str(path.resolve()), st.st_size, st.st_mtime_ns, nib_chunks, dtype.str)
    name = f"nifti-{token}"
    arr = da.from_array(
        reader,
        chunks=nib_chunks,
        name=name,
        meta=np.empty((0,) * 4, dtype),
    )
    try:
        grid = VoxelGrid(affine_mm(img), (shape[2], shape[1], shape[0]))
    except GeometryError as exc:
        raise GeometryError(f"{path}: {exc}") from exc
    attrs = {"nifti": _header_meta(img), "source": str(path)}
    if stream_read:  # the size check read every gzip member: verify_nifti skips it
        attrs["nifti"]["gzip_verified"] = True
    return Image.from_array(arr.transpose(3, 2, 1, 0), grid, attrs=attrs)


def _reference_meta(reference: Any) -> dict[str, Any] | None:
    if reference is None:
        return None
    if isinstance(reference, Image):
        return reference.attrs.get("nifti")
    if isinstance(reference, dict):
        return reference
    if isinstance(reference, str | os.PathLike):
        return open_nifti(reference).attrs["nifti"]
    if isinstance(reference, nib.Nifti1Image | nib.Nifti2Image):
        return _header_meta(reference)
    raise InvalidInputError(
        f"reference must be an Image, a NIfTI path or header metadata, got {type(reference).__name__}"
    )


def _build_header(image: Image, meta: dict | None, dtype: np.dtype, shape: tuple[int, ...]) -> Any:
    """Return a nibabel header for ``image``, geometry copied bit-exactly from ``meta`` if it fits."""
    big = max(shape) > np.iinfo(np.int16).max
    hdr = (nib.Nifti2Header if big or (meta or {}).get("version") == 2 else nib.Nifti1Header)()
    hdr.set_data_dtype(dtype)
    hdr.set_data_shape(shape)
    affine = image.grid.affine
    same = meta is not None and np.allclose(np.asarray(meta["affine"]), affine, rtol=0, atol=1e-6)
    if same:
        for key in GEOMETRY_FIELDS:
            hdr[key] = meta[key]
        pixdim = np.asarray(meta["pixdim"], dtype=np.float32)
        hdr["pixdim"][: len(pixdim)] = pixdim
        if len(meta["shape"]) != len(shape) or tuple(meta["shape"][:3]) != shape[:3]:
            hdr["dim_info"] = 0
        if meta["data_dtype"] == dtype.str and meta["scl_slope"] == 1 and meta["scl_inter"] == 0:
            for key in (
                "intent_code",
                "intent_p1",
                "intent_p2",
                "intent_p3",
                "intent_name",
                "descrip",
            ):
                hdr[key] = meta[key]
    else:
        qcode = int(meta["qform_code"]) if meta and meta["qform_code"] else 1
        scode = int(meta["sform_code"]) if meta and meta["sform_code"] else 1
        hdr.set_qform(affine, code=qcode)
        hdr.set_sform(affine, code=scode)
        hdr.set_xyzt_units("mm", "sec")
    hdr.set_slope_inter(
        1.0 if dtype.kind in "iu" else np.nan, 0.0 if dtype.kind in "iu" else np.nan
    )
    return hdr


def _cast(block: np.ndarray, dtype: np.dtype, path: Path) -> np.ndarray:
    if dtype.kind in "iu" and block.dtype.kind in "iuf":
        if block.dtype.kind == "f":  # nan -> 0 as nibabel's nan2zero
            block = np.nan_to_num(np.rint(block), nan=0.0, posinf=np.inf, neginf=-np.inf)
        info = np.iinfo(dtype)
        if block.size and (block.min() < info.min or block.max() > info.max):
            raise InvalidInputError(
                f"{path}: values [{block.min()}, {block.max()}] do not fit {dtype}; pass dtype="
            )
    return block.astype(dtype, copy=False)


def write_nifti(
    image: Image,
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
    dtype: Any = None,
    reference: Any = None,
    classes: Any = None,
) -> Path:
    """Write a volume :class:`Image` to ``.nii``/``.nii.gz`` atomically; return the path.

    The data stream out one ``z`` slab (dask chunk) at a time, in NIfTI's Fortran order
    (``x`` fastest, then ``y``, ``z``, channel), so memory stays at one slab. This is
    hand-written because nibabel's writers need the whole array in memory; the header is
    nibabel's (``Nifti1Header``/``Nifti2Header`` for > 32767 voxels on an axis).

    Parameters
    ----------
    image : Image
        Volume, dims ``(channel, z, y, x)``; one channel gives a 3D file, more a 4D file.
    path : path-like
        Output; ``.gz`` suffix compresses (nibabel's gzip level 1).
    overwrite : bool
        Replace an existing file.
    dtype : numpy dtype, optional
        On-disk dtype (default: the image's; bool is stored as uint8 and 64-bit integers
        as the smallest of uint8/int16/int32 that holds the values). Floats cast to
        integers are rounded; values out of range raise :class:`InvalidInputError`.
    reference : Image, path, dict or nibabel image, optional
        Header metadata to reproduce; default ``image.attrs["nifti"]``. When its affine
        equals the image grid's (1e-6), qform/sform with codes, pixdim, xyzt_units and
        dim_info are copied bit-exactly; otherwise both forms are set from the grid.
    classes : list of ClassInfo / dicts / "i:name,..." spec, optional
        Label classes (default ``image.attrs["classes"]``): a one-channel integer volume gets
        an ITK-SNAP label description ``<stem>.label.txt`` and a 3D Slicer colour table
        ``<stem>.ctbl`` beside it (:mod:`geomed_seg.io.sidecars`), committed with the file.

    Notes
    -----
    Integer outputs (labels) get scl_slope=1, scl_inter=0 and cal_min/cal_max of the data
    (computed with one extra pass); float outputs leave scaling unset (nan).
    """
    if not isinstance(image.grid, VoxelGrid):
        raise InvalidInputError(f"{path}: NIfTI needs a volume Image, got a {image.kind}")
    path = check_output(path, overwrite)
    check_sidecars(path, overwrite)
    src = image.darray
    out_dtype = np.dtype(dtype) if dtype is not None else src.dtype
    if out_dtype == np.bool_:
        out_dtype = np.dtype(np.uint8)
    lo = hi = None
    if out_dtype.kind in "iu":
        vals = src
        if src.dtype.kind == "f":  # the values as _cast will store them
            vals = da.where(da.isnan(src), 0.0, da.rint(src))
        lo, hi = (float(v) for v in da.compute(vals.min(), vals.max()))
        if dtype is None and out_dtype.itemsize == 8:  # int64 labels: most readers lack it
            out_dtype = _smallest_int(lo, hi)
    out_dtype = out_dtype.newbyteorder("<")
    meta = _reference_meta(reference) if reference is not None else image.attrs.get("nifti")
    nc, nz, ny, nx = image.shape
    if meta is not None and len(meta.get("shape", ())) == 5 and meta["shape"][3] == 1 and nc > 1:
        shape: tuple[int, ...] = (nx, ny, nz, 1, nc)
    else:
        shape = (nx, ny, nz) if nc == 1 else (nx, ny, nz, nc)
    hdr = _build_header(image, meta, out_dtype, shape)
    if lo is not None:
        hdr["cal_min"], hdr["cal_max"] = lo, hi
    classes = parse_classes(classes if classes is not None else image.attrs.get("classes"))
    labels = out_dtype.kind in "iu" and nc == 1
    sides = sidecar_texts(path, classes, "volume") if labels else {}
    with atomic_output(path, overwrite, companions=VOLUME_SIDECARS) as tmp:
        write_sidecars(tmp, sides)
        try:
            with Opener(str(tmp), "wb") as f:
                hdr.write_to(f)
                f.write(b"\x00" * (int(hdr.get_data_offset()) - f.tell()))
                for c in range(nc):
                    for z0, z1 in _slabs(src.chunks[1]):
                        block = np.asarray(src[c, z0:z1].compute())
                        f.write(np.ascontiguousarray(_cast(block, out_dtype, path)).tobytes())
        except OSError as exc:
            raise WriteError(f"{path}: cannot write NIfTI ({exc})") from exc
    logger.info("wrote %s %s %s", path, shape, out_dtype)
    return path


def _smallest_int(lo: float, hi: float) -> np.dtype:
    for dt in (np.uint8, np.int16, np.int32):
        if np.iinfo(dt).min <= lo and hi <= np.iinfo(dt).max:
            return np.dtype(dt)
    return np.dtype(np.int64)


def _slabs(zchunks: tuple[int, ...]) -> list[tuple[int, int]]:
    edges = np.cumsum((0, *zchunks))
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True)]
