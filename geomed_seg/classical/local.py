"""Local methods on images of any size: Canny edges and marker-based watershed.

Both run chunk by chunk with a halo (:func:`~geomed_seg.classical.tiling.map_spatial`); the
halo each needs for a result identical to the whole-image run is stated per function. They
wrap scikit-image (``feature.canny``, ``segmentation.watershed``, ``feature.peak_local_max``)
and SciPy (``ndimage.distance_transform_edt``); nothing of the algorithms is re-implemented.
"""

from __future__ import annotations

import math

import dask.array as da
import numpy as np
from scipy import ndimage as ndi
from skimage.feature import canny as sk_canny
from skimage.feature import peak_local_max
from skimage.filters import sobel
from skimage.segmentation import watershed as sk_watershed

from geomed_seg.classical.indices import band_index
from geomed_seg.classical.thresholds import otsu_threshold
from geomed_seg.classical.tiling import label_image, map_spatial, min_chunks
from geomed_seg.core.image import Image
from geomed_seg.errors import InvalidInputError


def canny(
    image: Image,
    *,
    band: str | int = 1,
    sigma: float = 1.0,
    low_threshold: float | None = None,
    high_threshold: float | None = None,
    halo: int | None = None,
) -> Image:
    """Return Canny edges of one band as uint8 ``{0, 1}`` (255 = nodata), on the input grid.

    Rasters: 2D Canny on ``(y, x)``; volumes: slice-wise on each ``(y, x)`` plane.
    Thresholds are absolute gradient magnitudes (scikit-image semantics; integer input is
    scaled to 0..1 first). Default halo ``ceil(4 sigma) + 3`` covers the Gaussian (truncated
    at 4 sigma), the Sobel kernel and non-maximum suppression. Hysteresis links weak edges
    to strong ones along chains of any length, so a weak chain that leaves the halo can
    differ from the whole-image run; with ``low == high`` (no hysteresis) tiles are exact.
    """
    b = band_index(image, band)
    h = int(math.ceil(4 * sigma)) + 3 if halo is None else int(halo)
    nsp = image.grid.ndim

    def _edges(block: np.ndarray) -> np.ndarray:
        img = block[b]
        if nsp == 2:
            return sk_canny(img, sigma, low_threshold, high_threshold)
        return np.stack([sk_canny(s, sigma, low_threshold, high_threshold) for s in img])

    halos = (h, h) if nsp == 2 else (0, h, h)
    edges = map_spatial(image, _edges, halo=halos, dtype=np.uint8)
    return label_image(image, edges, nodata=255)


def _global_marker_ids(markers: np.ndarray, offset: tuple[int, ...], shape: tuple[int, ...]):
    """Relabel marker components by ``1 + flat scene index`` of their first pixel.

    The same peak found in two overlapping tiles then gets the same id, so tile results
    agree without a merge step.
    """
    n = int(markers.max())
    if n == 0:
        return markers.astype(np.int64)
    grids = np.indices(markers.shape)
    flat = np.ravel_multi_index(tuple(g + o for g, o in zip(grids, offset, strict=True)), shape)
    first = ndi.minimum(flat, markers, index=np.arange(1, n + 1))
    lut = np.concatenate([[0], np.asarray(first, dtype=np.int64) + 1])
    return lut[markers]


