"""Manifests: glob, text list, VRT sources and STAC items resolve to the same tiles."""

from __future__ import annotations

import json

import pytest
import rasterio

from geomed_seg.batch.manifest import build_manifest
from geomed_seg.batch.mosaic import write_vrt
from geomed_seg.errors import InvalidInputError


def test_glob_and_list(tiles, tmp_path):
    got = build_manifest(inputs=str(tmp_path / "tiles" / "*.tif"))
    assert got == sorted(p.resolve() for p in tiles)
    lst = tmp_path / "files.txt"
    lst.write_text("# tiles\n" + "\n".join(f"tiles/{p.name}" for p in tiles) + "\n\n")
    assert build_manifest(list_file=lst) == [p.resolve() for p in tiles]


def test_vrt_sources_match_gdal(tiles, tmp_path):
    vrt = tmp_path / "mosaic.vrt"
    assert write_vrt(tiles, vrt) is None
    got = build_manifest(vrt=vrt)
    with rasterio.open(vrt) as ds:  # GDAL's own list of the VRT's files
        gdal_files = {p for p in ds.files if not p.endswith(".vrt")}
    assert {str(p) for p in got} == {str(p.resolve()) for p in tiles} == gdal_files


def test_stac_item_collection(tiles, tmp_path):
    feats = []
    for i, p in enumerate(tiles):
        assets = {"thumb": {"href": "x.png", "type": "image/png"}}
        if i % 2:
            assets["data"] = {"href": str(p), "type": "image/tiff; application=geotiff"}
        else:
            assets["B"] = {"href": f"tiles/{p.name}", "type": "image/tiff; application=geotiff"}
        feats.append({"type": "Feature", "id": p.stem, "assets": assets})
    stac = tmp_path / "items.json"
    stac.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    assert build_manifest(stac=stac) == [p.resolve() for p in tiles]


def test_missing_files_are_named(tiles, tmp_path):
    lst = tmp_path / "files.txt"
    lst.write_text(f"{tiles[0]}\n{tmp_path / 'gone_a.tif'}\n{tmp_path / 'gone_b.tif'}\n")
    with pytest.raises(InvalidInputError, match="gone_a.tif.*gone_b.tif"):
        build_manifest(list_file=lst)
    with pytest.raises(InvalidInputError, match="no files match"):
        build_manifest(inputs=str(tmp_path / "nothing" / "*.tif"))
    with pytest.raises(InvalidInputError, match="exactly one"):
        build_manifest(inputs="a*", list_file=lst)
