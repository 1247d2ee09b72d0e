"""Batch-wide classical thresholds (pass 1): tiles and blocks equal a whole-scene run.

References: a whole-scene ``run_pipeline`` (its labels read with rasterio) and
scikit-image's Otsu on all pixels (tests/classical/test_histogram.py)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from geomed_seg.batch.runner import run_batch
from geomed_seg.cli import main
from geomed_seg.pipelines.runner import run_pipeline


def cut_grid(scene: Path, folder: Path, rows: int = 3, cols: int = 3) -> list[Path]:
    """Cut ``scene`` into rows x cols GeoTIFFs covering all of it (rasterio windows)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    with rasterio.open(scene) as ds:
        ys = [0, *[ds.height // rows * i for i in range(1, rows)], ds.height]
        xs = [0, *[ds.width // cols * i for i in range(1, cols)], ds.width]
        for r in range(rows):
            for c in range(cols):
                win = Window(xs[c], ys[r], xs[c + 1] - xs[c], ys[r + 1] - ys[r])
                prof = ds.profile.copy()
                prof.update(width=win.width, height=win.height,
                            transform=window_transform(win, ds.transform))  # fmt: skip
                for key in ("blockxsize", "blockysize", "tiled"):
                    prof.pop(key, None)
                path = folder / f"t_{r}_{c}.tif"
                with rasterio.open(path, "w", **prof) as dst:
                    dst.write(ds.read(window=win))
                out.append(path)
    return out


def _mosaic(out: Path) -> np.ndarray:
    with rasterio.open(out / "mosaic.vrt") as ds:
        return ds.read(1)


def _water(labels: np.ndarray) -> float:
    valid = labels != 255
    return float((labels[valid] == 1).mean())


def _journal(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "journal.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def whole(tmp_path_factory, landsat_path):
    """The flood pipeline (NDWI + Otsu, min object 8000 m²) on the whole scene."""
    out = tmp_path_factory.mktemp("whole")
    run = run_pipeline("flood", input=landsat_path, output=out,
                       overrides=["model.method=ndwi_otsu", "outputs.polygons=false",
                                  "outputs.quicklook=false"])  # fmt: skip
    with rasterio.open(out / "labels.tif") as ds:
        return run.report["threshold"], ds.read(1)


def test_tiles_batch_scope_equals_whole_scene(tmp_path, landsat_path, fast, whole):
    t_whole, ref = whole
    tiles = cut_grid(landsat_path, tmp_path / "tiles")
    out = tmp_path / "batch"
    res = run_batch("flood", tiles, out, overrides=fast, processes=False)
    assert len(res.done) == 9 and not res.failed
    th = res.thresholds
    assert th["scope"] == "batch" and th["method"] == "ndwi_otsu" and th["inputs"] == 9
    assert th["thresholds"] == [t_whole]  # same pixels, same bins: the same threshold
    assert th["bimodal"] and th["eta"] > 0.7 and th["pass1_tasks_run"] == 9
    lab = _mosaic(out)
    assert lab.shape == ref.shape
    agree = float((lab == ref).mean())
    assert agree >= 0.995, agree  # measured 1.0: no small object is cut by a tile edge here
    assert abs(_water(lab) - _water(ref)) < 0.005
    summary = json.loads((out / "summary.json").read_text())
    assert summary["thresholds"]["thresholds"] == [t_whole]
    assert "scope batch" in (out / "summary.md").read_text()
    for rep in (out / "tiles").glob("*/report.json"):
        r = json.loads(rep.read_text())
        assert r["threshold"] == t_whole and r["thresholding"]["scope"] == "batch"

    # scope tile: today's per-tile Otsu, listed per tile; far from the whole scene
    out_t = tmp_path / "tile"
    res = run_batch("flood", tiles, out_t, overrides=fast, processes=False,
                    threshold_scope="tile")  # fmt: skip
    per = res.thresholds["per_tile"]
    ts = [v["threshold"] for v in per.values()]
    assert res.thresholds["scope"] == "tile" and len(per) == 9
    assert max(ts) - min(ts) > 0.3  # measured -0.11 .. 0.38
    lab_t = _mosaic(out_t)
    assert (lab_t == ref).mean() < 0.9 and _water(lab_t) - _water(ref) > 0.1
    assert res.thresholds["not_bimodal"]  # the tiles without both classes are named
    assert any("not bimodal" in n for n in res.notes)


def test_blocks_batch_scope_equals_whole_scene(tmp_path, landsat_path, fast, whole):
    t_whole, ref = whole
    kw = dict(overrides=fast, processes=False, block_size=128, halo=16)
    res = run_batch("flood", [landsat_path], tmp_path / "b", **kw)
    assert len(res.done) == 9 and res.thresholds["thresholds"] == [t_whole]
    assert res.thresholds["n"] == int((ref != 255).sum())  # each core pixel counted once
    lab = _mosaic(tmp_path / "b")
    assert (lab == ref).mean() >= 0.995 and abs(_water(lab) - _water(ref)) < 0.005
    assert not any("per block" in n for n in res.notes)
    res_t = run_batch("flood", [landsat_path], tmp_path / "t", threshold_scope="tile", **kw)
    per = res_t.thresholds["per_tile"]
    assert len({v["threshold"] for v in per.values()}) > 1  # blocks disagree
    assert any("per block" in n for n in res_t.notes)
    assert (_mosaic(tmp_path / "t") != ref).mean() > 0.01


def test_resume_skips_pass1_and_keeps_the_threshold(tmp_path, landsat_path, fast):
    tiles = cut_grid(landsat_path, tmp_path / "tiles")
    out = tmp_path / "out"
    first = run_batch("flood", tiles, out, overrides=fast, processes=False)
    t = first.thresholds["thresholds"]
    lines = _journal(out)
    stats = [x for x in lines if x.get("type") == "stats"]
    assert len(stats) == 9 and all(x["status"] == "done" for x in stats)
    assert [x["thresholds"] for x in lines if x.get("type") == "threshold"] == [t]
    # killed in pass 2: 4 tiles never finished (no record, no folder; torn last line)
    killed = sorted(first.done)[5:]
    keep = [x for x in lines if not (x.get("type") == "tile" and x["stem"] in killed)]
    (out / "journal.jsonl").write_text("".join(json.dumps(x) + "\n" for x in keep) + '{"ty')
    for stem in killed:
        shutil.rmtree(out / "tiles" / stem)
    res = run_batch("flood", tiles, out, overrides=fast, processes=False)
    assert res.thresholds["pass1_tasks_run"] == 0 and res.thresholds["pass1_tasks_reused"] == 9
    assert res.thresholds["thresholds"] == t and sorted(res.done) == killed
    # killed in pass 1: 5 histograms journalled, no tile yet
    keep = [x for x in lines if x.get("type") == "header"] + stats[:5]
    (out / "journal.jsonl").write_text("".join(json.dumps(x) + "\n" for x in keep))
    res = run_batch("flood", tiles, out, overrides=fast, processes=False)
    assert (res.thresholds["pass1_tasks_run"], res.thresholds["pass1_tasks_reused"]) == (4, 5)
    assert res.thresholds["thresholds"] == t and len(res.done) == 9


def test_changed_input_reruns_pass1_and_every_tile(tmp_path, landsat_path, fast):
    tiles = cut_grid(landsat_path, tmp_path / "tiles")
    out = tmp_path / "out"
    first = run_batch("flood", tiles, out, overrides=fast, processes=False)
    with rasterio.open(tiles[0], "r+") as ds:  # tile 0 becomes open water (green >> nir)
        a = ds.read()
        a[1], a[3] = 200, 10
        ds.write(a)
    res = run_batch("flood", tiles, out, overrides=fast, processes=False)
    assert res.thresholds["pass1_tasks_run"] == 1 and res.thresholds["pass1_tasks_reused"] == 8
    assert res.thresholds["thresholds"] != first.thresholds["thresholds"]
    assert len(res.done) == 9  # a new batch threshold: every tile is classified again
    for rep in (out / "tiles").glob("*/report.json"):
        assert json.loads(rep.read_text())["threshold"] == res.thresholds["thresholds"][0]


def test_user_threshold_wins_without_pass1(tmp_path, landsat_path, fast):
    tiles = cut_grid(landsat_path, tmp_path / "tiles", 2, 2)
    out = tmp_path / "out"
    res = run_batch("flood", tiles, out, overrides=(*fast, "model.threshold=0.05"),
                    processes=False)  # fmt: skip
    assert res.thresholds == {"scope": "fixed", "method": "ndwi_otsu", "thresholds": [0.05]}
    assert not [x for x in _journal(out) if x.get("type") in ("stats", "threshold")]
    for rep in (out / "tiles").glob("*/report.json"):
        r = json.loads(rep.read_text())
        assert r["threshold"] == 0.05 and r["thresholding"]["scope"] == "fixed"


def _noise_tiles(folder: Path, n: int = 3) -> list[Path]:
    """Tiles of 2 bands (green, nir) of uniform noise: a unimodal NDWI histogram."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    paths = []
    for i in range(n):
        p = folder / f"noise_{i}.tif"
        with rasterio.open(p, "w", driver="GTiff", width=60, height=50, count=2, dtype="uint8",
                           crs="EPSG:32633",
                           transform=Affine(30, 0, 500000 + 1800 * i, 0, -30, 4000000)) as ds:  # fmt: skip
            ds.write(rng.integers(40, 60, (2, 50, 60), dtype=np.uint8))
        paths.append(p)
    return paths


def test_not_bimodal_batch_warns_naming_inputs(tmp_path, fast, caplog):
    tiles = _noise_tiles(tmp_path / "tiles")
    sets = (*fast, "input.band_names=[green,nir]", "sensor=null", "dataset=null",
            "postprocess.min_object_size=null")  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="geomed_seg"):
        res = run_batch("flood", tiles, tmp_path / "out", overrides=sets, processes=False)
    assert not res.thresholds["bimodal"]
    msgs = [r.getMessage() for r in caplog.records if "not bimodal" in r.getMessage()]
    assert msgs and str(tiles[0]) in msgs[0]
    assert any("not bimodal" in n for n in res.notes)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["thresholds"]["bimodal"] is False and summary["thresholds"]["eta"] < 0.75


def _s1_tiles(folder: Path) -> tuple[list[Path], Path]:
    """A linear sigma0 VV/VH scene (water = low backscatter in the left third) and 3 tiles
    (columns): the left tile is all water, the others all land."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    vv = rng.gamma(4, 0.1 / 4, (60, 90)).astype(np.float32)
    vv[:, :30] = rng.gamma(4, 0.004 / 4, (60, 30))
    scene = folder / "s1.tif"
    prof = dict(driver="GTiff", height=60, count=2, dtype="float32", crs="EPSG:32633")
    with rasterio.open(scene, "w", width=90, transform=Affine(10, 0, 5e5, 0, -10, 4e6),
                       **prof) as ds:  # fmt: skip
        ds.write(np.stack([vv, vv / 5]))
    tiles = []
    for i in range(3):
        p = folder / "tiles" / f"s1_{i}.tif"
        p.parent.mkdir(exist_ok=True)
        with rasterio.open(p, "w", width=30, transform=Affine(10, 0, 5e5 + 300 * i, 0, -10, 4e6),
                           **prof) as ds:  # fmt: skip
            sl = vv[:, 30 * i : 30 * (i + 1)]
            ds.write(np.stack([sl, sl / 5]))
        tiles.append(p)
    return tiles, scene


def test_sar_dB_two_step_pass1_equals_whole_scene(tmp_path, fast):
    tiles, scene = _s1_tiles(tmp_path / "s1")
    sets = (*fast, "postprocess.min_object_size=null", "postprocess.fill_holes=false")
    run = run_pipeline("flood-sar", input=scene, output=tmp_path / "whole", overrides=sets)
    res = run_batch("flood-sar", tiles, tmp_path / "b", overrides=sets, processes=False)
    assert res.thresholds["method"] == "sar_threshold"
    # min/max merged first, so the bins and the threshold equal the whole scene's
    assert res.thresholds["thresholds"] == [run.report["threshold"]]
    steps = {x["step"] for x in _journal(tmp_path / "b") if x.get("type") == "stats"}
    assert steps == {"range", "hist"}
    with rasterio.open(tmp_path / "whole" / "labels.tif") as ds:
        ref = ds.read(1)
    lab = _mosaic(tmp_path / "b")
    assert (lab == ref).all() and lab[:, :30].mean() > 0.99
    res_t = run_batch("flood-sar", tiles, tmp_path / "t", overrides=sets, processes=False,
                      threshold_scope="tile")  # fmt: skip
    assert res_t.thresholds["scope"] == "tile" and len(res_t.thresholds["per_tile"]) == 3
    assert (_mosaic(tmp_path / "t") != ref).mean() > 0.2  # one-class tiles split in two


def test_cli_threshold_scope(tmp_path, landsat_path, capsys):
    tiles = cut_grid(landsat_path, tmp_path / "tiles", 1, 2)
    args = ["batch", "flood", "--inputs", str(tmp_path / "tiles" / "*.tif"), "-o",
            str(tmp_path / "out"), "--set", "outputs.polygons=false", "--set",
            "outputs.quicklook=false", "--workers", "1"]  # fmt: skip
    assert main([*args, "--threshold-scope", "both"]) == 2
    assert "--threshold-scope 'both'" in capsys.readouterr().err
    assert main(args) == 0
    assert "threshold (ndwi_otsu, scope batch)" in capsys.readouterr().out
    assert len(tiles) == 2


def _vrt_of(tiles: list[Path], scene: Path, path: Path) -> Path:
    """A GDAL VRT (XML written here, one SimpleSource per tile and band) of ``tiles`` on the
    grid of ``scene``."""
    with rasterio.open(scene) as ds:
        crs, tr, h, w, count, dtype = ds.crs, ds.transform, ds.height, ds.width, ds.count, "Byte"
    bands = []
    for b in range(1, count + 1):
        srcs = []
        for t in tiles:
            with rasterio.open(t) as ds:
                col, row = (round(v) for v in ~tr * (ds.transform.c, ds.transform.f))
                size = f'xSize="{ds.width}" ySize="{ds.height}"'
                srcs.append(
                    f'<SimpleSource><SourceFilename relativeToVRT="0">{t}</SourceFilename>'
                    f'<SourceBand>{b}</SourceBand><SrcRect xOff="0" yOff="0" {size}/>'
                    f'<DstRect xOff="{col}" yOff="{row}" {size}/></SimpleSource>'
                )
        bands.append(f'<VRTRasterBand dataType="{dtype}" band="{b}">{"".join(srcs)}'
                     "</VRTRasterBand>")  # fmt: skip
    gt = ", ".join(repr(v) for v in tr.to_gdal())
    path.write_text(f'<VRTDataset rasterXSize="{w}" rasterYSize="{h}"><SRS>{crs.to_wkt()}</SRS>'
                    f"<GeoTransform>{gt}</GeoTransform>{''.join(bands)}</VRTDataset>")  # fmt: skip
    return path


def test_vrt_scene_in_blocks_equals_whole_scene(tmp_path, landsat_path, fast, whole):
    t_whole, ref = whole
    vrt = _vrt_of(cut_grid(landsat_path, tmp_path / "tiles"), landsat_path, tmp_path / "s.vrt")
    with rasterio.open(vrt) as v, rasterio.open(landsat_path) as s:
        assert (v.read() == s.read()).all()  # the VRT is the scene
    res = run_batch("flood", [vrt], tmp_path / "out", overrides=fast, processes=False,
                    block_size=128, halo=16)  # fmt: skip
    assert len(res.done) == 9 and res.thresholds["thresholds"] == [t_whole]
    lab = _mosaic(tmp_path / "out")
    assert (lab == ref).mean() >= 0.995 and abs(_water(lab) - _water(ref)) < 0.005


def test_single_run_reports_separability_and_warns(tmp_path, fast, caplog):
    (tile,) = _noise_tiles(tmp_path / "tiles", 1)
    sets = [*fast, "input.band_names=[green,nir]", "sensor=null", "dataset=null",
            "postprocess.min_object_size=null", "model.method=ndwi_otsu"]  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="geomed_seg"):
        run = run_pipeline("flood", input=tile, output=tmp_path / "out", overrides=sets)
    th = run.report["thresholding"]
    assert (
        th["scope"] == "scene"
        and th["bimodal"] is False
        and th["thresholds"] == [run.report["threshold"]]
    )
    assert any(str(tile) in n and "not bimodal" in n for n in run.report["notes"])
    assert any(str(tile) in r.getMessage() for r in caplog.records)
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["thresholding"]["eta"] == pytest.approx(th["eta"])
