"""Volume quicklooks: markers follow the anatomy for any storage orientation (nibabel)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from nibabel.orientations import (
    apply_orientation,
    axcodes2ornt,
    inv_ornt_aff,
    io_orientation,
    ornt_transform,
)

from geomed_seg.core.grid import VoxelGrid
from geomed_seg.core.image import Image
from geomed_seg.core.labels import ClassInfo
from geomed_seg.pipelines.quicklook_volume import build_volume_figure, display_planes

CLASSES = [ClassInfo(0, "background"), ClassInfo(1, "tumour", (255, 0, 0)),
           ClassInfo(2, "edema", (0, 255, 0))]  # fmt: skip
AFFINE = np.diag([2.0, 2.5, 3.0, 1.0])
AFFINE[:3, 3] = (-20, -30, -24)  # RAS storage, world origin inside the volume


def _phantom():
    """(i, j, k) arrays: a large lesion in the patient's right-anterior-superior, a small one left."""
    shape = (21, 25, 17)
    ijk = np.indices(shape).reshape(3, -1).T
    ras = (nib.affines.apply_affine(AFFINE, ijk)).reshape(*shape, 3)
    vol = np.linalg.norm(ras, axis=-1) + ras[..., 0] * 0.3  # asymmetric, so flips show
    lab = np.zeros(shape, np.uint8)
    big = np.linalg.norm(ras - (12, 10, 9), axis=-1) < 7  # right (R > 0), anterior, superior
    lab[big] = 1
    lab[np.linalg.norm(ras - (-14, -12, -6), axis=-1) < 4] = 2
    return vol.astype(np.float32), lab


def _reoriented(arr, affine, codes):
    x = ornt_transform(io_orientation(affine), axcodes2ornt(codes))
    return apply_orientation(arr, x), affine @ inv_ornt_aff(x, arr.shape)


def _zyx(a):
    return np.ascontiguousarray(a.transpose(2, 1, 0))


@pytest.mark.parametrize(
    "codes", [("R", "A", "S"), ("L", "P", "S"), ("P", "I", "R"), ("S", "L", "A")]
)
@pytest.mark.parametrize("convention", ["radiological", "neurological"])
def test_markers_and_pixels_follow_the_anatomy(codes, convention):
    vol, lab = _phantom()
    ref = display_planes(_zyx(vol), _zyx(lab), AFFINE, convention)
    v2, aff2 = _reoriented(vol, AFFINE, codes)
    l2, _ = _reoriented(lab, AFFINE, codes)
    assert nib.aff2axcodes(aff2) == codes  # the copy really is stored that way
    got = display_planes(_zyx(v2), _zyx(l2), aff2, convention)
    side = {"radiological": ("R", "L"), "neurological": ("L", "R")}[convention]
    for r, g in zip(ref, got, strict=True):
        np.testing.assert_array_equal(g.image, r.image)
        np.testing.assert_array_equal(g.labels, r.labels)
        assert g.markers == r.markers
        if r.name != "sagittal":
            assert (g.markers["left"], g.markers["right"]) == side
            assert g.markers["top"] == ("A" if r.name == "axial" else "S")
        # the large lesion is right-anterior-superior: it shows on the side marked so
        rows, cols = np.nonzero(g.labels == 1)
        h, w = g.labels.shape
        horiz = g.markers["left"] if cols.mean() < w / 2 else g.markers["right"]
        vert = g.markers["top"] if rows.mean() < h / 2 else g.markers["bottom"]
        assert {horiz, vert} <= {"R", "A", "S"}


def test_neurological_axial_right_marker_is_the_i_axis_code_of_a_ras_input():
    vol, lab = _phantom()
    axial = display_planes(_zyx(vol), _zyx(lab), AFFINE, "neurological")[0]
    assert axial.markers["right"] == nib.aff2axcodes(AFFINE)[0]
    assert axial.markers["bottom"] == {"A": "P", "P": "A"}[nib.aff2axcodes(AFFINE)[1]]


def test_slices_through_the_largest_lesion_and_pixel_sizes():
    vol, lab = _phantom()
    axial, coronal, sagittal = display_planes(_zyx(vol), _zyx(lab), AFFINE)
    # the large lesion is centred at RAS (12, 10, 9): voxel (16, 16, 11); its slice shows it
    k = round((9 + 24) / 3.0)
    np.testing.assert_array_equal(axial.labels[::-1, ::-1].T, lab[:, :, k])
    assert axial.pixel_mm == (2.5, 2.0) and coronal.pixel_mm == (3.0, 2.0)
    assert sagittal.pixel_mm == (3.0, 2.5)


def test_oblique_volume_markers_and_note():
    vol, lab = _phantom()
    t = np.radians(12)
    rot = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    aff = AFFINE.copy()
    aff[:3, :3] = rot @ AFFINE[:3, :3]
    rev = np.diag([-1.0, -1.0, 1.0, 1.0])
    rev[:2, 3] = (vol.shape[0] - 1, vol.shape[1] - 1)
    flip = aff @ rev  # the same oblique scan stored with i and j reversed (L, P)
    ref = display_planes(_zyx(vol), _zyx(lab), aff)
    assert ref[0].markers == {"left": "R", "right": "L", "top": "A", "bottom": "P"}
    got = display_planes(_zyx(vol[::-1, ::-1]), _zyx(lab[::-1, ::-1]), flip)
    assert nib.aff2axcodes(flip) == ("L", "P", "S")
    for r, q in zip(ref, got, strict=True):
        np.testing.assert_array_equal(q.labels, r.labels)
    g = Image.from_array(_zyx(vol)[None], VoxelGrid(aff, _zyx(vol).shape))
    fig = build_volume_figure(g, Image.from_array(_zyx(lab)[None], g.grid), CLASSES)
    texts = [t.get_text() for t in fig.findobj(lambda o: hasattr(o, "get_text"))]
    assert any("oblique acquisition" in t for t in texts)
    assert got[0].markers == ref[0].markers


def test_legend_volumes_in_ml_and_convention_stated():
    vol, lab = _phantom()
    grid = VoxelGrid(AFFINE, _zyx(vol).shape)
    img = Image.from_array(_zyx(vol)[None], grid)
    fig = build_volume_figure(img, Image.from_array(_zyx(lab)[None], grid), CLASSES)
    texts = [t.get_text() for t in fig.findobj(lambda o: hasattr(o, "get_text"))]
    zooms = nib.Nifti1Image(lab, AFFINE).header.get_zooms()
    for c in (1, 2):
        ml = (lab == c).sum() * float(np.prod(zooms)) / 1000
        assert f"{c} {CLASSES[c].name}: {ml:.2f} ml" in texts
    assert any("radiological convention: the patient's right is on the image's left" in t
               for t in texts)  # fmt: skip
    assert {"R", "L", "A", "P", "S", "I"} <= set(texts)
