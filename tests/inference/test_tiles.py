"""Tiled runs: each tile runs exactly the windows touching its core; outputs equal one run and MONAI."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from monai.inferers import sliding_window_inference as monai_swi

from geomed_seg.core.image import Image
from geomed_seg.inference import tiles
from geomed_seg.inference.plan import plan_windows, regular_chunks
from geomed_seg.inference.segment import segment
from geomed_seg.inference.sinks import MemorySink
from geomed_seg.inference.tiles import split_plan, tiled_window_count
from tests.inference.conftest import raster, tiny_net, volume


def _touches(window, core):
    return all(w.start < c.stop and w.stop > c.start for w, c in zip(window, core, strict=True))


@settings(max_examples=30, deadline=None)
@given(
    shape=st.lists(st.integers(3, 70), min_size=2, max_size=3),
    roi=st.integers(2, 20),
    overlap=st.sampled_from([0.0, 0.25, 0.5, 0.8]),
    chunk=st.integers(3, 25),
    edge=st.integers(1, 50),
)
def test_tiles_run_exactly_the_windows_touching_their_core(shape, roi, overlap, chunk, edge):
    plan = plan_windows(shape, roi, overlap)
    assume(len(plan) <= 2000)  # the brute-force reference visits every window per tile
    chunks = regular_chunks(shape, chunk)
    bounds = [set(np.cumsum((0, *c)).tolist()) for c in chunks]
    covered = np.zeros(shape, np.int32)
    runs = 0
    # the whole plan's windows, clipped to the image
    clipped = [plan.clip(i)[0] for i in range(len(plan))]
    for tile in split_plan(plan, chunks, edge):
        covered[tile.core] += 1
        for c, b in zip(tile.core, bounds, strict=True):  # cores are whole chunks
            assert c.start in b and c.stop in b
        # read-local chunks tile the read region; each is inside or outside the core
        assert tuple(sum(c) for c in tile.chunks) == tile.plan.image_shape
        got = sorted(
            tuple(
                (s.start + r.start, s.stop + r.start)
                for s, r in zip(tile.plan.clip(i)[0], tile.read, strict=True)
            )
            for i in range(len(tile.plan))
        )
        want = sorted(
            tuple((s.start, s.stop) for s in w) for w in clipped if _touches(w, tile.core)
        )
        assert got == want
        runs += len(tile.plan)
    assert (covered == 1).all()  # cores partition the image
    assert runs == tiled_window_count(plan, chunks, edge) >= len(plan)


def test_small_images_are_one_tile_with_the_plan_itself():
    plan = plan_windows((700, 900), 64, 0.25)
    (tile,) = split_plan(plan, regular_chunks((700, 900), 512))
    assert tile.plan is plan and tile.read == tile.core == (slice(0, 700), slice(0, 900))


def test_a_200000_square_plan_stays_small():
    """A million windows: the plan holds per-axis starts, tiles are made one at a time."""
    plan = plan_windows((200_000, 200_000), 256, 0.25)
    assert len(plan) == 1042**2
    assert plan.windows[-1] == (slice(199_744, 200_000),) * 2
    first = next(iter(split_plan(plan, regular_chunks((200_000, 200_000), 512))))
    assert (
        first.core == (slice(0, 8192),) * 2 and len(first.plan) == 43**2
    )  # starts 0, 192, ..., 8064


def _probs(img, net, roi, mode, chunk, **kw):
    return segment(
        img, net, roi_size=roi, overlap=0.25, mode=mode, output="probabilities",
        sink=MemorySink(chunk=chunk), skip="none", device="cpu", batch_size=5, **kw,
    )  # fmt: skip


@pytest.mark.parametrize("mode", ["gaussian", "constant"])
def test_tiled_raster_equals_untiled_and_monai(monkeypatch, mode):
    img = raster(shape=(3, 150, 131), chunks=(3, 40, 50))
    net = tiny_net(2, 3, 4)
    whole = _probs(img, net, (24, 20), mode, 16)
    monkeypatch.setitem(tiles.TILE_EDGE, 2, 40)  # cores cut at 48, 96, 144 (y) and 48, 96 (x)
    tiled = _probs(img, net, (24, 20), mode, 16)
    assert tiled.stats["tiles"] == 12 and whole.stats["tiles"] == 1
    assert tiled.stats["windows_run"] > whole.stats["windows_run"]  # border windows rerun
    # same windows, weights and order; only the model's rounding may differ with the batch
    np.testing.assert_allclose(tiled.image.compute(), whole.image.compute(), atol=1e-6, rtol=0)
    with torch.no_grad():
        x = torch.from_numpy(img.compute())[None]
        ref = monai_swi(x, (24, 20), 3, lambda t: torch.softmax(net(t), 1), 0.25, mode=mode)
    np.testing.assert_allclose(tiled.image.compute(), ref[0].numpy(), atol=1e-4, rtol=0)


def test_tiled_labels_with_nodata_equal_untiled(monkeypatch):
    x = np.random.default_rng(2).random((3, 120, 140), dtype=np.float32)
    x[:, 30:100, 10:90] = -1  # a nodata hole larger than a window
    base = raster(shape=(3, 120, 140), chunks=(3, 32, 32))
    img = Image.from_array(x, base.grid, nodata=-1.0, chunks=(3, 32, 32))
    net = tiny_net(2, 3, 3)
    kw = dict(roi_size=(16, 16), overlap=0.5, sink=MemorySink(chunk=16), device="cpu")
    whole = segment(img, net, **kw)
    monkeypatch.setitem(tiles.TILE_EDGE, 2, 48)
    tiled = segment(img, net, **kw)
    assert tiled.stats["tiles"] == 9 and tiled.stats["windows_skipped"] > 0
    np.testing.assert_array_equal(tiled.image.compute(), whole.image.compute())
    assert (tiled.image.compute()[0, 40:90, 20:80] == tiled.image.nodata).all()


def test_tiled_volume_with_padding_equals_untiled(monkeypatch):
    img = volume(shape=(2, 13, 40, 36), chunks=(2, 5, 8, 8))  # z padded: one tile along z
    net = tiny_net(3, 2, 3)
    whole = _probs(img, net, (16, 10, 8), "gaussian", 8)
    monkeypatch.setitem(tiles.TILE_EDGE, 3, 16)
    tiled = _probs(img, net, (16, 10, 8), "gaussian", 8)
    assert tiled.stats["tiles"] == 9
    np.testing.assert_allclose(tiled.image.compute(), whole.image.compute(), atol=1e-6, rtol=0)


@pytest.mark.slow
def test_huge_sparse_raster_rss_stays_flat(tmp_path):
    """benchmarks/huge_sparse.py, shortened: a 100000² sparse GeoTIFF (8 tiles with data)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "huge_sparse.py"), "--size", "100000",
         "--blocks", "8", "--workdir", str(tmp_path), "--output", "discard", "--at", "25", "50"],
        capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    rss = json.loads(out.stdout)["rss_mib"]
    assert set(rss) == {"25s", "50s"}, out
    assert max(rss.values()) < 1500
    assert rss["50s"] < 1.25 * rss["25s"]  # flat, not growing with the windows done
