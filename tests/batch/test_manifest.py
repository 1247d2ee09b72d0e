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


def test_build_jobs_splits_only_large_rasters(tiles, tmp_path, landsat_path):
    from geomed_seg.batch.manifest import build_jobs, default_halo
    from geomed_seg.pipelines.schema import load_config

    bad = tmp_path / "tiles" / "zz_corrupt.tif"
    bad.write_text("not a tiff")
    paths = [landsat_path, tiles[0], bad]
    assert [(j.stem, j.block) for j in build_jobs(paths)] == [(p.stem, None) for p in paths]
    jobs = build_jobs(paths, block_size=180, halo=10)
    with rasterio.open(landsat_path) as ds:  # 352 x 349 px, strips of 3 rows
        assert (ds.height, ds.width, ds.block_shapes[0][0]) == (352, 349, 3)
    blocks = [j for j in jobs if j.block is not None]
    assert [j.stem for j in blocks] == [
        f"{landsat_path.stem}_r{i:04d}_c{j:04d}" for i in range(2) for j in range(2)
    ]
    assert all(j.path == landsat_path for j in blocks)
    assert blocks[1].block.core == (slice(0, 180), slice(180, 349))  # 180 = 60 strips
    assert blocks[1].block.read == (slice(0, 190), slice(170, 349))
    # the 116 x 175 tile fits one block, the corrupt file is left to its task to report
    assert [(j.stem, j.block) for j in jobs[4:]] == [(tiles[0].stem, None), (bad.stem, None)]
    # unaligned request: rows rounded up to whole 3-row strips
    assert build_jobs([landsat_path], block_size=100, halo=0)[0].block.core[0] == slice(0, 102)
    assert default_halo(load_config("flood")) == 256
    ovr = ["engine.roi_size=null", "model.method=checkpoint"]
    assert default_halo(load_config("flood", ovr)) == 64  # from the checkpoint card
    assert default_halo(load_config("flood", ["engine.roi_size=null"])) == 0


def test_vrt_as_one_scene(tiles, tmp_path):
    from geomed_seg.batch.manifest import build_jobs

    vrt = tmp_path / "mosaic.vrt"
    assert write_vrt(tiles, vrt) is None
    assert build_manifest(vrt=vrt, vrt_as_scene=True) == [vrt.resolve()]
    jobs = build_jobs([vrt.resolve()], block_size=128, halo=8)
    with rasterio.open(vrt) as ds:
        shape = ds.shape
    assert len(jobs) == -(-shape[0] // 128) * -(-shape[1] // 128)
    assert jobs[0].stem == "mosaic_r0000_c0000" and jobs[-1].block.core[1].stop == shape[1]
