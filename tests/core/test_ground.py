"""Ground units of GeoGrid against pyproj.Geod areas of the same pixels (tests/geo_truth.py)."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
from affine import Affine
from rasterio.crs import CRS

from geomed_seg.core.grid import GeoGrid
from geomed_seg.core.ground import (
    label_areas,
    mask_area,
    metres_to_pixels,
    pixel_area_array,
    pixel_size_at,
)
from geomed_seg.errors import GeometryError
from tests.geo_truth import geodesic_pixel_areas

# (crs, transform, expected method): pixels of roughly 28.5 m on the ground
CASES = {
    "utm-metres": (31985, Affine(28.5, 0, 288776.25, 0, -28.5, 9120760.75), "planar"),
    "degrees": (4326, Affine(0.000257, 0, -34.95, 0, -0.000257, -7.95), "geodesic"),
    "degrees-rotated": (
        4326,
        Affine.translation(-34.95, -7.95) @ Affine.rotation(30) @ Affine.scale(0.00026, -0.00026),
        "geodesic",
    ),
    "web-mercator-65N": (3857, Affine(67.4, 0, 2.0e6, 0, -67.4, 9.68e6), "geodesic"),
    "us-survey-feet": (2263, Affine(93.5, 0, 1.0e6, 0, -93.5, 2.0e5), "planar"),
    "intl-feet": (2227, Affine(93.5, 0, 6.0e6, 0, -93.5, 2.1e6), "planar"),
    "polar-stereo-north": (3413, Affine(28.5, 0, -2.0e5, 0, -28.5, -2.6e6), "geodesic"),
    "polar-stereo-south": (3031, Affine(28.5, 0, 5.0e5, 0, -28.5, 1.5e6), "geodesic"),
    "equal-area": (6933, Affine(28.5, 0, 5.0e5, 0, -28.5, 4.5e6), "planar"),
    "laea-rotated": (3035, Affine(20, 5, 4.3e6, 5, -20, 3.2e6), "planar"),
    "coarse-degrees": (4326, Affine(0.5, 0, -20, 0, -0.5, 85), "geodesic"),
    # NTF (Paris): grads and the Paris meridian, geographic and projected (Lambert II etendu)
    "grads-paris": (4807, Affine(0.000285, 0, 0.5, 0, -0.000285, 53.0), "geodesic"),
    "ntf-lambert-grads-datum": (27572, Affine(28.5, 0, 6.0e5, 0, -28.5, 2.43e6), "geodesic"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_pixel_areas_match_geod(name):
    epsg, transform, method = CASES[name]
    grid = GeoGrid(CRS.from_epsg(epsg), transform, (300, 280))
    gu = grid.ground
    assert gu.metric and gu.method == method and gu.area_unit == "m²"
    rng = np.random.default_rng(0)
    rows, cols = rng.integers(0, 300, 60), rng.integers(0, 280, 60)
    densify = 64 if name == "coarse-degrees" else 1  # 55 km edges along parallels
    truth = geodesic_pixel_areas(grid.crs, transform, rows, cols, densify)
    ours = np.array(
        [
            gu.pixel_areas(slice(r, r + 1), slice(c, c + 1))[0, 0]
            for r, c in zip(rows, cols, strict=True)
        ]
    )
    tol = 1e-3 if method == "planar" else 1e-5
    np.testing.assert_allclose(ours, truth, rtol=tol)


def test_old_crs_area_is_wrong_where_ground_is_not():
    """|det| is degrees² / ft² / Mercator m²: the ground area is what must be used."""
    deg = GeoGrid(CRS.from_epsg(4326), CASES["degrees"][1], (10, 10))
    assert deg.crs_pixel_area < 1e-6 and deg.ground.mean_pixel_area > 800
    feet = GeoGrid(CRS.from_epsg(2263), CASES["us-survey-feet"][1], (10, 10))
    assert feet.crs_pixel_area / feet.ground.constant_area == pytest.approx(10.76, rel=1e-3)
    merc = GeoGrid(CRS.from_epsg(3857), CASES["web-mercator-65N"][1], (10, 10))
    assert merc.crs_pixel_area / merc.ground.mean_pixel_area == pytest.approx(5.69, rel=0.01)
    with pytest.raises(AttributeError, match="CRS units"):
        _ = deg.pixel_area


@pytest.mark.parametrize(
    "crs",
    [None, CRS.from_wkt('LOCAL_CS["site",UNIT["metre",1],AXIS["X",EAST],AXIS["Y",NORTH]]')],
)
def test_no_ground_reports_crs_units(crs):
    grid = GeoGrid(crs, Affine(2, 0, 0, 0, -2, 0), (5, 6))
    gu = grid.ground
    assert not gu.metric and gu.method == "crs-units"
    assert gu.area_unit == "CRS units²" and gu.length_unit == "CRS units"
    assert "m²" not in gu.area_unit
    assert mask_area(grid, np.ones((5, 6), bool)) == 30 * 4.0
    assert pixel_size_at(grid, 0, 0) == (2.0, 2.0)
    with pytest.raises(GeometryError, match="metres"):
        metres_to_pixels(grid, 100)


@pytest.mark.parametrize("name", ["degrees-rotated", "web-mercator-65N", "polar-stereo-north"])
def test_label_areas_streamed_equal_geod_sum(name):
    epsg, transform, _ = CASES[name]
    grid = GeoGrid(CRS.from_epsg(epsg), transform, (60, 70))
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, size=(60, 70))
    valid = rng.random((60, 70)) > 0.1
    r, c = np.indices(labels.shape)
    truth_px = geodesic_pixel_areas(grid.crs, transform, r.ravel(), c.ravel()).reshape(60, 70)
    chunked = da.from_array(labels, chunks=(17, 23))
    ours = label_areas(grid, chunked, da.from_array(valid, chunks=(20, 20)))
    for v in range(4):
        assert ours[v] == pytest.approx(truth_px[(labels == v) & valid].sum(), rel=1e-5)
    arr = pixel_area_array(grid, chunks=(25, 30)).compute()
    np.testing.assert_allclose(arr, truth_px, rtol=1e-5)


def test_global_grid_sums_to_ellipsoid_area():
    """A 1-degree global grid covers the WGS 84 ellipsoid: 510,065,622 km² (authalic)."""
    grid = GeoGrid(CRS.from_epsg(4326), Affine(1, 0, -180, 0, -1, 90), (180, 360))
    total = mask_area(grid, np.ones(grid.shape, bool))
    assert total == pytest.approx(5.10065622e14, rel=1e-6)


def test_pixel_size_and_metres_to_pixels():
    epsg, transform, _ = CASES["web-mercator-65N"]
    grid = GeoGrid(CRS.from_epsg(epsg), transform, (300, 280))
    dx, dy = pixel_size_at(grid, 150, 140)
    assert dx == pytest.approx(28.25, rel=0.01) and dy == pytest.approx(28.25, rel=0.01)
    lo = grid.ground.pixel_size_range[0]
    assert metres_to_pixels(grid, 1000.0) == pytest.approx(1000.0 / lo)
    assert np.ceil(metres_to_pixels(grid, 1000.0)) * lo >= 1000.0


def test_info_reports_ground_units():
    from pyproj import Geod

    from geomed_seg.core.describe import describe
    from geomed_seg.core.image import Image

    t = Affine(0.000257, 0, -34.95, 0, -0.000257, -7.95)
    img = Image.from_array(
        np.zeros((1, 40, 60), np.uint8), GeoGrid(CRS.from_epsg(4326), t, (40, 60))
    )
    d = describe(img)
    assert d["ground_units"].startswith("geodesic")
    lon, lat = t @ (30, 20)
    x_m = Geod(ellps="WGS84").inv(lon, lat, lon + 0.000257, lat)[2]
    assert d["ground_pixel_size_m"][0] == pytest.approx(x_m, rel=1e-6)
    none = describe(
        Image.from_array(np.zeros((1, 4, 4), np.uint8), GeoGrid(None, Affine.identity(), (4, 4)))
    )
    assert "CRS units" in none["ground_units"] and "ground_pixel_area_crs_units2" in none


def test_pixels_outside_the_crs_are_refused():
    """A degree grid reaching past the pole has no ground area: a clear error, not a number."""
    grid = GeoGrid(CRS.from_epsg(4326), Affine(0.1, 0, 0, 0, -0.1, 95.0), (100, 10))
    with pytest.raises(GeometryError, match="outside the CRS"):
        _ = grid.ground
