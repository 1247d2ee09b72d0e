"""``Image``: a lazy, chunked array that always carries its geometry.

An :class:`Image` is a dask-backed :class:`xarray.DataArray` with channel-first dims —
``("band", "y", "x")`` for rasters, ``("channel", "z", "y", "x")`` for volumes (a
single-channel image keeps its channel dim, length 1) — plus the :class:`~geomed_seg.core.grid.Grid`
that says where each sample is, the nodata value, an optional validity mask and
format-specific metadata (``attrs``) that writers use to reproduce headers exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from geomed_seg.core.grid import GeoGrid, Grid, VoxelGrid, normalise_slices
from geomed_seg.errors import GeometryError, InvalidInputError

RASTER_DIMS = ("band", "y", "x")
VOLUME_DIMS = ("channel", "z", "y", "x")

#: Target bytes per dask chunk when an adapter has no native block layout to follow.
DEFAULT_CHUNK_BYTES = 64 * 2**20


def default_chunks(shape: Sequence[int], itemsize: int, spatial_ndim: int) -> tuple[int, ...]:
    """Return channel-first chunks: all channels together, cubic-ish spatial chunks.

    Chunk edges are powers of two no larger than the axis, sized so that one chunk holds at
    most :data:`DEFAULT_CHUNK_BYTES` (the channel axis is never split).
    """
    nch = shape[0]
    budget = max(DEFAULT_CHUNK_BYTES // max(nch * itemsize, 1), 1)
    edge = int(2 ** np.floor(np.log2(max(budget ** (1 / spatial_ndim), 1))))
    return (nch, *(min(int(s), max(edge, 1)) for s in shape[1:]))


def valid_samples(arr: Any, nodata: float | None) -> Any:
    """Return spatial validity of channel-first ``arr`` (numpy or dask): any channel valid.

    A sample is invalid when it equals ``nodata`` (NaN matches NaN) or, without nodata, when
    it is not finite (floats only). One rule for lazy images and for blocks in memory.
    """
    if nodata is None:
        if not np.issubdtype(arr.dtype, np.floating):
            return np.ones(arr.shape[1:], dtype=bool)
        return np.isfinite(arr).any(axis=0)
    if np.isnan(nodata):
        return (~np.isnan(arr)).any(axis=0)
    return (arr != nodata).any(axis=0)


@dataclass(frozen=True)
class Image:
    """A lazy channel-first image with exact geometry.

    Parameters
    ----------
    data : xarray.DataArray
        Dask-backed, dims :data:`RASTER_DIMS` or :data:`VOLUME_DIMS`.
    grid : GeoGrid or VoxelGrid
        Geometry of the spatial dims; ``grid.shape`` equals the spatial shape of ``data``.
    nodata : float or None
        Value marking missing samples (``nan`` allowed), shared by all bands.
    mask : xarray.DataArray or None
        Optional lazy boolean validity mask over the spatial dims (``True`` = valid data),
        e.g. GDAL per-band / internal masks combined. ``None``: derive from ``nodata``.
    attrs : dict
        Format metadata (JSON-serialisable) that writers use, e.g. ``attrs["nifti"]`` with
        qform/sform and codes, ``attrs["band_names"]``, ``attrs["source"]``.
    """

    data: xr.DataArray
    grid: Grid
    nodata: float | None = None
    mask: xr.DataArray | None = None
    attrs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        dims = tuple(self.data.dims)
        expected = RASTER_DIMS if isinstance(self.grid, GeoGrid) else VOLUME_DIMS
        if dims != expected:
            raise InvalidInputError(f"Image dims must be {expected}, got {dims}")
        if tuple(self.data.shape[1:]) != tuple(self.grid.shape):
            raise GeometryError(
                f"array spatial shape {tuple(self.data.shape[1:])} != grid shape {self.grid.shape}"
            )
        if self.mask is not None and tuple(self.mask.shape) != tuple(self.grid.shape):
            raise GeometryError(
                f"mask shape {tuple(self.mask.shape)} != grid shape {self.grid.shape}"
            )

    # -- construction -------------------------------------------------------------------
    @classmethod
    def from_array(
        cls,
        array: Any,
        grid: Grid,
        *,
        nodata: float | None = None,
        chunks: Any = None,
        channel_names: Sequence[str] | None = None,
        attrs: dict[str, Any] | None = None,
    ) -> Image:
        """Wrap a numpy/dask array (channel-first, or spatial only) with ``grid``."""
        arr = array if isinstance(array, da.Array) else da.asarray(array)
        if arr.ndim == grid.ndim:
            arr = arr[None]
        if chunks is None and not isinstance(array, da.Array):
            chunks = default_chunks(arr.shape, arr.dtype.itemsize, grid.ndim)
        if chunks is not None:
            arr = arr.rechunk(chunks)
        dims = RASTER_DIMS if isinstance(grid, GeoGrid) else VOLUME_DIMS
        coords = {dims[0]: list(channel_names)} if channel_names is not None else None
        return cls(
            xr.DataArray(arr, dims=dims, coords=coords), grid, nodata, None, dict(attrs or {})
        )

    # -- shape and dims -----------------------------------------------------------------
    @property
    def kind(self) -> str:
        """``"raster"`` or ``"volume"``."""
        return "raster" if isinstance(self.grid, GeoGrid) else "volume"

    @property
    def channel_dim(self) -> str:
        return str(self.data.dims[0])

    @property
    def spatial_dims(self) -> tuple[str, ...]:
        return tuple(str(d) for d in self.data.dims[1:])

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.data.shape)

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return self.shape[1:]

    @property
    def n_channels(self) -> int:
        return self.shape[0]

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    @property
    def darray(self) -> da.Array:
        """The underlying dask array, channel-first."""
        d = self.data.data
        return d if isinstance(d, da.Array) else da.asarray(d)

    @property
    def chunks(self) -> tuple[tuple[int, ...], ...]:
        return self.darray.chunks

    @property
    def channel_names(self) -> list[str] | None:
        """Band/channel names when known (coordinate of the channel dim)."""
        if self.channel_dim in self.data.coords:
            return [str(v) for v in self.data.coords[self.channel_dim].values]
        return None

    # -- validity -----------------------------------------------------------------------
    def valid_mask(self) -> da.Array:
        """Lazy boolean array over the spatial dims: ``True`` where any channel holds data."""
        if self.mask is not None:
            m = self.mask.data
            return m if isinstance(m, da.Array) else da.asarray(m)
        arr = self.darray
        if self.nodata is None and not np.issubdtype(arr.dtype, np.floating):
            return da.ones(arr.shape[1:], dtype=bool, chunks=arr.chunks[1:])
        return valid_samples(arr, self.nodata)

    # -- windows and chunking -----------------------------------------------------------
    def sel_window(self, slices: Sequence[slice]) -> Image:
        """Return the lazy sub-image of spatial ``slices`` with its exact sub-grid."""
        norm = normalise_slices(slices, self.spatial_shape)
        index = {d: s for d, s in zip(self.spatial_dims, norm, strict=True)}
        mask = None if self.mask is None else self.mask.isel(index)
        return replace(self, data=self.data.isel(index), grid=self.grid.window(norm), mask=mask)

    def rechunk(self, chunks: Any) -> Image:
        """Return the same image with new dask chunks (channel-first tuple or dict by dim)."""
        data = (
            self.data.chunk(chunks)
            if isinstance(chunks, dict)
            else self.data.copy(data=self.darray.rechunk(chunks))
        )
        mask = self.mask
        if mask is not None:  # valid_mask() is the mask as a dask array
            mask = mask.copy(data=self.valid_mask().rechunk(data.chunks[1:]))
        return replace(self, data=data, mask=mask)

    def with_data(
        self, data: Any, *, nodata: float | None = None, attrs: dict | None = None
    ) -> Image:
        """Return a new image on the same grid holding ``data`` (channel-first or spatial)."""
        return Image.from_array(
            data, self.grid, nodata=nodata, attrs=self.attrs if attrs is None else attrs
        )

    def compute(self) -> np.ndarray:
        """Load the whole array into memory (channel-first numpy)."""
        return np.asarray(self.darray.compute())

    def __repr__(self) -> str:
        return (
            f"Image({self.kind}, dims={self.data.dims}, shape={self.shape}, dtype={self.dtype}, "
            f"nodata={self.nodata}, {self.grid.describe()})"
        )


def is_volume_grid(grid: Grid) -> bool:
    """True for :class:`VoxelGrid`."""
    return isinstance(grid, VoxelGrid)
