"""Post-processed labels are computed once when small, and stay lazy when large."""

from __future__ import annotations

import dask.array as da
import numpy as np
from affine import Affine

from geomed_seg.core.grid import GeoGrid
from geomed_seg.core.image import Image
from geomed_seg.pipelines.methods import materialise


def _counting_labels():
    calls = []

    def model(block):
        if block.size:  # dask also calls it once on an empty block for the meta
            calls.append(block.shape)
        return (block > 0).astype(np.uint8)

    src = da.from_array(np.arange(-8, 8, dtype=np.int16).reshape(1, 4, 4), chunks=(1, 2, 2))
    grid = GeoGrid(None, Affine(10, 0, 0, 0, -10, 40), (4, 4))
    return Image.from_array(src.map_blocks(model, dtype=np.uint8), grid, nodata=255), calls


def test_small_labels_are_computed_once():
    labels, calls = _counting_labels()
    done = materialise(labels)
    n = len(calls)
    assert n == 4  # one call per chunk
    for _ in range(3):  # labels file, polygons, report: no recomputation
        np.testing.assert_array_equal(done.compute()[0], np.arange(-8, 8).reshape(4, 4) > 0)
    assert len(calls) == n
    assert done.grid == labels.grid and done.nodata == 255


def test_large_labels_stay_lazy():
    labels, calls = _counting_labels()
    lazy = materialise(labels, max_bytes=8)
    assert not calls
    lazy.compute()
    lazy.compute()
    assert len(calls) == 8
