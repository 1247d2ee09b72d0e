"""Surface distances between two binary masks: Hausdorff, HD95, ASSD, normalised surface Dice.

Definitions follow MONAI (``monai.metrics.get_mask_edges`` / ``get_surface_distance``):

* the surface of a mask is ``mask XOR binary_erosion(mask)`` with the face-connected
  structuring element (6-neighbourhood in 3D, 4 in 2D) and background outside the array;
* a directed surface distance is, for each surface sample of one mask, the Euclidean
  distance (in physical units, anisotropic spacing in **array order**) to the nearest surface
  sample of the other mask.

Everything is computed on the union bounding box of both masks plus a one-sample margin, so a
small tumour in a large volume costs what the tumour costs. Hand-written instead of calling
MONAI because MONAI needs torch one-hot tensors of the whole image; instead of a dense
``scipy.ndimage.distance_transform_edt`` we query a KD-tree over the surface coordinates
(as MONAI itself does on CPU): the same exact distances, in O(surface log surface) time.

Two reductions exist in the field and both are offered (``convention``):

``"monai"``
    HD95 = max of the two directed 95th percentiles; ASSD = mean of all pooled distances;
    NSD = pooled fraction of surface samples within ``tolerance`` (``compute_surface_dice``).
``"panoptica"``
    HD95 = 95th percentile of the pooled distances; ASSD = mean of the two directed means;
    NSD = mean of the two directed fractions (brats-evaluation / panoptica).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
from scipy.spatial import cKDTree

from geomed_seg.errors import InvalidInputError

Convention = Literal["monai", "panoptica"]

#: Diagonal of the 240×240×155 mm SRI-24 BraTS box, the usual "one mask empty" HD penalty.
SRI_DIAGONAL_MM = float(np.sqrt(240.0**2 + 240.0**2 + 155.0**2))


def bbox(mask: np.ndarray, margin: int = 1) -> tuple[slice, ...] | None:
    """Return the bounding box of ``mask``'s True samples grown by ``margin`` (clipped), or None."""
    if not mask.any():
        return None
    out = []
    for ax in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != ax)))
        out.append(
            slice(max(int(hit[0]) - margin, 0), min(int(hit[-1]) + 1 + margin, mask.shape[ax]))
        )
    return tuple(out)


def union_bbox(
    a: tuple[slice, ...] | None, b: tuple[slice, ...] | None
) -> tuple[slice, ...] | None:
    """Smallest box holding both boxes (either may be None)."""
    if a is None or b is None:
        return a if b is None else b
    return tuple(
        slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b, strict=True)
    )


def surface(mask: np.ndarray) -> np.ndarray:
    """Return the surface samples of a boolean mask (mask XOR face-connected erosion).

    Equal to ``mask ^ scipy.ndimage.binary_erosion(mask)`` (cross structuring element,
    background outside the array), computed with 2·ndim shifted views, which is several
    times faster than the generic erosion.
    """
    mask = np.asarray(mask, dtype=bool)
    interior = np.pad(mask, 1, constant_values=False)
    core = tuple(slice(1, -1) for _ in range(mask.ndim))
    eroded = mask.copy()
    for ax in range(mask.ndim):
        for shift in (0, 2):
            view = list(core)
            view[ax] = slice(shift, shift + mask.shape[ax])
            eroded &= interior[tuple(view)]
    return mask & ~eroded


