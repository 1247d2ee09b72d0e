"""k-means vs scikit-learn, SLIC vs scikit-image, seeded window methods vs direct calls."""

from __future__ import annotations

import numpy as np
from affine import Affine
from skimage.segmentation import flood
from skimage.segmentation import slic as sk_slic
from sklearn.cluster import MiniBatchKMeans

from geomed_seg.classical.clustering import kmeans, sample_valid_pixels, slic
from geomed_seg.classical.interactive import active_contour, grabcut, region_grow
from geomed_seg.core import GeoGrid, Image


def test_kmeans_chunking_invariant_and_matches_sklearn(geogrid):
    rng = np.random.default_rng(0)
    a = np.stack([rng.normal(0, 1, (60, 80)), rng.normal(0, 1, (60, 80))])
    a[:, :, 40:] += 8
    a = a.astype(np.float32)
    a[:, 0, 0] = -9999
    g = geogrid((60, 80))
    lab1 = kmeans(Image.from_array(a, g, nodata=-9999, chunks=(2, 60, 80)), n_clusters=2)
    lab2 = kmeans(Image.from_array(a, g, nodata=-9999, chunks=(2, 16, 24)), n_clusters=2)
    l1, l2 = lab1.compute()[0], lab2.compute()[0]
    np.testing.assert_array_equal(l1, l2)
    assert l1[0, 0] == 255 and lab1.nodata == 255
    # independent reference: scikit-learn on the same sample, predicted on all pixels
    x = sample_valid_pixels(Image.from_array(a, g, nodata=-9999), 100_000)
    km = MiniBatchKMeans(2, random_state=0, n_init=3).fit(x)
    ref = km.predict(a.reshape(2, -1).T.astype(np.float64)).reshape(60, 80)
    if km.cluster_centers_[0, 0] > km.cluster_centers_[1, 0]:
        ref = 1 - ref
    np.testing.assert_array_equal(l1[1:], ref[1:])
    assert (l1[:, 45:] == 1).all()


def test_slic_single_chunk_equals_skimage(geogrid):
    rng = np.random.default_rng(2)
    a = rng.random((3, 40, 50))
    image = Image.from_array(a, geogrid((40, 50)), chunks=(3, 40, 50))
    ours = slic(image, n_segments=20, compactness=5.0).compute()[0]
    lo = a.reshape(3, -1).min(1)[:, None, None]
    hi = a.reshape(3, -1).max(1)[:, None, None]
    ref = sk_slic(
        np.moveaxis((a - lo) / (hi - lo), 0, -1),
        n_segments=20,
        compactness=5.0,
        mask=np.ones((40, 50), bool),
        channel_axis=-1,
        start_label=1,
    )
    np.testing.assert_array_equal(ours, ref)
    tiled = slic(image.rechunk((3, 20, 25)), n_segments=20).compute()[0]
    assert tiled.min() > 0
    # superpixels never cross chunk borders and are unique across chunks
    for ids in np.unique(tiled):
        rows, cols = np.nonzero(tiled == ids)
        assert len(set(rows // 20)) == 1 and len(set(cols // 25)) == 1


def test_region_grow_world_seed_equals_flood_on_rotated_grid():
    t = Affine(10.0, 0, 1000.0, 0, 10.0, 2000.0) @ Affine.rotation(30)  # south-up + rotated
    rng = np.random.default_rng(4)
    a = rng.integers(0, 3, (70, 90)).astype(np.float32)
    a[20:50, 30:60] = 10 + rng.random((30, 30))
    image = Image.from_array(a[None], GeoGrid(None, t, a.shape), chunks=(1, 32, 32))
    row, col = 33, 41
    seed = image.grid.xy(row, col)
    out = region_grow(image, seed, tolerance=1.0, radius=40).compute()[0]
    ref = flood(a.astype(np.float64), (row, col), tolerance=1.0, connectivity=1)
    np.testing.assert_array_equal(out.astype(bool), ref)
    assert out.sum() == 900


def test_grabcut_and_active_contours_find_a_square(geogrid):
    a = np.zeros((3, 80, 80), np.float32)
    a[:, 30:50, 25:55] = [[[200]], [[60]], [[40]]]
    a += np.random.default_rng(5).normal(0, 3, a.shape).astype(np.float32)
    image = Image.from_array(a, geogrid((80, 80)), chunks=(3, 40, 40))
    g = image.grid
    x0, y0 = g.xy(25, 20)
    x1, y1 = g.xy(55, 60)
    fg = grabcut(image, (x0, y0, x1, y1), rgb=(1, 2, 3), margin=10).compute()[0]
    truth = np.zeros((80, 80), bool)
    truth[30:50, 25:55] = True
    iou = (fg.astype(bool) & truth).sum() / (fg.astype(bool) | truth).sum()
    assert iou > 0.9
    for method in ("chan-vese", "geodesic"):
        ac = (
            active_contour(
                image,
                g.xy(40, 40),
                radius=30,
                init_radius=4,
                method=method,
                iterations=60,
                balloon=1.0,
            )
            .compute()[0]
            .astype(bool)
        )
        iou = (ac & truth).sum() / (ac | truth).sum()
        assert iou > 0.8, (method, iou)
