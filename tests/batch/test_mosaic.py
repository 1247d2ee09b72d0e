"""The mosaic VRT: GDAL (rasterio) reads each tile's pixels at the tile's place."""

from __future__ import annotations

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.windows import from_bounds

from geomed_seg.batch.mosaic import write_vrt
from geomed_seg.batch.runner import run_batch


def test_vrt_pixels_equal_tiles(tiles, tmp_path, fast, landsat_path):
    out = tmp_path / "out"
    res = run_batch("flood", tiles, out, overrides=fast, processes=False)
    vrt = res.outputs["mosaic"]
    with rasterio.open(vrt) as m:
        mosaic = m.read(1)
        assert m.crs == rasterio.open(tiles[0]).crs
        with rasterio.open(landsat_path) as scene:  # 6 tiles cover the scene's top-left
            assert m.transform == scene.transform
            assert m.shape == (2 * (scene.height // 2), 3 * (scene.width // 3))
        for p in tiles:
            lab = out / "tiles" / p.stem / "labels.tif"
            with rasterio.open(lab) as t:
                win = from_bounds(*t.bounds, transform=m.transform).round_offsets()
                np.testing.assert_array_equal(m.read(1, window=win), t.read(1))
                r0, c0 = int(win.row_off), int(win.col_off)
                np.testing.assert_array_equal(
                    mosaic[r0 : r0 + t.height, c0 : c0 + t.width], t.read(1)
                )
    assert len(np.unique(mosaic)) >= 2  # land and water both present


def test_vrt_skipped_for_mixed_crs(tiles, tmp_path):
    other = tmp_path / "other.tif"
    with rasterio.open(tiles[1]) as src:
        prof = src.profile.copy()
        prof.update(crs=CRS.from_epsg(32725))
        with rasterio.open(other, "w", **prof) as dst:
            dst.write(src.read())
    note = write_vrt([tiles[0], other], tmp_path / "m.vrt")
    assert note is not None and "CRS" in note and not (tmp_path / "m.vrt").exists()
