"""Format registry: which adapter opens or writes a path, by magic bytes first, suffix second.

Built-in formats: GeoTIFF/COG/BigTIFF and GDAL VRT (:mod:`geomed_seg.io.geotiff`), NIfTI-1/2
plain or gzipped (:mod:`geomed_seg.io.nifti`), DICOM files, folders and file lists
(:mod:`geomed_seg.io.dicom`), Zarr v3 stores (:mod:`geomed_seg.io.zarr`). Adapter modules are
imported only when used, so ``geomed-seg info`` on a GeoTIFF never imports nibabel or pydicom.

Third parties add formats through the entry-point group ``geomed_seg.adapters``; each entry
point loads an :class:`Adapter` (or a zero-argument callable returning one)::

    [project.entry-points."geomed_seg.adapters"]
    myformat = "my_pkg.geomed:ADAPTER"

Magic bytes are checked first (built-ins, then plug-ins), then suffixes, as xarray and
nibabel resolve their backends. An adapter with ``sniff_first`` (DICOM: ``DICM`` at byte 128)
is tested before the others of its group: the 128-byte DICOM preamble may hold a TIFF header
(dual-personality files).

Each entry owns everything the package knows about its format: suffixes, magic, reader,
writer, the streaming ``sink`` the engine writes blocks into (:func:`sink_class`, used by
``segment``), the extra ``open_options`` its reader takes (DICOM's ``series=`` and
``resample=``; ``open_image`` refuses them for other formats), whether it opens lists of
files or GDAL virtual/remote paths. ``segment``, ``convert`` and ``evaluate`` (case names:
:func:`known_suffixes`) ask the registry instead of keeping their own suffix lists. A plug-in
whose entry point fails to load is skipped with a warning naming it.

``open_image(..., verify=True)`` (the default) also runs the adapter's ``verify`` hook: the
full gzip stream check of a ``.nii.gz``, the decoding of compressed DICOM instances. Only
``geomed-seg info`` without ``--stats`` opens with ``verify=False``.
"""

from __future__ import annotations

import gzip
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import import_module, metadata
from pathlib import Path
from typing import Any

from geomed_seg.core.image import Image
from geomed_seg.errors import InvalidInputError, ReadError, UnsupportedFormatError

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "geomed_seg.adapters"
_HEAD_BYTES = 352  # NIfTI-1 magic sits at byte 344


@dataclass(frozen=True)
class Adapter:
    """One format: how to recognise, open and (optionally) write it.

    Parameters
    ----------
    name : str
        Format name returned by :func:`detect_format`.
    open : callable or "module:function"
        ``open(path, chunks=None, **kw) -> Image``.
    write : callable or "module:function", optional
        ``write(image, path, *, overwrite=False, **kw) -> Path``.
    suffixes : tuple of str
        Lower-case suffixes, longest first where they overlap (``".nii.gz"``).
    sniff : callable, optional
        ``sniff(path, head) -> bool`` with ``head`` the first 352 bytes (b"" for folders).
    verify : callable or "module:function", optional
        ``verify(path, image) -> None``: raise :class:`~geomed_seg.errors.ReadError` when the
        payload behind an opened image is corrupt (checksums, lengths, decoding). Run by
        :func:`open_image` with ``verify=True``, which costs a full read of the file.
    sink : callable or "module:Class", optional
        ``sink(path, *, overwrite=False) -> Sink``: the block writer the engine streams an
        output of this format into (:class:`geomed_seg.inference.sinks.Sink`).
    open_options : tuple of str
        Keywords ``open`` takes besides ``chunks`` (``("series", "resample")`` for DICOM).
    sniff_first : bool
        Test this adapter's magic before the others' (DICOM's preamble may hold a TIFF).
    file_lists : bool
        ``open`` also takes a list of files (a DICOM series given file by file).
    gdal_paths : bool
        ``open`` takes GDAL virtual-file paths and URLs (``/vsicurl/...``, ``s3://...``).
    format : str, optional
        Name :func:`detect_format` reports (default ``name``; a DICOM folder is ``"dicom"``).
    """

    name: str
    open: Callable[..., Image] | str
    write: Callable[..., Path] | str | None = None
    suffixes: tuple[str, ...] = ()
    sniff: Callable[[Path, bytes], bool] | None = field(default=None, compare=False)
    verify: Callable[[Any, Image], None] | str | None = field(default=None, compare=False)
    sink: Callable[..., Any] | str | None = field(default=None, compare=False)
    open_options: tuple[str, ...] = ()
    sniff_first: bool = False
    file_lists: bool = False
    gdal_paths: bool = False
    format: str | None = None

    @property
    def format_name(self) -> str:
        """The name :func:`detect_format` reports for this adapter."""
        return self.format or self.name


