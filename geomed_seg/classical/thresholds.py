"""Scene-wide thresholds from a streamed histogram (Otsu), so tiles never disagree.

scikit-image's ``threshold_otsu`` accepts a histogram; we only build that histogram chunk by
chunk with dask (the part scikit-image cannot do out of core), as a mergeable
:class:`~geomed_seg.classical.histogram.Histogram`: a batch computes the same histogram per
tile or block with the same functions (:func:`value_range_of`, :func:`image_histogram`) and
merges them, so a scene and its tiles get the same threshold. A histogram that is not
bimodal is logged as a warning naming the image (:func:`warn_separability`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import dask
import dask.array as da
import numpy as np

from geomed_seg.classical.histogram import (
    ETA_MIN,
    VALLEY_MAX,
    Histogram,
    ThresholdDecision,
    ValueRange,
    decide,
    histogram_of,
    merge_all,
)
from geomed_seg.core.image import Image
from geomed_seg.errors import InvalidInputError

log = logging.getLogger(__name__)


def _block_range(block: np.ndarray) -> ValueRange:
    v = np.asarray(block, dtype=np.float64)
    v = v[np.isfinite(v)]
    return ValueRange(float(v.min()), float(v.max())) if v.size else ValueRange()


def _valid_values(image: Image) -> da.Array:
    """Band 1 as float64 with NaN wherever a sample is nodata, masked or not finite."""
    arr = image.darray[0].astype(np.float64)
    return da.where(image.valid_mask(), arr, np.nan)


def value_range_of(image: Image) -> ValueRange:
    """Return the min/max of band 1's finite, valid samples: one streamed pass, per chunk."""
    parts = [dask.delayed(_block_range)(b) for b in _valid_values(image).to_delayed().ravel()]
    out = ValueRange()
    for r in dask.compute(*parts):
        out = out.merge(r)
    return out


def image_histogram(
    image: Image, bins: int = 1024, value_range: tuple[float, float] | None = None
) -> Histogram:
    """Return the :class:`~geomed_seg.classical.histogram.Histogram` of band 1's valid samples.

    Streamed chunk by chunk and merged. ``value_range`` fixes the bins (values outside it
    are clipped into the end bins and counted, see ``Histogram.clipped``); without it a
    first pass finds the min and max (:func:`value_range_of`). A batch calls the same two
    functions per tile or block and merges the results, so a scene and its tiles give the
    same histogram.
    """
    if value_range is None:
        value_range = value_range_of(image).bounds()
        if value_range is None:
            raise InvalidInputError(f"{_name(image)}: no valid samples to threshold")
    lo, hi = value_range
    parts = [
        dask.delayed(histogram_of)(b, lo, hi, bins)
        for b in _valid_values(image).to_delayed().ravel()
    ]
    return merge_all(list(dask.compute(*parts)))


def _name(image: Image) -> str:
    return str(image.attrs.get("source") or "image")


def streamed_histogram(
    image: Image, bins: int = 1024, value_range: tuple[float, float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(counts, bin_centers)`` of band 1's finite, valid samples (see
    :func:`image_histogram`)."""
    h = image_histogram(image, bins, value_range)
    return h.counts, h.centers


def _check_spread(counts: np.ndarray, centers: np.ndarray, image: Image, classes: int) -> None:
    """Raise when the valid samples fall in fewer bins than ``classes`` (nothing to split).

    A 1x1 or constant image has one value: any threshold would be invented.
    """
    distinct = int(np.count_nonzero(counts))
    if distinct >= classes:
        return
    if distinct == 1:
        k = int(np.argmax(counts))
        raise InvalidInputError(
            f"{_name(image)}: nothing to threshold: all {int(counts.sum())} valid samples of "
            f"the thresholded band are equal (about {float(centers[k]):.4g}); a 1x1 or "
            "constant image has no scene-wide threshold"
        )
    raise InvalidInputError(
        f"{_name(image)}: nothing to threshold into {classes} classes: the valid samples "
        f"fall in only {distinct} histogram bins"
    )


def otsu_decision(
    image: Image,
    bins: int = 1024,
    value_range: tuple[float, float] | None = None,
    classes: int = 2,
) -> ThresholdDecision:
    """Return the scene-wide (multi-)Otsu decision of band 1: thresholds and separability.

    Logs a warning naming the image when the histogram is not bimodal
    (:attr:`ThresholdDecision.bimodal`).
    """
    h = image_histogram(image, bins, value_range)
    if h.n == 0:
        raise InvalidInputError(f"{_name(image)}: no valid samples to threshold")
    _check_spread(h.counts, h.centers, image, classes)
    decision = decide(h, classes)
    warn_separability(decision, _name(image))
    return decision


#: Share of values outside a fixed histogram range above which a warning is logged.
CLIPPED_WARN = 0.01


def warn_separability(decision: ThresholdDecision, name: str) -> str | None:
    """Log a warning and return it when ``decision`` is not bimodal (else ``None``).

    Also warns (logged only) when more than :data:`CLIPPED_WARN` of the values lay outside
    a fixed histogram range (e.g. an index from negative reflectances).
    """
    if decision.clipped > CLIPPED_WARN * max(decision.n, 1):
        lo, hi = decision.value_range
        log.warning(
            "%s: %d of %d values lie outside [%g, %g] and were counted in the end bins",
            name, decision.clipped, decision.n, lo, hi,
        )  # fmt: skip
    if decision.bimodal:
        return None
    msg = (
        f"{name}: the histogram is not bimodal ({decision.describe()}; needs eta >= "
        f"{ETA_MIN:.2f} and valley <= {VALLEY_MAX:.2f}): the Otsu threshold may not separate "
        "two classes; check the result or give a fixed threshold"
    )
    log.warning("%s", msg)
    return msg


def otsu_threshold(
    image: Image, bins: int = 1024, value_range: tuple[float, float] | None = None
) -> float:
    """Return Otsu's threshold of band 1 over the whole scene (streamed histogram)."""
    return otsu_decision(image, bins, value_range).thresholds[0]


def multiotsu_thresholds(
    image: Image,
    classes: int = 3,
    bins: int = 1024,
    value_range: tuple[float, float] | None = None,
) -> list[float]:
    """Return the ``classes - 1`` multi-Otsu thresholds of band 1 over the whole scene.

    The histogram is streamed (:func:`image_histogram`) and handed to
    ``skimage.filters.threshold_multiotsu(hist=...)``, so tiles never disagree.
    """
    return list(otsu_decision(image, bins, value_range, classes).thresholds)


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
    db = sar_db(image, band, linear)
    t = otsu_threshold(db, bins) if threshold_db is None else float(threshold_db)
    return apply_thresholds(db, [t], below_is_one=True), t


def sar_db(image: Image, band: int = 0, linear: bool = True) -> Image:
    """Return band ``band`` in dB as a 1-band float32 image: :func:`to_db` of linear
    backscatter, or the band itself when it already holds dB (``linear=False``)."""
    if linear:
        return to_db(image, band)
    return Image.from_array(
        image.darray[band][None].astype(np.float32),
        image.grid,
        nodata=image.nodata,
        attrs=dict(image.attrs),
    )
