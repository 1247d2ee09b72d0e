"""Overlap metrics from one streamed pass: a multi-class confusion matrix and what follows.

Prediction and reference are read chunk by chunk (dask blocks, aligned to the reference's
chunks); each pair of blocks contributes a small table of ``(reference, prediction)`` label
counts, and the tables are summed. Memory is bounded by the blocks in flight, never by the
image size. Every per-class score (Dice/F1, IoU/Jaccard, Tversky, precision, recall,
specificity, accuracy) and every mean (mIoU, mean Dice, frequency-weighted IoU, overall
accuracy) is a closed form of that matrix.

Hand-written rather than ``sklearn.metrics.confusion_matrix`` because scikit-learn needs the
whole label arrays in memory; the per-block counting is the same ``np.bincount`` it uses, and
the tests check every score against scikit-learn and MONAI.

Conventions
-----------
* Rows are reference labels, columns are predicted labels (scikit-learn's orientation).
* Reference samples that are invalid (nodata / mask) or equal ``ignore_index`` are excluded.
* Reference labels outside ``labels`` are excluded too (counted in ``n_excluded``, by label in
  ``excluded_ref``); predicted labels outside ``labels`` (the prediction's nodata, or labels
  that are no class, by label in ``outside_pred``) land in a trailing column
  (:data:`OUTSIDE_COLUMN`), so they still count as misses.
* ``empty="brats"`` (default): a class absent from both prediction and reference scores
  Dice = IoU = Tversky = 1 (as BraTS scores an empty region); ``empty="nan"`` gives NaN.
  A class present in only one of them scores 0 either way.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import dask
import dask.array as da
import numpy as np

from geomed_seg.errors import InvalidInputError

logger = logging.getLogger(__name__)

EmptyRule = Literal["brats", "nan"]

#: Name of the confusion matrix's trailing column.
OUTSIDE_COLUMN = "not a class (prediction nodata or unknown label)"

#: Labels below this bound are counted with a dense ``np.bincount`` table per block.
_DENSE_LIMIT = 1024


def _block_counts(ref: np.ndarray, pred: np.ndarray, valid: np.ndarray | None) -> dict:
    """Return ``{(ref_label, pred_label): count}`` for one pair of aligned blocks."""
    ref = np.asarray(ref).ravel()
    pred = np.asarray(pred).ravel()
    if valid is not None:
        keep = np.asarray(valid).ravel()
        ref, pred = ref[keep], pred[keep]
    if ref.size == 0:
        return {}
    if ref.dtype.kind in "iub" and pred.dtype.kind in "iub":
        lo = min(int(ref.min()), int(pred.min()))
        hi = max(int(ref.max()), int(pred.max()))
        if lo >= 0 and hi < _DENSE_LIMIT:
            k = hi + 1
            table = np.bincount(ref.astype(np.int64) * k + pred, minlength=k * k)
            nz = np.flatnonzero(table)
            return {(int(i // k), int(i % k)): int(table[i]) for i in nz}
    pairs, counts = np.unique(np.stack([ref, pred]), axis=1, return_counts=True)
    return {(_py(a), _py(b)): int(c) for (a, b), c in zip(pairs.T, counts, strict=True)}


def _py(v: Any) -> int | float:
    f = float(v)
    return int(f) if f.is_integer() else f


def _merge(tables: Sequence[dict]) -> dict:
    out: dict = {}
    for t in tables:
        for key, n in t.items():
            out[key] = out.get(key, 0) + n
    return out


def _as_dask(a: Any) -> da.Array:
    return a if isinstance(a, da.Array) else da.asarray(np.asarray(a))


def count_pairs(pred: Any, ref: Any, valid: Any | None = None) -> dict:
    """Return ``{(ref_label, pred_label): count}`` over all valid samples, streamed by chunk.

    Parameters
    ----------
    pred, ref : numpy or dask array
        Label arrays of identical shape (any axis order, as long as both agree).
    valid : bool array or None
        ``True`` where the sample counts; same shape.
    """
    ref_d = _as_dask(ref)
    pred_d = _as_dask(pred)
    if pred_d.shape != ref_d.shape:
        raise InvalidInputError(f"prediction shape {pred_d.shape} != reference shape {ref_d.shape}")
    pred_d = pred_d.rechunk(ref_d.chunks)
    ref_blocks = ref_d.to_delayed().ravel()
    pred_blocks = pred_d.to_delayed().ravel()
    if valid is not None:
        valid_blocks = _as_dask(valid).rechunk(ref_d.chunks).to_delayed().ravel()
    else:
        valid_blocks = [None] * len(ref_blocks)
    counter = dask.delayed(_block_counts, pure=True)
    parts = [
        counter(r, p, v) for r, p, v in zip(ref_blocks, pred_blocks, valid_blocks, strict=True)
    ]
    # Tree-reduce so no single task holds thousands of small tables.
    while len(parts) > 1:
        parts = [dask.delayed(_merge)(parts[i : i + 16]) for i in range(0, len(parts), 16)]
    return dict(dask.compute(parts[0])[0]) if parts else {}


@dataclass(frozen=True)
class ClassScores:
    """Scores of one class; areas in ``area_unit`` (m², mm³, pixels, ...)."""

    index: int
    name: str
    tp: int
    fp: int
    fn: int
    tn: int
    dice: float
    iou: float
    tversky: float
    precision: float
    recall: float
    specificity: float
    accuracy: float
    ref_area: float
    pred_area: float
    area_unit: str


@dataclass(frozen=True)
class OverlapResult:
    """Confusion matrix and the scores derived from it.

    ``confusion[i, j]`` counts samples with reference ``labels[i]`` predicted as ``labels[j]``;
    the last column (:data:`OUTSIDE_COLUMN`) counts predictions outside ``labels``: the
    prediction's nodata (``nodata_pred`` samples) and labels that are no class
    (``outside_pred``: ``{label: samples}``). ``excluded_ref`` counts excluded reference
    samples by label (labels outside ``labels``; nodata and ``ignore_index`` never reach it).
    """

    labels: list[int]
    names: list[str]
    confusion: np.ndarray
    classes: list[ClassScores]
    mean_iou: float
    mean_dice: float
    fw_iou: float
    overall_accuracy: float
    n_valid: int
    n_excluded: int
    tversky_alpha: float
    tversky_beta: float
    sample_size: float
    area_unit: str
    extra: dict[str, Any] = field(default_factory=dict)
    outside_pred: dict[Any, int] = field(default_factory=dict)
    nodata_pred: int = 0
    excluded_ref: dict[Any, int] = field(default_factory=dict)

    def confusion_dict(self) -> dict[str, Any]:
        """The confusion matrix with what every row and column is (JSON-friendly)."""
        return {
            "rows": "reference class",
            "columns": "predicted class",
            "row_labels": [f"{i} {n}" for i, n in zip(self.labels, self.names, strict=True)],
            "column_labels": [
                *(f"{i} {n}" for i, n in zip(self.labels, self.names, strict=True)),
                OUTSIDE_COLUMN,
            ],
            "counts": self.confusion.tolist(),
            "unit": "samples",
            "prediction_nodata_samples": int(self.nodata_pred),
            "prediction_unknown_labels": {str(k): int(v) for k, v in self.outside_pred.items()},
            "reference_excluded_samples": int(self.n_excluded),
            "reference_excluded_labels": {str(k): int(v) for k, v in self.excluded_ref.items()},
            "note": "reference nodata/mask and --ignore samples are not counted anywhere",
        }

    def rows(self) -> list[dict[str, Any]]:
        """One flat dict per class (table / CSV / DataFrame rows)."""
        return [asdict(c) for c in self.classes]

    def summary(self) -> dict[str, float]:
        """Image-level means."""
        return {
            "mean_iou": self.mean_iou,
            "mean_dice": self.mean_dice,
            "fw_iou": self.fw_iou,
            "overall_accuracy": self.overall_accuracy,
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict."""
        return {
            "labels": list(self.labels),
            "names": list(self.names),
            "confusion": self.confusion_dict(),
            "classes": self.rows(),
            **self.summary(),
            "n_valid": self.n_valid,
            "n_excluded": self.n_excluded,
            "tversky_alpha": self.tversky_alpha,
            "tversky_beta": self.tversky_beta,
            "sample_size": self.sample_size,
            "area_unit": self.area_unit,
        }


