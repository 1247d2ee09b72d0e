"""Streaming Cloud-Optimised GeoTIFF writer: windows in, one COG out, atomically.

:class:`GeoTIFFBlockWriter` takes windows (from the inference engine or
:func:`write_geotiff`) into a tiled temporary GeoTIFF beside the target; on success GDAL's
COG driver streams it into the final layout (512 tiles, DEFLATE/ZSTD + predictor, internal
overviews, nodata, colour table, internal mask) under a temporary name that is renamed onto
the target (:mod:`geomed_seg.io.atomic`). Nothing is left behind on failure.

Class tables travel four ways: a colour table (GDAL palette), GDAL category names + a
raster attribute table in the PAM sidecar ``<name>.aux.xml`` (what QGIS and ``gdalinfo``
show; GDAL's GTiff driver keeps category names and RATs only in PAM: with
``GDAL_PAM_ENABLED=NO`` they are dropped), a QGIS layer style ``<stem>.qml`` (palette with
class names, :mod:`geomed_seg.io.sidecars`), and inside the TIFF itself, so a ``.tif``
copied alone keeps its names: band-1 metadata items ``CLASS_<value>=<name>`` (GDAL's
``GDAL_METADATA`` tag, shown by ``gdalinfo`` and QGIS's layer metadata, read by rasterio's
``tags(1)``) and a JSON copy in the dataset tag ``GEOMED_CLASSES``.
Re-exported by :mod:`geomed_seg.io.geotiff`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import numpy as np
import rasterio
import rasterio.shutil
from rasterio._err import CPLE_BaseError
from rasterio.enums import ColorInterp, Resampling
from rasterio.errors import RasterioError
from rasterio.windows import Window

from geomed_seg.core.bands import band_descriptions, band_metadata
from geomed_seg.core.grid import GeoGrid, normalise_slices
from geomed_seg.core.image import Image
from geomed_seg.core.labels import ClassInfo, parse_classes
from geomed_seg.errors import InvalidInputError, WriteError
from geomed_seg.io.atomic import _remove, atomic_output, check_output, scratch_path, write_error
from geomed_seg.io.faults import fault_point
from geomed_seg.io.georef import write_profile
from geomed_seg.io.native import native_stderr_to_log
from geomed_seg.io.sidecars import (
    RASTER_SIDECARS,
    check_sidecars,
    sidecar_texts,
    write_sidecars,
)

log = logging.getLogger(__name__)

#: GDAL failures: rasterio's own errors and the CPLE_* errors GDAL raises through it.
GDAL_ERRORS = (RasterioError, CPLE_BaseError)

CLASSES_TAG = "GEOMED_CLASSES"
#: Band-1 metadata item prefix of the class names stored inside the TIFF (``CLASS_1=water``).
CLASS_ITEM = "CLASS_"
#: GDAL block cache (MB) while writing, unless the user set ``GDAL_CACHEMAX`` themselves.
WRITE_CACHE_MB = 256
#: Threads GDAL compresses tiles with (``NUM_THREADS`` creation option of GTiff and COG).
ENCODE_THREADS = "ALL_CPUS"


def gdal_message(exc: BaseException) -> str:
    """GDAL's message on one line, with the causes rasterio chains ("See previous exception")."""
    parts: list[str] = []
    seen: BaseException | None = exc
    while seen is not None and len(parts) < 4:
        msg = " ".join(str(seen).split())
        if msg and "See previous exception" not in msg and not any(msg in p for p in parts):
            parts.append(msg)
        seen = seen.__cause__ or seen.__context__
    return "; ".join(parts) or type(exc).__name__


def _known_reason(text: str) -> str | None:
    """The plain OS reason named in a GDAL/libtiff message (disk full, read-only...), if any."""
    low = text.lower()
    for key, what in (
        ("no space left", "no space left on device"),
        ("read-only file system", "read-only file system"),
        ("permission denied", "permission denied"),
        ("file too large", "file too large (size limit reached)"),
        ("disk quota", "disk quota exceeded"),
    ):
        if key in low:
            return what
    return None


def _errno_message(exc: BaseException) -> str:
    """GDAL's message, or the plain OS reason when the cause is disk full / read-only / ..."""
    text = gdal_message(exc)
    reason = _known_reason(text)
    if reason is not None:
        return reason
    if isinstance(exc, OSError) and getattr(exc, "errno", None):
        return str(write_error("", exc)).split(": cannot write output: ", 1)[-1]
    return text


