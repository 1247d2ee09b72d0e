"""GeoTIFF / COG / VRT adapter: lazy block-aligned reads and a streaming COG writer.

Reading (:func:`open_geotiff`) opens the file once for metadata only; pixels are read later,
one dask chunk per task, by a windowed ``rasterio`` read that opens the dataset inside the
task (so graphs pickle to ``dask.distributed`` workers). Chunks are whole multiples of the
file's internal blocks (tiles, or groups of strips), all bands together, about
:data:`~geomed_seg.core.image.DEFAULT_CHUNK_BYTES` each.

Writing (:class:`GeoTIFFBlockWriter`, :func:`write_geotiff`) lives in
:mod:`geomed_seg.io.cog` and is re-exported here: windows go into a tiled temporary GeoTIFF
that GDAL's COG driver streams into a Cloud-Optimised GeoTIFF, renamed when complete.

Label classes read back from the ``GEOMED_CLASSES`` tag our writer stores, else from GDAL
category names in the PAM ``.aux.xml`` sidecar, else from band 1's ``CLASS_<value>``
metadata items (both with the colour table).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import dask.array as da
import numpy as np
import rasterio
import xarray as xr
from rasterio.enums import MaskFlags
from rasterio.errors import RasterioError
from rasterio.windows import Window

from geomed_seg.core.bands import COLORMAP_ATTR, band_coords, placeholder_band_name
from geomed_seg.core.image import DEFAULT_CHUNK_BYTES, RASTER_DIMS, Image
from geomed_seg.errors import ReadError, UnsupportedFormatError
from geomed_seg.io.cog import (
    CLASS_ITEM,
    CLASSES_TAG,
    GeoTIFFBlockWriter,
    gdal_message,
    write_geotiff,
)
from geomed_seg.io.georef import read_grid
from geomed_seg.io.registry import is_gdal_path

log = logging.getLogger(__name__)

TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


@contextmanager
def _gdal_errors(path: str | os.PathLike, what: str) -> Iterator[None]:
    """Turn rasterio/GDAL errors into :class:`ReadError` naming ``path`` and GDAL's message."""
    try:
        yield
    except RasterioError as exc:
        raise ReadError(f"{path}: {what}: {gdal_message(exc)}") from exc


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


#: GDAL complex integer types (SAR SLC products) have no numpy type: read as complex floats.
_COMPLEX_INT = {"complex_int16": np.complex64, "complex_int32": np.complex128}


def _numpy_dtype(name: str) -> np.dtype:
    """Return the numpy dtype that holds GDAL type ``name`` exactly (CInt16 -> complex64)."""
    return np.dtype(_COMPLEX_INT.get(str(name), name))


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
        if is_gdal_path(self.path):
            return (self.path, self.shape, str(self.dtype), self.mask)
        st = os.stat(self.path)
        stamp = (st.st_mtime_ns, st.st_size)
        return (self.path, stamp, self.shape, str(self.dtype), self.mask)

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
                if any(str(d).startswith("complex_int") for d in src.dtypes):
                    return src.read(indexes=indexes, window=window, out_dtype=self.dtype)
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
    names = _pam_category_names(src) or _band_class_items(src)
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


