"""Augmentation keeps image and label aligned: a labelled point is tracked through transforms.

References are independent: numpy ``flip``/``rot90`` for flips and 90° rotations; for the
random affine the image carries a smooth bump at the labelled point (bilinear) and the label
(nearest) must land where the bump's peak lands.
"""

from __future__ import annotations

import numpy as np
import pytest

from geomed_seg.train.augment import RandChannelDropoutd, build_augment
from geomed_seg.train.config import AugmentConfig

OFF = {"flip_prob": 0, "rot90_prob": 0, "affine_prob": 0, "elastic_prob": 0,
       "intensity_prob": 0, "noise_prob": 0, "band_dropout_prob": 0}  # fmt: skip


def point_item(shape, point):
    """Image: channel 0 = Gaussian bump at ``point``, channel 1 = index ramp; label: one sample."""
    grids = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    bump = np.exp(-sum((g - p) ** 2 for g, p in zip(grids, point, strict=True)) / (2 * 2.0**2))
    ramp = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    label = np.zeros((1, *shape), np.float32)
    label[(0, *point)] = 1
    return {"image": np.stack([bump, ramp]).astype(np.float32), "label": label}


def run(cfg, item, seed):
    t = build_augment(cfg, len(item["label"].shape) - 1)
    t.set_random_state(seed=seed)
    out = t(dict(item))
    return np.asarray(out["image"]), np.asarray(out["label"])


@pytest.mark.parametrize("shape,point", [((24, 32), (5, 21)), ((12, 16, 20), (3, 11, 4))])
def test_flips_and_rot90_move_label_with_image(shape, point):
    item = point_item(shape, point)
    cfg = AugmentConfig(**{**OFF, "flip_prob": 0.5, "rot90_prob": 0.8})
    seen = set()
    for seed in range(12):
        img, lab = run(cfg, item, seed)
        ramp = img[1]
        # the ramp says which source index each output sample came from: an independent
        # record of the spatial map, checked against numpy flips/rot90 below
        src = np.unravel_index(ramp.astype(np.int64), shape)
        assert lab.sum() == 1
        where = tuple(int(v[0]) for v in np.nonzero(lab[0]))
        assert tuple(int(s[where]) for s in src) == point
        seen.add(where)
        # the map is a composition of flips and rot90s: match it with numpy
        ref = item["image"][1]
        found = False
        for k in range(4):
            r = np.rot90(ref, k, axes=(len(shape) - 2, len(shape) - 1))
            for flips in np.ndindex(*(2,) * len(shape)):
                f = r
                for ax, on in enumerate(flips):
                    f = np.flip(f, ax) if on else f
                if f.shape == ramp.shape and np.array_equal(f, ramp):
                    found = True
        assert found
    assert len(seen) > 3  # the transforms did move the point


@pytest.mark.parametrize("shape,point", [((48, 48), (20, 27)), ((32, 32, 32), (14, 17, 15))])
def test_affine_keeps_label_on_image_peak(shape, point):
    item = point_item(shape, point)
    item["label"][0] = (item["image"][0] > 0.6).astype(np.float32)  # a small blob (nearest-safe)
    cfg = AugmentConfig(**{**OFF, "affine_prob": 1.0, "rotate_deg": 30, "scale_range": 0.15})
    for seed in range(4):
        img, lab = run(cfg, item, seed)
        assert set(np.unique(lab)) <= {0.0, 1.0}  # nearest: labels stay classes
        peak = np.unravel_index(np.argmax(img[0]), shape)
        assert lab[(0, *peak)] == 1
        centroid = np.argwhere(lab[0] > 0).mean(0)
        assert np.abs(centroid - np.array(peak)).max() <= 1.0


def test_elastic_2d_keeps_labels_integer_and_aligned():
    item = point_item((64, 64), (30, 33))
    item["label"][0] = (item["image"][0] > 0.6).astype(np.float32)
    img, lab = run(AugmentConfig(**{**OFF, "elastic_prob": 1.0}), item, 0)
    assert set(np.unique(lab)) <= {0.0, 1.0}
    assert lab[(0, *np.unravel_index(np.argmax(img[0]), (64, 64)))] == 1


def test_band_dropout_zeroes_one_band_only():
    item = {"image": np.ones((6, 8, 8), np.float32), "label": np.ones((1, 8, 8), np.float32)}
    t = RandChannelDropoutd("image", prob=1.0)
    t.set_random_state(seed=0)
    out = t(item)
    zeroed = [c for c in range(6) if not out["image"][c].any()]
    assert len(zeroed) == 1
    np.testing.assert_array_equal(out["label"], item["label"])
    np.testing.assert_array_equal(item["image"], 1)  # input untouched
