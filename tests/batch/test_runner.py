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
    for p in tiles:
        alone = run_pipeline("flood", input=p, output=tmp_path / "alone" / p.stem, overrides=fast)
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
    ref = run_pipeline("flood", input=tiles[0], output=tmp_path / "alone", overrides=fast)
    assert file_sha256(ref.outputs["labels"]) == _labels(out)[tiles[0].stem]


def test_config_loaded_once_per_worker(tiles, tmp_path, fast):
    from geomed_seg.batch.journal import config_hash
    from geomed_seg.batch.runner import _worker_config, run_tile
    from geomed_seg.pipelines.schema import load_config

    chash = config_hash(load_config("flood", fast))
    _worker_config.cache_clear()
    with dask.config.set(scheduler="threads"):  # run_tile sets "synchronous" process-wide
        recs = [run_tile("flood", fast, chash, str(p), str(tmp_path / "o"), 0) for p in tiles[:3]]
    assert [r["status"] for r in recs] == ["done"] * 3
    info = _worker_config.cache_info()
    assert (info.misses, info.hits) == (1, 2)
    bad = run_tile("flood", fast, "0" * 64, str(tiles[3]), str(tmp_path / "o"), 0)
    assert bad["status"] == "failed" and "config changed" in bad["error"]
