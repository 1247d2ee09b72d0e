"""The torch-free blending module: accumulators, labels from probabilities, invariance.

Blending invariance is MONAI's own test (a predictor returning ``2 * patch`` gives
``2 * image``); window-dependent predictions are compared with MONAI's
``sliding_window_inference`` (whose Gaussian weights come from its ``compute_importance_map``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from geomed_seg.errors import InvalidInputError
from geomed_seg.inference.blend import (
    ChunkAccumulator,
    ReduceRules,
    label_format,
    labels_from_probabilities,
    reduce_chunk,
)
from geomed_seg.inference.plan import (
    importance_map,
    plan_windows,
    regular_chunks,
    schedule_chunks,
)


def test_blend_imports_with_torch_blocked():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import geomed_seg.inference.blend as b\n"
        "assert b.labels_from_probabilities is not None\n"
        "print(sorted(m for m, v in sys.modules.items()\n"
        "             if v is not None and m.split('.')[0] in ('torch', 'monai')))"
    )
    root = str(Path(__file__).resolve().parents[2])  # this checkout, not an installed copy
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env=env)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def _blend(image, predict, roi, overlap, mode, chunk, n_classes):
    """Run every window of ``image (C, *spatial)`` through ``predict`` and blend them."""
    spatial = image.shape[1:]
    plan = plan_windows(spatial, roi, overlap)
    schedule = schedule_chunks(plan, regular_chunks(spatial, chunk))
    acc = ChunkAccumulator(plan, schedule, importance_map(plan.roi_size, mode), n_classes, False)
    padded = np.pad(image, ((0, 0), *plan.pad))
    out = np.full((n_classes, *spatial), np.nan, np.float32)
    seen = np.zeros(spatial, int)
    for i in schedule.order:
        img, _ = plan.clip(i)
        window = padded[(slice(None), *plan.windows[i])]
        valid = np.ones(tuple(s.stop - s.start for s in img), bool)
        for _, bsl, p, wsum, _ in acc.add(i, valid, predict(window)):
            assert (wsum > 0).all()
            out[(slice(None), *bsl)] = p
            seen[bsl] += 1
    assert (seen == 1).all() and not acc.open  # every chunk flushed exactly once
    return out


CASES = [  # shape (C, *spatial), roi, chunk
    ((2, 70, 93), (24, 24), 20),
    ((2, 70, 93), (24, 32), 512),
    ((1, 13, 21, 18), (16, 10, 8), 7),  # z smaller than the roi: padded windows
]


@pytest.mark.parametrize(("shape", "roi", "chunk"), CASES)
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5, 0.8])
@pytest.mark.parametrize("mode", ["constant", "gaussian"])
def test_blend_is_invariant(shape, roi, chunk, overlap, mode):
    """``2 * patch`` blends to ``2 * image``; constant windows blend to the constant."""
    image = np.random.default_rng(1).random(shape, dtype=np.float32)
    got = _blend(image, lambda w: 2 * w, roi, overlap, mode, chunk, shape[0])
    np.testing.assert_allclose(got, 2 * image, rtol=1e-5, atol=1e-6)

    const = np.array([0.3, 0.7], np.float32).reshape((2,) + (1,) * (len(shape) - 1))

    def constant(w):
        return np.broadcast_to(const, (2, *w.shape[1:]))

    got = _blend(image, constant, roi, overlap, mode, chunk, 2)
    np.testing.assert_allclose(got, np.broadcast_to(const, (2, *shape[1:])), rtol=1e-5)


@pytest.mark.parametrize(("shape", "roi", "chunk"), CASES)
@pytest.mark.parametrize(("overlap", "mode"), [(0.25, "gaussian"), (0.5, "constant"),
                                               (0.6, "gaussian")])  # fmt: skip
def test_window_dependent_blend_equals_monai(shape, roi, chunk, overlap, mode):
    """Each window predicts its own mean (so windows disagree): the weighted blend equals
    MONAI's ``sliding_window_inference`` with its own importance map."""
    torch = pytest.importorskip("torch")
    from monai.inferers import sliding_window_inference

    image = np.random.default_rng(2).random(shape, dtype=np.float32)

    def mean_np(w):
        return np.broadcast_to(w.mean(axis=tuple(range(1, w.ndim)), keepdims=True), w.shape)

    def mean_torch(t):
        return t.mean(dim=tuple(range(2, t.ndim)), keepdim=True).expand_as(t).clone()

    got = _blend(image, mean_np, roi, overlap, mode, chunk, shape[0])
    with torch.no_grad():
        ref = sliding_window_inference(torch.from_numpy(image)[None], roi, 3, mean_torch,
                                       overlap=overlap, mode=mode)  # fmt: skip
    np.testing.assert_allclose(got, ref[0].numpy(), rtol=1e-5, atol=1e-6)
    assert np.ptp(got) > 0.01  # the windows really disagreed


