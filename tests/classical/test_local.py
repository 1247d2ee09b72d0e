"""Tiled local methods equal scikit-image on the whole image; thresholds equal scikit-image's."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.feature import canny as sk_canny
from skimage.feature import peak_local_max
from skimage.filters import threshold_multiotsu
from skimage.segmentation import watershed as sk_watershed

from geomed_seg.classical.local import canny, watershed
from geomed_seg.classical.thresholds import (
    apply_thresholds,
    multiotsu_thresholds,
    sar_water,
    streamed_histogram,
)
from geomed_seg.core import Image


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True when two label images are equal up to a permutation of ids (0 fixed)."""
    if not np.array_equal(a == 0, b == 0):
        return False
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]


@pytest.mark.parametrize("low_high", [(0.05, 0.05), (None, None)])
def test_canny_tiled_equals_whole(blob_image, low_high):
    _, img, image = blob_image
    assert image.darray.numblocks[1:] == (3, 3)
    ours = canny(image, sigma=1.5, low_threshold=low_high[0], high_threshold=low_high[1]).compute()[
        0
    ]
    ref = sk_canny(img.astype(np.float32), 1.5, *low_high)
    np.testing.assert_array_equal(ours, ref.astype(np.uint8))
    assert ref.sum() > 50


def test_watershed_distance_markers_match_gallery_recipe(blob_image, geogrid):
    mask, _, _ = blob_image
    image = Image.from_array(mask[None].astype(np.uint8), geogrid(mask.shape), chunks=(1, 48, 60))
    ours = watershed(image, threshold=0.5, halo=40).compute()[0]
    # scikit-image gallery "Watershed segmentation" on the whole image
    dist = ndi.distance_transform_edt(mask)
    coords = peak_local_max(dist, footprint=np.ones((3, 3)), labels=mask.astype(np.int32))
    peaks = np.zeros(mask.shape, bool)
    peaks[tuple(coords.T)] = True
    markers, _ = ndi.label(peaks, structure=np.ones((3, 3)))
    ref = sk_watershed(-dist, markers, mask=mask)
    assert same_partition(ours, ref)
    assert len(np.unique(ref)) > 10


def test_multiotsu_equals_skimage_on_same_histogram(geogrid):
    rng = np.random.default_rng(0)
    a = np.concatenate([rng.normal(m, 1, 3000) for m in (0, 5, 10)]).reshape(1, 90, 100)
    image = Image.from_array(a.astype(np.float32), geogrid((90, 100)), chunks=(1, 30, 25))
    ts = multiotsu_thresholds(image, classes=3, bins=256)
    counts, centers = streamed_histogram(image, bins=256)
    ref = threshold_multiotsu(hist=(counts, centers), classes=3)
    np.testing.assert_allclose(ts, ref)
    # the streamed histogram is numpy's histogram of the whole array
    ref_counts, _ = np.histogram(
        a.astype(np.float32).astype(np.float64),
        bins=256,
        range=(a.astype(np.float32).min(), a.astype(np.float32).max()),
    )
    np.testing.assert_array_equal(counts, ref_counts)
    labels = apply_thresholds(image, ts).compute()[0]
    np.testing.assert_array_equal(labels, np.digitize(a[0].astype(np.float32), ts, right=True))
    assert 2 < ts[0] < 3 and 7 < ts[1] < 8


def test_sar_water_is_low_backscatter(geogrid):
    rng = np.random.default_rng(1)
    db = np.where(np.arange(100)[None, :] < 40, -22.0, -8.0) + rng.normal(0, 1.0, (80, 100))
    lin = (10 ** (db / 10)).astype(np.float32)
    lin[0, 0] = 0.0  # invalid in dB -> nodata
    image = Image.from_array(lin[None], geogrid(lin.shape), chunks=(1, 40, 50))
    water, t = sar_water(image)
    w = water.compute()[0]
    assert -19 < t < -11
    assert w[0, 0] == 255
    assert (w[1:, :40] == 1).mean() > 0.99 and (w[:, 60:] == 0).mean() > 0.99
    fixed, t2 = sar_water(image, threshold_db=-15.0)
    np.testing.assert_array_equal(fixed.compute()[0][1:], (db[1:] < -15).astype(np.uint8))
    assert t2 == -15.0


def test_threshold_marker_watershed_on_coins_tiled_equals_gallery():
    from skimage import data
    from skimage.filters import sobel

    from geomed_seg.core import GeoGrid

    img = data.coins()
    markers = np.zeros_like(img)
    markers[img < 30] = 1
    markers[img > 150] = 2
    ref = sk_watershed(sobel(img), markers)  # scikit-image gallery, whole image
    image = Image.from_array(
        img[None], GeoGrid(None, (1, 0, 0, 0, 1, 0), img.shape), chunks=(1, 128, 128)
    )
    ours = watershed(image, markers="thresholds", low=30, high=150, halo=64).compute()[0]
    np.testing.assert_array_equal(ours, ref)


def test_canny_on_volume_is_slice_wise():
    from geomed_seg.core import VoxelGrid

    rng = np.random.default_rng(2)
    vol = np.zeros((4, 40, 50), np.float32)
    vol[:, 10:30, 15:35] = 1.0
    vol += rng.normal(0, 0.05, vol.shape).astype(np.float32)
    image = Image.from_array(vol[None], VoxelGrid(np.eye(4), vol.shape), chunks=(1, 2, 20, 25))
    ours = canny(image, sigma=1.0, low_threshold=0.1, high_threshold=0.1).compute()[0]
    ref = np.stack([sk_canny(s, 1.0, 0.1, 0.1) for s in vol])
    np.testing.assert_array_equal(ours, ref.astype(np.uint8))


def test_chunks_smaller_than_the_halo_are_merged_not_wrong(blob_image):
    _, img, image = blob_image
    small = image.rechunk((1, 8, 9))  # halo ceil(4 * 1.5) + 3 = 9 > 8
    ours = canny(small, sigma=1.5, low_threshold=0.05, high_threshold=0.05).compute()[0]
    ref = sk_canny(img.astype(np.float32), 1.5, 0.05, 0.05)
    np.testing.assert_array_equal(ours, ref.astype(np.uint8))
