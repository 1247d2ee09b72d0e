"""Grid geometry against independent references: nibabel, SimpleITK, rasterio."""

from __future__ import annotations

import itertools

import nibabel as nib
import numpy as np
import pytest
import rasterio.transform
import rasterio.windows
import SimpleITK as sitk
from affine import Affine
from hypothesis import given, settings
from hypothesis import strategies as st
from rasterio.crs import CRS

from geomed_seg.core.grid import GeoGrid, VoxelGrid, check_same_grid, grid_from_attrs
from geomed_seg.errors import GeometryError

SPACING = np.array([0.7, 1.2, 2.5])
ORIGIN = np.array([-90.25, 12.5, 33.0])


def _all_orientation_affines():
    """The 48 axis permutations x flips, as nibabel's ALL_ORNTS table enumerates them."""
    for perm in itertools.permutations(range(3)):
        for flips in itertools.product((1, -1), repeat=3):
            rot = np.zeros((3, 3))
            for col, (row, sign) in enumerate(zip(perm, flips, strict=True)):
                rot[row, col] = sign
            aff = np.eye(4)
            aff[:3, :3] = rot @ np.diag(SPACING)
            aff[:3, 3] = ORIGIN
            yield aff


ALL_AFFINES = list(_all_orientation_affines())


def test_there_are_48_orientations():
    assert len({a.tobytes() for a in ALL_AFFINES}) == 48


@pytest.mark.parametrize("aff", ALL_AFFINES, ids=lambda a: "".join(nib.aff2axcodes(a)))
def test_voxelgrid_derived_geometry_matches_nibabel(aff):
    grid = VoxelGrid(aff, (5, 6, 7))
    assert grid.axcodes == nib.aff2axcodes(aff)
    np.testing.assert_allclose(grid.spacing, nib.affines.voxel_sizes(aff))
    np.testing.assert_allclose(grid.origin, ORIGIN)


@pytest.mark.parametrize("aff", ALL_AFFINES, ids=lambda a: "".join(nib.aff2axcodes(a)))
def test_itk_conversion_matches_simpleitk_nifti_writer(aff, tmp_path):
    """SimpleITK writes NIfTI from LPS geometry; nibabel reads the RAS affine back."""
    grid = VoxelGrid(aff, (4, 3, 2))
    origin, spacing, direction = grid.to_itk()
    img = sitk.GetImageFromArray(np.zeros(grid.shape, np.uint8))  # array order (z, y, x)
    img.SetOrigin(origin)
    img.SetSpacing(spacing)
    img.SetDirection(direction)
    path = tmp_path / "g.nii.gz"
    sitk.WriteImage(img, str(path))
    nimg = nib.load(path)
    np.testing.assert_allclose(nimg.affine, aff, atol=1e-5)
    assert nimg.shape == grid.shape[::-1]
    back = VoxelGrid.from_itk(origin, spacing, direction, grid.shape)
    assert back.almost_equals(grid, atol_mm=1e-9)


def test_itk_conversion_oblique_matches_simpleitk_physical_points():
    theta = np.deg2rad(17.0)
    rot = np.array(
        [[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]]
    )
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag(SPACING)
    aff[:3, 3] = ORIGIN
    grid = VoxelGrid(aff, (9, 8, 7))
    assert grid.is_oblique
    img = sitk.Image(7, 8, 9, sitk.sitkUInt8)  # sitk size is (x, y, z)
    origin, spacing, direction = grid.to_itk()
    img.SetOrigin(origin)
    img.SetSpacing(spacing)
    img.SetDirection(direction)
    for z, y, x in [(0, 0, 0), (8, 7, 6), (3, 1, 5)]:
        lps = np.array(img.TransformIndexToPhysicalPoint((x, y, z)))
        ras = lps * np.array([-1, -1, 1])
        np.testing.assert_allclose(grid.world(z, y, x), ras, atol=1e-9)
        np.testing.assert_allclose(grid.index(*ras), (z, y, x), atol=1e-9)


def test_voxelgrid_window_matches_nibabel_slicer():
    aff = ALL_AFFINES[13]
    data = np.zeros((7, 6, 5), np.uint8)  # nibabel order (i, j, k)
    nimg = nib.Nifti1Image(data, aff)
    grid = VoxelGrid(aff, data.shape[::-1])
    sub = grid.window((slice(1, 4), slice(2, None), slice(3, 6)))  # (z, y, x)
    ref = nimg.slicer[3:6, 2:, 1:4]  # (i, j, k)
    np.testing.assert_allclose(sub.affine, ref.affine)
    assert sub.shape == ref.shape[::-1]


