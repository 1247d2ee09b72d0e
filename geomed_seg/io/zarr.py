"""Zarr v3 adapter: lossless, chunked, lazy storage of any :class:`Image` (rasters and volumes).

Layout of a store ``<name>.zarr`` (a zarr v3 group)::

    zarr.json            group attributes["geomed_seg"] = {format_version, kind, dims, grid,
                         nodata, channel_names, attrs}
    data/                channel-first array, ``dimension_names`` = Image dims
    mask/                optional boolean (spatial) validity mask, True = valid

The grid is stored with :meth:`GeoGrid.to_attrs` / :meth:`VoxelGrid.to_attrs` (float64 values
through JSON's shortest round-trip repr, so transforms and affines are bit-exact). Image
``attrs`` must be JSON-like; numpy scalars/arrays and tuples are stored as numbers/lists
(a tuple reads back as a list). Non-finite floats (NaN nodata) are kept as zarr-python does.
Writes go to a temporary folder beside the target that is renamed when complete.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
import zarr

from geomed_seg.core.bands import BAND_COORDS, COLORMAP_ATTR, band_metadata
from geomed_seg.core.grid import Grid, grid_from_attrs, normalise_slices
from geomed_seg.core.image import RASTER_DIMS, VOLUME_DIMS, Image
from geomed_seg.errors import InvalidInputError, ReadError, UnsupportedFormatError, WriteError
from geomed_seg.io.atomic import atomic_output, check_output

log = logging.getLogger(__name__)

ATTRS_KEY = "geomed_seg"
#: Key (in the stored attrs) of the values' metadata (:mod:`geomed_seg.core.bands`).
BAND_META_KEY = "band_metadata"
FORMAT_VERSION = 1


def _jsonable(value: Any, where: str = "attrs") -> Any:
    """Return ``value`` as plain JSON types (dict/list/str/int/float/bool/None)."""
    if value is None or isinstance(value, bool | str | int | float):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): _jsonable(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise InvalidInputError(
        f"{where}: {type(value).__name__} is not JSON-serialisable; store numbers, strings, lists"
    )


def _metadata(
    grid: Grid,
    dims: Sequence[str],
    nodata: float | None,
    channel_names: Sequence[str] | None,
    attrs: dict[str, Any] | None,
) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "dims": list(dims),
        "grid": grid.to_attrs(),
        "nodata": None if nodata is None else float(nodata),
        "channel_names": None if channel_names is None else [str(c) for c in channel_names],
        "attrs": _jsonable(dict(attrs or {})),
    }


def _regular_chunks(chunks: Any, shape: tuple[int, ...], dtype: np.dtype) -> tuple[int, ...]:
    norm = da.core.normalize_chunks(chunks, shape, dtype=dtype)
    return tuple(max(c) for c in norm)


class _GuardedTarget:
    """``dask.array.store`` target that drops writes once the writer aborted.

    dask's threaded scheduler raises the first failing task's error without waiting for the
    tasks still running; their late writes would recreate chunk files inside a temporary
    store that was already removed. Abort therefore waits for writes in flight.
    """

    def __init__(self, array: Any, writer: ZarrBlockWriter) -> None:
        self._array, self._writer = array, writer
        self.shape, self.dtype, self.ndim = array.shape, array.dtype, array.ndim

    def __setitem__(self, key: Any, value: Any) -> None:
        w = self._writer
        with w._cond:
            if w._aborted:
                return
            w._inflight += 1
        try:
            self._array[key] = value
        finally:
            with w._cond:
                w._inflight -= 1
                w._cond.notify_all()


class ZarrBlockWriter:
    """Context manager sink: write windows into a new Zarr v3 store, commit atomically on exit.

    Parameters
    ----------
    path : path-like
        Final store folder (``*.zarr``); it appears only after a successful exit.
    grid : GeoGrid or VoxelGrid
        Geometry of the spatial dims.
    shape : tuple of int
        Full channel-first shape, e.g. ``(channel, z, y, x)``; ``shape[1:] == grid.shape``.
    dtype : dtype-like
        Stored data type.
    chunks : tuple of int
        Zarr chunk shape, channel-first (or spatial only: all channels in one chunk).
        Windows aligned to it write without read-modify-write.
    nodata : float, optional
        Nodata value (also the zarr ``fill_value`` for never-written chunks; 0 otherwise).
    attrs : dict, optional
        Image attrs to store (JSON-like).
    dims : sequence of str, optional
        Dim names; default ``("band", "y", "x")`` or ``("channel", "z", "y", "x")`` by grid.
    channel_names : sequence of str, optional
        Names of the channel coordinate.
    overwrite : bool
        Replace an existing store; otherwise :class:`OutputExistsError` at construction.

    Notes
    -----
    :meth:`write` takes ``slices`` over **all** dims (channel first) or over the **spatial**
    dims only (then ``array`` holds every channel). Writes are serialised by a lock.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        grid: Grid,
        shape: Sequence[int],
        dtype: Any,
        *,
        chunks: Sequence[int],
        nodata: float | None = None,
        attrs: dict[str, Any] | None = None,
        dims: Sequence[str] | None = None,
        channel_names: Sequence[str] | None = None,
        overwrite: bool = False,
    ) -> None:
        self.path = check_output(path, overwrite)
        self.shape = tuple(int(s) for s in shape)
        if self.shape[1:] != tuple(grid.shape):
            raise InvalidInputError(f"{path}: shape {self.shape} does not match {grid.describe()}")
        self.dtype, self.grid, self.nodata, self.overwrite = (
            np.dtype(dtype),
            grid,
            nodata,
            overwrite,
        )
        self.dims = tuple(dims or (RASTER_DIMS if grid.ndim == 2 else VOLUME_DIMS))
        chunks = tuple(chunks)
        if len(chunks) == len(self.shape) - 1:  # spatial chunks: keep all channels together
            chunks = (self.shape[0], *chunks)
        self.chunks = _regular_chunks(chunks, self.shape, self.dtype)
        self.meta = _metadata(grid, self.dims, nodata, channel_names, attrs)
        self._lock = threading.Lock()
        self._cond = threading.Condition()
        self._aborted, self._inflight = False, 0
        self._stack: ExitStack | None = None
        self.array: Any = None

    def __enter__(self) -> ZarrBlockWriter:
        self._stack = ExitStack()
        tmp = self._stack.enter_context(atomic_output(self.path, self.overwrite))
        try:
            group = zarr.open_group(str(tmp), mode="w-", zarr_format=3)
            group.attrs[ATTRS_KEY] = self.meta
            fill = 0 if self.nodata is None else self.nodata
            self.array = group.create_array(
                "data", shape=self.shape, chunks=self.chunks, dtype=self.dtype,
                fill_value=fill, dimension_names=self.dims,
            )  # fmt: skip
        except BaseException as exc:
            self._stack.__exit__(type(exc), exc, exc.__traceback__)
            raise
        self._group = group
        return self

    def target(self, array: Any = None) -> _GuardedTarget:
        """Return a ``dask.array.store`` target for ``array`` (default: the data array)."""
        return _GuardedTarget(self.array if array is None else array, self)

    def create_mask(self, chunks: Sequence[int] | None = None) -> Any:
        """Create and return the boolean spatial ``mask`` array (True = valid)."""
        self.meta["has_mask"] = True
        return self._group.create_array(
            "mask", shape=self.shape[1:], chunks=tuple(chunks or self.chunks[1:]), dtype=bool,
            fill_value=False, dimension_names=self.dims[1:],
        )  # fmt: skip

    def write(self, array: np.ndarray, slices: Sequence[slice]) -> None:
        """Store ``array`` at ``slices`` (all dims, or spatial dims with every channel)."""
        if len(slices) == len(self.shape) - 1:
            slices = (slice(None), *slices)
        norm = normalise_slices(slices, self.shape)
        expected = tuple(s.stop - s.start for s in norm)
        arr = np.asarray(array)
        if arr.shape != expected:
            raise InvalidInputError(f"{self.path}: window array {arr.shape} != expected {expected}")
        with self._lock:
            self.target()[norm] = arr.astype(self.dtype, copy=False)

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        stack, self._stack = self._stack, None
        if stack is None:
            return
        if exc_type is not None:
            with self._cond:
                self._aborted = True
                self._cond.wait_for(lambda: self._inflight == 0, timeout=600)
        else:
            try:
                self._group.attrs[ATTRS_KEY] = self.meta
            except BaseException as err:
                stack.__exit__(type(err), err, err.__traceback__)
                raise WriteError(f"{self.path}: cannot finalise Zarr metadata: {err}") from err
        stack.__exit__(exc_type, exc, tb)


