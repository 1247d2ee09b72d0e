"""Resampling geometry (pure) and chunk-wise resampling against SimpleITK's ``Resample``."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from geomed_seg.core.grid import VoxelGrid
from geomed_seg.core.image import Image
from geomed_seg.core.resample import resample_image
from geomed_seg.core.resample_grid import grid_for_spacing, index_mapping, source_window


def _oblique(spacing_xyz=(0.9, 1.1, 2.5), angle=0.3, flip=(1, -1, 1), origin=(-20.0, 14.0, 3.0)):
    c, s = np.cos(angle), np.sin(angle)
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]]) @ np.diag(flip)
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag(spacing_xyz)
    aff[:3, 3] = origin
    return aff


def _sitk(arr: np.ndarray, grid: VoxelGrid) -> sitk.Image:
    img = sitk.GetImageFromArray(arr)
    origin, spacing, direction = grid.to_itk()
    img.SetOrigin(origin)
    img.SetSpacing(spacing)
    img.SetDirection(direction)
    return img


def _sitk_resample(arr, src: VoxelGrid, dst: VoxelGrid, interp=sitk.sitkLinear, dtype=None):
    origin, spacing, direction = dst.to_itk()
    out = sitk.Resample(_sitk(arr, src), list(dst.shape[::-1]), sitk.Transform(), interp,
                        origin, spacing, direction, 0.0,
                        dtype if dtype is not None else sitk.sitkFloat32)  # fmt: skip
    return sitk.GetArrayFromImage(out)


def test_grid_for_spacing_keeps_direction_origin_and_field_of_view():
    grid = VoxelGrid(_oblique(), (21, 40, 37))
    out = grid_for_spacing(grid, (3.0, 3.0, 3.0))
    assert out.spacing == pytest.approx((3.0, 3.0, 3.0))
    np.testing.assert_allclose(out.direction, grid.direction, atol=1e-12)
    np.testing.assert_allclose(out.origin, grid.origin)
    # field of view (x, y, z): within half an output voxel of the input's
    fov_in = np.array(grid.shape[::-1]) * np.array(grid.spacing)
    fov_out = np.array(out.shape[::-1]) * 3.0
    assert np.all(np.abs(fov_out - fov_in) <= 1.5 + 1e-9)
    assert out.shape == (18, 15, 11)  # round(21*2.5/3), round(40*1.1/3), round(37*0.9/3)


def test_index_mapping_agrees_with_world_coordinates():
    src = VoxelGrid(_oblique(), (21, 40, 37))
    dst = VoxelGrid(_oblique((2.0, 2.0, 2.0), angle=-0.4, flip=(-1, 1, -1), origin=(5, 1, 2)),
                    (9, 8, 7))  # fmt: skip
    matrix, offset = index_mapping(src, dst)
    rng = np.random.default_rng(1)
    for zyx in rng.uniform(-3, 10, size=(10, 3)):
        world = dst.world(*zyx)
        np.testing.assert_allclose(matrix @ zyx + offset, src.index(*world), atol=1e-9)


def test_source_window_holds_every_mapped_sample():
    src = VoxelGrid(_oblique(), (21, 40, 37))
    dst = grid_for_spacing(src, (1.0, 0.7, 2.0))
    matrix, offset = index_mapping(src, dst)
    for box in [(slice(0, 5), slice(3, 9), slice(0, 4)), (slice(10, 14), slice(0, 1), slice(5, 9))]:
        win = source_window(matrix, offset, box, src.shape)
        idx = np.stack(np.meshgrid(*[np.arange(s.start, s.stop) for s in box], indexing="ij"))
        mapped = np.tensordot(matrix, idx, axes=1) + offset[:, None, None, None]
        for axis, w in enumerate(win):
            inside = mapped[axis].clip(0, src.shape[axis] - 1)
            assert w.start <= np.floor(inside).min() and np.ceil(inside).max() < w.stop


@pytest.mark.parametrize("chunk", [4, 96])
def test_linear_resampling_equals_simpleitk_oblique_anisotropic(chunk):
    rng = np.random.default_rng(0)
    src = VoxelGrid(_oblique(), (11, 16, 14))
    arr = rng.random(src.shape).astype(np.float32) * 100
    img = Image.from_array(arr, src, chunks=(1, 5, 7, 6))
    # another direction and spacing, partly outside the input: default value 0 there
    aff = _oblique((1.3, 1.1, 1.7), angle=0.1, flip=(1, 1, -1), origin=(0, 0, 0))
    shape = (13, 18, 15)
    centre = np.array(src.world(*[(n - 1) / 2 for n in src.shape]))
    aff[:3, 3] = centre - aff[:3, :3] @ ((np.array(shape[::-1]) - 1) / 2)
    dst = VoxelGrid(aff, shape)
    ours = resample_image(img, dst, order=1, chunk=chunk).compute()[0]
    ref = _sitk_resample(arr, src, dst)
    assert (ref == 0).mean() > 0.05 and (ref != 0).mean() > 0.3  # both cases are exercised
    np.testing.assert_allclose(ours, ref, atol=1e-3, rtol=1e-5)


def test_nearest_resampling_of_labels_equals_simpleitk():
    rng = np.random.default_rng(2)
    src = VoxelGrid(_oblique((1.0, 1.0, 1.0), angle=0.0, flip=(1, 1, 1)), (20, 24, 22))
    lab = rng.integers(0, 4, src.shape).astype(np.uint8)
    img = Image.from_array(lab, src)
    dst = grid_for_spacing(src, (2.3, 1.7, 2.9))  # no sample on a tie between two voxels
    ours = resample_image(img, dst, order=0, chunk=5).compute()[0]
    ref = _sitk_resample(lab, src, dst, sitk.sitkNearestNeighbor, sitk.sitkUInt8)
    assert ours.dtype == np.uint8
    np.testing.assert_array_equal(ours, ref)


def test_resampling_is_lazy_and_reads_windows():
    import dask.array as da

    src = VoxelGrid(np.diag([1.0, 1.0, 1.0, 1.0]), (40, 40, 40))
    calls = []

    def block(b, block_info=None):
        calls.append(block_info[0]["array-location"])
        return b

    arr = da.ones((1, 40, 40, 40), np.float32, chunks=(1, 10, 40, 40)).map_blocks(
        block, dtype=np.float32
    )
    img = Image.from_array(arr, src)
    out = resample_image(img, grid_for_spacing(src, (3.0, 3.0, 3.0)), chunk=4)
    assert not calls  # nothing read before compute
    out.darray[:, :4].compute()  # the first output slab (z 0..3 -> input z 0..10)
    assert calls and all(loc[1][0] < 20 for loc in calls)
