"""BraTS-like phantoms on the real MNI152 template: deterministic, nested, geometry kept."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from geomed_seg.core import Image, VoxelGrid
from geomed_seg.synthetic.phantom import SEQUENCES, brain_mask, make_phantom


@pytest.fixture(scope="module")
def t1(mni_t1_path):
    n = nib.load(mni_t1_path)
    arr = np.asarray(n.dataobj).transpose(2, 1, 0)
    return Image.from_array(arr, VoxelGrid(n.affine, arr.shape))


def test_phantom_is_deterministic_and_differs_by_seed(t1):
    a, b, c = make_phantom(t1, 7, zoom=3), make_phantom(t1, 7, zoom=3), make_phantom(t1, 8, zoom=3)
    assert np.array_equal(a.labels.compute(), b.labels.compute())
    assert np.array_equal(a.image.compute(), b.image.compute())
    assert not np.array_equal(a.labels.compute(), c.labels.compute())


def test_compartments_nested_inside_brain_and_contrasts(t1):
    p = make_phantom(t1, 3, zoom=3)
    lab = p.labels.compute()[0]
    img = p.image.compute()
    assert p.image.channel_names == list(SEQUENCES)
    assert {1, 2, 3} <= set(np.unique(lab))
    mask = brain_mask(np.asarray(t1.darray[0].compute(), dtype=np.float32)[::3, ::3, ::3])
    assert not (lab[~mask] > 0).any()
    # necrosis (1) is enclosed by enhancing tumour (3) + oedema: its dilation stays in the tumour
    assert (lab[ndimage.binary_dilation(lab == 1)] > 0).all()
    t1c, flair = img[1], img[3]
    assert t1c[lab == 3].mean() > 1.3 * t1c[lab == 0][mask[lab == 0]].mean()  # ET enhances
    assert flair[lab == 2].mean() > flair[(lab == 0) & mask].mean()  # oedema is FLAIR-bright


def test_zoom_scales_geometry_exactly(t1):
    p = make_phantom(t1, 0, zoom=2)
    assert p.image.grid.spacing == (2.0, 2.0, 2.0)
    np.testing.assert_allclose(p.image.grid.origin, t1.grid.origin)
    # voxel (z, y, x) of the phantom is voxel (2z, 2y, 2x) of the template, in world mm
    np.testing.assert_allclose(p.image.grid.world(5, 6, 7), t1.grid.world(10, 12, 14))
