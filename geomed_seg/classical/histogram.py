"""Mergeable fixed-range histograms and the thresholds decided from them (pure numpy).

A scene-wide threshold (Otsu, multi-Otsu) depends on every pixel of the scene, so it must
not be computed per tile or per block. A :class:`Histogram` has fixed bin edges (a value
range and a number of bins), so the histograms of any partition of the pixels (chunks,
blocks, tiles of a batch) add up to the histogram of all of them, bin for bin; the
threshold decided from the sum (:func:`decide`) is then independent of the tiling. The
range is either fixed by the quantity (a normalised-difference index lies in [-1, 1]) or
the merged min/max of a first streamed pass (:class:`ValueRange`, SAR dB and other
unbounded values).

scikit-image's ``threshold_otsu``/``threshold_multiotsu`` compute the thresholds
(``hist=``); written here is only what they lack: merging, a compact serialisation for the
batch journal, and a separability measure (:func:`separability`, :func:`valley_ratio`)
that says when a histogram has no two classes to separate.
"""

from __future__ import annotations

import base64
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Otsu's separability ``eta = between-class / total variance`` below which a histogram is
#: not called bimodal. A single normal distribution gives ``2/pi ~ 0.64`` at its Otsu split,
#: two equal normal modes 3 sigma apart ~0.75, the bundled Landsat NDWI 0.78.
ETA_MIN = 2 / np.pi
#: Smoothed-histogram density at its lowest point between the two class modes, relative to
#: the lower mode, above which there is no valley at the threshold (a flat or single-peaked
#: histogram: uniform noise gives ~0.8, a normal distribution 1.0; the Landsat NDWI 0.02).
VALLEY_MAX = 0.75


@dataclass(frozen=True)
class ValueRange:
    """Min and max of the finite, valid values seen (``None`` before any); mergeable."""

    lo: float | None = None
    hi: float | None = None

    def merge(self, other: ValueRange) -> ValueRange:
        """Return the range covering both."""
        los = [v for v in (self.lo, other.lo) if v is not None]
        his = [v for v in (self.hi, other.hi) if v is not None]
        return ValueRange(min(los) if los else None, max(his) if his else None)

    def bounds(self) -> tuple[float, float] | None:
        """Return ``(lo, hi)`` with ``hi > lo`` (a constant range is widened), or ``None``."""
        if self.lo is None or self.hi is None:
            return None
        lo, hi = float(self.lo), float(self.hi)
        return (lo, hi) if hi > lo else (lo, lo + max(abs(lo) * 1e-6, 1e-6))


