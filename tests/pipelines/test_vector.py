"""Tiled polygonisation: regions crossing tile borders become one feature; areas and
feature counts equal rasterio's whole-image ``features.shapes``."""

from __future__ import annotations

import numpy as np
import pyogrio
import pytest
import rasterio.features
import shapely
from affine import Affine
from rasterio.crs import CRS

from geomed_seg.core.grid import GeoGrid
from geomed_seg.core.image import Image
from geomed_seg.core.labels import ClassInfo
from geomed_seg.errors import InvalidInputError
from geomed_seg.io.vector import write_polygons

T = Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 4000000.0)
CLASSES = [ClassInfo(1, "water"), ClassInfo(2, "wetland")]


def _image(a, nodata=255, chunks=(1, 13, 17)):
    return Image.from_array(a[None], GeoGrid(CRS.from_epsg(32633), T, a.shape), nodata=nodata,
                            chunks=chunks)  # fmt: skip


def _read(path):
    meta, _, geoms, fields = pyogrio.raw.read(path)
    names = list(meta["fields"])
    return meta, shapely.from_wkb(geoms), {n: fields[i] for i, n in enumerate(names)}


def test_region_crossing_tile_borders_is_one_feature(tmp_path):
    a = np.zeros((40, 40), np.uint8)
    a[5:35, 3:37] = 1  # spans 3 x 3 tiles of 16 px
    a[15:20, 15:20] = 0  # a hole on a tile corner
    s = write_polygons(_image(a), tmp_path / "p.gpkg", classes=CLASSES, tile=16)
    meta, geoms, fields = _read(tmp_path / "p.gpkg")
    assert s.n_features == 1 and len(geoms) == 1
    poly = geoms[0]
    assert poly.geom_type == "Polygon" and len(poly.interiors) == 1
    assert poly.area == pytest.approx((30 * 34 - 25) * 100.0)
    assert fields["area_m2"][0] == pytest.approx(poly.area)
    assert fields["name"][0] == "water"
    assert CRS.from_user_input(meta["crs"]) == CRS.from_epsg(32633)


@pytest.mark.parametrize("tile", [7, 16, 64])
def test_tiled_equals_rasterio_whole_image(tmp_path, tile):
    rng = np.random.default_rng(3)
    a = (rng.random((50, 45)) > 0.55).astype(np.uint8)
    a[rng.random(a.shape) > 0.9] = 2
    a[:3, :] = 255  # nodata rows are not vectorised
    write_polygons(_image(a), tmp_path / "p.gpkg", classes=CLASSES, tile=tile)
    _, geoms, fields = _read(tmp_path / "p.gpkg")
    keep = (a != 0) & (a != 255)
    ref = [(shapely.geometry.shape(g), int(v)) for g, v in
           rasterio.features.shapes(a, mask=keep, connectivity=4, transform=T)]  # fmt: skip
    for value in (1, 2):
        ours = sorted(round(g.area) for g, c in zip(geoms, fields["class"], strict=True)
                      if c == value)  # fmt: skip
        theirs = sorted(round(g.area) for g, v in ref if v == value)
        assert ours == theirs
    union = shapely.union_all(geoms)
    assert union.area == pytest.approx(keep.sum() * 100.0)


def test_only_named_classes_and_empty_layer(tmp_path):
    a = np.zeros((20, 20), np.uint8)
    a[2:5, 2:5] = 2
    s = write_polygons(_image(a), tmp_path / "p.gpkg", classes=[ClassInfo(1, "water")])
    assert s.n_features == 0
    info = pyogrio.read_info(tmp_path / "p.gpkg")
    assert info["features"] == 0 and CRS.from_user_input(info["crs"]) == CRS.from_epsg(32633)


def test_rejects_multiband(tmp_path):
    a = np.zeros((2, 8, 8), np.uint8)
    img = Image.from_array(a, GeoGrid(None, T, (8, 8)))
    with pytest.raises(InvalidInputError):
        write_polygons(img, tmp_path / "p.gpkg")