def test_voxelgrid_rejects_bad_input():
    with pytest.raises(GeometryError):
        VoxelGrid(np.zeros((4, 4)), (1, 1, 1))
    with pytest.raises(GeometryError):
        VoxelGrid(np.eye(3), (1, 1, 1))
    with pytest.raises(GeometryError):
        VoxelGrid(np.eye(4), (0, 1, 1))


def test_voxelgrid_equality_and_attrs_round_trip():
    g = VoxelGrid(ALL_AFFINES[5], (3, 4, 5))
    assert g == VoxelGrid(ALL_AFFINES[5].copy(), (3, 4, 5))
    assert g != VoxelGrid(ALL_AFFINES[6], (3, 4, 5))
    back = grid_from_attrs(g.to_attrs())
    assert np.array_equal(back.affine, g.affine) and back.shape == g.shape


NORTH_UP = Affine(30.0, 0.0, 500000.0, 0.0, -30.0, 9000000.0)
SOUTH_UP = Affine(30.0, 0.0, 500000.0, 0.0, 30.0, 8000000.0)
ROTATED = Affine.translation(1000, 2000) @ Affine.rotation(20) @ Affine.scale(10, -10)


@pytest.mark.parametrize("transform", [NORTH_UP, SOUTH_UP, ROTATED], ids=["north", "south", "rot"])
def test_geogrid_matches_rasterio(transform):
    grid = GeoGrid(CRS.from_epsg(32633), transform, (100, 120))
    win = rasterio.windows.Window(col_off=7, row_off=11, width=50, height=40)
    sub = grid.window((slice(11, 51), slice(7, 57)))
    assert sub.transform == rasterio.windows.transform(win, transform)
    assert sub.shape == (40, 50)
    if transform.is_rectilinear:
        w, s, e, n = rasterio.transform.array_bounds(100, 120, transform)
        assert np.allclose(grid.bounds, (min(w, e), min(s, n), max(w, e), max(s, n)))
    assert np.allclose(grid.xy(5, 9), rasterio.transform.xy(transform, 5, 9))
    row, col = grid.rowcol(*grid.xy(5, 9))
    assert np.allclose((row, col), (5, 9))


@settings(max_examples=60, deadline=None)
@given(
    h=st.integers(1, 500),
    w=st.integers(1, 500),
    data=st.data(),
    res=st.floats(0.1, 100),
    south=st.booleans(),
)
def test_geogrid_window_composes(h, w, data, res, south):
    t = Affine(res, 0, 100, 0, res if south else -res, 50)
    grid = GeoGrid(None, t, (h, w))
    r0 = data.draw(st.integers(0, h - 1))
    r1 = data.draw(st.integers(r0 + 1, h))
    c0 = data.draw(st.integers(0, w - 1))
    c1 = data.draw(st.integers(c0 + 1, w))
    sub = grid.window((slice(r0, r1), slice(c0, c1)))
    # the sub-grid's pixel (0, 0) is the parent's pixel (r0, c0)
    assert np.allclose(sub.xy(0, 0), grid.xy(r0, c0))
    assert np.allclose(sub.xy(r1 - r0 - 1, c1 - c0 - 1), grid.xy(r1 - 1, c1 - 1))


def test_geogrid_equality_tolerance_and_errors():
    crs = CRS.from_epsg(31985)
    a = GeoGrid(crs, NORTH_UP, (10, 10))
    b = GeoGrid(crs, NORTH_UP @ Affine.translation(1e-9, 0), (10, 10))
    c = GeoGrid(crs, NORTH_UP @ Affine.translation(0.5, 0), (10, 10))
    d = GeoGrid(CRS.from_epsg(32633), NORTH_UP, (10, 10))
    assert a.almost_equals(b)
    assert not a.almost_equals(c)
    assert not a.almost_equals(d)
    check_same_grid(a, b)
    with pytest.raises(GeometryError, match="EPSG:32633"):
        check_same_grid(a, d)
    with pytest.raises(GeometryError):
        a.window((slice(5, 5), slice(0, 2)))
    with pytest.raises(GeometryError):
        GeoGrid(crs, Affine(0, 0, 0, 0, 0, 0), (1, 1))


def test_geogrid_attrs_round_trip_custom_wkt():
    wkt = CRS.from_proj4(
        "+proj=laea +lat_0=52 +lon_0=10 +x_0=4321000 +y_0=3210000 +ellps=GRS80"
    ).to_wkt()
    g = GeoGrid(CRS.from_wkt(wkt), ROTATED, (3, 4))
    back = grid_from_attrs(g.to_attrs())
    assert back.crs == g.crs and back.transform == g.transform and back.shape == g.shape
    g0 = GeoGrid(None, NORTH_UP, (3, 4))
    assert grid_from_attrs(g0.to_attrs()).crs is None
