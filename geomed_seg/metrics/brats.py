"""BraTS regions and lesion-wise metrics, with the definitions of ``brats-evaluation``.

Regions (WT, TC, ET, ...) come from the dataset cards in ``data_catalog/`` (``brats2021``
legacy labels {1, 2, 4}; ``brats2023`` {1, 2, 3}; ``brats2024`` adds RC = 4), never from code.

For each region, as ``brats-evaluation`` 0.0.10 (panoptica, ``config_gli.yaml``) does:

* **global** Dice, NSD and HD95 of the binary region masks, **in mm** with the volume's
  spacing (array order). brats-evaluation computes these two in *voxel* units (panoptica
  passes no spacing to its global metrics), which is mm only on BraTS's 1 mm grid; here the
  distances are physical at any spacing, and the NSD tolerance is half the smallest spacing
  (brats-evaluation's 0.5 voxel at 1 mm), so on isotropic grids the global NSD equals
  brats-evaluation's and the HD95 is its value times the spacing. No overlap: Dice 0, NSD 0,
  HD95 = penalty (373 mm); both empty: NaN.
* **lesions** are 26-connected components; reference and predicted lesions are matched
  one-to-one by maximum-weight bipartite matching on Dice (``linear_sum_assignment`` on
  ``1 - Dice``, any overlap qualifies). Instance TP/FP/FN, precision, recall and F1 (panoptica's
  recognition quality) follow; lesion-wise Dice, NSD (tolerance = smallest spacing, mm) and
  HD95 (pooled 95th percentile, mm) are means and population std over the *matched*
  lesions, exactly as brats-evaluation given the spacing. No matched lesion: Dice 0, NSD 0,
  HD95 inf; both empty: NaN.

``protocol="brats2023"`` is the BraTS 2023 challenge's lesion-wise protocol instead (after
the official 2023 lesion-wise script): lesions smaller than ``min_lesion_mm3`` dropped;
reference lesions merged when their dilations touch; every predicted lesion touching a dilated
reference lesion belongs to it; the lesion-wise mean runs over reference lesions *and*
false-positive lesions, which score Dice 0 / HD95 penalty. The official script works on the
1 mm BraTS grid (3 dilations with the 18-neighbourhood, 50 voxels); here both are physical
(:func:`dilation_structure`: offsets within ``dilation_mm`` per axis and ``2 * dilation_mm``
in sum, which *is* three 18-neighbourhood dilations at 1 mm; a volume in mm³), so a 3 mm
volume is matched as its 1 mm resampling would be. Its surface distances use the
voxel-surface definition of :mod:`.surface`, not the DeepMind surfel one, so HD95 may differ
from that script in the last decimals.

Hand-written because ``brats-evaluation`` works on files and whole arrays and recomputes every
distance transform per metric; here each lesion pair is cropped to its own box and distances
come from a KD-tree over surface voxels (tests assert equal values to 1e-6).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

from geomed_seg.errors import InvalidInputError
from geomed_seg.metrics.surface import bbox, scores_from_distances, surface_distances, union_bbox

#: Convention name -> dataset card.
CONVENTIONS = {"legacy": "brats2021", "2021": "brats2021", "2023": "brats2023", "2024": "brats2024"}

#: Penalty brats-evaluation puts in place of an infinite HD95 (mm).
HD95_PENALTY = 373.0

_CC26 = np.ones((3, 3, 3), dtype=bool)


@functools.lru_cache(maxsize=16)
def _card_regions(name: str) -> tuple[tuple[str, tuple[int, ...]], ...]:
    from geomed_seg.catalog import load_card

    card = load_card(CONVENTIONS.get(name, name))
    if not card.regions:
        raise InvalidInputError(f"dataset card {card.name!r} defines no regions")
    return tuple((k, tuple(v)) for k, v in card.region_labels().items())


def region_definitions(convention: str | Mapping[str, Sequence[int]]) -> dict[str, list[int]]:
    """Return ``{region: labels}`` for a convention name (``"legacy"``, ``"2023"``, ``"2024"``,
    a card name) or pass a mapping through."""
    if isinstance(convention, Mapping):
        return {str(k): [int(v) for v in vs] for k, vs in convention.items()}
    return {k: list(v) for k, v in _card_regions(str(convention))}


@dataclass(frozen=True)
class LesionPair:
    """One matched (or missed) reference lesion."""

    ref_label: int
    pred_labels: list[int]
    ref_voxels: int
    dice: float
    nsd: float
    hd95: float


@dataclass
class RegionResult:
    """All BraTS numbers of one region (names as brats-evaluation's parsed CSV)."""

    region: str
    global_dsc: float
    global_nsd: float
    global_hd95: float
    n_ref_lesions: int = 0
    n_pred_lesions: int = 0
    tp: int = 0
    fp: int = 0
    fn: int = 0
    precision: float = float("nan")
    recall: float = float("nan")
    f1: float = float("nan")
    lesionwise_dsc_mean: float = float("nan")
    lesionwise_dsc_std: float = float("nan")
    lesionwise_nsd_mean: float = float("nan")
    lesionwise_nsd_std: float = float("nan")
    lesionwise_hd95_mean: float = float("nan")
    lesionwise_hd95_std: float = float("nan")
    lesions: list[LesionPair] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        """Flat dict without the per-lesion list."""
        d = asdict(self)
        d.pop("lesions")
        return d


def _in(arr: np.ndarray, labels: Sequence[int]) -> np.ndarray:
    """``np.isin`` through a lookup table for small unsigned labels (several times faster)."""
    if arr.dtype.kind == "u" and arr.dtype.itemsize <= 2:
        lut = np.zeros(2 ** (8 * arr.dtype.itemsize), dtype=bool)
        lut[[v for v in labels if 0 <= v < lut.size]] = True
        return lut[arr]
    return np.isin(arr, labels)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 0.0 if s == 0 else 2.0 * int(np.count_nonzero(a & b)) / s


def global_nsd_tolerance(spacing: Sequence[float]) -> float:
    """Return the region (global) NSD tolerance in mm: half the smallest spacing.

    brats-evaluation's global NSD uses 0.5 in voxel units (0.5 mm on the 1 mm BraTS grid).
    """
    return 0.5 * float(min(spacing))


def lesion_nsd_tolerance(spacing: Sequence[float]) -> float:
    """Return the lesion-wise NSD tolerance in mm: the smallest spacing (panoptica's default)."""
    return float(min(spacing))


def _global(
    pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float], penalty: float
) -> tuple[float, float, float]:
    """Global Dice / NSD / HD95 (mm) of two region masks, reduced as panoptica does."""
    n_p, n_r = int(pred.sum()), int(ref.sum())
    if n_p == 0 and n_r == 0:
        return float("nan"), float("nan"), float("nan")
    if not np.any(pred & ref):
        return 0.0, 0.0, penalty
    d_pr, d_rp = surface_distances(pred, ref, spacing)
    s = scores_from_distances(
        d_pr, d_rp, tolerance=global_nsd_tolerance(spacing), convention="panoptica"
    )
    return _dice(pred, ref), s.nsd, s.hd95