def write_zarr(
    image: Image, path: str | os.PathLike, *, overwrite: bool = False, chunks: Any = None
) -> Path:
    """Stream ``image`` into a Zarr v3 store at ``path`` (atomic); return the path.

    ``chunks`` (channel-first tuple or dask spec) default to the image's largest dask chunk.
    dask writes one chunk per task, so memory stays at a few chunks whatever the image size.
    """
    arr = image.darray
    zchunks = chunks if chunks is not None else tuple(max(c) for c in arr.chunks)
    attrs = dict(image.attrs)
    values_meta = band_metadata(image.data)  # scale/offset, units, palette of the values
    if COLORMAP_ATTR in values_meta:  # JSON keys are strings
        values_meta[COLORMAP_ATTR] = {
            str(i): list(c) for i, c in values_meta[COLORMAP_ATTR].items()
        }
    attrs.pop(BAND_META_KEY, None)
    if values_meta:
        attrs[BAND_META_KEY] = values_meta
    with ZarrBlockWriter(
        path, image.grid, arr.shape, arr.dtype, chunks=zchunks, nodata=image.nodata,
        attrs=attrs, dims=image.data.dims, channel_names=image.channel_names,
        overwrite=overwrite,
    ) as writer:  # fmt: skip
        sources, targets = [arr.rechunk(writer.chunks)], [writer.target()]
        if image.mask is not None:
            mask = writer.create_mask()
            sources.append(image.valid_mask().astype(bool).rechunk(mask.chunks))
            targets.append(writer.target(mask))
        da.store(sources, targets, lock=False)
    return Path(path)