@dataclass(frozen=True)
class Histogram:
    """Counts of values in ``bins`` equal bins over ``[lo, hi]`` (the last bin closed).

    ``clipped`` counts values that lay outside the range and were counted in the end bin on
    their side (only a fixed range can clip; a range from :class:`ValueRange` cannot).
    """

    lo: float
    hi: float
    counts: np.ndarray = field(repr=False)
    clipped: int = 0

    @classmethod
    def empty(cls, lo: float, hi: float, bins: int) -> Histogram:
        """Return a histogram with no counts."""
        if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo) or bins < 2:
            raise ValueError(
                f"histogram needs finite lo < hi and >= 2 bins, got {lo}, {hi}, {bins}"
            )
        return cls(float(lo), float(hi), np.zeros(int(bins), np.int64))

    @property
    def bins(self) -> int:
        """Number of bins."""
        return int(self.counts.size)

    @property
    def edges(self) -> np.ndarray:
        """Bin edges, ``bins + 1`` values (as ``np.histogram`` makes them)."""
        return np.linspace(self.lo, self.hi, self.bins + 1)

    @property
    def centers(self) -> np.ndarray:
        """Bin centres."""
        e = self.edges
        return (e[:-1] + e[1:]) / 2

    @property
    def bin_width(self) -> float:
        """Width of one bin, in the values' unit."""
        return (self.hi - self.lo) / self.bins

    @property
    def n(self) -> int:
        """Number of values counted."""
        return int(self.counts.sum())

    def merge(self, other: Histogram) -> Histogram:
        """Return the sum of two histograms with the same bins."""
        if (self.lo, self.hi, self.bins) != (other.lo, other.hi, other.bins):
            raise ValueError(
                f"cannot merge histograms with different bins: [{self.lo}, {self.hi}] x "
                f"{self.bins} and [{other.lo}, {other.hi}] x {other.bins}"
            )
        return Histogram(self.lo, self.hi, self.counts + other.counts, self.clipped + other.clipped)

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-able form (counts as base64 of zlib-compressed little-endian int64)."""
        raw = zlib.compress(self.counts.astype("<i8").tobytes(), 6)
        return {"lo": self.lo, "hi": self.hi, "bins": self.bins, "clipped": self.clipped,
                "counts": base64.b64encode(raw).decode("ascii")}  # fmt: skip

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Histogram:
        """Inverse of :meth:`to_json`."""
        counts = np.frombuffer(zlib.decompress(base64.b64decode(data["counts"])), "<i8")
        if counts.size != int(data["bins"]):
            raise ValueError("histogram record: counts do not match bins")
        return cls(float(data["lo"]), float(data["hi"]), counts.astype(np.int64),
                   int(data.get("clipped", 0)))  # fmt: skip


def merge_all(parts: Sequence[Histogram]) -> Histogram:
    """Return the sum of ``parts`` (at least one, all with the same bins)."""
    if not parts:
        raise ValueError("no histograms to merge")
    total = parts[0]
    for h in parts[1:]:
        total = total.merge(h)
    return total


def histogram_of(values: np.ndarray, lo: float, hi: float, bins: int) -> Histogram:
    """Return the :class:`Histogram` of the finite entries of ``values`` (any shape).

    Values outside ``[lo, hi]`` are counted in the end bins and in ``clipped``.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    clipped = int(np.count_nonzero((v < lo) | (v > hi)))
    counts, _ = np.histogram(np.clip(v, lo, hi), bins=bins, range=(lo, hi))
    return Histogram(float(lo), float(hi), counts.astype(np.int64), clipped)


def _span(h: Histogram) -> tuple[np.ndarray, np.ndarray]:
    """Counts and centres from the first to the last non-empty bin (skimage's Otsu divides by
    the cumulative count, which is 0 over leading empty bins); the thresholds are unchanged."""
    nz = np.flatnonzero(h.counts)
    sl = slice(nz[0], nz[-1] + 1)
    return h.counts[sl], h.centers[sl]


def otsu(h: Histogram) -> float:
    """Return Otsu's threshold of ``h`` (a bin centre; ``value > t`` is the upper class)."""
    from skimage.filters import threshold_otsu

    if h.n == 0:
        raise ValueError("empty histogram")
    counts, centers = _span(h)
    if counts.size == 1:
        return float(centers[0])
    return float(threshold_otsu(hist=(counts, centers)))


def multiotsu(h: Histogram, classes: int = 3) -> list[float]:
    """Return the ``classes - 1`` multi-Otsu thresholds of ``h`` (bin centres, increasing)."""
    from skimage.filters import threshold_multiotsu

    if h.n == 0:
        raise ValueError("empty histogram")
    counts, centers = _span(h)
    return [float(t) for t in threshold_multiotsu(hist=(counts, centers), classes=classes)]


def separability(h: Histogram, thresholds: Sequence[float]) -> float:
    """Return Otsu's ``eta``: between-class variance / total variance, in ``[0, 1]``.

    Classes are the bins split at ``thresholds`` (``value > t`` is above); values are taken
    at their bin centres. 1 means every class is a single value; 0 a constant histogram.
    """
    p = h.counts / max(h.n, 1)
    c = h.centers
    mu = float((p * c).sum())
    total = float((p * (c - mu) ** 2).sum())
    if total <= 0:
        return 0.0
    cls = np.digitize(c, np.sort(np.asarray(thresholds, np.float64)), right=True)
    between = 0.0
    for k in np.unique(cls):
        w = float(p[cls == k].sum())
        if w > 0:
            between += w * (float((p[cls == k] * c[cls == k]).sum()) / w - mu) ** 2
    return between / total


