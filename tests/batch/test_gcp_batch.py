"""A GCP-georeferenced scene run as blocks: every block and the mosaics keep the scene's GCPs.

Independent reference: rasterio/GDAL reading the input's GCPs, the whole-scene labels and the
batch's ``mosaic.vrt`` / ``mosaic.tif``.
"""

from __future__ import annotations

import numpy as np
import rasterio

from geomed_seg.batch.runner import run_batch
from geomed_seg.pipelines.runner import run_pipeline
from tests.io.georef_data import write_gcp_copy


def _gcps(ds) -> list[tuple[float, ...]]:
    return [(g.row, g.col, g.x, g.y, g.z or 0.0) for g in ds.gcps[0]]


def test_gcp_scene_blocks_mosaic_keeps_gcps(tmp_path, landsat_path):
    scene = write_gcp_copy(landsat_path, tmp_path / "gcp.tif")
    # pointwise labels (fixed NDWI threshold, no object filter): blocks cannot change them
    ovr = ("outputs.quicklook=false", "outputs.polygons=true", "model.threshold=0.0",
           "postprocess.min_object_size=0")  # fmt: skip
    run_pipeline("flood", input=scene, output=tmp_path / "whole", overrides=ovr)
    res = run_batch("flood", [scene], tmp_path / "out", overrides=ovr, processes=False,
                    block_size=128, cog=True)  # fmt: skip
    assert len(res.done) == 9 and {"mosaic", "cog"} <= set(res.outputs)
    with rasterio.open(scene) as src, rasterio.open(tmp_path / "whole" / "labels.tif") as ref:
        want, labels = _gcps(src), ref.read(1)
        crs = src.gcps[1]
    for key in ("mosaic", "cog"):
        with rasterio.open(res.outputs[key]) as m:
            assert m.gcps[1] == crs and m.transform.is_identity
            np.testing.assert_allclose(_gcps(m), want, atol=1e-9)
            np.testing.assert_array_equal(m.read(1), labels)
            assert m.colormap(1)[1] == (30, 90, 220, 255)
    # polygons of GCP blocks are not merged (a note says so); each block keeps its own
    assert any("GCPs" in n and "not merged" in n for n in res.notes), res.notes
    assert "polygons" not in res.outputs
