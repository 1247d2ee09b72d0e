"""Block planning: cores tile the scene exactly, read windows add an exact, clipped halo."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geomed_seg.batch.blocks import Block, aligned_block_size, plan_blocks
from geomed_seg.errors import InvalidInputError


def test_small_example_by_hand():
    blocks = plan_blocks((5, 7), 4, halo=1)
    assert [b.index for b in blocks] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    b = blocks[1]
    assert b.core == (slice(0, 4), slice(4, 7))
    assert b.read == (slice(0, 5), slice(3, 7))
    assert b.core_in_read == (slice(0, 4), slice(1, 4))
    assert blocks[3].core == (slice(4, 5), slice(4, 7))
    assert b.offsets() == {
        "core": {"row_off": 0, "col_off": 4, "height": 4, "width": 3},
        "read": {"row_off": 0, "col_off": 3, "height": 5, "width": 4},
    }


def test_align_rounds_up_to_whole_tiles():
    assert aligned_block_size(100, (64, 48)) == (128, 144)
    assert aligned_block_size((128, 96), (64, 48)) == (128, 96)
    blocks = plan_blocks((300, 300), 100, halo=0, align=(64, 64))
    assert all(b.core[0].start % 64 == 0 and b.core[1].start % 64 == 0 for b in blocks)
    assert {b.core[0].stop - b.core[0].start for b in blocks} == {128, 300 - 256}


def test_single_block_when_scene_is_small():
    (b,) = plan_blocks((10, 20), 64, halo=8)
    assert b.core == b.read == (slice(0, 10), slice(0, 20)) and b.index == (0, 0)


@pytest.mark.parametrize(
    ("shape", "size", "halo", "match"),
    [
        ((10, 10), 0, 1, "block_size"),
        ((10, 10), (4, -1), 1, "block_size"),
        ((10, 10), 4, -1, "halo"),
        ((10, 10), 4.5, 1, "block_size"),
        ((10,), 4, 1, "scene shape"),
        ((0, 10), 4, 1, "scene shape"),
    ],
)
def test_invalid_arguments(shape, size, halo, match):
    with pytest.raises(InvalidInputError, match=match):
        plan_blocks(shape, size, halo)


@settings(max_examples=150, deadline=None)
@given(
    h=st.integers(1, 60),
    w=st.integers(1, 60),
    bh=st.integers(1, 25),
    bw=st.integers(1, 25),
    halo=st.integers(0, 12),
    align=st.one_of(st.none(), st.tuples(st.integers(1, 9), st.integers(1, 9))),
)
def test_cores_tile_scene_and_halo_is_exact(h, w, bh, bw, halo, align):
    blocks = plan_blocks((h, w), (bh, bw), halo, align=align)
    count = np.zeros((h, w), np.int32)
    for b in blocks:
        assert isinstance(b, Block)
        count[b.core] += 1
        for c, r, inner, n in zip(b.core, b.read, b.core_in_read, (h, w), strict=True):
            assert 0 <= r.start <= c.start < c.stop <= r.stop <= n  # read ⊇ core, in scene
            assert r.start == max(c.start - halo, 0) and r.stop == min(c.stop + halo, n)
            assert (inner.start + r.start, inner.stop + r.start) == (c.start, c.stop)
    assert (count == 1).all()  # union == scene, cores disjoint
    assert [b.index for b in blocks] == sorted(b.index for b in blocks)  # row-major
    rows = {b.index[0] for b in blocks}
    cols = {b.index[1] for b in blocks}
    assert len(blocks) == len(rows) * len(cols)
    # cores in a block row share their rows; the core size is the aligned block size but the last
    eh, ew = aligned_block_size((bh, bw), align)
    for b in blocks:
        ys, xs = b.core
        assert ys.start == b.index[0] * eh and xs.start == b.index[1] * ew
        assert ys.stop - ys.start == min(eh, h - ys.start)
        assert xs.stop - xs.start == min(ew, w - xs.start)
    # the same pixels through a read window and core_in_read as through the core
    scene = np.arange(h * w).reshape(h, w)
    for b in blocks:
        np.testing.assert_array_equal(scene[b.read][b.core_in_read], scene[b.core])
