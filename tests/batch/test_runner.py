"""Batch runs on dask.distributed: equal to single runs, resumable, fault tolerant."""

from __future__ import annotations

import json
import os
import shutil

import dask
import numpy as np
import pytest
import rasterio
from distributed import LocalCluster

from geomed_seg.batch.journal import Journal, file_sha256
from geomed_seg.batch.runner import run_batch
from geomed_seg.errors import ConfigError
from geomed_seg.pipelines.runner import run_pipeline


def _labels(out):
    return {p.parent.name: file_sha256(p) for p in sorted((out / "tiles").glob("*/labels.tif"))}


def _lines(out):
    return [json.loads(x) for x in (out / "journal.jsonl").read_text().splitlines()]


def test_batch_equals_single_runs(tiles, tmp_path, fast):
    out = tmp_path / "out"
    res = run_batch("flood", tiles, out, overrides=fast, processes=False)
    assert sorted(res.done) == sorted(p.stem for p in tiles) and not res.failed
    # the default threshold scope is the batch: a single run given the batch's threshold
    # is the reference (scope "tile" against plain single runs: below)
    fixed = (*fast, f"model.threshold={res.thresholds['thresholds'][0]!r}")
    for p in tiles:
        alone = run_pipeline("flood", input=p, output=tmp_path / "alone" / p.stem, overrides=fixed)
        ref = alone.outputs["labels"]
        got = out / "tiles" / p.stem / "labels.tif"
        with rasterio.open(ref) as a, rasterio.open(got) as b:
            assert a.crs == b.crs and a.transform == b.transform
            np.testing.assert_array_equal(a.read(), b.read())
        with rasterio.open(p) as src, rasterio.open(got) as b:  # geometry of the input tile
            assert b.transform == src.transform and b.shape == src.shape
        assert file_sha256(ref) == file_sha256(got)
    assert not list((out / "tiles").glob(".*"))  # no temporary folders left
    summary = json.loads((out / "summary.json").read_text())
    assert summary["done"] == 6 and summary["failed"] == 0
    water = sum(
        c["area_km2"]
        for p in tiles
        for c in json.loads((out / "tiles" / p.stem / "report.json").read_text())["classes"]
        if c["name"] == "water"
    )
    assert summary["class_area_km2"]["water"] == pytest.approx(water)
    assert water > 0 and summary["throughput_km2_per_s"] > 0
    out_t = tmp_path / "tile_scope"
    run_batch("flood", tiles[:2], out_t, overrides=fast, processes=False, threshold_scope="tile")
    for p in tiles[:2]:
        alone = run_pipeline("flood", input=p, output=tmp_path / "plain" / p.stem, overrides=fast)
        assert file_sha256(alone.outputs["labels"]) == file_sha256(
            out_t / "tiles" / p.stem / "labels.tif"
        )


