"""Batches of the engine's reader: gathered raw, normalised once per batch, equal to per window."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from affine import Affine

from geomed_seg.core import GeoGrid, Image
from geomed_seg.inference.engine import iter_batches
from geomed_seg.inference.plan import plan_windows, schedule_chunks
from geomed_seg.inference.reader import WindowReader
from geomed_seg.models import ModelCard


def _card(norm: dict) -> ModelCard:
    return ModelCard(
        name="t", architecture="x", spatial_dims=2, in_channels=3, normalisation=norm,
        classes=[{"index": 0, "name": "a"}, {"index": 1, "name": "b"}], roi_size=[32, 32],
    )  # fmt: skip


@pytest.mark.parametrize(
    "norm",
    [
        {"type": "meanstd", "mean": [100.0, 200.0, 300.0], "std": [10.0, 20.0, 30.0]},
        {"type": "percentile", "low": 2.0, "high": 98.0},
    ],
)
@pytest.mark.parametrize("shape", [(120, 90), (20, 90)])  # the second pads (y < roi)
def test_batched_normalisation_equals_per_window(norm, shape):
    rng = np.random.default_rng(0)
    arr = rng.integers(1, 4000, (3, *shape)).astype(np.uint16)
    arr[:, : shape[0] // 3, :20] = 0  # some nodata: skipped windows ride along
    img = Image.from_array(
        arr, GeoGrid(None, Affine.identity(), shape), nodata=0, chunks=(3, 64, 64)
    )
    card = _card(norm)
    plan = plan_windows(shape, (32, 32), 0.25)
    order = schedule_chunks(plan, ((shape[0],), (shape[1],))).order
    skip = lambda data, valid: not valid.any()  # noqa: E731
    with WindowReader(img, plan, order, threads=2) as reader:
        batches = list(
            iter_batches(reader, plan, order, 5, card.normalise, skip, threading.Event())
        )
    seen = [it.index for items, _ in batches for it in items]
    assert seen == list(order)
    for items, batch in batches:
        run = [it for it in items if it.data is not None]
        assert (batch is None) == (not run)
        if batch is None:
            continue
        assert batch.dtype == np.float32 and batch.flags.c_contiguous
        for k, it in enumerate(run):
            img_sl, win_sl = plan.clip(it.index)
            clip = arr[(slice(None), *img_sl)]
            expected = np.zeros((3, 32, 32), np.float32)  # MONAI pads the normalised image
            expected[(slice(None), *win_sl)] = card.normalise(clip[None])[0]
            np.testing.assert_allclose(batch[k], expected, rtol=1e-6, atol=1e-6)
            assert np.shares_memory(it.data, batch)
