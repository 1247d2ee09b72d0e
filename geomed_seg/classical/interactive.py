"""Seeded methods on a window of a large scene: region growing, GrabCut, active contours.

Each takes a seed point or box in WORLD coordinates (CRS ``x, y`` for rasters, RAS mm for
volumes), converts it to pixels through the grid, reads only a window around it
(:meth:`Image.sel_window`), runs the field's implementation on that window
(``skimage.segmentation.flood``, OpenCV ``grabCut``, ``morphological_chan_vese`` /
``morphological_geodesic_active_contour``) and places the mask back on the scene grid
(uint8 ``{0, 1}``, lazy outside the window). A region reaching the window edge is cut
there; a warning is logged so the caller can enlarge ``radius``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from geomed_seg.classical.indices import band_index
from geomed_seg.classical.tiling import place_window, window_around, world_to_index
from geomed_seg.core.image import Image
from geomed_seg.errors import InvalidInputError

logger = logging.getLogger(__name__)


def _touches_edge(mask: np.ndarray) -> bool:
    return any(mask.take(0, axis=a).any() or mask.take(-1, axis=a).any() for a in range(mask.ndim))


def _box_slices(
    image: Image, box: Sequence[float], margin: int
) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Return (window slices, box slices inside the window) of a world box ``(x0, y0, x1, y1)``."""
    if image.grid.ndim != 2:
        raise InvalidInputError("box prompts are 2D (x0, y0, x1, y1); use a raster or a slice")
    a = world_to_index(image.grid, box[:2])
    b = world_to_index(image.grid, box[2:4])
    lo = [min(p, q) for p, q in zip(a, b, strict=True)]
    hi = [max(p, q) for p, q in zip(a, b, strict=True)]
    win = tuple(
        slice(max(lo_ - margin, 0), min(hi_ + margin + 1, n))
        for lo_, hi_, n in zip(lo, hi, image.spatial_shape, strict=True)
    )
    inner = tuple(
        slice(lo_ - w.start, hi_ - w.start + 1) for lo_, hi_, w in zip(lo, hi, win, strict=True)
    )
    return win, inner


def region_grow(
    image: Image,
    seed: Sequence[float],
    *,
    tolerance: float,
    band: str | int = 1,
    radius: int = 256,
    connectivity: int = 1,
) -> Image:
    """Return the region connected to ``seed`` whose values lie within ``tolerance`` of it.

    Parameters
    ----------
    seed : sequence of float
        World point: ``(x, y)`` CRS units (raster) or ``(R, A, S)`` mm (volume).
    tolerance : float
        Maximum absolute difference to the seed value, in the band's units.
    radius : int
        Half-size in pixels of the window read around the seed.
    """
    centre = world_to_index(image.grid, seed)
    win = window_around(image.spatial_shape, centre, radius)
    values = image.sel_window(win).compute()[band_index(image, band)].astype(np.float64)
    from skimage.segmentation import flood

    local = tuple(c - w.start for c, w in zip(centre, win, strict=True))
    mask = flood(values, local, tolerance=tolerance, connectivity=connectivity)
    if _touches_edge(mask):
        logger.warning("region grown from %s reaches the %d px window edge", seed, radius)
    return place_window(image, win, mask.astype(np.uint8), attrs={"method": "region_grow"})


def _to_bgr8(window: np.ndarray, rgb: Sequence[int]) -> np.ndarray:
    x = np.moveaxis(window[list(rgb)].astype(np.float64), 0, -1)
    lo, hi = np.nanpercentile(x, 1), np.nanpercentile(x, 99)
    x = np.clip((x - lo) / max(hi - lo, 1e-12), 0, 1)
    return np.ascontiguousarray((np.nan_to_num(x) * 255).astype(np.uint8)[..., ::-1])


def grabcut(
    image: Image,
    box: Sequence[float],
    *,
    rgb: Sequence[str | int] = (3, 2, 1),
    margin: int = 32,
    iterations: int = 5,
    mask: np.ndarray | None = None,
) -> Image:
    """Return OpenCV GrabCut foreground (uint8 ``{0, 1}``) for a world box ``(x0, y0, x1, y1)``.

    The window is the box plus ``margin`` pixels; three bands (1-based or names, default
    3,2,1 = red, green, blue on Landsat) are stretched to 8 bit (1st-99th percentile of the
    window) because ``cv2.grabCut`` takes an 8-bit colour image. An optional ``mask``
    (window-sized, OpenCV codes 0 bg, 1 fg, 2 probable bg, 3 probable fg) refines the box.
    """
    import cv2

    win, inner = _box_slices(image, box, margin)
    data = image.sel_window(win).compute()
    img8 = _to_bgr8(data, [band_index(image, b) for b in rgb])
    gc_mask = np.zeros(img8.shape[:2], np.uint8) if mask is None else np.asarray(mask, np.uint8)
    rect = (
        inner[1].start,
        inner[0].start,
        inner[1].stop - inner[1].start,
        inner[0].stop - inner[0].start,
    )
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    mode = cv2.GC_INIT_WITH_RECT if mask is None else cv2.GC_INIT_WITH_MASK
    cv2.setRNGSeed(0)
    cv2.grabCut(img8, gc_mask, rect, bgd, fgd, iterations, mode)
    fg = ((gc_mask == cv2.GC_FGD) | (gc_mask == cv2.GC_PR_FGD)).astype(np.uint8)
    return place_window(image, win, fg, attrs={"method": "grabcut"})


def active_contour(
    image: Image,
    seed: Sequence[float],
    *,
    radius: int = 64,
    init_radius: int = 5,
    band: str | int = 1,
    method: str = "chan-vese",
    iterations: int = 100,
    smoothing: int = 1,
    balloon: float = 1.0,
) -> Image:
    """Return a morphological active-contour region (uint8 ``{0, 1}``) grown from ``seed``.

    ``method="chan-vese"`` (region-based, ``morphological_chan_vese``) or ``"geodesic"``
    (edge-based, ``morphological_geodesic_active_contour`` on the inverse Gaussian gradient,
    inflating with ``balloon``). The initial level set is a disk/ball of ``init_radius``
    pixels at the seed; the window is ``radius`` pixels around it.
    """
    from skimage.segmentation import (
        inverse_gaussian_gradient,
        morphological_chan_vese,
        morphological_geodesic_active_contour,
    )

    centre = world_to_index(image.grid, seed)
    win = window_around(image.spatial_shape, centre, radius)
    values = image.sel_window(win).compute()[band_index(image, band)].astype(np.float64)
    local = np.array([c - w.start for c, w in zip(centre, win, strict=True)])
    grid = np.indices(values.shape)
    init = (
        ((grid - local.reshape((-1,) + (1,) * values.ndim)) ** 2).sum(0) <= init_radius**2
    ).astype(np.int8)
    if method == "chan-vese":
        out = morphological_chan_vese(values, iterations, init_level_set=init, smoothing=smoothing)
    elif method == "geodesic":
        gimg = inverse_gaussian_gradient(values)
        out = morphological_geodesic_active_contour(
            gimg, iterations, init_level_set=init, smoothing=smoothing, balloon=balloon
        )
    else:
        raise InvalidInputError(
            f"unknown active contour {method!r}; choose 'chan-vese' or 'geodesic'"
        )
    out = np.asarray(out, dtype=np.uint8)
    if method == "chan-vese" and not out[tuple(local)]:
        out = 1 - out  # Chan-Vese labels phases arbitrarily; keep the seed's phase as 1
    return place_window(image, win, out, attrs={"method": f"active_contour:{method}"})