def is_gdal_path(path: Any) -> bool:
    """True for GDAL virtual-file paths and URLs (``/vsicurl/...``, ``s3://...``, ``https://``)."""
    text = os.fspath(path) if isinstance(path, str | os.PathLike) else ""
    return isinstance(text, str) and (text.startswith("/vsi") or "://" in text)


def _resolve(ref: Callable | str) -> Callable:
    if callable(ref):
        return ref
    module, _, name = ref.partition(":")
    return getattr(import_module(module), name)


# -- magic bytes ----------------------------------------------------------------------------
def _is_tiff(path: Path, head: bytes) -> bool:
    return head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def _is_vrt(path: Path, head: bytes) -> bool:
    return head.lstrip()[:11] == b"<VRTDataset"


def _nifti_magic(head: bytes) -> bool:
    return head[344:348] in (b"n+1\x00", b"ni1\x00") or head[4:8] in (b"n+2\x00", b"ni2\x00")


def _is_nifti(path: Path, head: bytes) -> bool:
    if head[:2] == b"\x1f\x8b":
        try:
            with gzip.open(path, "rb") as f:
                return _nifti_magic(f.read(_HEAD_BYTES))
        except (OSError, EOFError):
            return False
    return _nifti_magic(head)


def _is_dicom_file(path: Path, head: bytes) -> bool:
    return head[128:132] == b"DICM"


def _is_dicom_folder(path: Path, head: bytes) -> bool:
    if not path.is_dir():
        return False
    # PACS exports nest series in sub-folders (DICOM/ST0/SE0/IM0): look at the first files
    # found walking the tree, as open_dicom does, without listing a huge archive in full.
    for n, p in enumerate(f for f in path.rglob("*") if f.is_file() and not f.name.startswith(".")):
        if p.suffix.lower() == ".dcm" or _is_dicom_file(p, _head(p)):
            return True
        if n >= 64:
            return False
    return False


def _is_zarr(path: Path, head: bytes) -> bool:
    return path.is_dir() and (path / "zarr.json").is_file()


_SINKS = "geomed_seg.inference.sinks"
_DICOM = ("series", "resample")

BUILTIN: tuple[Adapter, ...] = (
    Adapter(
        "geotiff",
        "geomed_seg.io.geotiff:open_geotiff",
        "geomed_seg.io.geotiff:write_geotiff",
        (".tif", ".tiff", ".gtiff"),
        _is_tiff,
        sink=f"{_SINKS}:GeoTIFFSink",
        gdal_paths=True,
    ),
    Adapter("vrt", "geomed_seg.io.geotiff:open_geotiff", None, (".vrt",), _is_vrt, gdal_paths=True),
    Adapter(
        "nifti",
        "geomed_seg.io.nifti:open_nifti",
        "geomed_seg.io.nifti:write_nifti",
        (".nii.gz", ".nii"),
        _is_nifti,
        "geomed_seg.io.nifti:verify_nifti",
        sink=f"{_SINKS}:NiftiSink",
    ),
    Adapter(
        "zarr",
        "geomed_seg.io.zarr:open_zarr",
        "geomed_seg.io.zarr:write_zarr",
        (".zarr",),
        _is_zarr,
        sink=f"{_SINKS}:ZarrSink",
    ),
    Adapter(
        "dicom",
        "geomed_seg.io.dicom:open_dicom",
        None,
        (".dcm",),
        _is_dicom_file,
        "geomed_seg.io.dicom:verify_dicom",
        open_options=_DICOM,
        sniff_first=True,
    ),
    Adapter(
        "dicom-folder",
        "geomed_seg.io.dicom:open_dicom",
        None,
        (),
        _is_dicom_folder,
        "geomed_seg.io.dicom:verify_dicom",
        open_options=_DICOM,
        file_lists=True,
        format="dicom",
    ),
)

_RUNTIME: list[Adapter] = []


def _entry_points() -> Sequence[Any]:
    return tuple(metadata.entry_points(group=ENTRY_POINT_GROUP))


