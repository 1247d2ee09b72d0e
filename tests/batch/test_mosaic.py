"""Batch mosaics and summary: the VRT and COG mosaics read back with GDAL (rasterio,
rio-cogeo) equal the tiles; summary fields for raster and volume batches."""

from __future__ import annotations

import json
from xml.etree import ElementTree as ET

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import from_bounds
from rio_cogeo.cogeo import cog_validate

from geomed_seg.batch.journal import Journal
from geomed_seg.batch.mosaic import write_cog_mosaic, write_vrt
from geomed_seg.batch.runner import BatchResult, run_batch
from geomed_seg.batch.summary import write_summary


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


def _rerun_summary(out, stems, result, **kw):
    """Call write_summary again on a finished batch folder, as the runner does."""
    return write_summary(out, Journal(out), stems, result, **kw)


def test_cog_mosaic_equals_vrt(tiles, tmp_path, fast):
    out = tmp_path / "out"
    res = run_batch("flood", tiles, out, overrides=fast, processes=False)
    outputs, notes = _rerun_summary(out, [p.stem for p in tiles], res, cog=True)
    cog = outputs["cog"]
    assert cog == out / "mosaic.tif" and not notes
    valid, errors, _ = cog_validate(cog, strict=True)
    assert valid, errors
    first = out / "tiles" / tiles[0].stem / "labels.tif"
    with rasterio.open(cog) as c, rasterio.open(out / "mosaic.vrt") as v, rasterio.open(first) as t:
        np.testing.assert_array_equal(c.read(1), v.read(1))
        assert (c.crs, c.transform, c.nodata, c.dtypes) == (v.crs, v.transform, v.nodata, v.dtypes)
        assert c.colormap(1) == t.colormap(1) and c.colormap(1)[1] == (30, 90, 220, 255)
        assert json.loads(c.tags()["GEOMED_CLASSES"])[1]["name"] == "water"
        aux = next(f for f in c.files if f.endswith(".aux.xml"))  # GDAL found the sidecar
    names = [e.text for e in ET.parse(aux).getroot().iter("Category")]
    assert names == ["land", "water"]
    assert all(Journal(out).is_done(p.stem, p) for p in tiles)  # tiles untouched
    assert not list(out.glob(".*tmp*")) and not list(out.glob("tmp*"))


def test_cog_overviews_use_mode(tmp_path):
    """A 1200 x 1200 mosaic of 4 tiles gets internal mode overviews from rio-cogeo."""
    rng = np.random.default_rng(0)
    labels = np.kron(rng.integers(0, 3, (60, 60), dtype=np.uint8), np.ones((20, 20), np.uint8))
    tr = Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 6000000.0)
    paths = []
    for r in (0, 600):
        for c in (0, 600):
            p = tmp_path / f"t{r}_{c}.tif"
            with rasterio.open(p, "w", driver="GTiff", width=600, height=600, count=1,
                               dtype="uint8", nodata=255, crs=CRS.from_epsg(32633),
                               transform=tr @ Affine.translation(c, r)) as dst:  # fmt: skip
                dst.write(labels[r : r + 600, c : c + 600], 1)
            paths.append(p)
    assert write_vrt(paths[::-1], tmp_path / "m.vrt") is None
    write_cog_mosaic(tmp_path / "m.vrt", tmp_path / "m.tif")
    assert cog_validate(tmp_path / "m.tif", strict=True)[0]
    with rasterio.open(tmp_path / "m.tif") as c:
        np.testing.assert_array_equal(c.read(1), labels)
        assert c.transform == tr and c.overviews(1)
        assert c.tags()["OVERVIEW_RESAMPLING"] == "MODE"
        # blocks of 20 px: a 2x overview of mode is the labels subsampled
        np.testing.assert_array_equal(c.read(1, out_shape=(600, 600)), labels[::2, ::2])
    assert not (tmp_path / "m.tif.aux.xml").exists()  # no classes: no sidecar


def _journal(out, records):
    j = Journal(out)
    j.header = {"type": "header", "config_hash": "abc"}
    j.records = {r["stem"]: r for r in records}
    return j