def valley_ratio(h: Histogram, threshold: float, bins: int = 64) -> float:
    """Return the depth of the valley at ``threshold``: 0 = empty valley, 1 = none.

    The histogram is re-binned over its 0.5-99.5 % quantile span into at most ``bins``
    bins (fewer for few values, so that counting noise does not make valleys) and smoothed
    (gaussian, 1 bin); the result is the smallest smoothed count between the highest bin
    below and the highest bin above ``threshold``, divided by the lower of those two.
    """
    from scipy.ndimage import gaussian_filter1d

    if h.n == 0:
        return 1.0
    cdf = np.cumsum(h.counts) / h.n
    i0 = int(np.searchsorted(cdf, 0.005))
    i1 = int(np.searchsorted(cdf, 0.995)) + 1
    nb = int(min(bins, max(8, np.sqrt(h.n) / 2), i1 - i0))
    if nb < 3:
        return 1.0
    starts = np.linspace(i0, i1, nb + 1).astype(int)[:-1]
    coarse = np.add.reduceat(h.counts[i0:i1], starts - i0).astype(np.float64)
    centers = h.centers
    mids = np.array([centers[s:e].mean() for s, e in zip(starts, [*starts[1:], i1], strict=True)])
    smooth = gaussian_filter1d(coarse, 1.0, mode="constant")
    k = int(np.searchsorted(mids, threshold, side="right"))
    if k <= 0 or k >= nb:
        return 1.0
    a = int(np.argmax(smooth[:k]))
    b = k + int(np.argmax(smooth[k:]))
    low = min(smooth[a], smooth[b])
    return float(smooth[a : b + 1].min() / low) if low > 0 else 1.0


@dataclass(frozen=True)
class ThresholdDecision:
    """Thresholds decided from a histogram, with how well they separate it.

    ``eta`` is Otsu's separability (:func:`separability`), ``valley`` the valley depth at
    a 2-class threshold (:func:`valley_ratio`; ``None`` for more classes); ``bimodal`` is
    ``eta >= ETA_MIN`` and ``valley <= VALLEY_MAX``.
    """

    thresholds: tuple[float, ...]
    eta: float
    valley: float | None
    n: int
    bin_width: float
    value_range: tuple[float, float]
    clipped: int = 0

    @property
    def bimodal(self) -> bool:
        """True when the classes are separable by the documented cut-offs."""
        return self.eta >= ETA_MIN and (self.valley is None or self.valley <= VALLEY_MAX)

    def describe(self) -> str:
        """One line: thresholds, eta and valley."""
        ts = ", ".join(f"{t:.4g}" for t in self.thresholds)
        valley = "" if self.valley is None else f", valley {self.valley:.2f}"
        return f"threshold {ts} (separability eta {self.eta:.3f}{valley}, {self.n} px)"

    def as_dict(self) -> dict[str, Any]:
        """JSON-able facts (for reports, summaries and the journal)."""
        return {"thresholds": list(self.thresholds), "eta": self.eta, "valley": self.valley,
                "bimodal": self.bimodal, "n": self.n, "bin_width": self.bin_width,
                "value_range": list(self.value_range), "clipped": self.clipped}  # fmt: skip


def decide(h: Histogram, classes: int = 2) -> ThresholdDecision:
    """Return Otsu's (``classes == 2``) or multi-Otsu thresholds of ``h`` and their separability."""
    if h.n == 0:
        raise ValueError("empty histogram: no valid values to threshold")
    ts = [otsu(h)] if classes == 2 else multiotsu(h, classes)
    return ThresholdDecision(
        tuple(ts),
        separability(h, ts),
        valley_ratio(h, ts[0]) if classes == 2 else None,
        h.n,
        h.bin_width,
        (h.lo, h.hi),
        h.clipped,
    )