def test_one_channel_thresholds_and_several_argmax():
    rng = np.random.default_rng(3)
    p1 = rng.random((1, 9, 11), dtype=np.float32)
    lab = labels_from_probabilities(p1, [1])
    np.testing.assert_array_equal(lab, np.where(p1[0] > 0.5, 1, 0))
    lab = labels_from_probabilities(p1, [3], threshold=0.8)
    np.testing.assert_array_equal(lab, np.where(p1[0] > 0.8, 3, 0))
    p4 = rng.random((4, 9, 11), dtype=np.float32)
    lab = labels_from_probabilities(p4, [0, 1, 2, 4])
    np.testing.assert_array_equal(lab, np.array([0, 1, 2, 4])[p4.argmax(0)])
    assert lab.dtype == np.uint8
    assert labels_from_probabilities(p4, [0, 1, 2, 300]).dtype == np.uint16


def test_nodata_from_nan_and_invalid_pixels():
    p = np.full((2, 3, 4), 0.25, np.float32)
    p[1] = 0.75
    p[:, 0, 0] = np.nan  # no answer
    p[0, 0, 1] = np.nan  # one channel NaN: no answer either
    invalid = np.zeros((3, 4), bool)
    invalid[2, 3] = True
    lab = labels_from_probabilities(p, [0, 7], nodata=99, invalid=invalid)
    want = np.full((3, 4), 7, np.uint8)
    want[0, 0] = want[0, 1] = want[2, 3] = 99
    np.testing.assert_array_equal(lab, want)
    # no nodata label: a NaN channel never wins, invalid pixels keep their label
    lab = labels_from_probabilities(p, [0, 7], invalid=invalid)
    assert lab[0, 1] == 7 and lab[2, 3] == 7
    one = np.array([[[np.nan, 0.9, 0.1]]], np.float32)
    np.testing.assert_array_equal(labels_from_probabilities(one, [1], nodata=255), [[255, 1, 0]])


def test_label_format_follows_classes_and_card_nodata():
    assert label_format([0, 1], None) == (np.dtype(np.uint8), 255)
    assert label_format([0, 1], 0 + 254) == (np.dtype(np.uint8), 254)
    assert label_format([0, 1], 1000) == (np.dtype(np.uint16), 1000)
    assert label_format([0, 300], None) == (np.dtype(np.uint16), 65535)
    assert label_format([], None) == (np.dtype(np.uint8), 255)


def test_labels_refuse_a_wrong_lut_or_threshold():
    p = np.zeros((3, 2, 2), np.float32)
    with pytest.raises(InvalidInputError, match="one label per channel"):
        labels_from_probabilities(p, [0, 1])
    with pytest.raises(InvalidInputError, match="threshold"):
        labels_from_probabilities(p[:1], [1], threshold=1.5)


def test_reduce_chunk_marks_uncovered_and_invalid_pixels():
    prob = np.zeros((1, 2, 3), np.float32)
    prob[0, :, 1:] = 0.9
    wsum = np.ones((2, 3), np.float32)
    wsum[1, 2] = 0  # no window ran here
    valid = np.ones((2, 3), bool)
    valid[0, 2] = False
    rules = ReduceRules("labels", np.array([1]), np.dtype(np.uint8), 255, mask_invalid=True)
    lab = reduce_chunk(prob, wsum, valid, rules)
    np.testing.assert_array_equal(lab, [[[0, 1, 255], [0, 1, 255]]])
    lab = reduce_chunk(prob, wsum, valid, replace(rules, mask_invalid=False))
    np.testing.assert_array_equal(lab, [[[0, 1, 1], [0, 1, 255]]])
    out = reduce_chunk(prob.copy(), wsum, valid, replace(rules, output="probabilities"))
    assert np.isnan(out[0, :, 2]).all() and not np.isnan(out[0, :, :2]).any()


def test_reduce_chunk_activates_blended_logits_once():
    """``blend: logits`` cards: the chunk's blended logits are activated, then reduced."""
    logits = np.array([[[2.0, -1.0]], [[0.0, 1.0]]], np.float32)  # (K=2, 1, 2)
    wsum, valid = np.ones((1, 2), np.float32), np.ones((1, 2), bool)
    rules = ReduceRules("probabilities", np.array([0, 1]), np.dtype(np.float32), None, False,
                        blend_logits=True)  # fmt: skip
    e = np.exp(logits - logits.max(0))
    np.testing.assert_allclose(reduce_chunk(logits.copy(), wsum, valid, rules), e / e.sum(0),
                               rtol=1e-6)  # fmt: skip
    lab = reduce_chunk(logits, wsum, valid, replace(rules, output="labels", dtype=np.uint8))
    np.testing.assert_array_equal(lab, [[[0, 1]]])
