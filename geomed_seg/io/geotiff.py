"""GeoTIFF / COG / VRT adapter: lazy block-aligned reads and a streaming COG writer.

Reading (:func:`open_geotiff`) opens the file once for metadata only; pixels are read later,
one dask chunk per task, by a windowed ``rasterio`` read that opens the dataset inside the
task (so graphs pickle to ``dask.distributed`` workers). Chunks are whole multiples of the
file's internal blocks (tiles, or groups of strips), all bands together, about
:data:`~geomed_seg.core.image.DEFAULT_CHUNK_BYTES` each.

Writing (:class:`GeoTIFFBlockWriter`, :func:`write_geotiff`) goes window by window into a
tiled temporary GeoTIFF, then GDAL's COG driver streams it into a Cloud-Optimised GeoTIFF
(512 tiles, DEFLATE/ZSTD + predictor, internal overviews, nodata, colour table) that is
renamed onto the target only when complete (:mod:`geomed_seg.io.atomic`).

Class tables travel three ways: a colour table (GDAL palette), GDAL category names + a
raster attribute table in the PAM sidecar ``<name>.aux.xml`` (what QGIS and ``gdalinfo``
show; GeoTIFF has no internal tag for them), and a JSON copy in the dataset tag
``GEOMED_CLASSES`` inside the TIFF so the file alone reads back with its classes.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import dask.array as da
import numpy as np
import rasterio
import rasterio.shutil
import xarray as xr
from rasterio.enums import MaskFlags, Resampling
from rasterio.errors import RasterioError
from rasterio.windows import Window

from geomed_seg.core.grid import GeoGrid
from geomed_seg.core.image import DEFAULT_CHUNK_BYTES, RASTER_DIMS, Image
from geomed_seg.core.labels import ClassInfo, parse_classes
from geomed_seg.errors import InvalidInputError, ReadError, UnsupportedFormatError, WriteError
from geomed_seg.io.atomic import _remove, atomic_output, check_output

log = logging.getLogger(__name__)

TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
CLASSES_TAG = "GEOMED_CLASSES"


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


@contextmanager
def _gdal_errors(path: str | os.PathLike, what: str) -> Iterator[None]:
    """Turn rasterio/GDAL errors into :class:`ReadError` naming ``path`` and GDAL's message."""
    try:
        yield
    except RasterioError as exc:
        raise ReadError(f"{path}: {what}: {_one_line(exc)}") from exc


def _check_path(path: Path) -> None:
    if not path.exists():
        raise ReadError(f"{path}: no such file or folder")
    if path.is_file() and path.stat().st_size == 0:
        raise ReadError(f"{path}: file is empty (0 bytes)")


def _check_magic(path: Path) -> None:
    if path.is_dir():
        raise UnsupportedFormatError(f"{path}: is a folder, not a GeoTIFF or VRT file")
    with open(path, "rb") as f:
        head = f.read(512)
    if head[:4] in TIFF_MAGIC or head.lstrip()[:11] == b"<VRTDataset":
        return
    raise UnsupportedFormatError(
        f"{path}: not a GeoTIFF or VRT (starts with {head[:8]!r}; expected TIFF magic "
        "'II*\\0'/'MM\\0*' or '<VRTDataset')"
    )


