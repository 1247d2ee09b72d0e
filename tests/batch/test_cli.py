"""``geomed-seg batch`` from the command line: exit codes, resume, kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from geomed_seg.batch.journal import file_sha256
from geomed_seg.cli import main
from tests.batch.data import cut_tiles

EXE = Path(sys.executable).parent / "geomed-seg"


def _labels(out: Path) -> dict[str, str]:
    return {p.parent.name: file_sha256(p) for p in sorted((out / "tiles").glob("*/labels.tif"))}


def _sets(fast):
    return [a for o in fast for a in ("--set", o)]


def test_cli_partial_failure_exits_1(tiles, tmp_path, fast, capsys):
    (tmp_path / "tiles" / "zz_corrupt.tif").write_text("not a tiff")
    out = tmp_path / "out"
    args = ["batch", "flood", "--inputs", str(tmp_path / "tiles" / "*.tif"), "-o", str(out)]
    rc = main([*args, *_sets(fast), "--retries", "0"])
    text = capsys.readouterr().out
    assert rc == 1
    assert "6 done" in text and "1 failed" in text and "failed: zz_corrupt" in text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["failed_tiles"].keys() == {"zz_corrupt"} and summary["done"] == 6
    # rerun: the done tiles are skipped, the corrupt one tried again, still exit 1
    rc = main([*args, *_sets(fast), "--retries", "0", "--quiet"])
    assert rc == 1 and capsys.readouterr().out == ""
    assert json.loads((out / "summary.json").read_text())["skipped"] == 6


def test_cli_changed_config_exit_2(tiles, tmp_path, fast, capsys):
    lst = tmp_path / "files.txt"
    lst.write_text("\n".join(str(p) for p in tiles[:2]))
    base = ["batch", "flood", "--list", str(lst), "-o", str(tmp_path / "out"), *_sets(fast)]
    assert main([*base, "-q"]) == 0
    changed = [*base, "--set", "postprocess.min_object_size=0", "-q"]
    assert main(changed) == 2
    assert "--restart" in capsys.readouterr().err
    assert main([*changed, "--restart"]) == 0


@pytest.mark.slow
def test_kill_9_then_resume_is_identical(tmp_path, landsat_path, fast):
    tiles = cut_tiles(landsat_path, tmp_path / "tiles", rows=4, cols=4)
    args = [str(EXE), "batch", "flood", "--inputs", str(tmp_path / "tiles" / "*.tif"),
            *_sets(fast), "--workers", "1", "-q"]  # fmt: skip
    full = tmp_path / "full"
    subprocess.run([*args, "-o", str(full)], check=True, timeout=300)
    out = tmp_path / "out"
    proc = subprocess.Popen([*args, "-o", str(out)], start_new_session=True)
    journal = out / "journal.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # kill once some but not all tiles are journalled
        if journal.exists() and journal.read_text().count('"type": "tile"') >= 3:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the batch and its worker processes
    proc.wait()
    done_before = journal.read_text().count('"type": "tile"')
    assert 3 <= done_before < len(tiles)
    subprocess.run([*args, "-o", str(out)], check=True, timeout=300)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["skipped"] >= done_before and summary["done"] + summary["skipped"] == 16
    assert _labels(out) == _labels(full) and len(_labels(full)) == 16
    assert not list((out / "tiles").glob(".*"))


def _band_vrt(tiles: list[Path], path: Path) -> None:
    """Write a VRT of all bands of north-up ``tiles`` on one pixel grid (an independent mosaic)."""
    import rasterio

    metas = []
    for t in tiles:
        with rasterio.open(t) as ds:
            metas.append((t, ds.transform, ds.width, ds.height, ds.count, ds.crs))
    tr0 = metas[0][1]
    x0, y0 = min(m[1].c for m in metas), max(m[1].f for m in metas)
    places = [(t, round((tr.c - x0) / tr0.a), round((tr.f - y0) / tr0.e), w, h)
              for t, tr, w, h, _, _ in metas]  # fmt: skip
    width = max(ix + w for _, ix, _, w, _ in places)
    height = max(iy + h for _, _, iy, _, h in places)
    xml = [f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">',
           f"<SRS>{metas[0][5].to_wkt()}</SRS>",
           f"<GeoTransform>{x0!r}, {tr0.a!r}, 0.0, {y0!r}, 0.0, {tr0.e!r}</GeoTransform>"]  # fmt: skip
    for b in range(1, metas[0][4] + 1):
        xml.append(f'<VRTRasterBand dataType="Byte" band="{b}">')
        for t, ix, iy, w, h in places:
            xml.append(
                f"<SimpleSource><SourceFilename>{t}</SourceFilename><SourceBand>{b}</SourceBand>"
                f'<SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/>'
                f'<DstRect xOff="{ix}" yOff="{iy}" xSize="{w}" ySize="{h}"/></SimpleSource>'
            )
        xml.append("</VRTRasterBand>")
    path.write_text("\n".join([*xml, "</VRTDataset>"]))


def test_cli_vrt_scene_in_blocks(tiles, tmp_path, fast, capsys):
    import numpy as np
    import rasterio

    scene = tmp_path / "scene.vrt"
    _band_vrt(tiles, scene)
    out = tmp_path / "out"
    fixed = ["--set", "model.threshold=0.0", "--set", "postprocess.min_object_size=0"]
    base = ["batch", "flood", "--vrt", str(scene), "-o", str(out), *_sets(fast), *fixed]
    with rasterio.open(scene) as ds:  # independent reference: NDWI > 0 with numpy
        assert ds.count == 6 and ds.block_shapes[0] == (128, 128)
        green, nir = (ds.read(i).astype(np.float64) for i in (2, 4))
        transform, shape = ds.transform, ds.shape
    rows, cols = -(-shape[0] // 128), -(-shape[1] // 128)
    assert main([*base, "--block-size", "128", "--halo", "16", "--workers", "1"]) == 0
    assert f"{rows * cols} tiles: {rows * cols} done" in capsys.readouterr().out
    stems = [f"scene_r{i:04d}_c{j:04d}" for i in range(rows) for j in range(cols)]
    assert sorted(_labels(out)) == stems
    with rasterio.open(out / "mosaic.vrt") as m:
        assert m.transform == transform and m.shape == shape
        np.testing.assert_array_equal(m.read(1), (green > nir).astype(np.uint8))
    # another block size in the same folder is refused (exit 2, before any work)
    assert main([*base, "--block-size", "256", "--halo", "16", "-q"]) == 2
    assert "--restart" in capsys.readouterr().err
    assert sorted(_labels(out)) == stems


def test_cli_blocks_need_the_input_grid(landsat_path, tmp_path, capsys):
    args = ["batch", "flood", "--inputs", str(landsat_path), "-o", str(tmp_path / "out"),
            "--block-size", "128", "--set", "preprocess.target_crs=EPSG:4326"]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "keeps the input grid" in err


@pytest.mark.slow
def test_kill_9_then_resume_blocks_is_identical(tmp_path, landsat_path, fast):
    args = [str(EXE), "batch", "flood", "--inputs", str(landsat_path), "--block-size", "96",
            "--halo", "16", *_sets(fast), "--workers", "1", "-q"]  # fmt: skip
    full = tmp_path / "full"
    subprocess.run([*args, "-o", str(full)], check=True, timeout=300)
    assert len(_labels(full)) == 16  # 352 x 349 px in 96 px blocks
    out = tmp_path / "out"
    proc = subprocess.Popen([*args, "-o", str(out)], start_new_session=True)
    journal = out / "journal.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # kill once some but not all blocks are journalled
        if journal.exists() and journal.read_text().count('"type": "tile"') >= 3:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = journal.read_text().count('"type": "tile"')
    assert 3 <= done_before < 16
    subprocess.run([*args, "-o", str(out)], check=True, timeout=300)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["skipped"] >= done_before and summary["done"] + summary["skipped"] == 16
    assert _labels(out) == _labels(full)
    assert not list((out / "tiles").glob(".*"))


def test_cli_jobqueue_slurm_runs_tiles_in_the_job(tiles, tmp_path, fast, fake_queue):
    """--jobqueue slurm: the tiles run in the worker that the (fake) sbatch job started."""
    from tests.batch.conftest import queue_pids

    queue = fake_queue("slurm")
    out = tmp_path / "out"
    args = ["batch", "flood", "--inputs", str(tmp_path / "tiles" / "tile_0_*.tif"), "-o",
            str(out), "--jobqueue", "slurm", "--workers", "1", "--threads", "1",
            "--memory-limit", "1GB", "-q", *_sets(fast)]  # fmt: skip
    assert main(args) == 0
    recs = [json.loads(x) for x in (out / "journal.jsonl").read_text().splitlines()]
    tiles_done = [r for r in recs if r.get("type") == "tile" and r["status"] == "done"]
    assert len(tiles_done) == 3
    assert len(queue_pids(queue)) == 1  # one job submitted, and its worker ran every tile
    assert {r["worker_pid"] for r in tiles_done} != {os.getpid()}
    assert "Starting established connection" in (queue / "job-0.log").read_text()
    assert "#SBATCH" in (queue / "job-0.sh").read_text()


def test_cli_jobqueue_misconfigured_exit_2(tiles, tmp_path, fast, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch
    args = ["batch", "flood", "--inputs", str(tmp_path / "tiles" / "*.tif"), "-o",
            str(tmp_path / "out"), "--jobqueue", "slurm", "--threads", "1",
            "--memory-limit", "1GB", *_sets(fast)]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sbatch not found" in err[0]


def test_cli_cog_mosaic_and_merged_polygons(tiles, tmp_path):
    import numpy as np
    import rasterio
    from rio_cogeo.cogeo import cog_validate

    out = tmp_path / "out"
    args = ["batch", "flood", "--inputs", str(tmp_path / "tiles" / "tile_0_*.tif"), "-o",
            str(out), "--cog-mosaic", "--set", "outputs.quicklook=false", "-q"]  # fmt: skip
    assert main(args) == 0
    valid, errors, _ = cog_validate(str(out / "mosaic.tif"))
    assert valid, errors
    with rasterio.open(out / "mosaic.tif") as cog, rasterio.open(out / "mosaic.vrt") as vrt:
        assert cog.transform == vrt.transform and cog.crs == vrt.crs
        np.testing.assert_array_equal(cog.read(), vrt.read())
    assert (out / "polygons.gpkg").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert {"mosaic", "polygons", "cog"} <= set(summary["outputs"])
