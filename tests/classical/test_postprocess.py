"""Tiled post-processing equals scikit-image / SciPy on the whole image."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage import morphology as m
from skimage.measure import label

from geomed_seg.classical.postprocess import (
    connected_components,
    fill_holes,
    morphology,
    remove_small_objects,
)
from geomed_seg.core import Image, VoxelGrid

from .conftest import blobs


def _noisy_mask():
    rng = np.random.default_rng(7)
    mk = blobs(seed=2) ^ (rng.random((96, 120)) < 0.08)
    return mk


@pytest.mark.parametrize("op", ["opening", "closing"])
def test_morphology_tiled_equals_skimage(geogrid, op):
    mk = _noisy_mask()
    image = Image.from_array(mk[None].astype(np.uint8), geogrid(mk.shape), chunks=(1, 30, 35))
    ours = morphology(image, op, radius=2).compute()[0]
    ref = getattr(m, op)(mk, m.disk(2))  # scikit-image on the whole image
    np.testing.assert_array_equal(ours.astype(bool), ref)


def test_fill_holes_and_small_objects_in_m2(geogrid):
    mk = _noisy_mask()
    image = Image.from_array(mk[None].astype(np.uint8), geogrid(mk.shape), chunks=(1, 25, 31))
    np.testing.assert_array_equal(
        fill_holes(image).compute()[0].astype(bool), ndi.binary_fill_holes(mk)
    )
    # 10 m pixels: 100 m2 each; 500 m2 = 5 pixels
    ours = remove_small_objects(image, 500.0).compute()[0].astype(bool)
    # objects are face-connected (issue 13: the polygons' connectivity; was connectivity=2)
    ref = m.remove_small_objects(mk, max_size=4, connectivity=1)  # removes <= 4 px
    np.testing.assert_array_equal(ours, ref)


def test_small_objects_mm3_and_components_on_volume():
    rng = np.random.default_rng(8)
    vol = rng.random((20, 24, 28)) < 0.3
    aff = np.diag([0.5, 0.5, 2.0, 1.0])  # voxel = 0.5 mm3
    image = Image.from_array(
        vol[None].astype(np.uint8), VoxelGrid(aff, vol.shape), chunks=(1, 7, 9, 10)
    )
    cc = connected_components(image, connectivity=1)
    ids = cc.compute()[0]
    ref = label(vol, connectivity=1)
    assert cc.attrs["n_components"] == ref.max()
    pairs = np.unique(np.stack([ids.ravel(), ref.ravel()]), axis=1)
    assert pairs.shape[1] == ref.max() + 1
    ours = remove_small_objects(image, 2.0, connectivity=1).compute()[0].astype(bool)  # 4 voxels
    sizes = np.bincount(ref.ravel())
    keep = sizes >= 4
    keep[0] = False
    np.testing.assert_array_equal(ours, keep[ref])
