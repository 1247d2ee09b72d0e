"""nnU-Net v2's per-channel intensity normalisation: pass-1 statistics and the window transform.

nnU-Net's preprocessor (``DefaultPreprocessor.run_case_npy``) crops a case to the bounding
box of its *non-zero mask* (any channel non-zero, 3D holes filled with
``scipy.ndimage.binary_fill_holes``), then normalises each channel by its plans' scheme:

* ``ZScoreNormalization`` with ``use_mask_for_norm``: mean/std over the mask, applied only
  inside it (outside, all channels are 0 and stay 0);
* ``ZScoreNormalization`` without it: mean/std over the whole cropped box;
* ``CTNormalization``: clip to the fingerprint's percentiles, then its foreground mean/std.

Written out here (not imported from nnunetv2) because the engine streams windows and never
imports nnU-Net to predict. Pass 1 (:func:`nnunet_statistics`) reduces per-channel sums over
the mask and the box with dask; the filled mask itself is held in memory as one bool per
voxel (``binary_fill_holes`` needs the whole volume). Pass 2 (:func:`normalise_nnunet`)
sees one window at a time, where "inside the mask" is "any channel non-zero": a voxel in an
enclosed all-zero hole is normalised by nnU-Net but left 0 here, so pass 1 counts such
voxels and logs a warning naming the input when there are any.

No torch here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import dask
import dask.array as da
import numpy as np

log = logging.getLogger(__name__)

#: nnU-Net's floor for the standard deviation (float32 data).
EPS = 1e-8


@dataclass(frozen=True)
class NnUNetStatistics:
    """Per-channel z-score statistics of one case as nnU-Net computes them (sample units).

    ``mean``/``std`` are NaN for channels whose scheme is not ``zscore``. ``bbox`` is the
    non-zero bounding box (slices in array order) nnU-Net crops to; ``holes`` the number of
    voxels inside the filled mask that no channel marks non-zero.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    count: tuple[int, ...]
    bbox: tuple[slice, ...]
    holes: int


def nonzero_bbox(nonzero: da.Array | np.ndarray) -> tuple[slice, ...]:
    """Return the bounding box (slices, array order) of ``nonzero``; the whole array if empty."""
    out = []
    for axis in range(nonzero.ndim):
        others = tuple(a for a in range(nonzero.ndim) if a != axis)
        line = np.asarray(nonzero.any(axis=others))
        hit = np.flatnonzero(line)
        out.append(slice(int(hit[0]), int(hit[-1]) + 1) if hit.size else slice(0, line.size))
    return tuple(out)


def nnunet_statistics(image: Any, norm: Any) -> NnUNetStatistics:
    """Return nnU-Net's z-score statistics of ``image`` for the schemes of ``norm``.

    Parameters
    ----------
    image : Image
        ``(channel, z, y, x)`` (or ``(band, y, x)``), channels in the model's order.
    norm : NnUNetNormalisation
        The card's per-channel schemes.
    """
    from scipy.ndimage import binary_fill_holes

    x = image.darray.astype(np.float64)
    nonzero = (x != 0).any(axis=0)
    union = np.asarray(nonzero.compute())
    bbox = nonzero_bbox(union)
    needs_mask = any(c.scheme == "zscore" and c.use_mask for c in norm.channels)
    holes = 0
    if needs_mask:
        filled = binary_fill_holes(union)
        holes = int(filled.sum() - union.sum())
        if holes:
            log.warning(
                "%s: %d voxels lie in enclosed holes of the non-zero mask where every channel "
                "is 0; nnU-Net normalises them as inside its mask, geomed-seg leaves them 0 "
                "(predictions there may differ from nnU-Net's)",
                image.attrs.get("source") or "input", holes,
            )  # fmt: skip
        n_mask = int(filled.sum())
    box = x[(slice(None), *bbox)]
    axes = tuple(range(1, x.ndim))
    sums = dask.compute(box.sum(axis=axes), (box * box).sum(axis=axes))
    n_box = int(np.prod([s.stop - s.start for s in bbox]))
    mean, std, count = [], [], []
    for c, chan in enumerate(norm.channels):
        if chan.scheme != "zscore":
            mean.append(float("nan")), std.append(float("nan")), count.append(0)
            continue
        # outside the filled mask every channel is 0: sums over the box equal sums over the mask
        n = n_mask if chan.use_mask else n_box
        m = float(sums[0][c]) / max(n, 1)
        var = max(float(sums[1][c]) / max(n, 1) - m * m, 0.0)
        mean.append(m), std.append(float(np.sqrt(var))), count.append(n)
    return NnUNetStatistics(tuple(mean), tuple(std), tuple(count), bbox, holes)


def normalise_nnunet(x: np.ndarray, norm: Any, stats: Any) -> np.ndarray:
    """Return windows ``x`` ``(N, C, *spatial)`` normalised per channel as nnU-Net does (float32).

    ``stats`` (:class:`NnUNetStatistics`) gives the z-score channels' mean/std; "inside the
    mask" is "any channel non-zero" within the window (module docstring).
    """
    x = np.asarray(x, dtype=np.float32)
    out = np.empty_like(x)
    inside = (x != 0).any(axis=1)
    for c, chan in enumerate(norm.channels):
        xc = x[:, c]
        if chan.scheme == "zscore":
            z = (xc - np.float32(stats.mean[c])) / np.float32(max(stats.std[c], EPS))
            out[:, c] = np.where(inside, z, xc) if chan.use_mask else z
        elif chan.scheme == "ct":
            clipped = np.clip(xc, np.float32(chan.lower), np.float32(chan.upper))
            out[:, c] = (clipped - np.float32(chan.mean)) / np.float32(max(chan.std, EPS))
        else:
            out[:, c] = xc
    return out


__all__ = ["NnUNetStatistics", "nnunet_statistics", "nonzero_bbox", "normalise_nnunet"]