def test_resume_after_kill_is_identical(tiles, tmp_path, fast):
    out = tmp_path / "out"
    run_batch("flood", tiles, out, overrides=fast, processes=False)
    before = _labels(out)
    lines = _lines(out)
    # simulate a kill: the last 3 tiles neither journalled nor written (one torn line)
    killed = {p.stem for p in tiles[3:]}
    keep = [x for x in lines if x.get("stem") not in killed]
    text = "".join(json.dumps(x) + "\n" for x in keep) + '{"type": "tile", "ste'
    (out / "journal.jsonl").write_text(text)
    for stem in killed:
        shutil.rmtree(out / "tiles" / stem)
    # and one finished tile whose output was damaged afterwards: redone
    damaged = tiles[0].stem
    (out / "tiles" / damaged / "labels.tif").write_bytes(b"broken")
    res = run_batch("flood", tiles, out, overrides=fast, processes=False)
    assert set(res.done) == killed | {damaged}
    assert set(res.skipped) == {p.stem for p in tiles[1:3]}
    assert _labels(out) == before
    per_stem = [x["stem"] for x in _lines(out) if x.get("type") == "tile"]
    for p in tiles[1:3]:  # not recomputed: still one journal record each
        assert per_stem.count(p.stem) == 1
    assert Journal(out).is_done(tiles[4].stem, tiles[4])
    # a changed input (same size, new mtime) is not done any more
    st = tiles[4].stat()
    os.utime(tiles[4], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert not Journal(out).is_done(tiles[4].stem, tiles[4])


def test_corrupt_tile_fails_alone(tiles, tmp_path, fast):
    bad = tmp_path / "tiles" / "tile_9_9.tif"
    bad.write_text("this is not a GeoTIFF\n")
    out = tmp_path / "out"
    res = run_batch("flood", [*tiles, bad], out, overrides=fast, processes=False, retries=2)
    assert set(res.failed) == {"tile_9_9"} and len(res.done) == 6
    # its pass 1 (the batch's Otsu histogram) failed first: left out of the threshold
    assert res.thresholds["excluded"] == ["tile_9_9"] and res.thresholds["inputs"] == 6
    assert any("pass 1 failed for 1 inputs (tile_9_9)" in n for n in res.notes)
    rec = Journal(out).records["tile_9_9"]
    assert rec["status"] == "failed" and rec["attempts"] == 3 and "tile_9_9.tif" in rec["error"]
    assert not (out / "tiles" / "tile_9_9").exists()
    assert "tile_9_9" in (out / "summary.md").read_text()


def test_changed_config_refused_unless_restart(tiles, tmp_path, fast):
    out = tmp_path / "out"
    run_batch("flood", tiles[:2], out, overrides=fast, processes=False)
    other = (*fast, "postprocess.min_object_size=0")
    with pytest.raises(ConfigError, match="--restart"):
        run_batch("flood", tiles[:2], out, overrides=other, processes=False)
    res = run_batch("flood", tiles[:2], out, overrides=other, processes=False, restart=True)
    assert len(res.done) == 2 and not res.skipped
    assert len([x for x in _lines(out) if x["type"] == "header"]) == 1


def test_existing_scheduler_and_worker_processes(tiles, tmp_path, fast):
    out = tmp_path / "out"
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    ) as cluster:
        res = run_batch(
            "flood", tiles[:4], out, overrides=fast, scheduler=cluster.scheduler_address
        )
    assert len(res.done) == 4 and not res.failed
    pids = {r["worker_pid"] for r in Journal(out).records.values()}
    assert os.getpid() not in pids  # ran in the worker processes
    fixed = (*fast, f"model.threshold={res.thresholds['thresholds'][0]!r}")  # the batch's
    ref = run_pipeline("flood", input=tiles[0], output=tmp_path / "alone", overrides=fixed)
    assert file_sha256(ref.outputs["labels"]) == _labels(out)[tiles[0].stem]


def test_config_loaded_once_per_worker(tiles, tmp_path, fast):
    from geomed_seg.batch.journal import config_hash
    from geomed_seg.batch.runner import TileTask, _worker_config, run_tile
    from geomed_seg.pipelines.schema import load_config

    chash = config_hash(load_config("flood", fast))
    _worker_config.cache_clear()
    with dask.config.set(scheduler="threads"):  # run_tile sets "synchronous" process-wide
        recs = [
            run_tile(TileTask("flood", tuple(fast), chash, str(p), str(tmp_path / "o"), 0))
            for p in tiles[:3]
        ]
    assert [r["status"] for r in recs] == ["done"] * 3
    info = _worker_config.cache_info()
    assert (info.misses, info.hits) == (1, 2)
    bad = run_tile(TileTask("flood", tuple(fast), "0" * 64, str(tiles[3]), str(tmp_path / "o"), 0))
    assert bad["status"] == "failed" and "config changed" in bad["error"]


# -- one large scene split into blocks ------------------------------------------------------

FIXED = ("model.threshold=0.0", "postprocess.min_object_size=0")


def _ndwi_reference(scene) -> np.ndarray:
    """Water labels by numpy: NDWI = (green - nir) / (green + nir) > 0; 255 where g + n = 0."""
    with rasterio.open(scene) as ds:  # bands: blue, green, red, nir, swir1, swir2 (flood.yaml)
        green, nir = (ds.read(i).astype(np.float64) for i in (2, 4))
    total = green + nir
    with np.errstate(invalid="ignore", divide="ignore"):
        water = ((green - nir) / total > 0.0).astype(np.uint8)
    return np.where(total == 0, np.uint8(255), water)