def _ratio(num: np.ndarray, den: np.ndarray, empty_value: float) -> np.ndarray:
    out = np.full(num.shape, empty_value, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def confusion_from_counts(
    counts: dict,
    labels: Sequence[int] | None = None,
    ignore_index: int | None = None,
    pred_nodata: float | None = None,
) -> tuple[list[int], np.ndarray, int]:
    """Return ``(labels, matrix, n_excluded)``; the matrix has one extra column
    (:data:`OUTSIDE_COLUMN`). Inferred ``labels`` never include ``pred_nodata``."""
    if ignore_index is not None:
        counts = {k: v for k, v in counts.items() if k[0] != ignore_index}
    if labels is None:
        seen = {k[0] for k in counts} | {k[1] for k in counts if k[1] != pred_nodata}
        seen.discard(ignore_index)
        labels = sorted(int(v) for v in seen if float(v).is_integer())
    labels = [int(v) for v in labels]
    pos = {v: i for i, v in enumerate(labels)}
    n = len(labels)
    mat = np.zeros((n, n + 1), dtype=np.int64)
    excluded = 0
    for (r, p), c in counts.items():
        i = pos.get(r)
        if i is None:
            excluded += c
            continue
        mat[i, pos.get(p, n)] += c
    return labels, mat, excluded


def outside_counts(
    counts: dict,
    labels: Sequence[int],
    ignore_index: int | None = None,
    pred_nodata: float | None = None,
) -> tuple[dict, int, dict]:
    """Return ``(outside_pred, nodata_pred, excluded_ref)`` of ``{(ref, pred): count}`` counts.

    ``outside_pred``: ``{predicted label: samples}`` not in ``labels`` nor ``pred_nodata``, over
    scored samples (reference in ``labels``); ``nodata_pred``: scored samples predicted as
    ``pred_nodata``; ``excluded_ref``: ``{reference label: samples}`` outside ``labels``.
    """
    known = {int(v) for v in labels}
    outside: dict = {}
    excluded: dict = {}
    nodata = 0
    for (r, p), c in counts.items():
        if r == ignore_index:
            continue
        if r not in known:
            excluded[r] = excluded.get(r, 0) + c
        elif pred_nodata is not None and p == pred_nodata:
            nodata += c
        elif p not in known:
            outside[p] = outside.get(p, 0) + c
    return outside, nodata, excluded


def scores_from_confusion(
    labels: Sequence[int],
    confusion: np.ndarray,
    *,
    names: Sequence[str] | None = None,
    tversky: tuple[float, float] = (0.5, 0.5),
    empty: EmptyRule = "brats",
    sample_size: float = 1.0,
    area_unit: str = "px",
    n_excluded: int = 0,
) -> OverlapResult:
    """Return every overlap score of a ``(n, n+1)`` confusion matrix (rows = reference).

    ``tversky = (alpha, beta)``: alpha weights false positives, beta false negatives
    (alpha = beta = 0.5 is Dice, alpha = beta = 1 is IoU). ``sample_size`` is the area or
    volume of one sample in ``area_unit``.
    """
    if empty not in ("brats", "nan"):
        raise InvalidInputError(f"empty must be 'brats' or 'nan', got {empty!r}")
    alpha, beta = (float(v) for v in tversky)
    if alpha < 0 or beta < 0:
        raise InvalidInputError(f"Tversky alpha/beta must be >= 0, got {tversky}")
    n = len(labels)
    conf = np.asarray(confusion, dtype=np.int64)
    total = int(conf.sum())
    tp = np.diag(conf[:, :n]).astype(np.int64)
    ref_count = conf.sum(axis=1)
    pred_count = conf[:, :n].sum(axis=0)
    fp = pred_count - tp
    fn = ref_count - tp
    tn = total - tp - fp - fn
    both_empty = np.nan if empty == "nan" else 1.0
    dice = _ratio(2.0 * tp, 2.0 * tp + fp + fn, both_empty)
    iou = _ratio(tp.astype(float), (tp + fp + fn).astype(float), both_empty)
    tv = _ratio(tp.astype(float), tp + alpha * fp + beta * fn, both_empty)
    # Precision without predictions (recall without reference): 0 when the other side has the
    # class, else the empty rule.
    precision = _ratio(tp.astype(float), (tp + fp).astype(float), np.nan)
    precision[(tp + fp == 0) & (fn > 0)] = 0.0
    precision[(tp + fp + fn) == 0] = both_empty
    recall = _ratio(tp.astype(float), (tp + fn).astype(float), np.nan)
    recall[(tp + fn == 0) & (fp > 0)] = 0.0
    recall[(tp + fp + fn) == 0] = both_empty
    specificity = _ratio(tn.astype(float), (tn + fp).astype(float), np.nan)
    accuracy = _ratio((tp + tn).astype(float), np.full(n, float(total)), np.nan)
    present = (tp + fp + fn) > 0
    freq = ref_count / total if total else np.zeros(n)
    names = list(names) if names is not None else [str(v) for v in labels]
    classes = [
        ClassScores(
            int(labels[i]), names[i], int(tp[i]), int(fp[i]), int(fn[i]), int(tn[i]),
            float(dice[i]), float(iou[i]), float(tv[i]), float(precision[i]), float(recall[i]),
            float(specificity[i]), float(accuracy[i]),
            float(ref_count[i] * sample_size), float(pred_count[i] * sample_size), area_unit,
        )
        for i in range(n)
    ]  # fmt: skip
    return OverlapResult(
        labels=list(labels),
        names=names,
        confusion=conf,
        classes=classes,
        mean_iou=float(np.mean(iou[present])) if present.any() else float("nan"),
        mean_dice=float(np.mean(dice[present])) if present.any() else float("nan"),
        fw_iou=float(np.sum(freq[present] * iou[present])) if total else float("nan"),
        overall_accuracy=float(tp.sum() / total) if total else float("nan"),
        n_valid=total,
        n_excluded=int(n_excluded),
        tversky_alpha=alpha,
        tversky_beta=beta,
        sample_size=float(sample_size),
        area_unit=area_unit,
    )


def overlap_metrics(
    pred: Any,
    ref: Any,
    *,
    labels: Iterable[int] | None = None,
    names: Sequence[str] | None = None,
    valid: Any | None = None,
    ignore_index: int | None = None,
    tversky: tuple[float, float] = (0.5, 0.5),
    empty: EmptyRule = "brats",
    sample_size: float = 1.0,
    area_unit: str = "px",
    pred_nodata: float | None = None,
) -> OverlapResult:
    """Return overlap scores of label arrays ``pred`` vs ``ref`` in one streamed pass.

    Parameters
    ----------
    pred, ref : numpy or dask array
        Integer label arrays of the same shape, spatial axes only (``(y, x)`` or ``(z, y, x)``).
    labels : iterable of int, optional
        Classes to score (default: every label seen in either array, minus ``ignore_index``).
    names : sequence of str, optional
        Class names, parallel to ``labels``.
    valid : bool array, optional
        ``True`` where the reference is valid (nodata and mask excluded).
    ignore_index : int, optional
        Reference label whose samples are excluded.
    tversky : (alpha, beta)
        Tversky weights of false positives and false negatives.
    empty : {"brats", "nan"}
        Score of a class absent from both arrays (see module docstring).
    sample_size, area_unit :
        Area or volume of one sample and its unit, used for ``ref_area`` / ``pred_area``.
    pred_nodata : float, optional
        The prediction's nodata value: never a class; its samples count in the last column.
    """
    counts = count_pairs(pred, ref, valid)
    lab, conf, excluded = confusion_from_counts(
        counts, None if labels is None else list(labels), ignore_index, pred_nodata
    )
    outside, nodata, excluded_ref = outside_counts(counts, lab, ignore_index, pred_nodata)
    if excluded:
        logger.info("%d reference samples with labels outside %s excluded", excluded, lab)
    res = scores_from_confusion(
        lab, conf, names=names, tversky=tversky, empty=empty,
        sample_size=sample_size, area_unit=area_unit, n_excluded=excluded,
    )  # fmt: skip
    return replace(res, outside_pred=outside, nodata_pred=nodata, excluded_ref=excluded_ref)
