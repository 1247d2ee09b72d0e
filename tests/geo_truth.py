"""Independent ground truth for area tests: pyproj.Geod areas of pixel polygons.

Computed here with pyproj only (the CRS's own ellipsoid and geographic CRS), never through
``geomed_seg.core.ground``, so the tests compare our areas with a separate computation.
"""

from __future__ import annotations

import numpy as np
from pyproj import CRS, Transformer
from pyproj.crs import GeographicCRS


def _to_degrees(pcrs: CRS) -> Transformer:
    """Transformer to longitude/latitude in degrees on ``pcrs``'s own datum.

    Not to ``pcrs.geodetic_crs``: that keeps the CRS's angular unit (grads for NTF Paris,
    EPSG:4807, and every NTF Lambert zone), and ``Geod`` wants degrees.
    """
    return Transformer.from_crs(pcrs, GeographicCRS(datum=pcrs.geodetic_crs.datum), always_xy=True)


def geodesic_pixel_areas(crs, transform, rows, cols, densify: int = 1) -> np.ndarray:
    """Geodesic area (m²) of each pixel ``(rows[i], cols[i])`` of an affine grid.

    ``densify`` points per pixel edge follow the edge as a straight line in the CRS (for
    large pixels, whose edges are not geodesics: parallels in degrees).
    """
    pcrs = CRS.from_user_input(crs.to_wkt() if hasattr(crs, "to_wkt") else crs)
    geod = pcrs.get_geod()
    to_ll = _to_degrees(pcrs)
    rows = np.asarray(rows, float)
    cols = np.asarray(cols, float)
    t = np.arange(densify) / densify
    ring = (
        [(v, 0) for v in t]
        + [(1, v) for v in t]
        + [(1 - v, 1) for v in t]
        + [(0, 1 - v) for v in t]
    )
    lon = np.empty((len(rows), len(ring)))
    lat = np.empty((len(rows), len(ring)))
    for k, (dc, dr) in enumerate(ring):
        c, r = cols + dc, rows + dr
        x = transform.a * c + transform.b * r + transform.c
        y = transform.d * c + transform.e * r + transform.f
        lon[:, k], lat[:, k] = to_ll.transform(x, y)
    return np.array(
        [abs(geod.polygon_area_perimeter(lo, la)[0]) for lo, la in zip(lon, lat, strict=True)]
    )


def geodesic_polygon_area(crs, geom, max_segment: float | None = None) -> float:
    """Geodesic area (m²) of a shapely polygon given in ``crs`` coordinates.

    ``max_segment`` (CRS units) densifies the edges first, so a long edge that is straight
    in the CRS (a rhumb line in Web Mercator) is not replaced by a geodesic.
    """
    import shapely

    if max_segment is not None:
        geom = shapely.segmentize(geom, max_segment)
    pcrs = CRS.from_user_input(crs.to_wkt() if hasattr(crs, "to_wkt") else crs)
    to_ll = _to_degrees(pcrs)
    ll = shapely.transform(geom, lambda xy: np.column_stack(to_ll.transform(xy[:, 0], xy[:, 1])))
    return abs(pcrs.get_geod().geometry_area_perimeter(ll)[0])