def _label(mask: np.ndarray) -> tuple[np.ndarray, int]:
    lab, n = ndimage.label(mask, structure=_CC26 if mask.ndim == 3 else None)
    return lab, int(n)


def _match(
    ref_cc: np.ndarray, n_ref: int, pred_cc: np.ndarray, n_pred: int
) -> list[tuple[int, int]]:
    """One-to-one lesion matching maximising Dice (panoptica ``MaxBipartiteMatching``)."""
    table = np.bincount(
        ref_cc.ravel().astype(np.int64) * (n_pred + 1) + pred_cc.ravel(),
        minlength=(n_ref + 1) * (n_pred + 1),
    ).reshape(n_ref + 1, n_pred + 1)
    inter = table[1:, 1:].astype(np.float64)
    size_r = table[1:, :].sum(axis=1).astype(np.float64)
    size_p = table[:, 1:].sum(axis=0).astype(np.float64)
    dice = 2.0 * inter / (size_r[:, None] + size_p[None, :])
    cost = np.where((inter > 0) & (dice >= 1e-6), 1.0 - dice, 1.0 + 1e-6)
    rows, cols = linear_sum_assignment(cost)
    return [(int(r) + 1, int(c) + 1) for r, c in zip(rows, cols, strict=True) if cost[r, c] < 1.0]


def _pair_scores(ref_m: np.ndarray, pred_m: np.ndarray, spacing: Sequence[float], tol: float):
    d_pr, d_rp = surface_distances(pred_m, ref_m, spacing)
    s = scores_from_distances(d_pr, d_rp, tolerance=tol, convention="panoptica")
    return _dice(pred_m, ref_m), s.nsd, s.hd95


def _boxes(cc: np.ndarray) -> list:
    return ndimage.find_objects(cc)


