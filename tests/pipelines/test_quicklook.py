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