def _mosaic(res) -> np.ndarray:
    with rasterio.open(res.outputs["mosaic"]) as m:
        return m.read(1)


def test_blocks_equal_numpy_ndwi(tmp_path, landsat_path, fast):
    out = tmp_path / "out"
    res = run_batch("flood", [landsat_path], out, overrides=(*fast, *FIXED), processes=False,
                    block_size=128, halo=32)  # fmt: skip
    stems = [f"{landsat_path.stem}_r{i:04d}_c{j:04d}" for i in range(3) for j in range(3)]
    assert sorted(res.done) == stems and not res.failed and not res.notes
    with rasterio.open(res.outputs["mosaic"]) as m, rasterio.open(landsat_path) as scene:
        assert m.transform == scene.transform and m.crs == scene.crs and m.shape == scene.shape
    ref = _ndwi_reference(landsat_path)
    assert 0 < (ref == 1).mean() < 1 and (ref != 255).all()  # land and water, no nodata
    np.testing.assert_array_equal(_mosaic(res), ref)
    recs = Journal(out).records
    for stem in stems:  # each block tile sits on its core window of the scene
        core = recs[stem]["block"]["core"]
        with (
            rasterio.open(out / "tiles" / stem / "labels.tif") as t,
            rasterio.open(landsat_path) as s,
        ):
            win = rasterio.windows.Window(
                core["col_off"], core["row_off"], core["width"], core["height"]
            )
            assert t.transform == s.window_transform(win) and t.shape == (win.height, win.width)
        assert recs[stem]["worker_peak_rss_mb"] > 50 and recs[stem]["worker_rss_mb"] > 50
    rep = json.loads((out / "tiles" / stems[4] / "report.json").read_text())
    run = json.loads((out / "tiles" / stems[4] / "run.json").read_text())
    assert rep["block"] == run["block"] and rep["block"]["scene"] == str(landsat_path)
    assert rep["block"]["core"] == {"row_off": 129, "col_off": 128, "height": 129, "width": 128}
    assert run["inputs"] == {}  # the scene is not hashed once per block


def test_halo_makes_blocks_equal_whole_scene(tmp_path, landsat_path, fast):
    ovr = (*fast, "model.threshold=0.0", "postprocess.min_object_size=8000")
    whole = run_pipeline("flood", input=landsat_path, output=tmp_path / "whole", overrides=ovr)
    with rasterio.open(whole.outputs["labels"]) as ds:
        ref = ds.read(1)
    got = {}
    for halo in (32, 0):
        res = run_batch("flood", [landsat_path], tmp_path / f"halo{halo}", overrides=ovr,
                        processes=False, block_size=128, halo=halo)  # fmt: skip
        got[halo] = _mosaic(res)
    np.testing.assert_array_equal(got[32], ref)
    assert (got[0] != ref).sum() > 0  # small objects cut at block edges are removed


def test_unet_blocks_agree_with_whole_scene(tmp_path, landsat_path, fast):
    ovr = (*fast, "model.method=checkpoint", "engine.roi_size=[64,64]",
           "postprocess.min_object_size=0")  # fmt: skip
    whole = run_pipeline("flood", input=landsat_path, output=tmp_path / "whole", overrides=ovr)
    assert whole.report["method"].startswith("checkpoint")
    with rasterio.open(whole.outputs["labels"]) as ds:
        ref = ds.read(1)
    res = run_batch("flood", [landsat_path], tmp_path / "out", overrides=ovr, processes=False,
                    block_size=128)  # default halo = 64 px  # fmt: skip
    corner = f"{landsat_path.stem}_r0000_c0000"  # res.done is in completion order
    assert Journal(tmp_path / "out").records[corner]["block"]["read"]["width"] == 128 + 64
    agreement = (_mosaic(res) == ref).mean()
    assert agreement >= 0.995, agreement  # measured 0.9991 (halo 64)
    assert 0.05 < (ref == 1).mean() < 0.5


