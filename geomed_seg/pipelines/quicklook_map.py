"""Map furniture of raster quicklooks, as pure functions (no drawing, no I/O).

Background band choice, whether a class colour would vanish on it, the direction of true
north at the scene centre, the CRS name, corner coordinates and the legend lines (class
names and ground areas). :mod:`geomed_seg.pipelines.quicklook` draws them.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from typing import Any

import numpy as np

from geomed_seg.core.grid import GeoGrid
from geomed_seg.core.labels import ClassInfo

#: Band-name aliases of the false-colour composite SWIR / NIR / red (Landsat, Sentinel-2
#: common names and their STAC eo:common_name spellings).
FALSE_COLOUR = (("swir1", "swir16", "swir"), ("nir", "nir08", "nir narrow"), ("red",))
NATURAL_COLOUR = (("red",), ("green",), ("blue",))


def background_bands(names: Sequence[str] | None, n_channels: int) -> tuple[list[int], str]:
    """Return ``(band indices, description)`` of the quicklook background composite.

    False colour SWIR/NIR/red when all three are named (water is near black there, so a
    blue water class stays visible), else natural colour red/green/blue, else the first
    three bands (one band repeated for a single-band image).
    """
    low = [n.lower() for n in names or []]
    for combo, what in ((FALSE_COLOUR, "false colour SWIR/NIR/red"),
                        (NATURAL_COLOUR, "natural colour red/green/blue")):  # fmt: skip
        idx = [next((low.index(a) for a in aliases if a in low), None) for aliases in combo]
        if all(i is not None for i in idx):
            return [int(i) for i in idx], what  # type: ignore[arg-type]
    idx = [min(i, n_channels - 1) for i in range(3)]
    what = "band 1 (grey)" if n_channels == 1 else "bands 1, 2, 3 as red, green, blue"
    return idx, what


def colour_vanishes(rgb: np.ndarray, labels: np.ndarray, classes: Sequence[ClassInfo]) -> list[str]:
    """Names of the classes whose colour would vanish on the background ``rgb``.

    ``rgb`` is ``(y, x, 3)`` in 0-1, ``labels`` ``(y, x)``. A class vanishes when the mean
    background colour under it is within 0.35 (RGB distance) of the class colour, or has the
    same hue (within 40°) and is saturated (> 0.2): blue water on a blue sea.
    """
    out = []
    for c in classes:
        if c.index == 0 or c.color is None:
            continue
        sel = labels == c.index
        if not sel.any():
            continue
        bg = rgb[sel].mean(axis=0)
        col = np.asarray(c.color[:3], float) / 255
        h_bg, _, s_bg = colorsys.rgb_to_hls(*bg)
        h_c, _, _ = colorsys.rgb_to_hls(*col)
        dh = abs(h_bg - h_c) * 360
        dh = min(dh, 360 - dh)
        if np.linalg.norm(bg - col) < 0.35 or (dh < 40 and s_bg > 0.2):
            out.append(c.name)
    return out


def _pyproj_crs(grid: GeoGrid) -> Any | None:
    from geomed_seg.core.ground import _horizontal

    return None if grid.crs is None else _horizontal(grid.crs)


def crs_name(grid: GeoGrid) -> str:
    """Human CRS name with its EPSG code when it has one, e.g. ``WGS 84 / UTM zone 33N (EPSG:32633)``."""
    if grid.crs is None:
        return "no CRS (pixel coordinates)"
    import pyproj

    pcrs = pyproj.CRS.from_user_input(
        grid.crs.to_wkt() if hasattr(grid.crs, "to_wkt") else grid.crs
    )
    epsg = pcrs.to_epsg()
    return f"{pcrs.name} (EPSG:{epsg})" if epsg else pcrs.name


def north_direction(grid: GeoGrid) -> tuple[float, float] | None:
    """Unit vector ``(d_col, d_row)`` in pixel space pointing to true north at the scene centre.

    The centre pixel is mapped to longitude/latitude (pyproj), moved north along its
    meridian (:class:`pyproj.Geod`, a tenth of the scene's extent, capped before the pole)
    and mapped back to pixels, so grid rotation, meridian convergence and polar projections
    are all accounted for. ``None`` without a CRS, with a local CRS, or at a pole.
    """
    pcrs = _pyproj_crs(grid)
    if pcrs is None or grid.georeference != "transform":
        return None
    import pyproj

    to_geo = pyproj.Transformer.from_crs(pcrs, pcrs.geodetic_crs, always_xy=True)
    row, col = (grid.height - 1) / 2, (grid.width - 1) / 2
    x, y = grid.xy(row, col)
    lon, lat = to_geo.transform(x, y)
    if not np.isfinite([lon, lat]).all() or abs(lat) > 89.999:
        return None
    geod = pcrs.geodetic_crs.get_geod()
    x1, y1 = grid.xy(0, 0)
    x2, y2 = grid.xy(grid.height - 1, grid.width - 1)
    lon1, lat1 = to_geo.transform(x1, y1)
    lon2, lat2 = to_geo.transform(x2, y2)
    extent = geod.inv(lon1, lat1, lon2, lat2)[2]
    to_pole = geod.inv(lon, lat, lon, 90.0)[2] if lat > 0 else np.inf
    dist = max(min(extent / 10, 1e5, to_pole / 2), 1.0)
    nlon, nlat, _ = geod.fwd(lon, lat, 0.0, dist)
    nx, ny = to_geo.transform(nlon, nlat, direction="INVERSE")
    nrow, ncol = grid.rowcol(nx, ny)
    v = np.array([ncol - col, nrow - row], float)
    norm = np.linalg.norm(v)
    if not np.isfinite(norm) or norm == 0:
        return None
    return float(v[0] / norm), float(v[1] / norm)


def north_angle(grid: GeoGrid) -> float | None:
    """Clockwise angle (degrees) from the image's up direction to true north, or ``None``."""
    d = north_direction(grid)
    if d is None:
        return None
    return float(np.degrees(np.arctan2(d[0], -d[1])))


def corner_coordinates(grid: GeoGrid) -> dict[str, tuple[float, float]]:
    """Map coordinates (CRS units) of the outer corners ``UL, UR, LL, LR`` of the image."""
    t = grid.transform
    h, w = grid.height, grid.width
    return {k: tuple(float(v) for v in t @ (c, r))  # type: ignore[misc]
            for k, (c, r) in {"UL": (0, 0), "UR": (w, 0), "LL": (0, h), "LR": (w, h)}.items()}  # fmt: skip


def format_coordinate(grid: GeoGrid, x: float, y: float) -> str:
    """``"x, y"`` in the CRS's units: degrees to 5 decimals, else to 0.1 of the unit."""
    pcrs = _pyproj_crs(grid)
    if pcrs is not None and pcrs.is_geographic:
        return f"{y:.5f}°, {x:.5f}° (lat, lon)"
    unit = ""
    if pcrs is not None and pcrs.axis_info:
        unit = " " + pcrs.axis_info[0].unit_name.replace("metre", "m")
    return f"{x:,.1f}, {y:,.1f}{unit}"


def format_area(row: dict[str, Any]) -> str:
    """A class row of :func:`geomed_seg.pipelines.report.class_measures` as a short area."""
    if "area_m2" in row:
        a = row["area_m2"]
        if a >= 1e6:
            return f"{a / 1e6:.3f} km²"
        if a >= 1e4:
            return f"{a / 1e4:.2f} ha"
        return f"{a:.0f} m²"
    if "area_crs_units2" in row:
        return f"{row['area_crs_units2']:.4g} CRS units²"
    return ""


def legend_lines(
    rows: Sequence[dict[str, Any]], classes: Sequence[ClassInfo]
) -> list[tuple[ClassInfo, str]]:
    """``(class, "index name: area")`` for every coloured foreground class (rows of class_measures)."""
    by_index = {r["index"]: r for r in rows}
    out = []
    for c in classes:
        if c.index == 0 or c.color is None:
            continue
        area = format_area(by_index.get(c.index, {}))
        out.append((c, f"{c.index} {c.name}" + (f": {area}" if area else "")))
    return out
