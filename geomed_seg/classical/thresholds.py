"""Scene-wide thresholds from a streamed histogram (Otsu), so tiles never disagree.

scikit-image's ``threshold_otsu`` accepts a histogram; we only build that histogram chunk by
chunk with dask (the part scikit-image cannot do out of core).
"""

from __future__ import annotations

import dask.array as da
import numpy as np
from skimage.filters import threshold_otsu

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
