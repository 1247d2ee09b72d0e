"""Raster quicklook map furniture against independent references (pyproj, Geod)."""

from __future__ import annotations

import re

import numpy as np
import pyproj
import pytest
from affine import Affine
from rasterio.crs import CRS

from geomed_seg.core.grid import GeoGrid
from geomed_seg.core.image import Image
from geomed_seg.core.labels import ClassInfo
from geomed_seg.pipelines import quicklook_map as qmap
from geomed_seg.pipelines.quicklook import build_raster_figure

CLASSES = [ClassInfo(0, "land"), ClassInfo(1, "water", (0, 0, 255))]


def _texts(fig) -> list[str]:
    from matplotlib.text import Text

    return [t.get_text() for t in fig.findobj(Text) if t.get_text()]


def _centre_lonlat(grid: GeoGrid, epsg: int) -> tuple[float, float]:
    x, y = grid.xy((grid.height - 1) / 2, (grid.width - 1) / 2)
    return pyproj.Transformer.from_crs(epsg, 4326, always_xy=True).transform(x, y)


@pytest.mark.parametrize("rotation", [0.0, 20.0, -135.0])
@pytest.mark.parametrize(("epsg", "x0", "y0"), [(32633, 700000, 6000000), (32756, 300000, 6200000)])
def test_north_arrow_is_rotation_minus_meridian_convergence(epsg, x0, y0, rotation):
    t = Affine.translation(x0, y0) @ Affine.rotation(rotation) @ Affine.scale(30, -30)
    grid = GeoGrid(CRS.from_epsg(epsg), t, (200, 300))
    lon, lat = _centre_lonlat(grid, epsg)
    gamma = pyproj.Proj(f"EPSG:{epsg}").get_factors(lon, lat).meridian_convergence
    assert abs(gamma) > 1.0  # far enough from the central meridian to matter
    expected = (rotation - gamma + 180) % 360 - 180
    assert qmap.north_angle(grid) == pytest.approx(expected, abs=0.05)


def test_north_arrow_points_to_the_pole_in_polar_stereographic():
    t = Affine.translation(-50000, 800000) @ Affine.rotation(30) @ Affine.scale(100, -100)
    grid = GeoGrid(CRS.from_epsg(3413), t, (400, 500))
    prow, pcol = grid.rowcol(0.0, 0.0)  # the North Pole is the projection's origin
    crow, ccol = (grid.height - 1) / 2, (grid.width - 1) / 2
    to_pole = np.array([pcol - ccol, prow - crow])
    to_pole /= np.linalg.norm(to_pole)
    assert np.dot(qmap.north_direction(grid), to_pole) > np.cos(np.radians(0.1))


def test_no_crs_has_no_north_and_says_crs_units():
    grid = GeoGrid(None, Affine.identity(), (60, 80))
    assert qmap.north_direction(grid) is None
    img = Image.from_array(np.random.default_rng(0).random((3, 60, 80)), grid)
    lab = np.zeros((1, 60, 80), np.uint8)
    lab[0, 10:20, 10:30] = 1
    fig = build_raster_figure(img, Image.from_array(lab, grid), CLASSES)
    text = "\n".join(_texts(fig))
    assert "no north arrow (no CRS)" in text
    assert "1 water: 200 CRS units²" in text
    assert "CRS: no CRS" in text


@pytest.mark.parametrize(("epsg", "res", "x0", "y0"),
                         [(32633, 30.0, 700000, 6000000), (3857, 67.4, 2.0e6, 9.68e6)])  # fmt: skip
def test_legend_area_crs_and_corners_match_independent_geodesy(epsg, res, x0, y0):
    t = Affine(res, 0, x0, 0, -res, y0)
    grid = GeoGrid(CRS.from_epsg(epsg), t, (120, 160))
    rgb = np.random.default_rng(1).integers(0, 255, (3, 120, 160)).astype(np.uint8)
    img = Image.from_array(rgb, grid, channel_names=["red", "green", "blue"])
    lab = np.zeros((1, 120, 160), np.uint8)
    r0, r1, c0, c1 = 20, 70, 30, 130
    lab[0, r0:r1, c0:c1] = 1
    fig = build_raster_figure(img, Image.from_array(lab, grid), CLASSES)
    text = "\n".join(_texts(fig))
    # Independent: geodesic area of the block's outline (densified), pyproj.Geod.
    to_geo = pyproj.Transformer.from_crs(epsg, 4326, always_xy=True)
    ring = [(c0 + f * (c1 - c0), r0) for f in np.linspace(0, 1, 50)]
    ring += [(c1, r0 + f * (r1 - r0)) for f in np.linspace(0, 1, 50)]
    ring += [(c1 - f * (c1 - c0), r1) for f in np.linspace(0, 1, 50)]
    ring += [(c0, r1 - f * (r1 - r0)) for f in np.linspace(0, 1, 50)]
    lon, lat = to_geo.transform(*zip(*[t @ p for p in ring], strict=True))
    geod_area = abs(pyproj.Geod(ellps="WGS84").polygon_area_perimeter(lon, lat)[0])
    km2 = float(re.search(r"1 water: ([0-9.]+) km²", text).group(1))
    assert km2 == pytest.approx(geod_area / 1e6, rel=1e-3, abs=6e-4)
    if epsg == 3857:  # Mercator metres are 2.4x ground metres here: CRS units would be wrong
        assert 50 * 100 * res**2 / geod_area > 5
        assert "WGS 84 / Pseudo-Mercator (EPSG:3857)" in text
        return
    assert "WGS 84 / UTM zone 33N (EPSG:32633)" in text
    assert "700,000.0, 6,000,000.0 m" in text  # upper-left corner
    assert "704,800.0, 5,996,400.0 m" in text  # lower-right corner
    assert "north arrow: true north at the scene centre" in text


def test_background_false_colour_from_band_names_and_grey_when_colour_vanishes():
    names = ["blue", "green", "red", "nir", "swir1", "swir2"]
    assert qmap.background_bands(names, 6) == ([4, 3, 2], "false colour SWIR/NIR/red")
    assert qmap.background_bands(["Red", "Green", "Blue"], 3)[0] == [0, 1, 2]
    assert qmap.background_bands(None, 1)[0] == [0, 0, 0]
    sea = np.zeros((40, 40, 3))
    sea[..., 2] = 0.8  # a blue sea
    sea[..., 1] = 0.3
    lab = np.zeros((40, 40), np.uint8)
    lab[:, 20:] = 1
    assert qmap.colour_vanishes(sea, lab, CLASSES) == ["water"]
    land = np.full((40, 40, 3), 0.5)
    land[..., 1] = 0.7
    assert qmap.colour_vanishes(land, lab, CLASSES) == []
    grid = GeoGrid(CRS.from_epsg(32633), Affine(30, 0, 5e5, 0, -30, 4e6), (40, 40))
    scene = np.empty((3, 40, 40), np.uint8)  # land on the left, a blue sea on the right
    scene[:, :, :20] = np.array([150, 120, 60])[:, None, None]
    scene[:, :, 20:] = np.array([20, 60, 140])[:, None, None]
    img = Image.from_array(scene, grid, channel_names=["red", "green", "blue"])
    fig = build_raster_figure(img, Image.from_array(lab[None], grid), CLASSES)
    assert any("greyscale stretch" in t and "water would vanish" in t for t in _texts(fig))