def _lesionwise_panoptica(res: RegionResult, pred: np.ndarray, ref: np.ndarray, spacing) -> None:
    ref_cc, n_ref = _label(ref)
    pred_cc, n_pred = _label(pred)
    res.n_ref_lesions, res.n_pred_lesions = n_ref, n_pred
    matches = _match(ref_cc, n_ref, pred_cc, n_pred) if n_ref and n_pred else []
    tol = lesion_nsd_tolerance(spacing)
    rb, pb = _boxes(ref_cc), _boxes(pred_cc)
    matched_refs = set()
    for r, p in matches:
        box = union_bbox(rb[r - 1], pb[p - 1])
        box = tuple(
            slice(max(s.start - 1, 0), min(s.stop + 1, n))
            for s, n in zip(box, ref.shape, strict=True)
        )
        d, nsd, hd = _pair_scores(ref_cc[box] == r, pred_cc[box] == p, spacing, tol)
        res.lesions.append(LesionPair(r, [p], int(np.count_nonzero(ref_cc[box] == r)), d, nsd, hd))
        matched_refs.add(r)
    tp = len(res.lesions)
    res.tp, res.fp, res.fn = tp, n_pred - tp, n_ref - tp
    res.precision = tp / n_pred if n_pred else float("nan")
    res.recall = tp / n_ref if n_ref else float("nan")
    if tp == 0:
        res.f1 = 0.0 if n_pred + n_ref > 0 else float("nan")
    else:
        res.f1 = tp / (tp + 0.5 * res.fp + 0.5 * res.fn)
    if tp:
        for key in ("dsc", "nsd", "hd95"):
            vals = np.array([getattr(lp, "dice" if key == "dsc" else key) for lp in res.lesions])
            setattr(res, f"lesionwise_{key}_mean", float(np.mean(vals)))
            setattr(res, f"lesionwise_{key}_std", float(np.std(vals)))
    elif n_ref + n_pred > 0:
        res.lesionwise_dsc_mean, res.lesionwise_nsd_mean, res.lesionwise_hd95_mean = (
            0.0,
            0.0,
            float("inf"),
        )


def dilation_structure(spacing: Sequence[float], dilation_mm: float) -> np.ndarray | None:
    """Return the structuring element of a physical lesion dilation, or None for no dilation.

    Integer offsets ``o`` (array order) with ``|o_i| * spacing_i <= dilation_mm`` on every axis
    and ``sum_i |o_i| * spacing_i <= 2 * dilation_mm``: the physical form of ``k`` dilations
    with the 18-neighbourhood (``generate_binary_structure(3, 2)``), which on a 1 mm grid
    reach exactly the offsets with max norm <= k and L1 norm <= 2k. So ``dilation_mm=3`` at
    1 mm is the official BraTS 2023 script's ``iterations=3``, and other spacings dilate by
    the same physical distance.
    """
    if dilation_mm <= 0:
        return None
    sp = np.asarray(spacing, dtype=np.float64)
    reach = np.floor(dilation_mm / sp + 1e-9).astype(int)
    grids = np.meshgrid(*(np.arange(-r, r + 1) for r in reach), indexing="ij")
    dist = [np.abs(g) * s for g, s in zip(grids, sp, strict=True)]
    return (np.maximum.reduce(dist) <= dilation_mm + 1e-9) & (
        np.add.reduce(dist) <= 2 * dilation_mm + 1e-9
    )


def _lesionwise_2023(
    res: RegionResult,
    pred: np.ndarray,
    ref: np.ndarray,
    spacing,
    dilation_mm: float,
    min_mm3: float,
    penalty: float,
) -> None:
    struct = dilation_structure(spacing, dilation_mm)
    min_voxels = min_mm3 / float(np.prod(spacing))

    def dilate(mask):
        return ndimage.binary_dilation(mask, struct) if struct is not None else mask

    def dust(mask):
        cc, n = _label(mask)
        if n == 0:
            return cc, 0
        sizes = np.bincount(cc.ravel())
        keep = np.flatnonzero(sizes >= min_voxels - 1e-9)
        keep = keep[keep != 0]
        out = np.isin(cc, keep)
        return _label(out)

    ref_cc, _ = dust(ref)
    pred_cc, n_pred = dust(pred)
    # Reference lesions whose dilations touch become one lesion.
    merged, _ = _label(dilate(ref_cc > 0))
    gt = np.where(ref_cc > 0, merged, 0)
    labels = [int(v) for v in np.unique(gt) if v != 0]
    res.n_ref_lesions, res.n_pred_lesions = len(labels), n_pred
    used: set[int] = set()
    dices, hds, nsds = [], [], []
    tol = lesion_nsd_tolerance(spacing)
    for g in labels:
        g_m = gt == g
        g_dil = dilate(g_m)
        hits = [int(v) for v in np.unique(pred_cc[g_dil]) if v != 0]
        used.update(hits)
        p_m = np.isin(pred_cc, hits) if hits else np.zeros_like(g_m)
        box = union_bbox(bbox(g_m), bbox(p_m))
        d, nsd, hd = _pair_scores(g_m[box], p_m[box], spacing, tol)
        hd = penalty if not np.isfinite(hd) else hd
        res.lesions.append(LesionPair(g, hits, int(g_m.sum()), d, nsd, hd))
        dices.append(d)
        hds.append(hd)
        nsds.append(nsd)
    fp = [v for v in range(1, n_pred + 1) if v not in used]
    res.tp = sum(1 for lp in res.lesions if lp.pred_labels)
    res.fn, res.fp = len(labels) - res.tp, len(fp)
    res.precision = res.tp / (res.tp + res.fp) if res.tp + res.fp else float("nan")
    res.recall = res.tp / len(labels) if labels else float("nan")
    den = 2 * res.tp + res.fp + res.fn
    res.f1 = 2 * res.tp / den if den else float("nan")
    n = len(labels) + len(fp)
    if n == 0:
        res.lesionwise_dsc_mean, res.lesionwise_nsd_mean, res.lesionwise_hd95_mean = 1.0, 1.0, 0.0
        return
    res.lesionwise_dsc_mean = float(np.sum(dices) / n)
    res.lesionwise_nsd_mean = float(np.sum(nsds) / n)
    res.lesionwise_hd95_mean = float((np.sum(hds) + len(fp) * penalty) / n)