@lru_cache(maxsize=1)
def _plugins() -> tuple[Adapter, ...]:
    found = []
    for ep in _entry_points():
        try:
            obj = ep.load()
            adapter = obj if isinstance(obj, Adapter) else obj()
            if not isinstance(adapter, Adapter):
                raise TypeError(f"it gives a {type(adapter).__name__}, not an Adapter")
        except Exception as exc:  # one broken plug-in must not break every format
            log.warning(
                "format plug-in %r (%s, entry point group %s) skipped: %s",
                ep.name, getattr(ep, "value", "?"), ENTRY_POINT_GROUP, exc,
            )  # fmt: skip
            continue
        found.append(adapter)
    return tuple(found)


def register_adapter(adapter: Adapter) -> None:
    """Add ``adapter`` for this process (after built-ins and entry points)."""
    _RUNTIME.append(adapter)


def adapters() -> tuple[Adapter, ...]:
    """Return every known adapter: built-ins, entry-point plug-ins, runtime registrations."""
    return (*BUILTIN, *_plugins(), *_RUNTIME)


def _lazy_adapters() -> Iterator[Adapter]:
    # built-ins first: common formats never pay for the entry-point scan (~0.1 s).
    # Within a group, `sniff_first` adapters first (DICOM: `DICM` at byte 128 wins over any
    # other magic, since a dual-personality file's preamble may hold a TIFF header).
    def first(group: Sequence[Adapter]) -> list[Adapter]:
        return sorted(group, key=lambda a: not a.sniff_first)

    yield from first(BUILTIN)
    yield from first(_plugins())
    yield from first(_RUNTIME)


def known_suffixes() -> tuple[str, ...]:
    """Return every registered suffix, longest first (``.nii.gz`` before ``.nii``)."""
    return tuple(sorted({s for a in adapters() for s in a.suffixes}, key=lambda s: (-len(s), s)))


def _head(path: Path) -> bytes:
    if not path.is_file():
        return b""
    with open(path, "rb") as f:
        return f.read(_HEAD_BYTES)


def _supported() -> str:
    sufs = sorted({s for a in adapters() for s in a.suffixes})
    return f"supported: {', '.join(sufs)}, DICOM folders"


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise ReadError(f"{path}: no such file or folder")
    if path.is_file() and path.stat().st_size == 0:
        raise ReadError(f"{path}: file is empty (0 bytes)")


def _by_suffix(path: Path, writable: bool = False, streaming: bool = False) -> Adapter | None:
    name = path.name.lower()
    for adapter in adapters():
        if (writable and adapter.write is None) or (streaming and adapter.sink is None):
            continue
        if any(name.endswith(s) for s in adapter.suffixes):
            return adapter
    return None


def sink_class(path: str | os.PathLike) -> Callable[..., Any]:
    """Return the streaming sink factory of ``path``'s format (``sink(path, overwrite=)``).

    Raises
    ------
    UnsupportedFormatError
        No registered format with a sink has ``path``'s suffix (the ones that do are listed).
    """
    p = Path(path)
    adapter = _by_suffix(p, streaming=True)
    if adapter is None:
        sufs = sorted({s for a in adapters() if a.sink is not None for s in a.suffixes})
        raise UnsupportedFormatError(
            f"{p}: unknown output format; streamed outputs: {', '.join(sufs)}"
        )
    return _resolve(adapter.sink)  # type: ignore[arg-type]


def _find(path: Path) -> Adapter:
    _check_exists(path)
    head = _head(path)
    for adapter in _lazy_adapters():
        if adapter.sniff is not None and adapter.sniff(path, head):
            return adapter
    adapter = _by_suffix(path)
    if adapter is None:
        kind = "folder" if path.is_dir() else f"file starting with {head[:8]!r}"
        raise UnsupportedFormatError(f"{path}: unknown format ({kind}); {_supported()}")
    log.debug("%s: no magic bytes matched; using suffix -> %s", path, adapter.name)
    return adapter


def detect_format(path: str | os.PathLike | Sequence[str | os.PathLike]) -> str:
    """Return the format name of ``path``: ``"geotiff"``, ``"vrt"``, ``"nifti"``, ``"dicom"``,
    ``"zarr"`` (a DICOM folder or list of files is ``"dicom"``) or a plug-in's name.

    Raises
    ------
    ReadError
        Missing path or empty file.
    UnsupportedFormatError
        Neither magic bytes nor suffix match a known format.
    """
    return find_adapter(path).format_name


