"""Run local methods tile by tile with a halo, and place window results on the scene grid.

Local filters (Canny, watershed, ...) see only their neighbourhood, so a large image is
processed chunk by chunk with :func:`dask.array.overlap.overlap`: each chunk is extended by
``halo`` pixels of its neighbours, the method runs on the extended block, and the halo is cut
away again. Image borders get no padding (``boundary="none"``), so a chunk on the border sees
exactly what the whole-image run sees. A result equals the whole-image result wherever the
method's influence radius is at most ``halo``; each method documents its radius.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import dask.array as da
import numpy as np

from geomed_seg.core.grid import GeoGrid, Grid, normalise_slices
from geomed_seg.core.image import Image
from geomed_seg.errors import GeometryError


def map_spatial(
    image: Image,
    func: Callable[[np.ndarray], np.ndarray],
    *,
    halo: int | Sequence[int],
    dtype: Any,
) -> da.Array:
    """Return the lazy spatial array ``func(block)`` computed chunk-wise with a halo.

    Parameters
    ----------
    image : Image
        Input; all channels are passed together (the channel axis is never split).
    func : callable
        Takes a channel-first numpy block ``(C, *spatial)`` (halo included) and returns a
        spatial block ``(*spatial)`` of the same spatial shape.
    halo : int or sequence of int
        Halo in pixels per spatial axis (array order ``(y, x)`` or ``(z, y, x)``).
    dtype : numpy dtype
        Output dtype.
    """
    arr = image.darray
    arr = arr.rechunk({0: arr.shape[0]})
    nsp = arr.ndim - 1
    halos = [int(halo)] * nsp if np.isscalar(halo) else [int(h) for h in halo]  # type: ignore[arg-type]
    arr = arr.rechunk((arr.shape[0], *min_chunks(arr.chunks[1:], halos)))
    depth = {0: 0, **{ax + 1: h for ax, h in enumerate(halos)}}
    ext = da.overlap.overlap(arr, depth=depth, boundary="none")

    def _block(block: np.ndarray) -> np.ndarray:
        return np.asarray(func(block), dtype=dtype)[None]

    out = ext.map_blocks(_block, dtype=dtype, chunks=((1,), *ext.chunks[1:]))
    out = da.overlap.trim_internal(out, depth, boundary="none")
    return out[0]


def min_chunks(chunks: Sequence[tuple[int, ...]], halos: Sequence[int]) -> tuple:
    """Return ``chunks`` with chunks smaller than the halo merged into a neighbour.

    dask's overlap needs every chunk at least as large as its depth; merging only the small
    ones (``ensure_minimum_chunksize``) keeps the caller's chunking elsewhere.
    """
    from dask.array.overlap import ensure_minimum_chunksize

    return tuple(
        c if len(c) == 1 or h == 0 else ensure_minimum_chunksize(h, c)
        for c, h in zip(chunks, halos, strict=True)
    )


def label_image(
    image: Image, labels: da.Array, *, nodata: float | None, attrs: dict | None = None
) -> Image:
    """Return ``labels`` (spatial, lazy) as a 1-channel image on ``image``'s grid.

    Invalid input samples become ``nodata`` when ``nodata`` is given.
    """
    if nodata is not None:
        labels = da.where(image.valid_mask(), labels, labels.dtype.type(nodata))
    base = {"source": image.attrs.get("source")}
    base.update(attrs or {})
    chunks = (1, *image.darray.chunks[1:])
    return Image.from_array(labels[None].rechunk(chunks), image.grid, nodata=nodata, attrs=base)


def world_to_index(grid: Grid, point: Sequence[float]) -> tuple[int, ...]:
    """Return the nearest array index of a world point.

    ``point`` is ``(x, y)`` in CRS units for a :class:`GeoGrid` (rotation and south-up
    transforms handled by the affine) or ``(R, A, S)`` mm for a ``VoxelGrid``; the result is in
    array order ``(row, col)`` / ``(z, y, x)``. Raises :class:`GeometryError` outside the grid.
    """
    if isinstance(grid, GeoGrid):
        frac = grid.rowcol(float(point[0]), float(point[1]))
    else:
        frac = grid.index(float(point[0]), float(point[1]), float(point[2]))
    idx = tuple(int(np.floor(f + 0.5)) for f in frac)
    if any(not 0 <= i < n for i, n in zip(idx, grid.shape, strict=True)):
        raise GeometryError(f"point {tuple(point)} falls outside the grid {grid.describe()}")
    return idx


def window_around(
    shape: Sequence[int], centre: Sequence[int], radius: int | Sequence[int]
) -> tuple[slice, ...]:
    """Return slices of a window of ``radius`` pixels around ``centre``, clipped to ``shape``."""
    radii = [int(radius)] * len(shape) if np.isscalar(radius) else list(radius)  # type: ignore[arg-type]
    return tuple(
        slice(max(c - r, 0), min(c + r + 1, n))
        for c, r, n in zip(centre, radii, shape, strict=True)
    )


def place_window(
    image: Image,
    slices: Sequence[slice],
    values: np.ndarray,
    *,
    fill: Any = 0,
    nodata: float | None = None,
    attrs: dict | None = None,
) -> Image:
    """Return a 1-channel image on ``image``'s grid holding ``values`` inside ``slices``.

    Outside the window the image holds ``fill``; the result is lazy (padding in dask), so a
    window result on a huge scene costs only the window's memory.
    """
    norm = normalise_slices(slices, image.spatial_shape)
    values = np.asarray(values)
    if values.shape != tuple(s.stop - s.start for s in norm):
        raise GeometryError(f"window values {values.shape} do not fit slices {norm}")
    pad = [(s.start, n - s.stop) for s, n in zip(norm, image.spatial_shape, strict=True)]
    full = da.pad(da.from_array(values), pad, mode="constant", constant_values=fill)
    full = full.rechunk(image.darray.chunks[1:])
    return label_image(image, full, nodata=nodata, attrs=attrs)
