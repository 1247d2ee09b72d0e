"""``mosaic.vrt`` / ``mosaic.tif`` carry the tiles' colour table and class names where GDAL
reads them (GDAL's own C API for category names, rasterio for the palette and band items),
with a QGIS style ``mosaic.qml`` beside them."""

from __future__ import annotations

import os
import shutil

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS

from geomed_seg.batch.mosaic import _drop, write_cog_mosaic, write_vrt
from geomed_seg.core.grid import GeoGrid
from geomed_seg.core.image import Image
from geomed_seg.core.labels import ClassInfo
from geomed_seg.io.geotiff import write_geotiff
from tests.gdal_capi import category_names
from tests.io.test_sidecars import parse_qml

CLASSES = [ClassInfo(0, "land", (200, 190, 150)), ClassInfo(2, "water", (30, 90, 220))]


def _tiles(tmp_path):
    crs = CRS.from_epsg(32633)
    paths = []
    for k in range(2):
        data = np.full((1, 30, 40), 2 * k, np.uint8)
        grid = GeoGrid(crs, Affine(10.0, 0, 500000.0 + 400 * k, 0, -10.0, 4e6), (30, 40))
        paths.append(write_geotiff(Image.from_array(data, grid, nodata=255),
                                   tmp_path / f"t{k}.tif", classes=CLASSES))  # fmt: skip
    return paths


def test_vrt_carries_colour_table_category_names_and_style(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    assert write_vrt(_tiles(tmp_path), out / "mosaic.vrt") is None
    vrt = out / "mosaic.vrt"
    assert category_names(vrt) == ["land", "", "water"]  # GDAL's GetRasterCategoryNames
    with rasterio.open(vrt) as src:
        cmap = src.colormap(1)
        assert cmap[0][:3] == (200, 190, 150) and cmap[2][:3] == (30, 90, 220)
        assert src.tags(1)["CLASS_2"] == "water"
        assert src.read(1)[0, 0] == 0 and src.read(1)[0, -1] == 2
    entries = parse_qml(out / "mosaic.qml")
    assert [(e["value"], e["label"], e["rgba"][:3]) for e in entries] == [
        (0, "land", (200, 190, 150)), (2, "water", (30, 90, 220))
    ]  # fmt: skip

    cog = write_cog_mosaic(vrt, out / "mosaic.tif", classes_from=tmp_path / "t0.tif")
    assert category_names(cog) == ["land", "", "water"]  # from mosaic.tif.aux.xml
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(cog, alone / "mosaic.tif")
    with rasterio.Env(GDAL_PAM_ENABLED=False), rasterio.open(alone / "mosaic.tif") as src:
        assert {k: v for k, v in src.tags(1).items() if k.startswith("CLASS_")} == {
            "CLASS_0": "land", "CLASS_2": "water"
        }  # fmt: skip
        assert src.colormap(1)[2][:3] == (30, 90, 220)
    assert sorted(os.listdir(out)) == ["mosaic.qml", "mosaic.tif", "mosaic.tif.aux.xml",
                                       "mosaic.vrt"]  # fmt: skip
    _drop(out / "mosaic.tif")  # the COG alone goes; the VRT keeps the shared style
    assert sorted(os.listdir(out)) == ["mosaic.qml", "mosaic.vrt"]
    _drop(out / "mosaic.vrt")
    assert os.listdir(out) == []