def open_zarr(path: str | os.PathLike, chunks: Any = None) -> Image:
    """Return the lazy :class:`Image` stored by :func:`write_zarr` / :class:`ZarrBlockWriter`.

    ``chunks`` default to the store's chunks (channel-first).
    """
    p = Path(path)
    if not p.exists():
        raise ReadError(f"{p}: no such file or folder")
    try:
        group = zarr.open_group(str(p), mode="r")
    except (zarr.errors.BaseZarrError, ValueError, OSError) as exc:
        raise UnsupportedFormatError(f"{p}: not a Zarr v3 group ({exc})") from exc
    meta = group.attrs.get(ATTRS_KEY)
    if not isinstance(meta, dict) or "grid" not in meta or "data" not in group:
        raise UnsupportedFormatError(
            f"{p}: Zarr store has no '{ATTRS_KEY}' geometry attributes or 'data' array; "
            "write it with geomed_seg.io.zarr.write_zarr"
        )
    grid = grid_from_attrs(meta["grid"])
    data_shape = tuple(group["data"].shape)
    dims = tuple(meta.get("dims") or ())
    if (
        len(data_shape) != grid.ndim + 1
        or len(dims) != len(data_shape)
        or (data_shape[1:] != tuple(grid.shape))
    ):
        raise ReadError(
            f"{p}: 'data' array has shape {data_shape} (rank {len(data_shape)}), but the "
            f"store's geometry needs rank {grid.ndim + 1}: dims {dims} with spatial shape "
            f"{tuple(grid.shape)}; a damaged store or one not written by geomed-seg"
        )
    arr = (
        da.from_zarr(group["data"])
        if chunks is None
        else da.from_zarr(group["data"], chunks=chunks)
    )
    dims = tuple(meta["dims"])
    names = meta.get("channel_names")
    attrs = dict(meta.get("attrs") or {})
    values_meta = attrs.pop(BAND_META_KEY, None) or {}
    coords: dict[str, Any] = {dims[0]: names} if names else {}
    coords.update({k: (dims[0], v) for k, v in values_meta.items() if k in BAND_COORDS})
    data_attrs = {COLORMAP_ATTR: values_meta[COLORMAP_ATTR]} if COLORMAP_ATTR in values_meta else {}
    data = xr.DataArray(arr, dims=dims, coords=coords or None, attrs=data_attrs)
    mask = None
    if "mask" in group:
        marr = da.from_zarr(group["mask"]).rechunk(arr.chunks[1:])
        mask = xr.DataArray(marr, dims=dims[1:])
    return Image(data, grid, meta.get("nodata"), mask, attrs)


__all__ = ["ZarrBlockWriter", "open_zarr", "write_zarr"]
