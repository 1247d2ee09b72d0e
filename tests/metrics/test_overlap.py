"""Overlap scores against scikit-learn and MONAI; streaming equals in-memory."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from monai.metrics import DiceMetric, MeanIoU
from monai.networks.utils import one_hot
from sklearn.metrics import (
    confusion_matrix,
    f1_score,
    jaccard_score,
    precision_score,
    recall_score,
)

from geomed_seg.errors import InvalidInputError
from geomed_seg.metrics.overlap import overlap_metrics

LABELS = [0, 1, 2, 3]


def _random(shape=(37, 53), n=4, seed=0):
    rng = np.random.default_rng(seed)
    ref = rng.integers(0, n, size=shape).astype(np.uint8)
    pred = ref.copy()
    flip = rng.random(shape) < 0.3
    pred[flip] = rng.integers(0, n, size=int(flip.sum()))
    return pred, ref


def _structured(shape=(64, 64)):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    ref = np.zeros(shape, np.uint8)
    ref[(yy - 30) ** 2 + (xx - 30) ** 2 < 200] = 1
    ref[10:20, 40:60] = 2
    ref[50:60, 5:25] = 3
    pred = np.zeros(shape, np.uint8)
    pred[(yy - 32) ** 2 + (xx - 29) ** 2 < 220] = 1
    pred[12:22, 38:58] = 2
    pred[48:58, 8:20] = 3
    return pred, ref


@pytest.mark.parametrize("make", [_random, _structured])
def test_equals_sklearn(make):
    pred, ref = make()
    res = overlap_metrics(pred, ref, labels=LABELS)
    yt, yp = ref.ravel(), pred.ravel()
    np.testing.assert_array_equal(res.confusion[:, :4], confusion_matrix(yt, yp, labels=LABELS))
    got = {
        k: np.array([getattr(c, k) for c in res.classes])
        for k in ("dice", "iou", "precision", "recall")
    }
    np.testing.assert_allclose(
        got["dice"], f1_score(yt, yp, labels=LABELS, average=None), atol=1e-6
    )
    np.testing.assert_allclose(
        got["iou"], jaccard_score(yt, yp, labels=LABELS, average=None), atol=1e-6
    )
    np.testing.assert_allclose(
        got["precision"], precision_score(yt, yp, labels=LABELS, average=None), atol=1e-6
    )
    np.testing.assert_allclose(
        got["recall"], recall_score(yt, yp, labels=LABELS, average=None), atol=1e-6
    )
    # Specificity = recall of "not class c".
    for c in res.classes:
        spec = recall_score(yt != c.index, yp != c.index)
        assert c.specificity == pytest.approx(spec, abs=1e-6)
    assert res.overall_accuracy == pytest.approx(float(np.mean(yt == yp)), abs=1e-12)
    assert res.mean_iou == pytest.approx(
        jaccard_score(yt, yp, labels=LABELS, average="macro"), abs=1e-6
    )
    freq = np.bincount(yt, minlength=4) / yt.size
    assert res.fw_iou == pytest.approx(float(np.sum(freq * got["iou"])), abs=1e-12)


@pytest.mark.parametrize("make", [_random, _structured])
def test_equals_monai(make):
    pred, ref = make()
    res = overlap_metrics(pred, ref, labels=LABELS)
    yp = one_hot(torch.as_tensor(pred[None, None].astype(np.int64)), num_classes=4)
    yt = one_hot(torch.as_tensor(ref[None, None].astype(np.int64)), num_classes=4)
    dice = DiceMetric(include_background=True, reduction="none")(yp, yt)[0].numpy()
    iou = MeanIoU(include_background=True, reduction="none")(yp, yt)[0].numpy()
    np.testing.assert_allclose([c.dice for c in res.classes], dice, atol=1e-6)
    np.testing.assert_allclose([c.iou for c in res.classes], iou, atol=1e-6)


def test_tversky_identities():
    pred, ref = _random(seed=3)
    half = overlap_metrics(pred, ref, tversky=(0.5, 0.5))
    one = overlap_metrics(pred, ref, tversky=(1.0, 1.0))
    np.testing.assert_allclose(
        [c.tversky for c in half.classes], [c.dice for c in half.classes], atol=1e-12
    )
    np.testing.assert_allclose(
        [c.tversky for c in one.classes], [c.iou for c in one.classes], atol=1e-12
    )
    skew = overlap_metrics(pred, ref, tversky=(0.3, 0.7))
    c = skew.classes[1]
    assert c.tversky == pytest.approx(c.tp / (c.tp + 0.3 * c.fp + 0.7 * c.fn))


def test_streamed_equals_in_memory():
    pred, ref = _random(shape=(6, 50, 70), seed=5)
    mem = overlap_metrics(pred, ref)
    lazy = overlap_metrics(
        da.from_array(pred, chunks=(3, 17, 23)), da.from_array(ref, chunks=(2, 25, 35))
    )
    np.testing.assert_array_equal(mem.confusion, lazy.confusion)
    assert mem.rows() == lazy.rows()


def test_ignore_index_and_valid_mask_match_sklearn_on_kept_samples():
    pred, ref = _random(seed=7)
    ref = ref.copy()
    ref[:5] = 255
    valid = np.ones(ref.shape, bool)
    valid[-4:] = False
    res = overlap_metrics(pred, ref, ignore_index=255, valid=valid)
    keep = (ref != 255) & valid
    assert res.labels == LABELS
    assert res.n_valid == int(keep.sum())
    f1 = f1_score(ref[keep], pred[keep], labels=LABELS, average=None)
    np.testing.assert_allclose([c.dice for c in res.classes], f1, atol=1e-6)


def test_prediction_outside_labels_counts_as_miss():
    ref = np.array([1, 1, 0, 0])
    pred = np.array([1, 7, 0, 0])
    res = overlap_metrics(pred, ref, labels=[0, 1])
    assert res.confusion.tolist() == [[2, 0, 0], [0, 1, 1]]
    assert res.classes[1].recall == 0.5


def test_empty_conventions():
    ref = np.zeros((4, 4), np.uint8)
    pred = np.zeros((4, 4), np.uint8)
    pred[0, 0] = 2
    brats = overlap_metrics(pred, ref, labels=[0, 1, 2])
    assert brats.classes[1].dice == 1.0  # absent from both
    assert brats.classes[2].dice == 0.0  # only predicted
    nan = overlap_metrics(pred, ref, labels=[0, 1, 2], empty="nan")
    assert np.isnan(nan.classes[1].dice) and nan.classes[2].dice == 0.0
    with pytest.raises(InvalidInputError):
        overlap_metrics(pred, ref, empty="zero")  # type: ignore[arg-type]


def test_areas_in_units():
    pred, ref = _structured()
    res = overlap_metrics(pred, ref, labels=LABELS, sample_size=900.0, area_unit="m2")
    assert res.classes[2].ref_area == pytest.approx(np.count_nonzero(ref == 2) * 900.0)
    assert res.classes[2].pred_area == pytest.approx(np.count_nonzero(pred == 2) * 900.0)


def test_shape_mismatch_raises():
    with pytest.raises(InvalidInputError):
        overlap_metrics(np.zeros((3, 3)), np.zeros((3, 4)))


@settings(max_examples=25, deadline=None)
@given(
    arrays(np.uint8, st.tuples(st.integers(1, 12), st.integers(1, 12)), elements=st.integers(0, 4)),
    st.integers(0, 2**32 - 1),
    st.integers(1, 5),
)
def test_property_confusion_equals_sklearn_for_any_chunking(ref, seed, chunk):
    pred = np.random.default_rng(seed).integers(0, 5, ref.shape).astype(np.uint8)
    res = overlap_metrics(
        da.from_array(pred, chunks=chunk), da.from_array(ref, chunks=chunk + 1), labels=range(5)
    )
    want = confusion_matrix(ref.ravel(), pred.ravel(), labels=range(5))
    np.testing.assert_array_equal(res.confusion[:, :5], want)