def watershed(
    image: Image,
    *,
    band: str | int = 1,
    markers: str = "distance",
    threshold: float | None = None,
    low: float | None = None,
    high: float | None = None,
    footprint: int = 3,
    halo: int = 32,
    connectivity: int = 1,
) -> Image:
    """Return watershed object labels (uint64 ids, 0 = background) on the input grid.

    Two marker strategies, as in scikit-image's gallery:

    * ``markers="distance"`` ("Separating touching objects"): foreground = band > ``threshold``
      (scene-wide Otsu when ``None``); markers = local maxima (``footprint`` square) of the
      Euclidean distance transform; flooding of ``-distance`` inside the foreground.
      Object ids are ``1 + flat scene index`` of the marker's first pixel (not consecutive;
      use :func:`geomed_seg.instances.components.relabel_sequential` if needed).
    * ``markers="thresholds"`` ("Comparing edge-based and region-based segmentation"):
      markers 1 where band < ``low``, 2 where band > ``high``; flooding of the Sobel
      elevation map; returns the two-class map ``{1, 2}``.

    Exact equality with the whole-image run needs ``halo`` larger than the largest object
    (distance transform, peaks and basins are then seen entirely); basins larger than the
    halo may be split differently at chunk borders. Threshold markers are less local still:
    a pixel is flooded from the marker its basin reaches first, which can be far away when
    markers are sparse. On ``skimage.data.coins()`` 128 px chunks with ``halo >= 48``
    reproduce the whole-image result exactly, 64 px chunks with halo 64 do not.
    """
    b = band_index(image, band)
    shape = image.spatial_shape
    chunks = image.darray.chunks[1:]
    fp = np.ones((footprint,) * image.grid.ndim, dtype=bool)
    if markers == "distance":
        t = otsu_threshold(_band_image(image, b)) if threshold is None else float(threshold)

        def _ws(block: np.ndarray, block_info=None) -> np.ndarray:
            fg = block[b] > t
            dist = ndi.distance_transform_edt(fg)
            coords = peak_local_max(dist, footprint=fp, labels=fg.astype(np.int32))
            peaks = np.zeros(fg.shape, dtype=bool)
            peaks[tuple(coords.T)] = True
            mk, _ = ndi.label(peaks, structure=ndi.generate_binary_structure(fg.ndim, fg.ndim))
            offset = tuple(int(r[0]) for r in block_info[0]["array-location"][1:])
            mk = _global_marker_ids(mk, offset, shape)
            return sk_watershed(-dist, mk, mask=fg, connectivity=connectivity)

        out = _overlap_with_location(image, _ws, halo, np.uint64)
        return label_image(image, out.rechunk(chunks), nodata=None, attrs={"threshold": t})
    if markers == "thresholds":
        if low is None or high is None:
            raise InvalidInputError("markers='thresholds' needs both low and high values")

        def _ws2(block: np.ndarray) -> np.ndarray:
            img = block[b].astype(np.float64)
            mk = np.zeros(img.shape, dtype=np.uint8)
            mk[img < low] = 1
            mk[img > high] = 2
            return sk_watershed(sobel(img), mk, connectivity=connectivity)

        out = map_spatial(image, _ws2, halo=halo, dtype=np.uint8)
        return label_image(image, out, nodata=None)
    raise InvalidInputError(f"unknown markers {markers!r}; choose 'distance' or 'thresholds'")


def _band_image(image: Image, b: int) -> Image:
    return Image.from_array(
        image.darray[b][None], image.grid, nodata=image.nodata, attrs=dict(image.attrs)
    )


def _overlap_with_location(image: Image, func, halo: int, dtype) -> da.Array:
    """Like :func:`map_spatial`, passing each extended block's scene offset to ``func``."""
    arr = image.darray.rechunk({0: image.n_channels})
    nsp = arr.ndim - 1
    arr = arr.rechunk((arr.shape[0], *min_chunks(arr.chunks[1:], [halo] * nsp)))

    depth = {0: 0, **{ax + 1: halo for ax in range(nsp)}}
    ext = da.overlap.overlap(arr, depth=depth, boundary="none")
    # scene offset of every extended block: chunk start minus the halo actually added
    starts = [np.concatenate([[0], np.cumsum(c)[:-1]]) for c in arr.chunks[1:]]

    def _block(block: np.ndarray, block_info=None) -> np.ndarray:
        loc = block_info[0]["chunk-location"][1:]
        offs = [int(max(s[i] - halo, 0)) for s, i in zip(starts, loc, strict=True)]
        info = {0: {"array-location": [(0, 0), *((o, o) for o in offs)]}}
        return np.asarray(func(block, block_info=info), dtype=dtype)[None]

    out = ext.map_blocks(_block, dtype=dtype, chunks=((1,), *ext.chunks[1:]))
    return da.overlap.trim_internal(out, depth, boundary="none")[0]
