"""Resampling geometry, pure: the grid of a volume at another spacing and index mappings.

A model trained at 3 mm runs on a 1 mm volume by resampling the volume onto a 3 mm grid and
its class probabilities back onto the 1 mm grid (nnU-Net does the same). This module answers
the geometric questions only, from the two grids' affines (numpy, no I/O, no arrays):

* :func:`grid_for_spacing`: the grid of the same field of view at another spacing;
* :func:`index_mapping`: the affine map from output array indices to input array indices;
* :func:`source_window`: the input window an output chunk needs (for chunk-wise resampling);
* :func:`spacing_differs`: whether two spacings differ by more than 10 % on some axis.

All indices are in array order ``(z, y, x)``, voxel centres (nibabel convention).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from geomed_seg.core.grid import VoxelGrid
from geomed_seg.errors import GeometryError

#: Relative spacing difference above which a card's spacing "differs" from the input's.
SPACING_TOLERANCE = 0.1


def spacing_differs(have: Sequence[float], want: Sequence[float]) -> bool:
    """True when any axis of ``have`` differs from ``want`` by more than 10 % (same order,
    same unit)."""
    return len(have) == len(want) and any(
        abs(h - w) > SPACING_TOLERANCE * w for h, w in zip(have, want, strict=True)
    )


def grid_for_spacing(grid: VoxelGrid, spacing_zyx: Sequence[float]) -> VoxelGrid:
    """Return the grid covering ``grid``'s field of view at ``spacing_zyx`` (mm, array order).

    Same direction cosines and the same centre of voxel ``(0, 0, 0)`` (as SimpleITK's
    ``Resample`` with the input's origin); the size along each axis is
    ``max(1, round(n * spacing / new_spacing))``, so the field of view is kept to within
    half an output voxel.
    """
    new = np.asarray(spacing_zyx, dtype=np.float64)[::-1]  # (x, y, z): index-axis order
    if new.shape != (3,) or not np.all(np.isfinite(new)) or np.any(new <= 0):
        raise GeometryError(f"target spacing {list(spacing_zyx)} must be 3 positive mm values")
    old = np.asarray(grid.spacing, dtype=np.float64)
    n_old = np.asarray(grid.shape[::-1], dtype=np.float64)
    n_new = np.maximum(1, np.round(n_old * old / new)).astype(int)
    affine = np.eye(4)
    affine[:3, :3] = grid.direction @ np.diag(new)
    affine[:3, 3] = grid.affine[:3, 3]
    return VoxelGrid(affine, tuple(int(n) for n in n_new[::-1]))  # type: ignore[arg-type]


def index_mapping(src: VoxelGrid, dst: VoxelGrid) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(matrix (3, 3), offset (3,))`` with ``src_index = matrix @ dst_index + offset``.

    Both indices are array-order ``(z, y, x)`` voxel-centre positions; the map is
    ``inverse(src.affine) @ dst.affine`` with its axes reversed (affines index ``(i, j, k)``
    = ``(x, y, z)``). Use it as ``scipy.ndimage.affine_transform(src, matrix, offset)``.
    """
    m = np.linalg.solve(src.affine, dst.affine)
    rev = [2, 1, 0]
    return m[:3, :3][np.ix_(rev, rev)].copy(), m[:3, 3][rev].copy()


def source_window(
    matrix: np.ndarray,
    offset: np.ndarray,
    dst_slices: Sequence[slice],
    src_shape: Sequence[int],
    margin: int = 1,
) -> tuple[slice, ...]:
    """Return the input slices (array order) holding every sample an output window reads.

    The output window's corner voxels are mapped into the input; the bounding box is grown
    by ``margin`` voxels (1 for linear interpolation), clipped to the input, and never empty
    (an output window beyond the input reads its nearest edge voxels).
    """
    lo = np.array([s.start for s in dst_slices], dtype=np.float64)
    hi = np.array([s.stop - 1 for s in dst_slices], dtype=np.float64)
    corners = np.array(np.meshgrid(*zip(lo, hi, strict=True), indexing="ij")).reshape(3, -1)
    mapped = matrix @ corners + offset[:, None]
    out = []
    for axis, n in enumerate(src_shape):
        a = int(np.floor(mapped[axis].min())) - margin
        b = int(np.ceil(mapped[axis].max())) + margin + 1
        a = min(max(a, 0), n - 1)
        out.append(slice(a, min(max(b, a + 1), n)))
    return tuple(out)


__all__ = ["grid_for_spacing", "index_mapping", "source_window"]
