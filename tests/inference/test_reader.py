"""Block-cached window reads: equal to slicing, each block computed once, bounded cache."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
from affine import Affine

from geomed_seg.core import GeoGrid, Image
from geomed_seg.inference.plan import plan_windows, schedule_chunks
from geomed_seg.inference.reader import BlockCache, WindowReader


def _counting_array(arr: np.ndarray, chunks) -> tuple[da.Array, list]:
    """A dask array whose block reads are recorded (an independent count of I/O)."""
    calls: list = []

    def load(block, block_info=None):
        calls.append(tuple(tuple(r) for r in block_info[None]["array-location"]))
        return block

    base = da.from_array(arr, chunks=chunks)
    return base.map_blocks(load, dtype=arr.dtype), calls


@pytest.mark.parametrize("chunk", [(3, 64, 64), (3, 100, 37), (1, 50, 50)])
def test_windows_equal_slicing_and_blocks_read_once(chunk):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 1000, (3, 300, 220)).astype(np.uint16)
    darr, calls = _counting_array(arr, chunk)
    plan = plan_windows((300, 220), (64, 64), 0.5)
    order = schedule_chunks(plan, ((64,) * 4 + (44,), (64,) * 3 + (28,))).order
    windows = [plan.clip(i)[0] for i in order]
    cache = BlockCache(darr, 1, windows)
    for w in windows:
        np.testing.assert_array_equal(cache.read(w), arr[(slice(None), *w)])
    n_blocks = int(np.prod([len(c) for c in darr.chunks]))
    assert len(calls) == n_blocks  # every block exactly once (dask counted them)
    assert cache.cache == {} and cache.remaining == {}
    # held blocks stay within about two rows of blocks, not the whole image
    assert cache.peak_blocks <= 2 * len(darr.chunks[2]) + 2


def test_reader_validity_from_data_and_from_mask():
    arr = np.ones((2, 90, 80), np.float32)
    arr[:, :30] = -1.0
    grid = GeoGrid(None, Affine.identity(), (90, 80))
    img = Image.from_array(arr, grid, nodata=-1.0, chunks=(2, 40, 40))
    plan = plan_windows((90, 80), (32, 32), 0.25)
    reader = WindowReader(img, plan, range(len(plan)))
    for i in range(len(plan)):
        w = plan.clip(i)[0]
        data, valid = reader.read(i)
        np.testing.assert_array_equal(data, arr[(slice(None), *w)])
        np.testing.assert_array_equal(valid, img.valid_mask().compute()[w])
    mask = np.zeros((90, 80), bool)
    mask[50:, 10:] = True
    import xarray as xr

    masked = Image(
        img.data, grid, None, xr.DataArray(da.from_array(mask, chunks=(40, 40)), dims=("y", "x"))
    )
    reader = WindowReader(masked, plan, range(len(plan)))
    for i in range(len(plan)):
        np.testing.assert_array_equal(reader.read(i)[1], mask[plan.clip(i)[0]])


@pytest.mark.parametrize("threads,readahead", [(2, 1), (3, 4)])
def test_pool_reads_ahead_equal_slicing_once_each(threads, readahead):
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(1)
    arr = rng.integers(0, 1000, (2, 260, 190)).astype(np.uint16)
    darr, calls = _counting_array(arr, (2, 64, 50))
    plan = plan_windows((260, 190), (48, 48), 0.25)
    order = schedule_chunks(plan, ((64,) * 4 + (4,), (64, 64, 62))).order
    windows = [plan.clip(i)[0] for i in order]
    with ThreadPoolExecutor(threads) as pool:
        cache = BlockCache(darr, 1, windows, pool, readahead)
        for w in windows:
            np.testing.assert_array_equal(cache.read(w), arr[(slice(None), *w)])
    assert len(calls) == int(np.prod([len(c) for c in darr.chunks]))
    assert cache.cache == {} and cache.remaining == {}
    # read-ahead adds at most `readahead` blocks to the rows in flight
    assert cache.peak_blocks <= 2 * len(darr.chunks[2]) + 2 + readahead


def test_window_inside_one_block_is_a_read_only_view():
    arr = np.arange(2 * 64 * 64, dtype=np.float32).reshape(2, 64, 64)
    darr = da.from_array(arr, chunks=(2, 32, 32))
    windows = [(slice(0, 16), slice(0, 16)), (slice(8, 40), slice(8, 40))]
    cache = BlockCache(darr, 1, windows)
    inside = cache.read(windows[0])
    assert not inside.flags.writeable and not inside.flags.owndata
    across = cache.read(windows[1])
    assert across.flags.owndata
    np.testing.assert_array_equal(across, arr[:, 8:40, 8:40])


def test_reader_pool_is_stopped_by_close():
    img = Image.from_array(
        np.zeros((1, 64, 64), np.float32), GeoGrid(None, Affine.identity(), (64, 64)),
        chunks=(1, 32, 32),
    )  # fmt: skip
    plan = plan_windows((64, 64), (32, 32), 0.0)
    with WindowReader(img, plan, range(len(plan)), threads=2) as reader:
        reader.read(0)
        pool = reader.pool
    assert reader.pool is None and pool is not None and pool._shutdown