def _band_class_items(src: Any) -> list[str]:
    """Category names from band 1's ``CLASS_<value>`` metadata items (inside the TIFF)."""
    items = {}
    for key, name in src.tags(1).items():
        if key.startswith(CLASS_ITEM) and key[len(CLASS_ITEM) :].isdigit():
            items[int(key[len(CLASS_ITEM) :])] = name
    return [items.get(i, "") for i in range(max(items) + 1)] if items else []


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
        "band_names": [d or placeholder_band_name(i) for i, d in enumerate(src.descriptions)],
        "band_nodata": [None if v is None else float(v) for v in src.nodatavals],
        "colorinterp": [ci.name for ci in src.colorinterp],
        "tags": {k: v for k, v in src.tags().items() if k != CLASSES_TAG},
        "block_shape": list(src.block_shapes[0]),
    }
    if src.compression is not None:
        attrs["compression"] = src.compression.name
    if any(s != 1.0 for s in src.scales) or any(o != 0.0 for o in src.offsets):
        attrs["scales"], attrs["offsets"] = list(src.scales), list(src.offsets)
    if any(src.units):
        attrs["units"] = [u or "" for u in src.units]
    cmap = _colormap(src)
    if cmap is not None and len(cmap) <= 256:  # uint16 palettes (65536 entries) stay in the file
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

    Returns
    -------
    Image
        ``attrs`` holds ``source``, ``driver``, ``dtype``, ``band_names`` (descriptions or
        ``band_1..``), ``band_nodata``, ``colorinterp``, ``tags``, ``block_shape``,
        ``compression``, and when present ``colormap``, ``classes`` (``[{index, name,
        color}]``), ``scales``/``offsets``, ``units``. The values' own metadata also rides
        on ``data`` (:mod:`geomed_seg.core.bands`): band coordinates ``scale``/``offset``,
        ``units``, ``description`` and the ``colormap`` attr, which writers reproduce.

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
    if is_gdal_path(path):  # /vsicurl/, s3://, ...: GDAL reads it, no local checks
        path = str(path)
    else:
        path = Path(path)
        _check_path(path)
        _check_magic(path)
    with _gdal_errors(path, "cannot open as GeoTIFF (corrupt or truncated?)"):
        with rasterio.open(path) as src:
            if isinstance(path, Path):
                _check_blocks(src, path)
            shape = (src.count, src.height, src.width)
            dtype = _numpy_dtype(src.dtypes[0])
            if len(set(src.dtypes)) > 1:
                dtype = np.result_type(*(_numpy_dtype(d) for d in src.dtypes))
            grid = read_grid(src)
            nodatas = list(src.nodatavals)
            flags = src.mask_flag_enums
            attrs = _attrs(path=path, src=src)
            coords = band_coords(
                src.count, scales=src.scales, offsets=src.offsets, units=src.units,
                descriptions=src.descriptions, colorinterp=src.colorinterp,
            )  # fmt: skip
            natural = block_chunks(shape, src.block_shapes[0], dtype.itemsize)
    nodata = None if nodatas[0] is None else float(nodatas[0])
    chunks = _normalise_chunks(chunks, shape, dtype, natural)
    token = f"geotiff-{da.core.tokenize(_WindowReader(str(path), shape, dtype), chunks)}"
    reader = _WindowReader(str(path), shape, dtype)
    arr = da.from_array(reader, chunks=chunks, name=token, meta=np.empty((0, 0, 0), dtype))
    mask = _lazy_mask(path, shape, flags, nodatas, arr.chunks[1:], f"{token}-mask")
    coords_all: dict[str, Any] = {"band": attrs["band_names"]}
    coords_all.update({k: ("band", v) for k, v in coords.items()})
    # value metadata lives on the DataArray so that derived arrays do not inherit it
    data_attrs = {COLORMAP_ATTR: attrs["colormap"]} if "colormap" in attrs else {}
    data = xr.DataArray(arr, dims=RASTER_DIMS, coords=coords_all, attrs=data_attrs)
    log.debug("opened %s: %s chunks %s", path, shape, arr.chunksize)
    return Image(data, grid, nodata, mask, attrs)


def _lazy_mask(
    path: str | Path, shape: tuple[int, ...], flags: list, nodatas: list, chunks: Any, name: str
) -> xr.DataArray | None:
    """Lazy ``(y, x)`` validity mask (GDAL's dataset mask), or None when every sample counts.

    A mask is needed with an internal mask / alpha band (``flags``: each band's
    ``mask_flag_enums``) or when the bands' nodata values differ.
    """
    mixed_nodata = len({("nan" if v is not None and np.isnan(v) else v) for v in nodatas}) > 1
    if not (any(MaskFlags.per_dataset in f or MaskFlags.alpha in f for f in flags) or mixed_nodata):
        return None
    mreader = _WindowReader(str(path), shape[1:], np.dtype(bool), mask=True)
    marr = da.from_array(mreader, chunks=chunks, name=name, meta=np.empty((0, 0), bool))
    return xr.DataArray(marr, dims=RASTER_DIMS[1:])


__all__ = ["GeoTIFFBlockWriter", "block_chunks", "open_geotiff", "write_geotiff"]
