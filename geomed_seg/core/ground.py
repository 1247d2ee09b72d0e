"""Ground units of a georeferenced grid: true pixel areas (m²) and pixel sizes (m), any CRS.

``|det(transform)|`` is the area of a pixel in *CRS units²*. It is a ground area in m² only
for a projected CRS in metres whose scale error is negligible over the scene; in degrees it
is degrees², in US survey feet ft², and in Web Mercator at 65° N about 5.6 times the ground
area. This module is the one place that turns a :class:`~geomed_seg.core.grid.GeoGrid` into
ground units; everything that speaks of m², km², ha or metres goes through it.

How each CRS kind is handled (:func:`ground_units`):

* **No CRS, engineering / LOCAL_CS CRS, or a CRS with no ellipsoid**: there is no ground to
  measure; areas are in CRS units² and lengths in CRS units, and the unit strings say so
  (``"CRS units²"``, ``"CRS units"``). Never m².
* **Truth** for every other CRS: the geodesic area of the pixel polygon on the CRS's own
  ellipsoid. The pixel's corners (edges densified to <= 1 km segments, so straight edges in
  the CRS and parallels in degrees are followed) are transformed to the CRS's own
  geographic CRS (pyproj ``Transformer``; its angular unit, e.g. grads, converted to degrees)
  and measured with ``pyproj.Geod`` (Karney's
  algorithm, ~1e-9 relative on a 30 m pixel). Rotated/sheared grids are just other
  polygons.
* **Planar** (``|det| * unit_factor²``, one constant) only where it is exact enough: a
  projected CRS whose planar pixel area differs from the geodesic one by less than
  :data:`PLANAR_TOLERANCE` (0.1 %) at every node of a 9 x 9 lattice over the scene
  (including its corners). Equal-area CRSs and UTM within its zone pass; feet pass with
  their unit factor. The decision is *measured* rather than read from the projection
  name, because a "metric" CRS used far from its zone, or a tiny scene in Web Mercator,
  should be judged by its actual scale error. Scale error is smooth, so 9 x 9 nodes bound it.
* **Geodesic** otherwise (geographic degrees; conformal projections with large scale
  error such as Web Mercator or polar stereographic): exact geodesic areas at a lattice of
  pixel nodes, bilinear in between. The lattice starts at 17 x 17 nodes and is refined
  (doubled along an axis) until linear interpolation at the midpoints agrees with the
  geodesic truth to :data:`INTERP_TOLERANCE` (1e-5), so areas are exact to that tolerance
  for any latitude and pixel size. An axis along which areas do not vary (columns of a
  north-up geographic or Mercator grid) collapses to one node, so a block's areas are a
  ``(rows, 1)`` column: ``area = sum over rows of count_in_row * area_of_row_pixel``.

Hand-written because no library gives per-pixel ground areas of an affine grid: pyproj
gives geodesic polygon areas and projection scale factors, which this module combines.
Results are cached per grid (CRS, transform, shape).
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from geomed_seg.errors import GeometryError

if TYPE_CHECKING:
    import dask.array as da

    from geomed_seg.core.grid import GeoGrid

log = logging.getLogger(__name__)

#: Largest relative difference between planar and geodesic pixel areas for planar areas.
PLANAR_TOLERANCE = 1e-3
#: Target relative error of interpolated geodesic pixel areas.
INTERP_TOLERANCE = 1e-5
#: Longest densified pixel-edge segment, metres.
_SEGMENT_M = 1000.0
_START_NODES = 17
_MAX_NODES = 1 << 16
#: Relative spread below which an axis of the lattice collapses to one node.
_FLAT = 1e-7

METRE, SQUARE_METRE = "m", "m²"
CRS_UNIT, SQUARE_CRS_UNIT = "CRS units", "CRS units²"


@dataclass(frozen=True, eq=False)
class GroundUnits:
    """Ground pixel areas and sizes of one grid (build it with :func:`ground_units`).

    Attributes
    ----------
    method : {"planar", "geodesic", "crs-units"}
        How areas are computed (see the module docstring).
    metric : bool
        True when areas are m² and lengths metres; False for CRS units.
    planar_error : float
        Largest measured relative difference between planar and geodesic pixel areas
        (``nan`` without a ground).
    node_rows, node_cols : ndarray of int
        Pixel indices of the area lattice (array order: rows ``y``, columns ``x``).
    node_areas : ndarray, shape (len(node_rows), len(node_cols))
        Pixel areas at the nodes, in :attr:`area_unit`.
    pixel_size_range : (float, float)
        Smallest and largest pixel edge length over the scene (both axes), in :attr:`length_unit`.
    pixel_sizes : ((float, float), (float, float))
        ``((x_min, x_max), (y_min, y_max))``: lengths of the pixels' column (x) and row (y)
        edges over a 9 x 9 lattice of the scene, in :attr:`length_unit`.
    reason : str
        One line saying why this method was chosen (for logs and reports).
    """

    method: str
    metric: bool
    planar_error: float
    node_rows: np.ndarray
    node_cols: np.ndarray
    node_areas: np.ndarray
    pixel_size_range: tuple[float, float]
    reason: str
    pixel_sizes: tuple[tuple[float, float], tuple[float, float]] = ((math.nan,) * 2,) * 2

    @property
    def length_unit(self) -> str:
        """``"m"`` or ``"CRS units"``."""
        return METRE if self.metric else CRS_UNIT

    @property
    def area_unit(self) -> str:
        """``"m²"`` or ``"CRS units²"``."""
        return SQUARE_METRE if self.metric else SQUARE_CRS_UNIT

    @property
    def area_key(self) -> str:
        """Field-name suffix of areas: ``"m2"`` or ``"crs_units2"``."""
        return "m2" if self.metric else "crs_units2"

    @property
    def constant_area(self) -> float | None:
        """The one pixel area when every pixel has the same area, else ``None``."""
        return float(self.node_areas[0, 0]) if self.node_areas.size == 1 else None

    @property
    def mean_pixel_area(self) -> float:
        """Mean of the lattice node areas (a summary, not for sums over pixels)."""
        return float(self.node_areas.mean())

    def pixel_areas(self, rows: slice, cols: slice) -> np.ndarray:
        """Return the areas of pixels ``[rows, cols]`` in :attr:`area_unit`.

        The result broadcasts to ``(n_rows, n_cols)`` (array order ``y, x``): a ``(1, 1)``
        array for a constant area, ``(n_rows, 1)`` when areas vary by row only.
        """
        a = self.node_areas
        if a.shape[0] > 1:
            a = _lerp(np.arange(rows.start, rows.stop), self.node_rows, a, axis=0)
        if a.shape[1] == 1:
            return a
        # Column interpolation per node interval: one multiply-add per pixel, no gathers.
        x = np.arange(cols.start, cols.stop)
        nodes = self.node_cols
        seg = np.clip(np.searchsorted(nodes, x, side="right") - 1, 0, len(nodes) - 2)
        out = np.empty((a.shape[0], x.size))
        for j in np.unique(seg):
            sel = np.flatnonzero(seg == j)
            lo, hi = sel[0], sel[-1] + 1
            t = np.clip((x[lo:hi] - nodes[j]) / (nodes[j + 1] - nodes[j]), 0.0, 1.0)
            np.multiply((a[:, j + 1] - a[:, j])[:, None], t[None, :], out=out[:, lo:hi])
            out[:, lo:hi] += a[:, j, None]
        return out


def _lerp(x: np.ndarray, nodes: np.ndarray, values: np.ndarray, axis: int) -> np.ndarray:
    """Linear interpolation of ``values`` (nodes along ``axis``) at positions ``x``."""
    i = np.clip(np.searchsorted(nodes, x, side="right") - 1, 0, len(nodes) - 2)
    t = (x - nodes[i]) / (nodes[i + 1] - nodes[i])
    t = np.clip(t, 0.0, 1.0)
    if axis == 0:
        return values[i] * (1 - t)[:, None] + values[i + 1] * t[:, None]
    return values[:, i] * (1 - t)[None, :] + values[:, i + 1] * t[None, :]


def _nodes(n: int, count: int) -> np.ndarray:
    return np.unique(np.round(np.linspace(0, n - 1, max(1, min(n, count)))).astype(np.int64))


def _horizontal(crs: Any):
    """Return the pyproj CRS whose ground we measure, or ``None`` (CRS units only)."""
    import pyproj

    pcrs = pyproj.CRS.from_user_input(crs.to_wkt() if hasattr(crs, "to_wkt") else crs)
    if pcrs.is_bound:
        pcrs = pcrs.source_crs
    if pcrs.is_compound:
        pcrs = pcrs.sub_crs_list[0]
    if (
        pcrs.is_engineering
        or pcrs.geodetic_crs is None
        or not (pcrs.is_geographic or pcrs.is_projected)
    ):
        return None
    return pcrs


class _Geodesic:
    """Geodesic pixel areas and edge lengths of one grid (pyproj Transformer + Geod)."""

    def __init__(self, grid: GeoGrid, pcrs: Any) -> None:
        import pyproj

        self.grid = grid
        self.geod = pcrs.get_geod()
        self.to_lonlat = pyproj.Transformer.from_crs(pcrs, pcrs.geodetic_crs, always_xy=True)
        # the geodetic CRS keeps the CRS's angular unit (grads for NTF Paris, EPSG:4807;
        # radians exist too); Geod wants degrees. The prime meridian only shifts longitudes,
        # which geodesic lengths and areas do not depend on.
        axes = pcrs.geodetic_crs.axis_info
        rad = axes[0].unit_conversion_factor if axes else math.pi / 180
        self.deg_per_unit = rad * 180 / math.pi
        self.segments = 1

    def lonlat(self, cols: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t = self.grid.transform
        x = t.a * cols + t.b * rows + t.c
        y = t.d * cols + t.e * rows + t.f
        lon, lat = self.to_lonlat.transform(x, y)
        lon = np.asarray(lon, float) * self.deg_per_unit
        lat = np.asarray(lat, float) * self.deg_per_unit
        if not (np.isfinite(lon).all() and np.isfinite(lat).all()) or np.abs(lat).max() > 90:
            raise GeometryError(
                f"{self.grid.describe()}: pixel corners fall outside the CRS's valid area "
                "(no longitude/latitude); ground areas cannot be computed"
            )
        return lon, lat

    def edge_lengths(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Ground lengths (m) of the column and row edges of pixels at ``rows x cols``."""
        r, c = (a.astype(float).ravel() for a in np.meshgrid(rows, cols, indexing="ij"))
        lon0, lat0 = self.lonlat(c, r)
        lon1, lat1 = self.lonlat(c + 1, r)
        lon2, lat2 = self.lonlat(c, r + 1)
        dx = self.geod.inv(lon0, lat0, lon1, lat1)[2]
        dy = self.geod.inv(lon0, lat0, lon2, lat2)[2]
        return np.asarray(dx), np.asarray(dy)

    def areas(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Geodesic areas (m²) of pixels ``rows x cols``, shape ``(len(rows), len(cols))``."""
        d = self.segments
        t = np.arange(d) / d
        ring = np.concatenate(
            [
                np.stack([t, np.zeros(d)], 1),
                np.stack([np.ones(d), t], 1),
                np.stack([1 - t, np.ones(d)], 1),
                np.stack([np.zeros(d), 1 - t], 1),
            ]
        )  # unit square perimeter, (dc, dr)
        cc = cols[None, :, None] + ring[None, None, :, 0]
        rr = rows[:, None, None] + ring[None, None, :, 1]
        cc, rr = np.broadcast_arrays(cc, rr)
        lon, lat = self.lonlat(cc.ravel(), rr.ravel())
        lon = lon.reshape(cc.shape)
        lat = lat.reshape(cc.shape)
        out = np.empty((len(rows), len(cols)))
        for i in range(len(rows)):
            for j in range(len(cols)):
                out[i, j] = abs(self.geod.polygon_area_perimeter(lon[i, j], lat[i, j])[0])
        return out


def _crs_units(grid: GeoGrid, why: str) -> GroundUnits:
    res = grid.res
    return GroundUnits(
        method="crs-units",
        metric=False,
        planar_error=math.nan,
        node_rows=np.zeros(1, np.int64),
        node_cols=np.zeros(1, np.int64),
        node_areas=np.full((1, 1), abs(grid.transform.determinant)),
        pixel_size_range=(min(res), max(res)),
        reason=why,
        pixel_sizes=((res[0], res[0]), (res[1], res[1])),
    )


def _refine(geo: _Geodesic, h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return a node lattice whose bilinear interpolation meets :data:`INTERP_TOLERANCE`.

    An axis along which the first lattice's areas do not vary (to :data:`_FLAT`) keeps one
    node, so north-up geographic and cylindrical grids only refine their rows.
    """
    n_r, n_c = min(h, _START_NODES), min(w, _START_NODES)
    a = geo.areas(_nodes(h, n_r), _nodes(w, n_c))
    if a.shape[1] > 1 and np.all(np.ptp(a, axis=1) <= _FLAT * a.min(axis=1)):
        w = n_c = 1
    if a.shape[0] > 1 and np.all(np.ptp(a, axis=0) <= _FLAT * a.min(axis=0)):
        h = n_r = 1
    while True:
        rows, cols = _nodes(h, n_r), _nodes(w, n_c)
        a = geo.areas(rows, cols)
        err_r = err_c = 0.0
        mid_r = (rows[:-1] + rows[1:]) // 2
        mid_r = mid_r[(mid_r > rows[:-1])]
        if mid_r.size:
            truth = geo.areas(mid_r, cols)
            err_r = float(np.max(np.abs(_lerp(mid_r, rows, a, 0) / truth - 1)))
        mid_c = (cols[:-1] + cols[1:]) // 2
        mid_c = mid_c[(mid_c > cols[:-1])]
        if mid_c.size:
            truth = geo.areas(rows, mid_c)
            err_c = float(np.max(np.abs(_lerp(mid_c, cols, a, 1) / truth - 1)))
        grow_r = err_r > INTERP_TOLERANCE and len(rows) < h
        grow_c = err_c > INTERP_TOLERANCE and len(cols) < w
        if not (grow_r or grow_c):
            return rows, cols, a
        if (2 * n_r if grow_r else n_r) * (2 * n_c if grow_c else n_c) > _MAX_NODES:
            log.warning(
                "%s: geodesic pixel areas interpolated with relative error up to %.2g "
                "(node limit reached)",
                geo.grid.describe(),
                max(err_r, err_c),
            )
            return rows, cols, a
        n_r = 2 * n_r - 1 if grow_r else n_r
        n_c = 2 * n_c - 1 if grow_c else n_c


def _build(grid: GeoGrid) -> GroundUnits:
    if grid.crs is None:
        return _crs_units(grid, "no CRS: areas in CRS units², not m²")
    pcrs = _horizontal(grid.crs)
    if pcrs is None:
        return _crs_units(grid, "engineering/local CRS: areas in CRS units², not m²")
    geo = _Geodesic(grid, pcrs)
    h, w = grid.shape
    probe_r, probe_c = _nodes(h, 9), _nodes(w, 9)
    dx, dy = geo.edge_lengths(probe_r, probe_c)
    sizes = np.concatenate([dx, dy])
    sizes = sizes[sizes > 0]  # a pixel edge on a pole has no length
    xy = ((float(dx.min()), float(dx.max())), (float(dy.min()), float(dy.max())))
    geo.segments = int(np.clip(math.ceil(float(np.hypot(dx, dy).max()) / _SEGMENT_M), 1, 32))
    probe = geo.areas(probe_r, probe_c)
    planar_error = math.nan
    if pcrs.is_projected:
        factor = pcrs.axis_info[0].unit_conversion_factor
        planar = abs(grid.transform.determinant) * factor * factor
        planar_error = float(np.max(np.abs(planar / probe - 1)))
        if planar_error < PLANAR_TOLERANCE:
            return GroundUnits(
                method="planar",
                metric=True,
                planar_error=planar_error,
                node_rows=np.zeros(1, np.int64),
                node_cols=np.zeros(1, np.int64),
                node_areas=np.full((1, 1), planar),
                pixel_size_range=(float(sizes.min()), float(sizes.max())),
                pixel_sizes=xy,
                reason=f"planar: area scale error {planar_error:.2%} < "
                f"{PLANAR_TOLERANCE:.1%} over the scene",
            )
    rows, cols, areas = _refine(geo, h, w)
    kind = "geographic CRS" if pcrs.is_geographic else f"scale error {planar_error:.2%}"
    return GroundUnits(
        method="geodesic",
        metric=True,
        planar_error=planar_error,
        node_rows=rows,
        node_cols=cols,
        node_areas=areas,
        pixel_size_range=(float(sizes.min()), float(sizes.max())),
        pixel_sizes=xy,
        reason=f"geodesic ({kind}): {len(rows)} x {len(cols)} nodes on {pcrs.ellipsoid.name}",
    )


@functools.lru_cache(maxsize=128)
def _cached(wkt: str | None, transform: tuple[float, ...], shape: tuple[int, int]) -> GroundUnits:
    from affine import Affine
    from rasterio.crs import CRS

    from geomed_seg.core.grid import GeoGrid

    crs = None if wkt is None else CRS.from_wkt(wkt)
    return _build(GeoGrid(crs, Affine(*transform), shape))


def ground_units(grid: GeoGrid) -> GroundUnits:
    """Return the ground units of ``grid`` (cached per CRS, transform and shape)."""
    wkt = None if grid.crs is None else grid.crs.to_wkt()
    gu = _cached(wkt, tuple(grid.transform)[:6], tuple(grid.shape))
    log.debug("%s: %s", grid.describe(), gu.reason)
    return gu


def pixel_area_array(grid: GeoGrid, chunks: Any = "auto") -> da.Array:
    """Return a lazy ``(y, x)`` float64 array of pixel areas in ``grid.ground.area_unit``."""
    import dask.array as da

    gu = ground_units(grid)
    const = gu.constant_area
    if const is not None:
        return da.full(grid.shape, const, dtype=np.float64, chunks=chunks)

    def block(x: np.ndarray, block_info: dict | None = None) -> np.ndarray:
        (r0, r1), (c0, c1) = block_info[0]["array-location"]
        a = gu.pixel_areas(slice(r0, r1), slice(c0, c1))
        return np.broadcast_to(a, (r1 - r0, c1 - c0)).astype(np.float64)

    base = da.zeros(grid.shape, dtype=np.uint8, chunks=chunks)
    return base.map_blocks(block, dtype=np.float64)


def _weighted_bincount(ids: np.ndarray, weights: np.ndarray) -> np.ndarray:
    ids = np.asarray(ids).ravel()
    if ids.size and ids.min() < 0:
        raise GeometryError("label areas need non-negative integer labels")
    return np.bincount(ids.astype(np.int64), weights=np.asarray(weights).ravel())


def _sum_padded(parts: list[np.ndarray]) -> np.ndarray:
    n = max((len(p) for p in parts), default=0)
    out = np.zeros(n)
    for p in parts:
        out[: len(p)] += p
    return out


def label_areas(grid: GeoGrid, labels: Any, valid: Any | None = None) -> np.ndarray:
    """Return the ground area of every label value ``0..max`` (index = label).

    Parameters
    ----------
    grid : GeoGrid
        Grid of ``labels``.
    labels : numpy or dask array, shape ``(y, x)``
        Non-negative integer labels (class values or instance ids).
    valid : bool array, shape ``(y, x)``, optional
        Only ``True`` samples are counted (nodata excluded).

    Returns
    -------
    ndarray of float64
        ``areas[v]`` = sum of the ground areas of pixels labelled ``v``, in
        ``grid.ground.area_unit`` (m², or CRS units² without a ground). Streamed per chunk.
    """
    import dask
    import dask.array as da

    arr = labels if isinstance(labels, da.Array) else da.from_array(np.asarray(labels))
    if tuple(arr.shape) != tuple(grid.shape):
        raise GeometryError(f"labels of shape {arr.shape} on a grid of shape {grid.shape}")
    weights = pixel_area_array(grid, arr.chunks)
    if valid is not None:
        v = valid if isinstance(valid, da.Array) else da.from_array(np.asarray(valid))
        weights = da.where(v.rechunk(arr.chunks), weights, 0.0)
    count = dask.delayed(_weighted_bincount, pure=True)
    parts = [
        count(a, w)
        for a, w in zip(arr.to_delayed().ravel(), weights.to_delayed().ravel(), strict=True)
    ]
    while len(parts) > 1:
        parts = [dask.delayed(_sum_padded)(parts[i : i + 16]) for i in range(0, len(parts), 16)]
    return np.asarray(dask.compute(parts[0])[0]) if parts else np.zeros(0)


def mask_area(grid: GeoGrid, mask: Any) -> float:
    """Return the ground area of the ``True`` pixels of a ``(y, x)`` mask (area unit of grid)."""
    import dask.array as da

    m = mask if isinstance(mask, da.Array) else da.from_array(np.asarray(mask))
    areas = label_areas(grid, m.astype(np.uint8))
    return float(areas[1]) if len(areas) > 1 else 0.0


def pixel_size_at(grid: GeoGrid, row: float, col: float) -> tuple[float, float]:
    """Return the ground lengths ``(x, y)`` of the column and row edges of pixel ``(row, col)``.

    Metres (geodesic distances between the pixel's corners) with a ground, else CRS units.
    """
    gu = ground_units(grid)
    if not gu.metric:
        return grid.res
    geo = _Geodesic(grid, _horizontal(grid.crs))
    dx, dy = geo.edge_lengths(np.array([row]), np.array([col]))
    return float(dx[0]), float(dy[0])


def metres_to_pixels(grid: GeoGrid, metres: float) -> float:
    """Return how many pixels span ``metres`` everywhere in the scene (ceil it for a halo).

    Uses the smallest ground pixel edge of the scene, so a halo or radius of the returned
    size covers at least ``metres`` at every pixel. Raises :class:`GeometryError` when the
    grid has no ground (no CRS or a local CRS): metres cannot be converted there.
    """
    gu = ground_units(grid)
    if not gu.metric:
        raise GeometryError(f"{grid.describe()}: {gu.reason}; a distance in metres is undefined")
    return float(metres) / gu.pixel_size_range[0]


def ground_spacing(grid: GeoGrid, rtol: float = PLANAR_TOLERANCE) -> tuple[float, float] | None:
    """Return the ground pixel size ``(y, x)`` in metres (array order), or ``None``.

    ``None`` when the grid has no ground, or when a pixel's ground size varies by more than
    ``rtol`` over the scene (Web Mercator or polar stereographic over large extents,
    degrees over many latitudes): one spacing cannot then describe the scene, and distance
    metrics must not pretend it does. Planar-exact grids give CRS size x unit factor; other
    grids the geodesic edge lengths at the scene centre.
    """
    gu = ground_units(grid)
    if not gu.metric:
        return None
    (x0, x1), (y0, y1) = gu.pixel_sizes
    if gu.method == "planar":
        f = math.sqrt(gu.node_areas[0, 0] / abs(grid.transform.determinant))
        return grid.res[1] * f, grid.res[0] * f
    if min(x0, y0) <= 0 or x1 / x0 - 1 > rtol or y1 / y0 - 1 > rtol:
        return None
    dx, dy = pixel_size_at(grid, grid.height / 2, grid.width / 2)
    return dy, dx
