"""Patch sampler: foreground oversampling rate, determinism, nodata rejection, grid checks."""

from __future__ import annotations

import numpy as np
import pytest
from affine import Affine

from geomed_seg.core.grid import GeoGrid
from geomed_seg.core.image import Image
from geomed_seg.errors import GeometryError
from geomed_seg.train.sampling import PatchSampler, class_locations

GRID = GeoGrid(None, Affine(1, 0, 0, 0, -1, 0), (64, 80))


def sparse_pair(nodata_left: bool = False) -> tuple[Image, Image]:
    lab = np.zeros((64, 80), np.uint8)
    lab[10, 12] = 1
    lab[50, 70] = 2
    img = np.random.default_rng(0).random((2, 64, 80)).astype(np.float32)
    if nodata_left:
        img[:, :, :40] = np.nan
    image = Image.from_array(img, GRID, nodata=np.nan if nodata_left else None, chunks=(2, 32, 32))
    return image, Image.from_array(lab, GRID, chunks=(1, 32, 32))


def test_class_locations_match_numpy_argwhere():
    _, lab = sparse_pair()
    locs = class_locations(lab, [1, 2])
    np.testing.assert_array_equal(locs[1], np.argwhere(lab.compute()[0] == 1))
    np.testing.assert_array_equal(locs[2], [[50, 70]])


@pytest.mark.parametrize("fraction", [0.0, 0.33, 0.7])
def test_foreground_fraction_matches_setting(fraction):
    image, lab = sparse_pair()
    s = PatchSampler([(image, lab)], (8, 8), [1, 2], foreground_fraction=fraction, seed=1)
    ref = lab.compute()[0]
    n = 1000
    on_label = 0
    for i in range(n):
        p = s.draw(0, i)
        centre = tuple(a + 4 for a in p.start)
        on_label += int(ref[centre] > 0)
        assert p.label[4, 4] == (ref[centre] if p.forced_foreground else p.label[4, 4])
    # a uniform draw hits one of 2 labelled pixels with probability ~2/5120: negligible
    assert abs(on_label / n - fraction) <= 0.05


def test_draws_are_deterministic_and_seeded():
    image, lab = sparse_pair()
    kw = {"foreground_fraction": 0.0}
    a = PatchSampler([(image, lab)], (8, 8), [1], seed=5, **kw)
    b = PatchSampler([(image, lab)], (8, 8), [1], seed=5, cache_bytes=0, **kw)  # lazy reads
    c = PatchSampler([(image, lab)], (8, 8), [1], seed=6, **kw)
    pa, pb, pc = a.draw(2, 17), b.draw(2, 17), c.draw(2, 17)
    np.testing.assert_array_equal(pa.image, pb.image)
    np.testing.assert_array_equal(pa.label, pb.label)
    assert pa.start == pb.start
    assert pa.start != pc.start
    # the patch holds exactly the image window (inside the image) or zeros (padding)
    y0, x0 = pa.start
    full = image.compute()
    for dy in range(8):
        for dx in range(8):
            y, x = y0 + dy, x0 + dx
            inside = 0 <= y < 64 and 0 <= x < 80
            np.testing.assert_array_equal(pa.image[:, dy, dx], full[:, y, x] if inside else 0)


def test_mostly_nodata_patches_are_rejected():
    image, lab = sparse_pair(nodata_left=True)
    s = PatchSampler([(image, lab)], (16, 16), [1, 2], foreground_fraction=0.0,
                     min_valid_fraction=0.5, seed=0)  # fmt: skip
    valid = ~np.isnan(image.compute()[0])
    for i in range(100):
        p = s.draw(0, i)
        y0, x0 = p.start
        ys = slice(max(y0, 0), max(min(y0 + 16, 64), 0))
        xs = slice(max(x0, 0), max(min(x0 + 16, 80), 0))
        assert valid[ys, xs].sum() / 256 >= 0.5
        assert np.isfinite(p.image).all()


def test_label_on_another_grid_is_a_geometry_error():
    image, _ = sparse_pair()
    other = GeoGrid(None, Affine(2, 0, 0, 0, -2, 0), (64, 80))
    lab = Image.from_array(np.zeros((64, 80), np.uint8), other)
    with pytest.raises(GeometryError, match="label geometry"):
        PatchSampler([(image, lab)], (8, 8), [1])
