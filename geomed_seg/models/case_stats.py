"""Pass 1 of per-case normalisation: statistics of a whole case, streamed over its chunks.

A per-case normalisation (``nonzero_zscore`` of :mod:`geomed_seg.models.card`) depends on
the whole input, so it is computed in a pass of its own before any window runs (see
"Scene-wide decisions" in DESIGN.md): per channel, the count, sum and sum of squares of the
non-zero valid samples are reduced chunk by chunk (dask merges the partial sums), then the
windows are normalised with them in pass 2. Tiling or chunking never changes the answer.

No torch here: the engine, validation and training all use it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dask
import dask.array as da
import numpy as np

from geomed_seg.core.image import Image


@dataclass(frozen=True)
class CaseStatistics:
    """Per-channel statistics of the non-zero valid samples of one case (sample units).

    ``std`` is the population standard deviation, replaced by 1 where it is 0 or where a
    channel has no non-zero sample (as MONAI ``NormalizeIntensity`` does).
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    count: tuple[int, ...]


def nonzero_statistics(image: Image) -> CaseStatistics:
    """Return the mean/std per channel over the samples that are non-zero, finite and valid.

    Parameters
    ----------
    image : Image
        ``(channel, z, y, x)`` or ``(band, y, x)``, lazy or in memory; channels in the
        order the model reads them.
    """
    x = image.darray.astype(np.float64)
    keep = (x != 0) & da.isfinite(x)
    if image.mask is not None:
        keep = keep & image.valid_mask()[None]
    xs = da.where(keep, x, 0.0)
    axes = tuple(range(1, x.ndim))
    n, s, q = dask.compute(keep.sum(axis=axes), xs.sum(axis=axes), (xs * xs).sum(axis=axes))
    n = np.asarray(n, np.int64)
    mean = np.where(n > 0, np.asarray(s) / np.maximum(n, 1), 0.0)
    var = np.where(n > 0, np.asarray(q) / np.maximum(n, 1) - mean**2, 0.0)
    std = np.sqrt(np.maximum(var, 0.0))
    # float64 sums of squares lose digits when std << mean: clamp tiny variances to "constant"
    std = np.where(std > 1e-7 * np.maximum(np.abs(mean), 1.0), std, 1.0)
    return CaseStatistics(tuple(map(float, mean)), tuple(map(float, std)), tuple(map(int, n)))


def case_normaliser(card: Any, image: Image) -> Callable[[np.ndarray], np.ndarray]:
    """Return ``normalise(batch (N, C, *spatial)) -> float32`` for windows of ``image``.

    Per-case normalisations get the statistics of ``image`` (computed here, one streamed
    pass); the others are the card's own :meth:`~geomed_seg.models.card.ModelCard.normalise`.
    ``image`` must hold the card's channels in the card's order.
    """
    if not getattr(card, "needs_case_statistics", False):
        return card.normalise
    if getattr(card.normalisation, "type", None) == "nnunet":
        from geomed_seg.models.nnunet_norm import nnunet_statistics

        stats: Any = nnunet_statistics(image, card.normalisation)
    else:
        stats = nonzero_statistics(image)

    def normalise(batch: np.ndarray) -> np.ndarray:
        return card.normalise(batch, stats=stats)

    normalise.stats = stats  # type: ignore[attr-defined]  # for logs and tests
    return normalise


__all__ = ["CaseStatistics", "case_normaliser", "nonzero_statistics"]