def brats_metrics(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float],
    *,
    convention: str | Mapping[str, Sequence[int]] = "2023",
    lesion_wise: bool = True,
    protocol: Literal["panoptica", "brats2023"] = "panoptica",
    hd95_penalty: float = HD95_PENALTY,
    dilation_mm: float = 3.0,
    min_lesion_mm3: float = 50.0,
) -> list[RegionResult]:
    """Return one :class:`RegionResult` per region of ``convention``.

    Parameters
    ----------
    pred, ref : int arrays
        Label volumes, same shape, **array order** ``(z, y, x)`` (any order works if
        ``spacing`` follows it).
    spacing : sequence of float
        Voxel size in mm in the arrays' axis order, from
        :func:`geomed_seg.metrics.spacing.distance_spacing` (``VoxelGrid.spacing_zyx``).
        Required: every distance (global and lesion-wise HD95, NSD tolerances, the 2023
        dilation and minimum lesion volume) is physical.
    convention : str or mapping
        ``"legacy"``, ``"2023"``, ``"2024"``, a dataset card name, or ``{region: labels}``.
    lesion_wise : bool
        Also compute lesion detection and lesion-wise scores.
    protocol : {"panoptica", "brats2023"}
        ``"panoptica"`` reproduces brats-evaluation; ``"brats2023"`` the 2023 challenge
        protocol (dilation, small-lesion removal, FP lesions in the mean).
    hd95_penalty : float
        Replaces an infinite global HD95 (and 2023 per-lesion HD95), mm.
    dilation_mm, min_lesion_mm3 : float
        ``protocol="brats2023"`` only: physical reference-lesion dilation (mm, see
        :func:`dilation_structure`) and smallest lesion kept (mm³); the defaults are the
        official script's 3 iterations and 50 voxels on the 1 mm BraTS grid.
    """
    pred = np.asarray(pred)
    ref = np.asarray(ref)
    if pred.shape != ref.shape:
        raise InvalidInputError(f"prediction shape {pred.shape} != reference shape {ref.shape}")
    if len(spacing) != ref.ndim or not all(np.isfinite(s) and s > 0 for s in spacing):
        raise InvalidInputError(
            f"spacing {tuple(spacing)} is not {ref.ndim} positive sizes (mm, array order)"
        )
    if protocol not in ("panoptica", "brats2023"):
        raise InvalidInputError(f"protocol must be 'panoptica' or 'brats2023', got {protocol!r}")
    struct = dilation_structure(spacing, dilation_mm) if protocol == "brats2023" else None
    margin = 2 if struct is None else max(struct.shape) // 2 + 2
    # Everything below happens inside the tumour's box: regions are subsets of non-zero.
    box = union_bbox(bbox(pred != 0, margin), bbox(ref != 0, margin))
    if box is not None:
        pred, ref = pred[box], ref[box]
    out = []
    for name, labels in region_definitions(convention).items():
        p_full = _in(pred, labels)
        r_full = _in(ref, labels)
        box = union_bbox(bbox(p_full, margin), bbox(r_full, margin))
        if box is None:  # region absent from both
            nan = float("nan")
            empty_2023 = lesion_wise and protocol == "brats2023"
            res = RegionResult(name, nan, nan, nan)
            if empty_2023:
                res.lesionwise_dsc_mean, res.lesionwise_nsd_mean, res.lesionwise_hd95_mean = (
                    1.0,
                    1.0,
                    0.0,
                )
            out.append(res)
            continue
        p, r = p_full[box], r_full[box]
        res = RegionResult(name, *_global(p, r, spacing, hd95_penalty))
        if lesion_wise:
            if protocol == "panoptica":
                _lesionwise_panoptica(res, p, r, spacing)
            else:
                _lesionwise_2023(res, p, r, spacing, dilation_mm, min_lesion_mm3, hd95_penalty)
        out.append(res)
    return out