def surface_distances(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float] | None = None,
    *,
    crop: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(pred_to_ref, ref_to_pred)`` directed surface distances.

    Parameters
    ----------
    pred, ref : bool arrays
        Masks of identical shape, any number of spatial axes.
    spacing : sequence of float, optional
        Sample size per axis in **array order**, from
        :func:`geomed_seg.metrics.spacing.distance_spacing` (mm for volumes); ``None`` is
        unit spacing (distances in samples, only for arrays without a grid).
    crop : bool
        Work on the union bounding box (+1 margin); results are identical, only faster.

    Returns
    -------
    Two float64 arrays: for each surface sample of ``pred`` the distance to the nearest
    surface sample of ``ref``, and vice versa. Empty when the corresponding mask is empty;
    ``inf`` when only the other mask is empty.
    """
    pred = np.asarray(pred, dtype=bool)
    ref = np.asarray(ref, dtype=bool)
    if pred.shape != ref.shape:
        raise InvalidInputError(f"mask shapes differ: {pred.shape} vs {ref.shape}")
    if crop:
        box = union_bbox(bbox(pred), bbox(ref))
        if box is None:
            return np.empty(0), np.empty(0)
        pred, ref = pred[box], ref[box]
    scale = np.ones(pred.ndim) if spacing is None else np.asarray(spacing, dtype=np.float64)
    if scale.shape != (pred.ndim,):
        raise InvalidInputError(f"spacing {tuple(spacing or ())} does not match {pred.ndim} axes")
    s_p, s_r = surface(pred), surface(ref)
    if not s_p.any() or not s_r.any():
        return np.full(int(s_p.sum()), np.inf), np.full(int(s_r.sum()), np.inf)
    shared = s_p & s_r
    return _nearest(s_p, s_r, shared, scale), _nearest(s_r, s_p, shared, scale)


def _nearest(src: np.ndarray, dst: np.ndarray, shared: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Distance from each ``src`` surface sample to the nearest ``dst`` one, physical units.

    Samples on both surfaces are 0; the others ask a KD-tree for their neighbour, and the
    distance is recomputed from the integer index offsets times the spacing, exactly as
    scipy's EDT does, so values that are multiples of the spacing compare exactly with a
    tolerance (``d <= 0.9`` for 0.9 mm voxels). Output order: ``np.argwhere(src)`` order.
    """
    out = np.zeros(int(src.sum()), dtype=np.float64)
    todo = ~shared[src]
    if todo.any():
        dst_idx = np.argwhere(dst)
        src_idx = np.argwhere(src & ~shared)
        tree = cKDTree(dst_idx * scale, leafsize=32, balanced_tree=False, compact_nodes=False)
        _, j = tree.query(src_idx * scale, k=1)
        delta = (dst_idx[j] - src_idx).T.astype(np.float64) * scale[:, None]
        out[todo] = np.sqrt(np.add.reduce(delta * delta, axis=0))
    return out


@dataclass(frozen=True)
class SurfaceScores:
    """Surface metrics of one mask pair, distances in the spacing's unit (mm or m)."""

    hd: float
    hd95: float
    assd: float
    nsd: float
    tolerance: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def scores_from_distances(
    d_pr: np.ndarray,
    d_rp: np.ndarray,
    *,
    tolerance: float = 1.0,
    convention: Convention = "monai",
    empty_penalty: float = float("inf"),
    percentile: float = 95.0,
) -> SurfaceScores:
    """Reduce directed distances to HD, HD95, ASSD and NSD (see module docstring).

    Both masks empty: distances 0 and NSD 1. One mask empty: distances ``empty_penalty``
    and NSD 0.
    """
    if convention not in ("monai", "panoptica"):
        raise InvalidInputError(f"convention must be 'monai' or 'panoptica', got {convention!r}")
    if len(d_pr) == 0 and len(d_rp) == 0:
        return SurfaceScores(0.0, 0.0, 0.0, 1.0, tolerance)
    if len(d_pr) == 0 or len(d_rp) == 0:
        p = float(empty_penalty)
        return SurfaceScores(p, p, p, 0.0, tolerance)
    hd = float(max(d_pr.max(), d_rp.max()))
    if convention == "monai":
        hd95 = float(max(np.percentile(d_pr, percentile), np.percentile(d_rp, percentile)))
        pooled = np.concatenate([d_pr, d_rp])
        assd = float(pooled.mean())
        nsd = float(np.count_nonzero(pooled <= tolerance) / pooled.size)
    else:
        hd95 = float(np.percentile(np.concatenate([d_pr, d_rp]), percentile))
        assd = float(np.mean((d_pr.mean(), d_rp.mean())))
        nsd = float((np.mean(d_pr <= tolerance) + np.mean(d_rp <= tolerance)) / 2.0)
    return SurfaceScores(hd, hd95, assd, nsd, float(tolerance))


def surface_metrics(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float] | None = None,
    *,
    tolerance: float = 1.0,
    convention: Convention = "monai",
    empty_penalty: float = float("inf"),
) -> SurfaceScores:
    """Return HD, HD95, ASSD and NSD at ``tolerance`` between boolean masks ``pred`` and ``ref``.

    ``spacing`` is per axis in array order, from
    :func:`geomed_seg.metrics.spacing.distance_spacing` (mm for volumes, m for rasters with a
    metric CRS); distances and ``tolerance`` are in the same unit.
    """
    d_pr, d_rp = surface_distances(pred, ref, spacing)
    return scores_from_distances(
        d_pr, d_rp, tolerance=tolerance, convention=convention, empty_penalty=empty_penalty
    )
