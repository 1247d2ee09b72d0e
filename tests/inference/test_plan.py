"""Window planning against MONAI's own functions, plus hypothesis properties."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from monai.data.utils import compute_importance_map, dense_patch_slices
from monai.inferers.utils import _get_scan_interval

from geomed_seg.errors import InvalidInputError
from geomed_seg.inference.plan import (
    importance_map,
    pad_widths,
    plan_windows,
    regular_chunks,
    resolve_roi,
    scan_interval,
    schedule_chunks,
)

CASES = [
    ((100, 37), (32, 32), 0.25),
    ((10, 10), (32, 16), 0.5),
    ((64, 64, 33), (16, 16, 16), 0.0),
    ((7, 50, 9), (8, 8, 8), 0.5),
    ((5,), (5,), 0.3),
    ((33, 33), (32, 32), 0.9),
]


@pytest.mark.parametrize(("shape", "roi", "overlap"), CASES)
def test_windows_equal_monai(shape, roi, overlap):
    plan = plan_windows(shape, roi, overlap)
    padded = tuple(max(a, b) for a, b in zip(shape, roi, strict=True))
    interval = _get_scan_interval(padded, roi, len(shape), (overlap,) * len(shape))
    assert plan.interval == tuple(interval)
    assert list(plan.windows) == list(dense_patch_slices(padded, roi, interval))
    assert plan.padded_shape == padded


def test_pad_like_monai():
    # MONAI: half = diff // 2 before, the rest after
    assert pad_widths((10, 40, 3), (13, 32, 8)) == ((1, 2), (0, 0), (2, 3))


def test_resolve_roi_fallbacks():
    assert resolve_roi((32, -1), (100, 64)) == (32, 64)
    assert resolve_roi(None, (7, 9)) == (7, 9)
    assert resolve_roi(16, (7, 9, 20)) == (16, 16, 16)
    assert resolve_roi((None, 4), (7, 9)) == (7, 4)
    with pytest.raises(InvalidInputError):
        resolve_roi((3, 3, 3), (7, 9))


def test_scan_interval_rejects_bad_overlap():
    with pytest.raises(InvalidInputError, match="overlap"):
        scan_interval((10,), (4,), 1.0)


@pytest.mark.parametrize("roi", [(16, 16), (15, 17), (8, 9, 10), (1, 5)])
@pytest.mark.parametrize("mode", ["gaussian", "constant"])
@pytest.mark.parametrize("sigma", [0.125, 0.5])
def test_importance_map_equals_monai(roi, mode, sigma):
    ours = importance_map(roi, mode, sigma)
    ref = compute_importance_map(roi, mode, sigma_scale=sigma, dtype=torch.float32).numpy()
    assert ours.dtype == np.float32 and ours.shape == roi
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-7)


def test_importance_map_per_axis_sigma_and_bad_mode():
    ref = compute_importance_map((12, 20), "gaussian", sigma_scale=(0.1, 0.3)).numpy()
    np.testing.assert_allclose(importance_map((12, 20), "gaussian", (0.1, 0.3)), ref, rtol=1e-6)
    with pytest.raises(InvalidInputError, match="gaussian"):
        importance_map((4, 4), "gausian")


shapes = st.lists(st.integers(1, 20), min_size=1, max_size=3)


@settings(max_examples=40, deadline=None)
@given(
    shape=shapes,
    roi_seed=st.lists(st.integers(2, 12), min_size=3, max_size=3),
    overlap=st.floats(0, 0.8),
    chunk=st.integers(3, 17),
)
def test_plan_properties(shape, roi_seed, overlap, chunk):
    roi = roi_seed[: len(shape)]
    plan = plan_windows(shape, roi, overlap)
    cover = np.zeros(plan.padded_shape, dtype=int)
    for w in plan.windows:
        for s, n, r in zip(w, plan.padded_shape, plan.roi_size, strict=True):
            assert 0 <= s.start and s.stop <= n and s.stop - s.start == r
        cover[w] += 1
    assert cover.min() >= 1  # every (padded) pixel covered
    assert (importance_map(plan.roi_size, "gaussian") > 0).all()
    # chunk schedule: counts consistent with the windows' actual footprint
    sched = schedule_chunks(plan, regular_chunks(plan.image_shape, chunk))
    assert sorted(sched.order) == list(range(len(plan)))
    for block, n in sched.counts.items():
        sl = sched.block_slices(block)
        touching = 0
        for i in range(len(plan)):
            img, win = plan.clip(i)
            if all(a.start < b.stop and b.start < a.stop for a, b in zip(img, sl, strict=True)):
                touching += 1
        assert touching == n == sched.windows_touching(block)
    n_blocks = int(np.prod([len(c) for c in sched.chunks]))
    assert len(sched.counts) == n_blocks  # every chunk touched at least once


def test_chunk_order_groups_by_first_chunk():
    plan = plan_windows((100, 100), (20, 20), 0.25)
    sched = schedule_chunks(plan, regular_chunks((100, 100), 50))
    firsts = [sched.touches[i][0] for i in sched.order]
    assert firsts == sorted(firsts)


def test_clip_maps_padding():
    plan = plan_windows((5, 30), (8, 8), 0.0)
    img, win = plan.clip(0)
    assert img == (slice(0, 5), slice(0, 8))
    assert win == (slice(1, 6), slice(0, 8))  # 3 rows of padding: 1 before, 2 after


def _max_open(shape, roi, chunk):
    plan = plan_windows(shape, roi, 0.25)
    sched = schedule_chunks(plan, regular_chunks(shape, chunk))
    left, open_, peak = dict(sched.counts), set(), 0
    for i in sched.order:
        for blk in sched.touches[i]:
            open_.add(blk)
            left[blk] -= 1
            if left[blk] == 0:
                open_.remove(blk)
        peak = max(peak, len(open_))
    assert not open_
    return peak


def test_open_chunks_do_not_grow_with_image_height():
    # chunk order keeps about one row of chunks open, whatever the number of rows
    short, tall = _max_open((600, 800), (64, 64), 100), _max_open((6000, 800), (64, 64), 100)
    assert short == tall <= 2 * 8 + 2