def pam_xml(classes: Sequence[ClassInfo]) -> str:
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
    scales, offsets : sequence of float, optional
        Per-band GDAL scale/offset (physical = raw * scale + offset), written as given.
    units : sequence of str, optional
        Per-band unit types (``""`` for none).
    colormap : dict, optional
        Band-1 colour table ``{value: (r, g, b[, a])}`` (uint8/uint16 only); class colours
        override its entries.
    colorinterp : sequence of str, optional
        Per-band GDAL colour interpretation names (``"red"``, ``"alpha"``, ...), so a BGR(A)
        or alpha band keeps its meaning.

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
        scales: Sequence[float] | None = None,
        offsets: Sequence[float] | None = None,
        units: Sequence[str] | None = None,
        colormap: dict[int, Sequence[int]] | None = None,
        colorinterp: Sequence[str] | None = None,
    ) -> None:
        if not isinstance(grid, GeoGrid):
            raise InvalidInputError(f"{path}: GeoTIFF needs a GeoGrid, got {type(grid).__name__}")
        self.path = check_output(path, overwrite)
        check_sidecars(self.path, overwrite)
        self.grid, self.count, self.dtype = grid, int(count), _gtiff_dtype(dtype)
        self.nodata, self.overwrite, self.cog = nodata, overwrite, cog
        self.classes = parse_classes(classes)
        self.band_names = list(band_names) if band_names is not None else None
        self.compress = compress.upper()
        self.blocksize = int(blocksize)
        self.tags = dict(tags or {})
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
        self.scales = None if scales is None else [float(v) for v in scales]
        self.offsets = None if offsets is None else [float(v) for v in offsets]
        self.units = None if units is None else [str(u or "") for u in units]
        self.colorinterp = None if colorinterp is None else [str(c) for c in colorinterp]
        for name, values in (("scales", self.scales), ("offsets", self.offsets),
                             ("units", self.units), ("colorinterp", self.colorinterp)):  # fmt: skip
            if values is not None and len(values) != self.count:
                raise InvalidInputError(f"{path}: {len(values)} band {name} for {self.count} bands")
        self.colormap = {int(k): tuple(v) for k, v in (colormap or {}).items()}
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
            nodata=self.nodata,
            tiled=True,
            blockxsize=self.blocksize,
            blockysize=self.blocksize,
            BIGTIFF="IF_SAFER",
            interleave="pixel",
        )
        prof.update(write_profile(self.grid))  # geotransform, GCPs, RPCs or none
        if final:
            prof.update(compress=self.compress, predictor=self.predictor)
        else:  # fast intermediate, re-encoded by the COG driver
            prof.update(compress="ZSTD", zstd_level=1)
        prof.update(num_threads=ENCODE_THREADS)  # tiles are compressed in parallel
        return prof

    def __enter__(self) -> GeoTIFFBlockWriter:
        self._part = scratch_path(self.path, "part")
        # GDAL's block cache defaults to 5% of RAM and holds dirty tiles until it is full
        cache = {} if "GDAL_CACHEMAX" in os.environ else {"GDAL_CACHEMAX": WRITE_CACHE_MB}
        self._env = rasterio.Env(**cache)
        self._env.__enter__()
        try:
            with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
                self._dst = rasterio.open(self._part, "w", **self._profile(final=not self.cog))
                self._write_colormap()
        except (*GDAL_ERRORS, ValueError) as exc:
            self._cleanup()
            raise WriteError(f"{self.path}: cannot create GeoTIFF: {gdal_message(exc)}") from exc
        except BaseException:  # a signal while the file is being created: __exit__ won't run
            self._cleanup()
            raise
        return self

    def _write_colormap(self) -> None:
        # before any pixel: libtiff cannot change the photometric tag once data is written
        colors = dict(self.colormap)  # a palette raster's own table, then class colours
        colors.update({c.index: c.color for c in self.classes if c.color})
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
        rows, cols = normalise_slices(slices, self.grid.shape)
        arr = np.asarray(array)
        if arr.ndim == 2:
            arr = arr[None]
        expected = (self.count, rows.stop - rows.start, cols.stop - cols.start)
        if arr.shape != expected:
            raise InvalidInputError(f"{self.path}: window array {arr.shape} != expected {expected}")
        window = Window.from_slices(rows, cols)
        with self._lock, native_stderr_to_log(str(self.path)):
            try:
                fault_point("window", self.path)
                self._dst.write(arr.astype(self.dtype, copy=False), window=window)
                if self.write_mask and mask is not None:
                    self._dst.write_mask(
                        np.where(np.asarray(mask), 255, 0).astype(np.uint8), window=window
                    )
            except (*GDAL_ERRORS, OSError) as exc:
                raise WriteError(
                    f"{self.path}: GDAL failed writing: {_errno_message(exc)}"
                ) from exc

    def _is_label_map(self) -> bool:
        """True for one integer band of class values (the QGIS style and class items apply)."""
        return self.count == 1 and self.dtype.kind in "iu"

    def _finish_part(self) -> None:
        dst = self._dst
        if self.band_names is not None:
            for i, name in enumerate(self.band_names[: self.count], start=1):
                if name:
                    dst.set_band_description(i, str(name))
        if self.scales is not None and self.offsets is not None:
            dst.scales, dst.offsets = self.scales, self.offsets
        if self.units is not None:
            dst.units = self.units
        if self.colorinterp is not None and not (self.colormap or self.classes):  # palette stays
            dst.colorinterp = [ColorInterp[c] for c in self.colorinterp]
        tags = {k: str(v) for k, v in self.tags.items()}
        if self.classes:
            tags[CLASSES_TAG] = _class_tag(self.classes)
            if self._is_label_map():
                dst.update_tags(1, **{f"{CLASS_ITEM}{c.index}": c.name for c in self.classes})
        if tags:
            dst.update_tags(**tags)
        dst.close()
        self._dst = None
        if self.classes:
            Path(f"{self._part}.aux.xml").write_text(pam_xml(self.classes), encoding="utf-8")

    def _cog_options(self) -> dict[str, Any]:
        pred = {1: "NO", 2: "STANDARD", 3: "FLOATING_POINT"}.get(self.predictor, "YES")
        return dict(
            BLOCKSIZE=self.blocksize,
            COMPRESS=self.compress,
            PREDICTOR=pred,
            OVERVIEW_RESAMPLING=self.resampling.upper(),
            BIGTIFF="IF_SAFER",
            NUM_THREADS=ENCODE_THREADS,
        )

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            if exc_type is None:
                self._commit()
        finally:
            self._cleanup()

    def _commit(self) -> None:
        cap = None
        try:
            with native_stderr_to_log(str(self.path)) as cap:
                self._commit_quietly()
        except WriteError as exc:  # libtiff may say why only on fd 2 ("File too large.")
            reason = _known_reason(cap.text if cap is not None else "")
            if reason is None:
                raise
            raise WriteError(f"{self.path}: cannot write output: {reason}") from exc

    def _commit_quietly(self) -> None:
        try:
            self._finish_part()
            # the PAM sidecar (class names, RAT) and the QGIS style commit with the COG,
            # stale ones go
            sides = (".aux.xml", *RASTER_SIDECARS)
            with atomic_output(self.path, self.overwrite, companions=sides) as tmp:
                if self.cog:
                    rasterio.shutil.copy(self._part, tmp, driver="COG", **self._cog_options())
                else:
                    os.replace(self._part, tmp)
                    if self.classes:
                        os.replace(f"{self._part}.aux.xml", f"{tmp}.aux.xml")
                if self._is_label_map():  # not class probabilities: QGIS would palette them
                    write_sidecars(tmp, sidecar_texts(self.path, self.classes, "raster"))
        except GDAL_ERRORS as exc:
            raise WriteError(f"{self.path}: GDAL failed writing: {_errno_message(exc)}") from exc
        except OSError as exc:  # the PAM sidecar, written with pathlib
            raise write_error(self.path, exc) from exc

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
        env, self._env = getattr(self, "_env", None), None
        if env is not None:
            env.__exit__(None, None, None)


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
    memory at a time. CRS, transform (or GCPs / RPCs) and nodata are written exactly;
    ``classes`` (default ``image.attrs["classes"]``) adds colour table, category names and
    mode overviews; ``image.mask`` becomes an internal mask. The values' metadata carried
    by ``image.data`` (:func:`geomed_seg.core.bands.band_metadata`: per-band scale/offset,
    units, descriptions, colour interpretation, palette) is written back; band descriptions
    come only from the values' descriptions or real channel names, never the readers'
    ``band_1..N`` placeholders (:func:`~geomed_seg.core.bands.band_descriptions`). ``dtype``
    casts on write.
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
    meta = band_metadata(image.data)  # scale/offset, units, descriptions, palette of the values
    with GeoTIFFBlockWriter(
        path,
        image.grid,
        arr.shape[0],
        dtype or image.dtype,
        nodata=image.nodata,
        classes=classes,
        band_names=band_descriptions(image.data, image.channel_names),
        overwrite=overwrite,
        cog=cog,
        compress=compress,
        blocksize=blocksize,
        tags=tags,
        write_mask=mask is not None,
        scales=meta.get("scale"),
        offsets=meta.get("offset"),
        units=meta.get("units"),
        colormap=meta.get("colormap"),
        colorinterp=meta.get("colorinterp"),
    ) as writer:
        starts = [np.cumsum((0, *c[:-1])) for c in arr.chunks[1:]]
        for i, j in np.ndindex(*arr.numblocks[1:]):
            r0, c0 = int(starts[0][i]), int(starts[1][j])
            block = np.asarray(arr.blocks[:, i, j].compute())
            sl = (slice(r0, r0 + block.shape[1]), slice(c0, c0 + block.shape[2]))
            m = None if mask is None else np.asarray(mask.blocks[i, j].compute())
            writer.write(block, sl, mask=m)
    return Path(path)