def test_volume_summary(tmp_path):
    """Volume tiles: mL per class, volumes/h, no mosaic; p50/p95 and peak worker RSS."""
    out = tmp_path / "out"
    records = []
    for i in range(20):
        stem = f"case{i:02d}"
        folder = out / "tiles" / stem
        folder.mkdir(parents=True)
        report = {"classes": [
            {"index": 0, "name": "background", "samples": 990, "volume_mm3": 990.0,
             "volume_ml": 0.99},
            {"index": 1, "name": "tumour", "samples": 10, "volume_mm3": 10.0 * (i + 1),
             "volume_ml": 0.01 * (i + 1)}]}  # fmt: skip
        (folder / "report.json").write_text(json.dumps(report))
        (folder / "labels.nii.gz").write_bytes(b"")
        rec = {"type": "tile", "stem": stem, "status": "done", "seconds": float(i + 1),
               "attempts": 1, "error": None,
               "outputs": {"labels.nii.gz": {"path": f"tiles/{stem}/labels.nii.gz"},
                           "report.json": {"path": f"tiles/{stem}/report.json"}}}  # fmt: skip
        if i % 3 == 0:  # the runner adds the worker's peak RSS; older records lack it
            rec["worker_peak_rss_mb"] = 100.0 + i
        records.append(rec)
    records.append({"type": "tile", "stem": "broken", "status": "failed", "outputs": {},
                    "seconds": 99.0, "attempts": 2, "error": "ReadError: x"})  # fmt: skip
    stems = [r["stem"] for r in records]
    result = BatchResult(out, done=stems[:15], skipped=stems[15:20],
                         failed={"broken": "ReadError: x"}, seconds=30.0)  # fmt: skip
    outputs, notes = write_summary(out, _journal(out, records), stems, result, cog=True)
    s = json.loads((out / "summary.json").read_text())
    assert s["kind"] == "volume"
    assert s["class_volume_ml"]["tumour"] == pytest.approx(0.01 * sum(range(1, 21)))
    assert s["class_volume_ml"]["background"] == pytest.approx(20 * 0.99)
    assert s["class_area_km2"] == {} and s["processed_km2"] == 0.0
    assert s["throughput_km2_per_s"] is None
    assert s["processed_volumes"] == 15
    assert s["throughput_volumes_per_h"] == pytest.approx(15 / 30.0 * 3600)
    # done tiles' seconds 1..20 (the failed tile's 99 s is not counted): numpy's linear p95
    assert s["tile_seconds_p50"] == pytest.approx(10.5)
    assert s["tile_seconds_p95"] == pytest.approx(1 + 0.95 * 19)
    assert s["peak_worker_rss_mb"] == 118.0
    assert set(outputs) == {"summary", "summary_md", "report_html"}
    assert any("volume" in n for n in notes)
    assert not (out / "mosaic.vrt").exists() and not (out / "mosaic.tif").exists()
    md = (out / "summary.md").read_text()
    assert "1800.0 volumes/h" in md and "tumour: 2.10 mL" in md and "p95 19.05" in md
    assert "| broken | failed | 99.00 |  |  | ReadError: x |" in md


def test_raster_summary_fields(tiles, tmp_path, fast):
    out = tmp_path / "out"
    res = run_batch("flood", tiles, out, overrides=fast, processes=False)
    s = json.loads((out / "summary.json").read_text())
    lines = [json.loads(x) for x in (out / "journal.jsonl").read_text().splitlines()]
    secs = sorted(x["seconds"] for x in lines if x["type"] == "tile")  # not pass-1 records
    assert s["kind"] == "raster" and s["processed_volumes"] == 0
    assert s["throughput_volumes_per_h"] is None
    assert s["tile_seconds_p50"] == pytest.approx((secs[2] + secs[3]) / 2)
    assert secs[4] <= s["tile_seconds_p95"] <= secs[5]
    assert s["class_area_km2"]["water"] > 0 and s["throughput_km2_per_s"] > 0
    assert "polygons" not in s["outputs"] and "mosaic" in s["outputs"]  # fast: no polygons
    assert s["peak_worker_rss_mb"] == max(
        (r.get("worker_peak_rss_mb") for r in s["per_tile"] if r.get("worker_peak_rss_mb")),
        default=None,
    )
    assert res.outputs["summary_md"].read_text().count("| tile_") == 6


