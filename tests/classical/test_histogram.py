"""Mergeable histograms: merged = one histogram of all values (NumPy), Otsu = scikit-image's
on all pixels, separability against closed forms, and the not-bimodal warning."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import rasterio
from affine import Affine
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage.filters import threshold_otsu

from geomed_seg.classical.histogram import (
    ETA_MIN,
    Histogram,
    decide,
    histogram_of,
    merge_all,
    otsu,
    separability,
)
from geomed_seg.classical.indices import INDEX_BINS, INDEX_RANGE, spectral_index
from geomed_seg.classical.thresholds import image_histogram, otsu_decision, value_range_of
from geomed_seg.core import GeoGrid, Image


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    n=st.integers(1, 400),
    cuts=st.lists(st.integers(0, 400), max_size=5),
    bins=st.integers(2, 50),
)
def test_merged_parts_equal_numpy_histogram_of_all(seed, n, cuts, bins):
    v = np.random.default_rng(seed).normal(0, 1, n)
    v[:: max(n // 7, 1)] = np.nan  # ignored like nodata
    parts = np.split(v, sorted({c % (n + 1) for c in cuts}))
    merged = merge_all([histogram_of(p, -2.0, 2.0, bins) for p in parts])
    finite = v[np.isfinite(v)]
    ref, _ = np.histogram(np.clip(finite, -2, 2), bins=bins, range=(-2, 2))
    np.testing.assert_array_equal(merged.counts, ref)
    assert merged.clipped == int(((finite < -2) | (finite > 2)).sum())
    back = Histogram.from_json(merged.to_json())
    np.testing.assert_array_equal(back.counts, merged.counts)
    assert (back.lo, back.hi, back.clipped) == (merged.lo, merged.hi, merged.clipped)


def test_merge_refuses_other_bins():
    with pytest.raises(ValueError, match="different bins"):
        Histogram.empty(0, 1, 10).merge(Histogram.empty(0, 2, 10))


def _ndwi_tiles(path, rows=3, cols=3):
    """NDWI (float32, as the package computes it) of the scene cut into rows x cols windows
    (remainders in the last row/column)."""
    with rasterio.open(path) as ds:
        a = ds.read().astype(np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):
        nd = (a[1] - a[3]) / (a[1] + a[3])
    h, w = nd.shape
    ys = [0, *[h // rows * i for i in range(1, rows)], h]
    xs = [0, *[w // cols * i for i in range(1, cols)], w]
    return nd, [nd[ys[i] : ys[i + 1], xs[j] : xs[j + 1]] for i in range(rows) for j in range(cols)]


def test_merged_tile_otsu_equals_skimage_on_all_pixels(landsat_path):
    nd, tiles = _ndwi_tiles(landsat_path)
    merged = merge_all([histogram_of(t, *INDEX_RANGE, INDEX_BINS) for t in tiles])
    t = otsu(merged)
    allpx = np.concatenate([x[np.isfinite(x)] for x in tiles])
    assert allpx.size == np.isfinite(nd).sum() == merged.n
    # exact Otsu: every distinct value its own bin (no binning at all)
    values, counts = np.unique(allpx, return_counts=True)
    exact = threshold_otsu(hist=(counts, values))
    assert abs(t - exact) <= merged.bin_width
    fine = threshold_otsu(allpx, nbins=4096)
    assert abs(t - fine) <= merged.bin_width + (allpx.max() - allpx.min()) / 4096
    # the classifications agree on (almost) every pixel
    assert ((allpx > t) != (allpx > exact)).mean() < 1e-3
    # the same histogram from the streamed image path
    with rasterio.open(landsat_path) as ds:
        grid = GeoGrid(ds.crs, ds.transform, (ds.height, ds.width))
        img = Image.from_array(ds.read(), grid, chunks=(6, 50, 70),
                               attrs={"band_names": ["blue", "green", "red", "nir", "swir1",
                                                     "swir2"]})  # fmt: skip
    streamed = image_histogram(spectral_index(img, "ndwi"), INDEX_BINS, INDEX_RANGE)
    np.testing.assert_array_equal(streamed.counts, merged.counts)


def test_separability_closed_forms():
    rng = np.random.default_rng(0)
    gauss = rng.normal(0, 1, 400_000)
    h = histogram_of(gauss, -6, 6, 2000)
    d = decide(h)
    # a normal distribution split at its mean: between / total variance = 2 / pi
    assert d.eta == pytest.approx(2 / np.pi, abs=0.01) and not d.bimodal
    uni = histogram_of(rng.uniform(-1, 1, 400_000), -1, 1, 2000)
    du = decide(uni)
    assert du.eta == pytest.approx(0.75, abs=0.01)  # uniform: 3/4
    assert not du.bimodal  # no valley: flagged although eta >= ETA_MIN
    two = np.r_[rng.normal(0, 1, 100_000), rng.normal(8, 1, 100_000)]
    dt = decide(histogram_of(two, -5, 13, 2000))
    # two equal modes 8 apart: eta = 16 / (16 + 1) (within-class variance 1)
    assert dt.eta == pytest.approx(16 / 17, abs=0.01) and dt.bimodal
    assert dt.valley < 0.05 and 3 < dt.thresholds[0] < 5
    assert separability(histogram_of(two, -5, 13, 2000), [100.0]) == 0.0  # one class
    assert ETA_MIN == pytest.approx(2 / np.pi)


def test_not_bimodal_warns_naming_the_input(caplog):
    rng = np.random.default_rng(3)
    a = rng.normal(0.0, 0.1, (1, 120, 130)).astype(np.float32)
    grid = GeoGrid(None, Affine.identity(), (120, 130))
    img = Image.from_array(a, grid, chunks=(1, 50, 50), attrs={"source": "unimodal_scene.tif"})
    with caplog.at_level(logging.WARNING):
        d = otsu_decision(img, 1024, None)
    assert not d.bimodal
    assert any("unimodal_scene.tif" in r.getMessage() and "not bimodal" in r.getMessage()
               for r in caplog.records)  # fmt: skip
    r = value_range_of(img)
    assert (r.lo, r.hi) == (float(a.min()), float(a.max()))


def test_values_outside_a_fixed_range_are_clipped_and_warned(caplog):
    v = np.r_[np.full(90, 0.5), np.full(10, -3.0)]  # -3: an index of negative reflectances
    h = histogram_of(v, *INDEX_RANGE, INDEX_BINS)
    assert h.clipped == 10 and h.counts[0] == 10 and h.n == 100
    from geomed_seg.classical.thresholds import warn_separability

    with caplog.at_level(logging.WARNING):
        warn_separability(decide(h), "neg.tif")
    assert any("neg.tif: 10 of 100 values lie outside" in r.getMessage() for r in caplog.records)