def find_adapter(path: str | os.PathLike | Sequence[str | os.PathLike]) -> Adapter:
    """Return the adapter that opens ``path``: a list of files goes to the adapter that
    opens file lists, a GDAL virtual/remote path to one that opens those (by suffix, else
    the first), a local path by magic bytes, then suffix."""
    if isinstance(path, list | tuple):
        found = next((a for a in adapters() if a.file_lists), None)
        if found is None:
            raise UnsupportedFormatError("no registered format opens a list of files")
        return found
    if is_gdal_path(path):
        remote = [a for a in adapters() if a.gdal_paths]
        name = str(path).lower()
        return next((a for a in remote if name.endswith(a.suffixes)), remote[0])
    return _find(Path(path))


def open_image(
    path: str | os.PathLike | Sequence[str | os.PathLike],
    chunks: Any = None,
    series: str | None = None,
    *,
    verify: bool = True,
    **kw: Any,
) -> Image:
    """Return a lazy :class:`Image` of ``path`` with its geometry, whatever the format.

    Parameters
    ----------
    path : path-like or list of path-like
        A file, a folder (DICOM series, Zarr store) or a list of DICOM files.
    chunks : optional
        Adapter chunk spec (channel-first); default: the format's native blocks.
    series : str, optional
        DICOM SeriesInstanceUID (or index) when a folder holds several series.
    verify : bool
        Check the payload's integrity before returning (the adapter's ``verify`` hook:
        gzip CRC-32 and length of a ``.nii.gz``, decoding of compressed DICOM). This reads
        the file once more; ``False`` keeps opening lazy (headers only) for descriptions.
    **kw
        Passed to the adapter's ``open`` (e.g. ``resample=True`` for DICOM).

    Raises
    ------
    ReadError
        Missing, empty, truncated or (with ``verify``) corrupt input, naming the file.
    """
    if isinstance(path, list | tuple):
        target: Any = [Path(p) for p in path]
        for p in target:
            _check_exists(p)
    elif is_gdal_path(path):  # remote / virtual rasters (COGs over HTTP, S3): GDAL opens them
        target, verify = path, False
    else:
        target = Path(path)
    adapter = find_adapter(target)
    if series is not None:
        kw["series"] = series
    for key in kw:
        if key not in adapter.open_options:
            raise InvalidInputError(f"{target}: {_misplaced(key, kw[key], adapter)}")
    image = _resolve(adapter.open)(target, chunks=chunks, **kw)
    return _verified(adapter, target, image) if verify else image


def _misplaced(key: str, value: Any, adapter: Adapter) -> str:
    """``"series='x' applies to DICOM only; this is geotiff"``."""
    takers = sorted({a.format_name.upper() for a in adapters() if key in a.open_options})
    where = f"applies to {' and '.join(takers)} only" if takers else "is not an open option"
    return f"{key}={value!r} {where}; this is {adapter.name}"


def _verified(adapter: Adapter, path: Any, image: Image) -> Image:
    if adapter.verify is not None:
        _resolve(adapter.verify)(path, image)
        log.debug("%s: payload verified (%s)", path, adapter.name)
    return image


def write_image(
    image: Image, path: str | os.PathLike, *, overwrite: bool = False, **kw: Any
) -> Path:
    """Write ``image`` in the format of ``path``'s suffix; return the written path.

    ``.tif``/``.tiff`` → Cloud-Optimised GeoTIFF, ``.nii``/``.nii.gz`` → NIfTI, ``.zarr`` → Zarr
    v3 (plus plug-ins' suffixes). ``**kw`` go to the writer (e.g. ``classes=``, ``dtype=``).
    """
    p = Path(path)
    adapter = _by_suffix(p, writable=True)
    if adapter is None:
        sufs = sorted({s for a in adapters() if a.write is not None for s in a.suffixes})
        raise UnsupportedFormatError(f"{p}: cannot write this suffix; writable: {', '.join(sufs)}")
    return Path(_resolve(adapter.write)(image, p, overwrite=overwrite, **kw))


__all__ = [
    "ENTRY_POINT_GROUP",
    "Adapter",
    "adapters",
    "detect_format",
    "find_adapter",
    "is_gdal_path",
    "known_suffixes",
    "open_image",
    "register_adapter",
    "sink_class",
    "write_image",
]
