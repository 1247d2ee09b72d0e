"""Generators of small synthetic label volumes for the metric tests and benchmarks.

``brats_case(kind)`` builds a (z, y, x) reference / prediction pair of BraTS 2023 labels
(1 NETC, 2 SNFH, 3 ET) from ellipsoid compartments with a noisy boundary.
"""

from __future__ import annotations

import numpy as np


def ellipsoid(shape, centre, radii, rng=None, noise=0.0, smooth=False) -> np.ndarray:
    """Boolean ellipsoid (array order), optionally with a noisy boundary.

    ``smooth=False``: independent noise per voxel (speckled boundary, many tiny components);
    ``smooth=True``: noise on a 6x coarser grid, upsampled (irregular but compact boundary).
    """
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    r = sum(((g - c) / max(rad, 1e-6)) ** 2 for g, c, rad in zip(grids, centre, radii, strict=True))
    if noise and rng is not None:
        if smooth:
            from scipy.ndimage import zoom

            coarse = rng.normal(0, noise, size=tuple(max(n // 6, 2) for n in shape))
            field = zoom(coarse, [n / c for n, c in zip(shape, coarse.shape, strict=True)], order=1)
            r = r + field[tuple(slice(0, n) for n in shape)]
        else:
            r = r + rng.normal(0, noise, size=shape)
    return r <= 1.0


def tumour(shape, centre, radius, rng, noise=0.08, smooth=False) -> np.ndarray:
    """Three nested compartments: SNFH (2) shell, ET (3) rim, NETC (1) core."""
    lab = np.zeros(shape, dtype=np.uint8)
    rad = np.asarray(radius, dtype=float)
    lab[ellipsoid(shape, centre, rad, rng, noise, smooth)] = 2
    lab[ellipsoid(shape, centre, rad * 0.6, rng, noise, smooth)] = 3
    lab[ellipsoid(shape, centre, rad * 0.35, rng, noise, smooth)] = 1
    return lab


def brats_case(kind: str, shape=(48, 64, 64), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(pred, ref)`` uint8 volumes for a named scenario.

    kinds: ``several`` (two lesions, both found, shifted), ``missed`` (one reference lesion
    missed), ``false_positive`` (an extra predicted lesion), ``empty_pred``, ``empty_ref``,
    ``both_empty``.
    """
    rng = np.random.default_rng(seed)
    z, y, x = shape
    ref = np.zeros(shape, np.uint8)
    pred = np.zeros(shape, np.uint8)
    a = ((z * 0.45, y * 0.35, x * 0.35), (z * 0.2, y * 0.2, x * 0.18))
    b = ((z * 0.55, y * 0.7, x * 0.7), (z * 0.12, y * 0.1, x * 0.12))
    if kind in ("several", "missed", "false_positive", "empty_pred"):
        ref = np.maximum(ref, tumour(shape, *a, rng))
        ref = np.maximum(ref, tumour(shape, *b, rng))
    if kind in ("several", "missed", "false_positive", "empty_ref"):
        c_a = (a[0][0] + 1, a[0][1] - 1, a[0][2] + 2)
        pred = np.maximum(pred, tumour(shape, c_a, np.array(a[1]) * 1.08, rng))
        if kind != "missed":
            c_b = (b[0][0], b[0][1] + 1, b[0][2] - 1)
            pred = np.maximum(pred, tumour(shape, c_b, np.array(b[1]) * 0.9, rng))
        if kind == "false_positive":
            pred[ellipsoid(shape, (z * 0.2, y * 0.75, x * 0.2), (3, 4, 3))] = 2
    return pred, ref


def brats_volume(
    shape=(155, 240, 240), seed: int = 0, smooth: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """A full-size BraTS-like (z, y, x) pair: two reference tumours; the prediction finds the
    large one (shifted, rescaled), misses the small one and adds a false-positive lesion."""
    rng = np.random.default_rng(seed)
    z, y, x = shape
    kw = {"noise": 0.25 if smooth else 0.08, "smooth": smooth}
    ref = tumour(shape, (z * 0.45, y * 0.4, x * 0.45), (z * 0.18, y * 0.16, x * 0.15), rng, **kw)
    ref = np.maximum(
        ref, tumour(shape, (z * 0.6, y * 0.65, x * 0.6), (z * 0.05, y * 0.04, x * 0.04), rng, **kw)
    )
    pred = tumour(
        shape, (z * 0.45 + 1, y * 0.4 - 2, x * 0.45 + 1), (z * 0.19, y * 0.15, x * 0.16), rng, **kw
    )
    pred = np.maximum(pred, tumour(shape, (z * 0.3, y * 0.7, x * 0.3), (6, 8, 6), rng, **kw))
    return pred, ref
