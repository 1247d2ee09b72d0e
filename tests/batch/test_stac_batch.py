"""The batch's STAC Item: read back with pystac, every href (assets and tile items) resolves,
the bbox is the union of the tiles' (each checked against rasterio + pyproj), and the
projection fields are the mosaic VRT's as rasterio reads it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
from pyproj import Transformer

from geomed_seg.batch.runner import run_batch


def test_batch_item_links_tiles_and_mosaic(tiles, tmp_path, fast):
    out = tmp_path / "out"
    res = run_batch("flood", tiles, out, overrides=fast, processes=False)
    item = pystac.Item.from_file(str(res.outputs["stac"]))
    for asset in item.assets.values():
        assert Path(asset.get_absolute_href()).is_file(), asset.href
    assert {"mosaic", "summary", "qgis_style"} <= set(item.assets)
    tile_links = [link for link in item.links if link.rel == "item"]
    assert len(tile_links) == len(tiles)
    lons, lats = [], []
    for link in tile_links:
        tile = pystac.Item.from_file(link.get_absolute_href())
        assert tile.id.startswith("flood-") and ".tmp-" not in tile.id
        for asset in tile.assets.values():  # written in a temporary folder, renamed: resolves
            assert Path(asset.get_absolute_href()).is_file(), asset.href
        src_link = next(ln for ln in tile.links if ln.rel == "derived_from")
        source = Path(src_link.get_absolute_href())
        assert source.is_file()
        with rasterio.open(source) as src:
            to_ll = Transformer.from_crs(src.crs.to_wkt(), "EPSG:4326", always_xy=True)
            b = src.bounds
            x, y = to_ll.transform([b.left, b.right, b.left, b.right],
                                   [b.top, b.top, b.bottom, b.bottom])  # fmt: skip
        lons += list(x)
        lats += list(y)
    assert item.bbox == pytest.approx([min(lons), min(lats), max(lons), max(lats)], abs=1e-6)
    with rasterio.open(res.outputs["mosaic"]) as m:
        assert item.properties["proj:shape"] == list(m.shape)
        assert item.properties["proj:transform"] == pytest.approx(list(m.transform)[:6])
        assert item.properties["proj:code"] == f"EPSG:{m.crs.to_epsg()}"
    assert (
        item.datetime is None
        and item.properties["start_datetime"] <= item.properties["end_datetime"]
    )  # the sample records no acquisition time: the tiles' run times
    assert np.isfinite(item.bbox).all()