def _check_blocks(src: Any, path: Path) -> None:
    """Raise :class:`ReadError` when a block's declared bytes lie beyond the end of the file.

    Checks the first and last block of each band (pixel-interleaved files: band 1 only), so a
    truncated file fails at open in O(bands), without reading pixels.
    """
    if src.driver != "GTiff" or not path.is_file():
        return
    size = path.stat().st_size
    (bh, bw) = src.block_shapes[0]
    last = ((src.width - 1) // bw, (src.height - 1) // bh)
    bands = [1] if src.interleaving is None or src.interleaving.name == "PIXEL" else src.indexes
    for bidx in bands[:64]:
        for bx, by in ((0, 0), last):
            off = src.get_tag_item(f"BLOCK_OFFSET_{bx}_{by}", "TIFF", bidx=bidx)
            n = src.get_tag_item(f"BLOCK_SIZE_{bx}_{by}", "TIFF", bidx=bidx)
            if off and n and int(off) + int(n) > size:
                raise ReadError(
                    f"{path}: truncated GeoTIFF (block {bx},{by} of band {bidx} ends at byte "
                    f"{int(off) + int(n)}, file has {size} bytes)"
                )


def block_chunks(
    shape: Sequence[int], block: Sequence[int], itemsize: int, target: int = DEFAULT_CHUNK_BYTES
) -> tuple[int, int, int]:
    """Return ``(band, rows, cols)`` chunk sizes that are whole multiples of the file's blocks.

    ``shape`` is ``(band, height, width)``, ``block`` ``(rows, cols)`` of one internal block.
    Tiles grow as squares of ``k x k`` blocks; strips grow as groups of rows across the full
    width; each chunk holds all bands and at most ``target`` bytes (at least one block).
    """
    count, height, width = (int(s) for s in shape)
    bh, bw = (int(b) for b in block)
    stack = count * itemsize
    if bw >= width:  # strips: full rows
        rows = max(target // max(stack * width, 1) // bh, 1) * bh
        return (count, min(rows, height), width)
    k = max(int(math.isqrt(max(target // max(stack * bh * bw, 1), 1))), 1)
    return (count, min(k * bh, height), min(k * bw, width))


class _WindowReader:
    """Array-like for :func:`dask.array.from_array`: each ``[...]`` opens the file and reads a window.

    Hand-written rather than ``rioxarray.open_rasterio(chunks=...)`` because that keeps one
    shared GDAL handle behind a lock and does not expose masks per chunk; opening inside the
    task keeps graphs picklable and reads free of shared state.
    """

    def __init__(self, path: str, shape: tuple[int, ...], dtype: np.dtype, mask: bool = False):
        self.path, self.shape, self.dtype, self.mask = path, shape, np.dtype(dtype), mask
        self.ndim = len(shape)

    def __dask_tokenize__(self) -> tuple:
        st = os.stat(self.path)
        return (self.path, st.st_mtime_ns, st.st_size, self.shape, str(self.dtype), self.mask)

    def __getitem__(self, key: Any) -> np.ndarray:
        # dask passes slices, but fuses integer (and stepped) indexing into the getter:
        # read the bounding window, then apply the rest with numpy semantics.
        key = key if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (self.ndim - len(key))
        bounds, post = [], []
        for k, n in zip(key, self.shape, strict=True):
            if isinstance(k, slice) and k.step in (None, 1):
                start, stop, _ = k.indices(n)
                bounds.append(slice(start, max(stop, start)))
                post.append(None)
            else:
                idx = np.arange(n)[k]
                lo = int(idx.min()) if idx.size else 0
                bounds.append(slice(lo, int(idx.max()) + 1 if idx.size else 0))
                post.append(idx - lo)
        block = self._read(tuple(bounds))
        for axis in reversed(range(self.ndim)):
            if post[axis] is not None:
                block = np.take(block, post[axis], axis=axis)
        return block

    def _read(self, key: tuple[slice, ...]) -> np.ndarray:
        out_shape = tuple(s.stop - s.start for s in key)
        if min(out_shape, default=1) <= 0:
            return np.empty(out_shape, self.dtype)
        rows, cols = key[-2:]
        window = Window.from_slices(rows, cols)
        with _gdal_errors(self.path, f"cannot read window {window!r}"):
            with rasterio.open(self.path) as src:
                if self.mask:
                    return src.dataset_mask(window=window) > 0
                indexes = list(range(key[0].start + 1, key[0].stop + 1))
                return src.read(indexes=indexes, window=window)


def _normalise_chunks(chunks: Any, shape: tuple[int, ...], dtype: np.dtype, natural: tuple) -> Any:
    if chunks is None:
        return natural
    if isinstance(chunks, dict):
        chunks = tuple(chunks.get(d, chunks.get(i, -1)) for i, d in enumerate(RASTER_DIMS))
    return da.core.normalize_chunks(chunks, shape, dtype=dtype, previous_chunks=natural)


def _read_classes(src: Any) -> list[dict] | None:
    tag = src.tags().get(CLASSES_TAG)
    if tag:
        try:
            return [dict(c) for c in json.loads(tag)]
        except (ValueError, TypeError):
            log.warning("%s: ignoring unreadable %s tag", src.name, CLASSES_TAG)
    names = _pam_category_names(src)
    if not names:
        return None
    cmap = _colormap(src)
    return [
        {"index": i, "name": n, "color": list(cmap[i]) if cmap and i in cmap else None}
        for i, n in enumerate(names)
        if n
    ]


def _colormap(src: Any) -> dict[int, tuple[int, ...]] | None:
    try:
        return src.colormap(1)
    except ValueError:  # rasterio raises ValueError when band 1 has no colour table
        return None


def _pam_category_names(src: Any) -> list[str]:
    """Category names of band 1 from the PAM ``.aux.xml`` sidecar (rasterio has no API for them)."""
    aux = next((f for f in src.files if str(f).endswith(".aux.xml")), None)
    if aux is None:
        return []
    try:
        root = ET.parse(aux).getroot()
    except (ET.ParseError, OSError):
        return []
    band = root.find("PAMRasterBand[@band='1']")
    cats = band.find("CategoryNames") if band is not None else None
    return [c.text or "" for c in cats.findall("Category")] if cats is not None else []


def _attrs(src: Any, path: Path) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "source": str(path),
        "driver": src.driver,
        "dtype": src.dtypes[0],
        "band_names": [d or f"band_{i + 1}" for i, d in enumerate(src.descriptions)],
        "band_nodata": [None if v is None else float(v) for v in src.nodatavals],
        "colorinterp": [ci.name for ci in src.colorinterp],
        "tags": {k: v for k, v in src.tags().items() if k != CLASSES_TAG},
        "block_shape": list(src.block_shapes[0]),
    }
    if src.compression is not None:
        attrs["compression"] = src.compression.name
    if any(s != 1.0 for s in src.scales) or any(o != 0.0 for o in src.offsets):
        attrs["scales"], attrs["offsets"] = list(src.scales), list(src.offsets)
    cmap = _colormap(src)
    if cmap is not None:
        attrs["colormap"] = {str(k): list(v) for k, v in cmap.items()}
    classes = _read_classes(src)
    if classes:
        attrs["classes"] = classes
    return attrs


def open_geotiff(path: str | os.PathLike, chunks: Any = None) -> Image:
    """Return a lazy :class:`Image` (dims ``band, y, x``) of a GeoTIFF, COG or VRT.

    Parameters
    ----------
    path : path-like
        Local GeoTIFF / COG / BigTIFF or GDAL VRT.
    chunks : tuple, dict or "auto", optional
        dask chunks ``(band, rows, cols)`` or ``{"y": rows, ...}``; default: multiples of the
        internal block shape, all bands together, ~64 MiB per chunk (see :func:`block_chunks`).

    Notes
    -----
    No pixels are read: only the header (and, for truncation checks, two block offsets per
    band). ``nodata`` is band 1's nodata (may be NaN). When bands' nodata differ or the file
    has an internal mask / alpha band, ``Image.mask`` is a lazy ``(y, x)`` validity mask (True
    where any band is valid, GDAL's dataset-mask rule).

    Raises
    ------
    ReadError
        Missing, empty, truncated or unreadable file (message has the path and GDAL's reason).
    UnsupportedFormatError
        The file is neither TIFF nor VRT.
    """
    path = Path(path)
    _check_path(path)
    _check_magic(path)
    with _gdal_errors(path, "cannot open as GeoTIFF (corrupt or truncated?)"):
        with rasterio.open(path) as src:
            _check_blocks(src, path)
            shape = (src.count, src.height, src.width)
            dtype = np.dtype(src.dtypes[0])
            if len(set(src.dtypes)) > 1:
                dtype = np.result_type(*src.dtypes)
            grid = GeoGrid(src.crs, src.transform, (src.height, src.width))
            nodatas = list(src.nodatavals)
            flags = src.mask_flag_enums
            attrs = _attrs(path=path, src=src)
            natural = block_chunks(shape, src.block_shapes[0], dtype.itemsize)
    nodata = None if nodatas[0] is None else float(nodatas[0])
    chunks = _normalise_chunks(chunks, shape, dtype, natural)
    token = f"geotiff-{da.core.tokenize(_WindowReader(str(path), shape, dtype), chunks)}"
    reader = _WindowReader(str(path), shape, dtype)
    arr = da.from_array(reader, chunks=chunks, name=token, meta=np.empty((0, 0, 0), dtype))
    mixed_nodata = len({("nan" if v is not None and np.isnan(v) else v) for v in nodatas}) > 1
    has_mask = (
        any(MaskFlags.per_dataset in f or MaskFlags.alpha in f for f in flags) or mixed_nodata
    )
    mask = None
    if has_mask:
        mreader = _WindowReader(str(path), shape[1:], np.dtype(bool), mask=True)
        marr = da.from_array(
            mreader, chunks=arr.chunks[1:], name=f"{token}-mask", meta=np.empty((0, 0), bool)
        )
        mask = xr.DataArray(marr, dims=RASTER_DIMS[1:])
    data = xr.DataArray(arr, dims=RASTER_DIMS, coords={"band": attrs["band_names"]})
    log.debug("opened %s: %s chunks %s", path, shape, arr.chunksize)
    return Image(data, grid, nodata, mask, attrs)


# -- writing ------------------------------------------------------------------------------
def _pam_xml(classes: Sequence[ClassInfo]) -> str:
    """PAM sidecar XML with band-1 category names and a thematic raster attribute table.

    Hand-written because rasterio has no API for GDAL category names or RATs; GDAL reads
    this file as its own (``<file>.aux.xml``) and copies it on COG conversion.
    """
    root = ET.Element("PAMDataset")
    band = ET.SubElement(root, "PAMRasterBand", band="1")
    cats = ET.SubElement(band, "CategoryNames")
    by_index = {c.index: c.name for c in classes}
    for i in range(max(by_index) + 1):
        ET.SubElement(cats, "Category").text = by_index.get(i, "")
    rat = ET.SubElement(band, "GDALRasterAttributeTable", tableType="thematic")
    fields = [
        ("value", "0", "5"),
        ("class_name", "2", "2"),
    ]  # Type: 0 int, 2 str; Usage: MinMax, Name
    fields += [
        (n, "0", u) for n, u in (("red", "6"), ("green", "7"), ("blue", "8"), ("alpha", "9"))
    ]
    for i, (name, typ, usage) in enumerate(fields):
        fd = ET.SubElement(rat, "FieldDefn", index=str(i))
        ET.SubElement(fd, "Name").text = name
        ET.SubElement(fd, "Type").text = typ
        ET.SubElement(fd, "Usage").text = usage
    for row_i, c in enumerate(classes):
        row = ET.SubElement(rat, "Row", index=str(row_i))
        rgba = tuple(c.color or (0, 0, 0, 0)) + (255,) * (4 - len(c.color or (0, 0, 0, 0)))
        for v in (c.index, c.name, *rgba[:4]):
            ET.SubElement(row, "F").text = str(v)
    return ET.tostring(root, encoding="unicode")


def _class_tag(classes: Sequence[ClassInfo]) -> str:
    return json.dumps(
        [
            {"index": c.index, "name": c.name, "color": list(c.color) if c.color else None}
            for c in classes
        ]
    )


def _gtiff_dtype(dtype: Any) -> np.dtype:
    dt = np.dtype(dtype)
    if dt == np.bool_:
        return np.dtype(np.uint8)
    if dt == np.float16:
        return np.dtype(np.float32)
    return dt


class GeoTIFFBlockWriter:
    """Context manager that takes windows of a raster and commits a (Cloud-Optimised) GeoTIFF.

    Parameters
    ----------
    path : path-like
        Final output; written only on successful exit (atomic rename).
    grid : GeoGrid
        Geometry of the output (CRS, transform, ``(height, width)``).
    count : int
        Number of bands.
    dtype : dtype-like
        Output data type (bool is stored as uint8).
    nodata : float, optional
        Nodata value written to the file (NaN allowed for floats).
    classes : list of ClassInfo / dicts / "i:name,..." spec, optional
        Label classes: colour table (uint8/uint16), category names + RAT (``.aux.xml``),
        ``GEOMED_CLASSES`` tag, and ``mode`` overviews.
    band_names : list of str, optional
        Band descriptions.
    overwrite : bool
        Replace an existing ``path``; otherwise :class:`OutputExistsError` at construction.
    cog : bool
        Convert to COG on exit (internal overviews, 512 tiles); else a tiled GeoTIFF.
    compress : str
        ``"deflate"``, ``"zstd"``, ``"lzw"``, ... (GDAL names, case-insensitive).
    predictor : int, optional
        1 none, 2 horizontal (ints), 3 floating point; default 2/3 by dtype.
    overview_resampling : str, optional
        GDAL resampling for overviews; default ``"mode"`` with classes, else ``"average"``.
    blocksize : int
        Tile edge in pixels.
    tags : dict, optional
        Extra dataset tags.
    write_mask : bool
        Store an internal validity mask (see :meth:`write`).

    Notes
    -----
    Windows aligned to multiples of ``blocksize`` avoid re-compressing partly written
    tiles. Calls to :meth:`write` are serialised by a lock (safe from engine threads).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        grid: GeoGrid,
        count: int,
        dtype: Any,
        *,
        nodata: float | None = None,
        classes: Any = None,
        band_names: Sequence[str] | None = None,
        overwrite: bool = False,
        cog: bool = True,
        compress: str = "deflate",
        predictor: int | None = None,
        overview_resampling: str | None = None,
        blocksize: int = 512,
        tags: dict[str, Any] | None = None,
        write_mask: bool = False,
    ) -> None:
        if not isinstance(grid, GeoGrid):
            raise InvalidInputError(f"{path}: GeoTIFF needs a GeoGrid, got {type(grid).__name__}")
        self.path = check_output(path, overwrite)
        self.grid, self.count, self.dtype = grid, int(count), _gtiff_dtype(dtype)
        self.nodata, self.overwrite, self.cog = nodata, overwrite, cog
        self.classes = parse_classes(classes)
        self.band_names = list(band_names) if band_names is not None else None
        self.compress, self.blocksize, self.tags = (
            compress.upper(),
            int(blocksize),
            dict(tags or {}),
        )
        if predictor is None:
            predictor = 3 if np.issubdtype(self.dtype, np.floating) else 2
        self.predictor = int(predictor)
        self.resampling = (overview_resampling or ("mode" if self.classes else "average")).lower()
        if self.resampling not in Resampling.__members__:
            raise InvalidInputError(
                f"{path}: unknown overview resampling {self.resampling!r}; "
                "use 'nearest', 'mode', 'average', ..."
            )
        self.write_mask = write_mask
        self._lock = threading.Lock()
        self._dst: Any = None
        self._part: Path | None = None

    def _profile(self, final: bool) -> dict[str, Any]:
        h, w = self.grid.shape
        prof: dict[str, Any] = dict(
            driver="GTiff",
            width=w,
            height=h,
            count=self.count,
            dtype=self.dtype.name,
            crs=self.grid.crs,
            transform=self.grid.transform,
            nodata=self.nodata,
            tiled=True,
            blockxsize=self.blocksize,
            blockysize=self.blocksize,
            BIGTIFF="IF_SAFER",
            interleave="pixel",
        )
        if final:
            prof.update(compress=self.compress, predictor=self.predictor)
        else:  # fast intermediate, re-encoded by the COG driver
            prof.update(compress="ZSTD", zstd_level=1)
        return prof

    def __enter__(self) -> GeoTIFFBlockWriter:
        self._part = self.path.with_name(f".{self.path.name}.part-{uuid.uuid4().hex[:8]}.tif")
        try:
            with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
                self._dst = rasterio.open(self._part, "w", **self._profile(final=not self.cog))
                self._write_colormap()
        except (RasterioError, ValueError) as exc:
            self._cleanup()
            raise WriteError(f"{self.path}: cannot create GeoTIFF: {_one_line(exc)}") from exc
        return self

    def _write_colormap(self) -> None:
        # before any pixel: libtiff cannot change the photometric tag once data is written
        colors = {c.index: c.color for c in self.classes if c.color}
        if colors and self.dtype in (np.uint8, np.uint16):
            self._dst.write_colormap(1, colors)
        elif colors:
            log.info(
                "%s: no colour table for dtype %s (GeoTIFF: uint8/uint16)", self.path, self.dtype
            )

    def write(
        self, array: np.ndarray, slices: Sequence[slice], mask: np.ndarray | None = None
    ) -> None:
        """Write ``array`` ``(band, rows, cols)`` (or ``(rows, cols)`` for one band) at ``slices``.

        ``slices`` are ``(row_slice, col_slice)`` in output pixels. ``mask`` (``(rows, cols)``,
        True = valid) is stored in the internal mask when the writer has ``write_mask=True``.
        """
        from geomed_seg.core.grid import normalise_slices

        rows, cols = normalise_slices(slices, self.grid.shape)
        arr = np.asarray(array)
        if arr.ndim == 2:
            arr = arr[None]
        expected = (self.count, rows.stop - rows.start, cols.stop - cols.start)
        if arr.shape != expected:
            raise InvalidInputError(f"{self.path}: window array {arr.shape} != expected {expected}")
        window = Window.from_slices(rows, cols)
        with self._lock:
            self._dst.write(arr.astype(self.dtype, copy=False), window=window)
            if self.write_mask and mask is not None:
                self._dst.write_mask(
                    np.where(np.asarray(mask), 255, 0).astype(np.uint8), window=window
                )

    def _finish_part(self) -> None:
        dst = self._dst
        if self.band_names is not None:
            for i, name in enumerate(self.band_names[: self.count], start=1):
                dst.set_band_description(i, str(name))
        tags = {k: str(v) for k, v in self.tags.items()}
        if self.classes:
            tags[CLASSES_TAG] = _class_tag(self.classes)
        if tags:
            dst.update_tags(**tags)
        dst.close()
        self._dst = None
        if self.classes:
            Path(f"{self._part}.aux.xml").write_text(_pam_xml(self.classes), encoding="utf-8")

    def _cog_options(self) -> dict[str, Any]:
        pred = {1: "NO", 2: "STANDARD", 3: "FLOATING_POINT"}.get(self.predictor, "YES")
        return dict(
            BLOCKSIZE=self.blocksize,
            COMPRESS=self.compress,
            PREDICTOR=pred,
            OVERVIEW_RESAMPLING=self.resampling.upper(),
            BIGTIFF="IF_SAFER",
        )

    def _commit_aux(self, tmp: Path) -> None:
        aux_tmp, aux_final = Path(f"{tmp}.aux.xml"), Path(f"{self.path}.aux.xml")
        if aux_tmp.exists():
            os.replace(aux_tmp, aux_final)
        elif aux_final.exists():  # stale sidecar of the file being replaced
            aux_final.unlink()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            if exc_type is None:
                self._commit()
        finally:
            self._cleanup()

    def _commit(self) -> None:
        try:
            self._finish_part()
            with atomic_output(self.path, self.overwrite) as tmp:
                try:
                    if self.cog:
                        rasterio.shutil.copy(self._part, tmp, driver="COG", **self._cog_options())
                    else:
                        os.replace(self._part, tmp)
                        os.replace(
                            f"{self._part}.aux.xml", f"{tmp}.aux.xml"
                        ) if self.classes else None
                    self._commit_aux(tmp)
                finally:
                    _remove(Path(f"{tmp}.aux.xml"))
        except RasterioError as exc:
            raise WriteError(f"{self.path}: GDAL failed writing: {_one_line(exc)}") from exc

    def _cleanup(self) -> None:
        if self._dst is not None:
            try:
                self._dst.close()
            except RasterioError:
                log.debug("closing %s after an error failed", self._part)
            self._dst = None
        if self._part is not None:
            _remove(Path(f"{self._part}.aux.xml"))
            _remove(self._part)


def _aligned(chunks: tuple[int, ...], block: int) -> tuple[int, ...]:
    return tuple(max(int(math.ceil(c / block)), 1) * block for c in chunks)


def write_geotiff(
    image: Image,
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
    cog: bool = True,
    classes: Any = None,
    compress: str = "deflate",
    dtype: Any = None,
) -> Path:
    """Stream ``image`` chunk by chunk into a COG (or tiled GeoTIFF) at ``path``; return the path.

    Only one dask chunk (all bands, spatial edges rounded up to 512-pixel multiples) is in
    memory at a time. CRS, transform and nodata are written exactly; ``classes`` (default
    ``image.attrs["classes"]``) adds colour table, category names and mode overviews;
    ``image.mask`` becomes an internal mask. ``dtype`` casts on write.
    """
    if not isinstance(image.grid, GeoGrid):
        raise InvalidInputError(f"{path}: GeoTIFF needs a raster Image (GeoGrid), got {image.kind}")
    classes = classes if classes is not None else image.attrs.get("classes")
    blocksize = 512
    arr = image.darray
    arr = arr.rechunk((arr.shape[0], *_aligned(arr.chunksize[1:], blocksize)))
    mask = None
    if image.mask is not None:
        mask = image.valid_mask().rechunk(arr.chunks[1:])
    tags = {k: v for k, v in image.attrs.get("tags", {}).items() if not k.startswith("STATISTICS_")}
    with GeoTIFFBlockWriter(
        path,
        image.grid,
        arr.shape[0],
        dtype or image.dtype,
        nodata=image.nodata,
        classes=classes,
        band_names=image.channel_names,
        overwrite=overwrite,
        cog=cog,
        compress=compress,
        blocksize=blocksize,
        tags=tags,
        write_mask=mask is not None,
    ) as writer:
        starts = [np.cumsum((0, *c[:-1])) for c in arr.chunks[1:]]
        for i, j in np.ndindex(*arr.numblocks[1:]):
            r0, c0 = int(starts[0][i]), int(starts[1][j])
            block = np.asarray(arr.blocks[:, i, j].compute())
            sl = (slice(r0, r0 + block.shape[1]), slice(c0, c0 + block.shape[2]))
            m = None if mask is None else np.asarray(mask.blocks[i, j].compute())
            writer.write(block, sl, mask=m)
    return Path(path)
