"""Where every sample of an image is: ``GeoGrid`` for rasters, ``VoxelGrid`` for volumes.

Conventions (the "affine trap", stated once):

* ``GeoGrid.transform`` is a rasterio/GDAL :class:`affine.Affine` mapping ``(col, row)`` of a
  pixel's **corner** to map coordinates in ``crs``. Rotation and shear are allowed. Array
  shape is ``(height, width)`` = ``(y, x)``.
* ``VoxelGrid.affine`` is a nibabel-style 4×4 matrix mapping voxel indices ``(i, j, k)`` of a
  voxel's **centre** to RAS+ world millimetres. The array is stored ``(z, y, x)`` (ITK / numpy
  order), with ``x = i``, ``y = j``, ``z = k``. So ``shape`` and window slices are in array
  order ``(z, y, x)`` while ``spacing``, ``origin`` and ``direction`` are in index-axis order
  ``(x, y, z)`` exactly as nibabel's zooms and ITK's spacing.
* ITK works in LPS; :meth:`VoxelGrid.to_itk` / :meth:`VoxelGrid.from_itk` are the one place
  that converts.

Grids are frozen values with pure methods; the only non-numpy import is ``affine`` and
rasterio's ``CRS`` class (a thin wrapper over PROJ definitions) so equality of CRSs is exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
from affine import Affine

from geomed_seg.errors import GeometryError

if TYPE_CHECKING:
    from geomed_seg.core.ground import GroundUnits

_LPS_FLIP = np.diag([-1.0, -1.0, 1.0])

Slices = tuple[slice, ...]


def normalise_slices(slices: Sequence[slice], shape: Sequence[int]) -> Slices:
    """Return ``slices`` with explicit, in-bounds start/stop for an array of ``shape``.

    Raises :class:`GeometryError` for steps other than 1, empty windows or a rank mismatch.
    """
    if len(slices) != len(shape):
        raise GeometryError(f"window has {len(slices)} axes, grid has {len(shape)}")
    out = []
    for s, n in zip(slices, shape, strict=True):
        start, stop, step = s.indices(n)
        if step != 1:
            raise GeometryError(f"window step must be 1, got {step}")
        if stop <= start:
            raise GeometryError(f"empty window {s} on an axis of length {n}")
        out.append(slice(start, stop))
    return tuple(out)


def _crs_to_wkt(crs: Any) -> str | None:
    return None if crs is None else crs.to_wkt()


class GCP(NamedTuple):
    """One ground control point: pixel-corner ``(row, col)`` and its map ``(x, y, z)``.

    Same fields and pixel convention as :class:`rasterio.control.GroundControlPoint`
    (``row``/``col`` are GDAL's line/pixel: ``(0, 0)`` is the top-left corner of the
    top-left pixel); ``x``, ``y``, ``z`` are in the grid's ``crs``.
    """

    row: float
    col: float
    x: float
    y: float
    z: float = 0.0
    id: str = ""
    info: str = ""


#: RPC metadata keys that hold pixel offsets (shifted when a window is taken).
_RPC_LINE_OFF, _RPC_SAMP_OFF = "LINE_OFF", "SAMP_OFF"


def _rpc_numbers(rpcs: tuple[tuple[str, str], ...] | None) -> dict[str, tuple[float, ...]] | None:
    """RPC items as numbers (GDAL re-formats them on write), rounded to 12 significant digits."""
    if rpcs is None:
        return None
    out = {}
    for k, v in rpcs:
        try:
            out[k] = tuple(float(f"{float(x):.12g}") for x in str(v).split())
        except ValueError:
            out[k] = (str(v),)  # type: ignore[assignment]
    return out


@dataclass(frozen=True)
class GeoGrid:
    """A georeferenced 2D pixel grid.

    Parameters
    ----------
    crs : rasterio.crs.CRS or None
        Coordinate reference system; ``None`` for files without one.
    transform : affine.Affine
        Pixel-corner ``(col, row) -> (x, y)`` map in ``crs`` units (GDAL order ``c, a, b, f, d, e``).
    shape : tuple of int
        ``(height, width)`` in pixels.
    gcps : tuple of GCP, optional
        Ground control points, when the georeference is GCPs rather than a geotransform
        (``crs`` is then the GCPs' CRS and ``transform`` GDAL's least-squares affine fit of
        them, an approximation for pixel sizes and areas; exact map positions go through
        GDAL's GCP transformer, :func:`geomed_seg.io.georef.pixel_to_map`).
    rpcs : tuple of (str, str), optional
        Rational polynomial coefficients as GDAL's ``RPC`` metadata items, carried to every
        output (with or without a geotransform). Without a geotransform the grid has the
        identity transform and no CRS (:attr:`georeference` ``"rpcs"``).

    Notes
    -----
    A grid is *not georeferenced* (:attr:`georeference` ``"none"``) when it has no CRS, no
    GCPs, no RPCs and a unit, north-down translation as transform: what GDAL reports for a
    file without any georeference (and its windows). Writers then write no georeference.
    """

    crs: Any
    transform: Affine
    shape: tuple[int, int]
    gcps: tuple[GCP, ...] | None = None
    rpcs: tuple[tuple[str, str], ...] | None = None

    def __post_init__(self) -> None:
        if len(self.shape) != 2 or min(self.shape) < 1:
            raise GeometryError(f"GeoGrid shape must be (height, width) >= 1, got {self.shape}")
        object.__setattr__(self, "shape", (int(self.shape[0]), int(self.shape[1])))
        if not isinstance(self.transform, Affine):
            object.__setattr__(self, "transform", Affine(*tuple(self.transform)[:6]))
        if abs(self.transform.determinant) == 0:
            raise GeometryError(f"degenerate transform {tuple(self.transform)[:6]}")
        if self.gcps is not None:
            gcps = tuple(GCP(*g) for g in self.gcps)
            if len(gcps) < 3:
                raise GeometryError(f"a GCP georeference needs at least 3 GCPs, got {len(gcps)}")
            object.__setattr__(self, "gcps", gcps)
        if self.rpcs is not None:
            items = self.rpcs.items() if isinstance(self.rpcs, dict) else self.rpcs
            object.__setattr__(self, "rpcs", tuple(sorted((str(k), str(v)) for k, v in items)))

    @property
    def georeference(self) -> str:
        """How pixels are placed on the ground: ``"transform"``, ``"gcps"``, ``"rpcs"`` or ``"none"``."""
        if self.gcps:
            return "gcps"
        t = self.transform
        unit = (t.a, t.b, t.d, t.e) == (1.0, 0.0, 0.0, 1.0)
        if self.crs is None and unit:
            return "rpcs" if self.rpcs else "none"
        return "transform"

    ndim = 2
    dims = ("y", "x")

    @property
    def height(self) -> int:
        return self.shape[0]

    @property
    def width(self) -> int:
        return self.shape[1]

    @property
    def res(self) -> tuple[float, float]:
        """Pixel size ``(x_size, y_size)`` in CRS units (lengths of the column/row vectors)."""
        t = self.transform
        return (float(np.hypot(t.a, t.d)), float(np.hypot(t.b, t.e)))

    @property
    def is_rectilinear(self) -> bool:
        """True when the grid has no rotation or shear."""
        return self.transform.b == 0 and self.transform.d == 0

    @property
    def crs_pixel_area(self) -> float:
        """Area of one pixel in squared CRS units (``|det(transform)|``), NOT a ground area.

        Degrees², ft², or Web Mercator m² are not ground m²: use :attr:`ground` for areas.
        """
        return abs(self.transform.determinant)

    @property
    def pixel_area(self) -> float:
        """Removed: it was CRS units², silently wrong as m² (use ``ground`` or ``crs_pixel_area``)."""
        raise AttributeError(
            "GeoGrid.pixel_area was the area in CRS units², not ground m²; use "
            "grid.ground (geomed_seg.core.ground) for ground areas or grid.crs_pixel_area"
        )

    @property
    def ground(self) -> GroundUnits:
        """Ground pixel areas (m²) and sizes (m) of this grid, or CRS units without a ground.

        See :mod:`geomed_seg.core.ground` (planar only where exact to 0.1 %, geodesic otherwise).
        """
        from geomed_seg.core.ground import ground_units

        return ground_units(self)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """``(left, bottom, right, top)`` of the four corners' envelope in CRS units.

        GCP / RPC-only grids: the envelope of the outline mapped through GDAL's transformer
        (65 points per edge; their polynomial is smooth), not of the affine fit.
        """
        h, w = self.shape
        if self.georeference in ("gcps", "rpcs"):
            from geomed_seg.io.georef import pixel_to_map

            t = np.linspace(0.0, 1.0, 65)
            cols = np.concatenate([t * w, t * w, 0 * t, 0 * t + w])
            rows = np.concatenate([0 * t, 0 * t + h, t * h, t * h])
            xy = pixel_to_map(self)(np.column_stack([cols, rows]))
            return (float(xy[:, 0].min()), float(xy[:, 1].min()),
                    float(xy[:, 0].max()), float(xy[:, 1].max()))  # fmt: skip
        xs, ys = zip(*(self.transform @ c for c in ((0, 0), (w, 0), (0, h), (w, h))), strict=True)
        return (min(xs), min(ys), max(xs), max(ys))

    def window(self, slices: Sequence[slice]) -> GeoGrid:
        """Return the exact sub-grid of array slices ``(rows, cols)`` (GCPs/RPCs shifted too)."""
        rows, cols = normalise_slices(slices, self.shape)
        r0, c0 = rows.start, cols.start
        transform = self.transform @ Affine.translation(c0, r0)
        gcps = None
        if self.gcps is not None:
            gcps = tuple(g._replace(row=g.row - r0, col=g.col - c0) for g in self.gcps)
        rpcs = None
        if self.rpcs is not None:
            shift = {_RPC_LINE_OFF: r0, _RPC_SAMP_OFF: c0}
            rpcs = tuple(
                (k, repr(float(v) - shift[k]) if shift.get(k) else v) for k, v in self.rpcs
            )
        shape = (rows.stop - rows.start, cols.stop - cols.start)
        return GeoGrid(self.crs, transform, shape, gcps, rpcs)

    def xy(self, row: float, col: float) -> tuple[float, float]:
        """Map coordinates of pixel ``(row, col)``'s centre.

        GCP / RPC-only grids go through GDAL's GCP / RPC transformer (the only branch that
        needs rasterio; :func:`geomed_seg.io.georef.pixel_to_map`), never their affine fit.
        """
        if self.georeference in ("gcps", "rpcs"):
            from geomed_seg.io.georef import pixel_to_map

            x, y = pixel_to_map(self)(np.array([[col + 0.5, row + 0.5]], dtype=float))[0]
            return (float(x), float(y))
        return self.transform @ (col + 0.5, row + 0.5)

    def rowcol(self, x: float, y: float) -> tuple[float, float]:
        """Fractional ``(row, col)`` of map point ``(x, y)`` (pixel centres at ``.0``).

        GCP / RPC-only grids invert GDAL's transformer (:func:`geomed_seg.io.georef.map_to_pixel`).
        """
        if self.georeference in ("gcps", "rpcs"):
            from geomed_seg.io.georef import map_to_pixel

            col, row = map_to_pixel(self)(np.array([[x, y]], dtype=float))[0]
            return (float(row) - 0.5, float(col) - 0.5)
        col, row = ~self.transform @ (x, y)
        return (row - 0.5, col - 0.5)

    def almost_equals(self, other: object, rtol: float = 1e-9, atol_px: float = 1e-6) -> bool:
        """True when CRS and shape are equal and transforms agree to ``atol_px`` of a pixel."""
        if not isinstance(other, GeoGrid) or other.shape != self.shape:
            return False
        if (self.crs is None) != (other.crs is None):
            return False
        if self.crs is not None and self.crs != other.crs:
            return False
        if _rpc_numbers(self.rpcs) != _rpc_numbers(other.rpcs):
            return False
        if (self.gcps is None) != (other.gcps is None):
            return False
        scale = max(self.res) * atol_px
        if self.gcps is not None:
            if len(self.gcps) != len(other.gcps):  # type: ignore[arg-type]
                return False
            ga = np.array([g[:5] for g in self.gcps], dtype=float)
            gb = np.array([g[:5] for g in other.gcps], dtype=float)  # type: ignore[union-attr]
            if not np.allclose(ga, gb, rtol=rtol, atol=atol_px):
                return False
        a = np.array(tuple(self.transform)[:6], dtype=float)
        b = np.array(tuple(other.transform)[:6], dtype=float)
        return bool(np.allclose(a, b, rtol=rtol, atol=scale))

    def describe(self) -> str:
        """One line for error messages and logs."""
        crs = "no CRS" if self.crs is None else (self.crs.to_string() or "custom CRS")
        if self.gcps:
            return f"GeoGrid({crs}, {len(self.gcps)} GCPs, shape={self.shape})"
        extra = ", RPCs" if self.rpcs else ""
        return f"GeoGrid({crs}, transform={tuple(self.transform)[:6]}{extra}, shape={self.shape})"

    def to_attrs(self) -> dict[str, Any]:
        """JSON-serialisable description (CRS as WKT2, transform in affine order a..f).

        GCPs (``[row, col, x, y, z, id, info]`` each) and RPCs (``{key: value}``) are added
        when the grid has them.
        """
        out: dict[str, Any] = {
            "kind": "geo",
            "crs": _crs_to_wkt(self.crs),
            "transform": list(tuple(self.transform)[:6]),
            "shape": list(self.shape),
        }
        if self.gcps is not None:
            out["gcps"] = [list(g) for g in self.gcps]
        if self.rpcs is not None:
            out["rpcs"] = dict(self.rpcs)
        return out

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> GeoGrid:
        """Inverse of :meth:`to_attrs`."""
        from rasterio.crs import CRS

        crs = None if attrs.get("crs") is None else CRS.from_user_input(attrs["crs"])
        gcps = attrs.get("gcps")
        gcps = None if gcps is None else tuple(GCP(*g) for g in gcps)
        rpcs = attrs.get("rpcs")
        rpcs = None if rpcs is None else tuple(rpcs.items())
        return cls(crs, Affine(*attrs["transform"]), tuple(attrs["shape"]), gcps, rpcs)


def _axcodes(rot: np.ndarray) -> tuple[str, str, str]:
    """Return RAS orientation codes of the three index axes (columns of ``rot``)."""
    labels = (("L", "R"), ("P", "A"), ("I", "S"))
    used: set[int] = set()
    codes = []
    for col in rot.T:
        order = np.argsort(-np.abs(col))
        axis = next(int(a) for a in order if int(a) not in used)
        used.add(axis)
        codes.append(labels[axis][1] if col[axis] > 0 else labels[axis][0])
    return tuple(codes)  # type: ignore[return-value]


@dataclass(frozen=True)
class VoxelGrid:
    """A 3D voxel grid in RAS+ world millimetres.

    Parameters
    ----------
    affine : (4, 4) array
        nibabel-style voxel-centre ``(i, j, k, 1) -> (R, A, S, 1)`` matrix, mm.
    shape : tuple of int
        Array shape in storage order ``(z, y, x)`` = ``(nk, nj, ni)``.
    """

    affine: np.ndarray = field(compare=False)
    shape: tuple[int, int, int]
    _key: tuple = field(init=False, repr=False, compare=True)

    ndim = 3
    dims = ("z", "y", "x")

    def __post_init__(self) -> None:
        aff = np.array(self.affine, dtype=np.float64)
        if aff.shape != (4, 4) or not np.all(np.isfinite(aff)):
            raise GeometryError(f"affine must be a finite 4x4 matrix, got shape {aff.shape}")
        if abs(np.linalg.det(aff[:3, :3])) < 1e-12:
            raise GeometryError("affine is singular (zero spacing or collinear axes)")
        if len(self.shape) != 3 or min(self.shape) < 1:
            raise GeometryError(f"VoxelGrid shape must be (z, y, x) >= 1, got {self.shape}")
        aff.setflags(write=False)
        object.__setattr__(self, "affine", aff)
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        object.__setattr__(self, "_key", (aff.tobytes(), self.shape))

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along index axes ``(x, y, z)`` = ``(i, j, k)`` (nibabel zooms order)."""
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        """Voxel size in mm in array order ``(z, y, x)``."""
        return self.spacing[::-1]

    @property
    def origin(self) -> tuple[float, float, float]:
        """RAS world position (mm) of voxel ``(0, 0, 0)``'s centre."""
        return tuple(float(v) for v in self.affine[:3, 3])  # type: ignore[return-value]

    @property
    def direction(self) -> np.ndarray:
        """3×3 RAS direction cosines; column ``n`` is the unit vector of index axis ``n`` (i, j, k)."""
        return self.affine[:3, :3] / np.array(self.spacing)

    @property
    def axcodes(self) -> tuple[str, str, str]:
        """Orientation codes of index axes ``(i, j, k)``, e.g. ``('R', 'A', 'S')``."""
        return _axcodes(self.direction)

    @property
    def voxel_volume(self) -> float:
        """Volume of one voxel in mm³."""
        return float(abs(np.linalg.det(self.affine[:3, :3])))

    @property
    def is_oblique(self) -> bool:
        """True when the axes are not aligned with RAS within 1e-6."""
        d = np.abs(self.direction)
        return bool(np.any((d > 1e-6) & (d < 1 - 1e-6)))

    def window(self, slices: Sequence[slice]) -> VoxelGrid:
        """Return the exact sub-grid of array slices ``(z, y, x)``."""
        zs, ys, xs = normalise_slices(slices, self.shape)
        shift = np.eye(4)
        shift[:3, 3] = (xs.start, ys.start, zs.start)
        return VoxelGrid(
            self.affine @ shift, (zs.stop - zs.start, ys.stop - ys.start, xs.stop - xs.start)
        )

    def world(self, z: float, y: float, x: float) -> tuple[float, float, float]:
        """RAS mm of voxel ``(z, y, x)`` (array order)."""
        return tuple(float(v) for v in (self.affine @ np.array([x, y, z, 1.0]))[:3])  # type: ignore[return-value]

    def index(self, r: float, a: float, s: float) -> tuple[float, float, float]:
        """Fractional array position ``(z, y, x)`` of RAS point ``(r, a, s)`` mm."""
        i, j, k, _ = np.linalg.solve(self.affine, np.array([r, a, s, 1.0]))
        return (float(k), float(j), float(i))

    def to_itk(self) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
        """Return ``(origin, spacing, direction)`` in ITK's LPS convention.

        ``direction`` is the row-major flattened 3×3 matrix SimpleITK's ``SetDirection`` takes.
        """
        lps = _LPS_FLIP @ self.affine[:3, :3]
        spacing = self.spacing
        direction = lps / np.array(spacing)
        origin = _LPS_FLIP @ self.affine[:3, 3]
        return (
            tuple(float(v) for v in origin),
            tuple(float(v) for v in spacing),
            tuple(float(v) for v in direction.ravel()),
        )

    @classmethod
    def from_itk(
        cls,
        origin: Sequence[float],
        spacing: Sequence[float],
        direction: Sequence[float],
        shape: Sequence[int],
    ) -> VoxelGrid:
        """Build from ITK LPS ``origin``/``spacing``/``direction`` and array ``shape`` (z, y, x)."""
        d = np.asarray(direction, dtype=float).reshape(3, 3)
        aff = np.eye(4)
        aff[:3, :3] = _LPS_FLIP @ d @ np.diag(np.asarray(spacing, dtype=float))
        aff[:3, 3] = _LPS_FLIP @ np.asarray(origin, dtype=float)
        return cls(aff, tuple(shape))  # type: ignore[arg-type]

    def almost_equals(self, other: object, atol_mm: float = 1e-4) -> bool:
        """True when shapes are equal and affines agree to ``atol_mm`` (and 1e-6 in rotation)."""
        if not isinstance(other, VoxelGrid) or other.shape != self.shape:
            return False
        return bool(
            np.allclose(self.affine[:3, 3], other.affine[:3, 3], atol=atol_mm, rtol=0)
            and np.allclose(
                self.affine[:3, :3], other.affine[:3, :3], atol=max(atol_mm, 1e-6), rtol=0
            )
        )

    def describe(self) -> str:
        """One line for error messages and logs."""
        sp = ", ".join(f"{s:g}" for s in self.spacing)
        org = ", ".join(f"{o:g}" for o in self.origin)
        return (
            f"VoxelGrid(shape(z,y,x)={self.shape}, spacing(x,y,z)=({sp}) mm, "
            f"origin=({org}), axcodes={''.join(self.axcodes)})"
        )

    def to_attrs(self) -> dict[str, Any]:
        """JSON-serialisable description (affine as nested lists, exact float64 repr)."""
        return {"kind": "voxel", "affine": self.affine.tolist(), "shape": list(self.shape)}

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> VoxelGrid:
        """Inverse of :meth:`to_attrs`."""
        return cls(np.array(attrs["affine"], dtype=np.float64), tuple(attrs["shape"]))


Grid = GeoGrid | VoxelGrid


def grid_from_attrs(attrs: dict[str, Any]) -> Grid:
    """Rebuild a grid from :meth:`GeoGrid.to_attrs` / :meth:`VoxelGrid.to_attrs` output."""
    kind = attrs.get("kind")
    if kind == "geo":
        return GeoGrid.from_attrs(attrs)
    if kind == "voxel":
        return VoxelGrid.from_attrs(attrs)
    raise GeometryError(f"unknown grid kind {kind!r}; expected 'geo' or 'voxel'")


def check_same_grid(a: Grid, b: Grid, what: str = "grids") -> None:
    """Raise :class:`GeometryError` naming both grids when ``a`` and ``b`` differ."""
    if not a.almost_equals(b):  # type: ignore[arg-type]
        raise GeometryError(f"{what} differ: {a.describe()} vs {b.describe()}")
