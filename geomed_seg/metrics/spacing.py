"""The one place where distance metrics get their sample spacing: physical units per array axis.

Every distance metric (HD, HD95, ASSD, NSD and its tolerance, BraTS region and lesion-wise
distances, lesion-matching dilation) works on label arrays in **array order** and needs the
physical size of one sample along each axis in that order. :func:`distance_spacing` derives
it from the grid and nothing else does:

* :class:`~geomed_seg.core.grid.VoxelGrid`: ``spacing_zyx`` in mm (the lengths of the affine's
  columns, so oblique volumes are measured along their own axes).
* :class:`~geomed_seg.core.grid.GeoGrid`: the ground pixel size ``(y, x)`` in metres from
  :func:`geomed_seg.core.ground.ground_spacing`: the CRS size times the unit's length in
  metres where planar geometry is exact (feet and US survey feet included), the geodesic
  pixel size where the CRS's scale differs from 1 but the ground pixel size is uniform to
  0.1 % over the scene (degrees, Web Mercator over small extents).
* :class:`~geomed_seg.core.grid.GeoGrid` without a CRS or a local CRS, or whose ground pixel
  size varies by more than 0.1 % over the scene (Web Mercator or degrees over large
  extents): the pixel size in CRS units, with ``unit`` saying so (``"CRS units"``) and a
  logged warning, never labelled metres.

Distances are Euclidean in index space scaled per axis, which is exact only when the grid's
axes are orthogonal; a sheared grid is refused here rather than measured wrongly.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from geomed_seg.core.grid import GeoGrid, VoxelGrid
from geomed_seg.core.ground import ground_spacing
from geomed_seg.errors import GeometryError

logger = logging.getLogger(__name__)

#: Largest |cos| between two grid axes accepted as orthogonal: float32 sform rounding is
#: ~1e-7; a shear of 1e-4 changes a distance by at most ~1e-4 relative.
_ORTHO_TOL = 1e-4

MM, METRE, CRS_UNITS = "mm", "m", "CRS units"


@dataclass(frozen=True)
class DistanceSpacing:
    """Physical size of one sample per array axis, and the unit distances come out in.

    Attributes
    ----------
    spacing : tuple of float
        Sample size along each array axis, in array order (``(z, y, x)`` for volumes,
        ``(y, x)`` for rasters), in :attr:`unit`.
    unit : str
        ``"mm"`` (volumes), ``"m"`` (rasters with a metric ground) or ``"CRS units"``.
    """

    spacing: tuple[float, ...]
    unit: str

    def describe(self) -> str:
        """One line, e.g. ``"3 x 1 x 1 mm (z, y, x)"``."""
        axes = "z, y, x" if len(self.spacing) == 3 else "y, x"
        return f"{' x '.join(f'{s:.6g}' for s in self.spacing)} {self.unit} ({axes})"


def _check_orthogonal(columns: np.ndarray, what: str) -> None:
    unit = columns / np.linalg.norm(columns, axis=0)
    gram = np.abs(unit.T @ unit - np.eye(unit.shape[1]))
    if gram.max() > _ORTHO_TOL:
        raise GeometryError(
            f"{what}: grid axes are not orthogonal (sheared, max |cos| {gram.max():.3g}); "
            "surface distances need orthogonal axes: resample the labels to an unsheared grid"
        )


def distance_spacing(
    grid: GeoGrid | VoxelGrid, source: str | None = None, *, quiet: bool = False
) -> DistanceSpacing:
    """Return the per-axis sample size (array order) and unit for distance metrics on ``grid``.

    Parameters
    ----------
    grid : GeoGrid or VoxelGrid
        The reference grid the labels lie on.
    source : str, optional
        Name of the input (path), used in warnings and errors.
    quiet : bool
        Do not log the "CRS units" warning (for reports that compute no distance).

    Raises
    ------
    GeometryError
        When the grid's axes are not orthogonal.
    """
    what = source or grid.describe()
    if isinstance(grid, VoxelGrid):
        _check_orthogonal(np.asarray(grid.affine)[:3, :3], what)
        return DistanceSpacing(tuple(float(v) for v in grid.spacing_zyx), MM)
    t = grid.transform
    _check_orthogonal(np.array([[t.a, t.b], [t.d, t.e]]), what)
    x_size, y_size = grid.res
    ground = ground_spacing(grid)
    if ground is None:
        if not quiet:
            logger.warning(
                "%s: distances are in CRS units, not metres (%s)",
                what,
                grid.ground.reason if not grid.ground.metric else
                "the ground pixel size varies by more than 0.1 % over the scene",
            )  # fmt: skip
        return DistanceSpacing((float(y_size), float(x_size)), CRS_UNITS)
    return DistanceSpacing((float(ground[0]), float(ground[1])), METRE)