def _write(path, arr, transform, crs=32633):
    with rasterio.open(path, "w", driver="GTiff", width=arr.shape[1], height=arr.shape[0],
                       count=1, dtype=arr.dtype, nodata=255, crs=CRS.from_epsg(crs),
                       transform=transform) as dst:  # fmt: skip
        dst.write(arr, 1)
    return path


def test_south_up_tiles_vrt(tmp_path):
    """South-up tiles (positive row step) are placed by their geotransform too."""
    labels = np.arange(12 * 10, dtype=np.uint8).reshape(12, 10)
    tr = Affine(10.0, 0.0, 500000.0, 0.0, 10.0, 6000000.0)  # row 0 is the southern edge
    paths = [_write(tmp_path / f"t{r}_{c}.tif", labels[r : r + 6, c : c + 5],
                    tr @ Affine.translation(c, r))
             for r in (6, 0) for c in (5, 0)]  # fmt: skip
    assert write_vrt(paths, tmp_path / "m.vrt") is None
    with rasterio.open(tmp_path / "m.vrt") as m:
        assert m.transform == tr
        np.testing.assert_array_equal(m.read(1), labels)


def test_summary_notes_and_stale_outputs(tmp_path):
    """Tiles on two CRSs: no VRT, polygons or COG; a note; stale outputs removed."""
    out = tmp_path / "out"
    arr = np.ones((4, 4), np.uint8)
    records = []
    for i, crs in enumerate((32633, 32634)):
        folder = out / "tiles" / f"t{i}"
        folder.mkdir(parents=True)
        _write(folder / "labels.tif", arr, Affine(10, 0, 500000 + 40 * i, 0, -10, 6e6), crs)
        (folder / "polygons.gpkg").write_bytes(b"")
        records.append({"stem": f"t{i}", "status": "done", "seconds": 1.0, "outputs": {
            "labels.tif": {"path": f"tiles/t{i}/labels.tif"},
            "polygons.gpkg": {"path": f"tiles/t{i}/polygons.gpkg"}}})  # fmt: skip
    for stale in ("mosaic.vrt", "polygons.gpkg", "mosaic.tif", "mosaic.tif.aux.xml"):
        (out / stale).write_text("from an earlier run")
    result = BatchResult(out, done=["t0", "t1"], seconds=2.0)
    outputs, notes = write_summary(out, _journal(out, records), ["t0", "t1"], result, cog=True)
    assert set(outputs) == {"summary", "summary_md", "report_html"}
    assert any("CRS" in n and "no mosaic" in n for n in notes)
    assert any("no merged polygons" in n for n in notes)
    assert sorted(p.name for p in out.iterdir()) == [
        "report.html", "summary.json", "summary.md", "tiles"]  # fmt: skip
    assert json.loads((out / "summary.json").read_text())["notes"] == notes


def test_overlapping_tiles_say_their_class_areas_count_the_overlap_twice(tmp_path):
    """Tiles of one grid that overlap (rasterio's rgb1..rgb4 share a row and a column): the
    mosaic is built, but the summed class areas count the overlap once per tile: a note says so."""
    out = tmp_path / "out"
    arr = np.ones((4, 4), np.uint8)
    records = []
    for i, col in enumerate((0, 3)):  # 4-pixel tiles 3 pixels apart: one shared column
        folder = out / "tiles" / f"t{i}"
        folder.mkdir(parents=True)
        _write(folder / "labels.tif", arr, Affine(10, 0, 500000 + 10 * col, 0, -10, 6e6))
        report = {"classes": [{"index": 1, "name": "water", "samples": 16, "area_m2": 1600.0,
                               "area_km2": 0.0016}]}  # fmt: skip
        (folder / "report.json").write_text(json.dumps(report))
        records.append({"stem": f"t{i}", "status": "done", "seconds": 1.0, "outputs": {
            "labels.tif": {"path": f"tiles/t{i}/labels.tif"},
            "report.json": {"path": f"tiles/t{i}/report.json"}}})  # fmt: skip
    result = BatchResult(out, done=["t0", "t1"], seconds=2.0)
    outputs, notes = write_summary(out, _journal(out, records), ["t0", "t1"], result)
    assert "mosaic" in outputs
    with rasterio.open(out / "mosaic.vrt") as m:
        assert m.width == 7  # 4 + 4 - 1 shared column
    assert any("overlaps" in n and "once per tile" in n for n in notes), notes
