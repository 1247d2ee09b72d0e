"""Quicklooks: PNGs with the mask in the class colour, and a scale bar of a round length."""

from __future__ import annotations

import matplotlib.image as mpimg
import numpy as np
import pytest
from affine import Affine
from rasterio.crs import CRS

from geomed_seg.core.grid import GeoGrid
from geomed_seg.core.image import Image
from geomed_seg.core.labels import ClassInfo
from geomed_seg.errors import OutputExistsError
from geomed_seg.pipelines.quicklook import _nice_length, raster_quicklook


@pytest.mark.parametrize(("span", "expected"), [(9975.0, 1000.0), (120.0, 20.0), (4.9, 0.5)])
def test_scale_bar_length_is_round(span, expected):
    assert _nice_length(span) == expected


def test_raster_quicklook_shows_mask_colour(tmp_path):
    grid = GeoGrid(CRS.from_epsg(32633), Affine(30, 0, 500000, 0, -30, 4000000), (80, 120))
    rgb = np.full((3, 80, 120), 100, np.uint8)
    rgb[:, ::2] = 110  # some texture for the stretch
    img = Image.from_array(rgb, grid, channel_names=["red", "green", "blue"])
    lab = np.zeros((1, 80, 120), np.uint8)
    lab[0, 20:60, 50:90] = 1
    labels = Image.from_array(lab, grid)
    classes = [ClassInfo(0, "land"), ClassInfo(1, "water", (0, 0, 255))]
    path = raster_quicklook(img, labels, classes, tmp_path / "q.png", title="t")
    png = mpimg.imread(path)[..., :3]
    blue = (png[..., 2] > 0.5) & (png[..., 0] < 0.45) & (png[..., 1] < 0.45)
    assert blue.sum() > 500  # the water square, tinted with its class colour
    with pytest.raises(OutputExistsError):
        raster_quicklook(img, labels, classes, tmp_path / "q.png")


@pytest.mark.parametrize(
    ("epsg", "transform"),
    [
        (32633, Affine(30, 0, 500000, 0, -30, 4000000)),
        (4326, Affine(0.000257, 0, -34.95, 0, -0.000257, -7.95)),  # was "0.01 units"
        (3857, Affine(67.4, 0, 2.0e6, 0, -67.4, 9.68e6)),  # Mercator m are 2.4x ground m
        (2263, Affine(93.5, 0, 1.0e6, 0, -93.5, 2.0e5)),  # US survey feet
    ],
)
def test_scale_bar_in_true_ground_metres(epsg, transform):
    from pyproj import CRS as PCRS
    from pyproj import Transformer

    from geomed_seg.pipelines.quicklook import raster_bar

    grid = GeoGrid(CRS.from_epsg(epsg), transform, (400, 500))
    step, shown_w = 2, 250
    n_px, label = raster_bar(grid, step, shown_w)
    value, unit = label.split()
    assert unit in ("m", "km")
    metres = float(value) * (1000 if unit == "km" else 1)
    # independent: geodesic length of the bar along the row where it is drawn
    pc = PCRS.from_epsg(epsg)
    to_ll = Transformer.from_crs(pc, pc.geodetic_crs, always_xy=True)
    row, col = 0.05 * 400, 0.15 * 500
    x0, y0 = transform @ (col, row)
    x1, y1 = transform @ (col + n_px * step, row)
    (lon0, lon1), (lat0, lat1) = to_ll.transform([x0, x1], [y0, y1])
    truth = pc.get_geod().inv(lon0, lat0, lon1, lat1)[2]
    assert metres == pytest.approx(truth, rel=0.01)


def test_scale_bar_without_crs_says_crs_units():
    from geomed_seg.pipelines.quicklook import raster_bar

    grid = GeoGrid(None, Affine(2, 0, 0, 0, -2, 0), (100, 100))
    _n_px, label = raster_bar(grid, 1, 100)
    assert label.endswith("CRS units") and " m" not in label