def test_blocks_resume_and_otsu_note(tmp_path, landsat_path, fast):
    out = tmp_path / "out"
    res = run_batch("flood", [landsat_path], out, overrides=fast, processes=False,
                    block_size=200, halo=16)  # fmt: skip
    # blocks share one scene-wide Otsu threshold (pass 1), no longer one per block
    assert len(res.done) == 4 and res.thresholds["scope"] == "batch"
    before = _labels(out)
    killed = sorted(res.done)[2:]
    keep = [x for x in _lines(out) if x.get("stem") not in killed]
    text = "".join(json.dumps(x) + "\n" for x in keep) + '{"type": "tile", "ste'
    (out / "journal.jsonl").write_text(text)
    for stem in killed:
        shutil.rmtree(out / "tiles" / stem)
    res = run_batch("flood", [landsat_path], out, overrides=fast, processes=False,
                    block_size=200, halo=16)  # fmt: skip
    assert sorted(res.done) == killed and sorted(res.skipped) == sorted(before)[:2]
    assert _labels(out) == before
    with pytest.raises(ConfigError, match="--restart"):  # another layout, same config
        run_batch("flood", [landsat_path], out, overrides=fast, processes=False,
                  block_size=200, halo=8)  # fmt: skip


def test_blocks_refused_for_volumes_and_reprojection(tmp_path, landsat_path):
    from geomed_seg.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="rasters only"):
        run_batch("brats", [landsat_path], tmp_path / "v", block_size=64, processes=False)
    with pytest.raises(ConfigError, match="keeps the input grid"):
        run_batch("flood", [landsat_path], tmp_path / "r", block_size=64, processes=False,
                  overrides=("preprocess.target_crs=EPSG:4326",))  # fmt: skip
    with pytest.raises(InvalidInputError, match="halo"):
        run_batch("flood", [landsat_path], tmp_path / "h", block_size=64, halo=-1)
    assert not (tmp_path / "v").exists() and not (tmp_path / "r").exists()


def test_run_pipeline_core_needs_the_input_grid(tmp_path, landsat_path):
    from geomed_seg.io.registry import open_image

    block = open_image(landsat_path).sel_window((slice(0, 96), slice(0, 96)))
    with pytest.raises(ConfigError, match="changed the grid of the input block"):
        run_pipeline("flood", image=block, output=tmp_path / "o", core=(slice(16, 80),) * 2,
                     overrides=("preprocess.target_crs=EPSG:4326",))  # fmt: skip


def test_run_pipeline_core_crops_every_output(tmp_path, landsat_path):
    from geomed_seg.io.registry import open_image

    block = open_image(landsat_path).sel_window((slice(40, 136), slice(100, 196)))
    res = run_pipeline("flood", image=block, output=tmp_path / "o", core=(slice(16, 80),) * 2,
                       overrides=("model.method=checkpoint", "engine.roi_size=[64,64]",
                                  "outputs.probabilities=cog", "outputs.polygons=false"))  # fmt: skip
    with rasterio.open(landsat_path) as scene:
        want = scene.window_transform(rasterio.windows.Window(116, 56, 64, 64))
    for name in ("labels", "probabilities"):
        with rasterio.open(res.outputs[name]) as ds:
            assert ds.transform.almost_equals(want, 1e-9) and ds.shape == (64, 64), name
    assert sum(c["samples"] for c in res.report["classes"]) == 64 * 64


def test_killed_worker_does_not_recompute_finished_tiles(tiles, tmp_path, fast):
    """kill -9 of a worker after some tiles: those tiles are not run again, the rest finish."""
    import signal

    out = tmp_path / "out"
    seen: dict[str, int] = {}
    killed: list[int] = []

    def on_tile(rec):
        seen[rec["stem"]] = (out / "tiles" / rec["stem"]).stat().st_ino
        if len(seen) == 2 and not killed:  # kill the worker that ran the first tiles
            killed.append(rec["worker_pid"])
            os.kill(rec["worker_pid"], signal.SIGKILL)

    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    ) as cluster:
        res = run_batch(
            "flood", tiles, out, overrides=fast, scheduler=cluster.scheduler_address,
            on_tile=on_tile,
        )  # fmt: skip
    assert killed and sorted(res.done) == sorted(p.stem for p in tiles) and not res.failed
    for stem, ino in seen.items():  # every tile folder is the one first written
        assert (out / "tiles" / stem).stat().st_ino == ino, stem
    per_stem = [x["stem"] for x in _lines(out) if x.get("type") == "tile"]
    assert sorted(per_stem) == sorted(p.stem for p in tiles)  # one record per tile
