"""Scene-wide thresholds from a streamed histogram (Otsu), so tiles never disagree.

scikit-image's ``threshold_otsu`` accepts a histogram; we only build that histogram chunk by
chunk with dask (the part scikit-image cannot do out of core).
"""

from __future__ import annotations

from collections.abc import Sequence

import dask.array as da
import numpy as np
from skimage.filters import threshold_multiotsu, threshold_otsu

from geomed_seg.core.image import Image
from geomed_seg.errors import InvalidInputError


def streamed_histogram(
    image: Image, bins: int = 1024, value_range: tuple[float, float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(counts, bin_centers)`` of band 1's finite, valid samples.

    Without ``value_range`` one extra streamed pass finds the min and max. Invalid samples are
    moved below the range so ``da.histogram`` drops them.
    """
    arr = image.darray[0].astype(np.float64)
    valid = image.valid_mask() & da.isfinite(arr)
    values = da.where(valid, arr, np.nan)
    if value_range is None:
        lo, hi = da.compute(da.nanmin(values), da.nanmax(values))
        value_range = (float(lo), float(hi))
    if not np.all(np.isfinite(value_range)):
        raise InvalidInputError(
            f"{image.attrs.get('source', 'image')}: no valid samples to threshold"
        )
    lo, hi = value_range
    if hi <= lo:
        hi = lo + 1e-6
    counts, edges = da.histogram(da.where(valid, arr, lo - 1.0), bins=bins, range=(lo, hi))
    counts = counts.compute()
    return counts, (edges[:-1] + edges[1:]) / 2


def otsu_threshold(image: Image, bins: int = 1024) -> float:
    """Return Otsu's threshold of band 1 over the whole scene (streamed histogram)."""
    counts, centers = streamed_histogram(image, bins=bins)
    if counts.sum() == 0:
        raise InvalidInputError(
            f"{image.attrs.get('source', 'image')}: no valid samples to threshold"
        )
    return float(threshold_otsu(hist=(counts, centers)))


def multiotsu_thresholds(image: Image, classes: int = 3, bins: int = 1024) -> list[float]:
    """Return the ``classes - 1`` multi-Otsu thresholds of band 1 over the whole scene.

    The histogram is streamed (:func:`streamed_histogram`) and handed to
    ``skimage.filters.threshold_multiotsu(hist=...)``, so tiles never disagree.
    """
    counts, centers = streamed_histogram(image, bins=bins)
    if counts.sum() == 0:
        raise InvalidInputError(
            f"{image.attrs.get('source', 'image')}: no valid samples to threshold"
        )
    return [float(t) for t in threshold_multiotsu(hist=(counts, centers), classes=classes)]


def apply_thresholds(
    image: Image, thresholds: Sequence[float], *, below_is_one: bool = False
) -> Image:
    """Return uint8 class labels of band 1: ``k`` where ``t[k-1] < value <= t[k]``; 255 = nodata.

    With one threshold the result is binary ``value > t`` (``below_is_one`` flips it to
    ``value < t``, e.g. SAR water = low backscatter).
    """
    arr = image.darray[0]
    ts = np.sort(np.asarray(thresholds, dtype=np.float64))
    if below_is_one and len(ts) != 1:
        raise InvalidInputError("below_is_one needs exactly one threshold")
    if below_is_one:
        lab = (arr < ts[0]).astype(np.uint8)
    else:
        lab = da.map_blocks(
            lambda b: np.digitize(b, ts, right=True).astype(np.uint8), arr, dtype=np.uint8
        )
    valid = image.valid_mask() & da.isfinite(arr.astype(np.float64))
    lab = da.where(valid, lab, np.uint8(255)).astype(np.uint8)
    return Image.from_array(
        lab[None], image.grid, nodata=255, attrs={"source": image.attrs.get("source")}
    )


def otsu_labels(image: Image, *, classes: int = 2, bins: int = 1024) -> tuple[Image, list[float]]:
    """Return ``(labels uint8, thresholds)`` of scene-wide (multi-)Otsu on band 1."""
    ts = (
        [otsu_threshold(image, bins)]
        if classes == 2
        else multiotsu_thresholds(image, classes, bins)
    )
    return apply_thresholds(image, ts), ts


def to_db(image: Image, band: int = 0, floor: float = 1e-10) -> Image:
    """Return ``10 log10(max(sigma0, floor))`` of linear backscatter band ``band`` (float32, dB).

    Non-positive or invalid samples become NaN (nodata).
    """
    arr = image.darray[band].astype(np.float32)
    valid = image.valid_mask() & (arr > 0) & da.isfinite(arr)
    db = da.where(valid, 10.0 * da.log10(da.maximum(arr, floor)), np.nan).astype(np.float32)
    return Image.from_array(
        db[None], image.grid, nodata=float("nan"), attrs={"source": image.attrs.get("source")}
    )


def sar_water(
    image: Image,
    *,
    threshold_db: float | None = None,
    band: int = 0,
    linear: bool = True,
    bins: int = 1024,
) -> tuple[Image, float]:
    """Return ``(water labels uint8 {0, 1, 255 nodata}, threshold in dB)`` from SAR backscatter.

    Open water is a specular reflector, so it is the *low* backscatter class: water where
    ``dB < threshold``. ``threshold_db=None`` uses the scene-wide Otsu threshold of the dB
    image (bimodal land/water histogram); a fixed value (e.g. -18 dB for Sentinel-1 VV) is
    the common alternative. ``linear=False`` means the band already holds dB.
    """
    if linear:
        db = to_db(image, band)
    else:
        db = Image.from_array(
            image.darray[band][None].astype(np.float32),
            image.grid,
            nodata=image.nodata,
            attrs=dict(image.attrs),
        )
    t = otsu_threshold(db, bins) if threshold_db is None else float(threshold_db)
    return apply_thresholds(db, [t], below_is_one=True), t
