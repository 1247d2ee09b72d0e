"""A checkpoint is loaded once per process by the pipeline (batch workers run many tiles)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from geomed_seg.errors import ModelError
from geomed_seg.models import checkpoint
from geomed_seg.pipelines.runner import run_pipeline

WATER = Path(__file__).resolve().parents[2] / "checkpoints" / "water_unet"


@pytest.fixture
def counted(monkeypatch):
    calls = []
    real = checkpoint.load_checkpoint

    def counting(path, device="cpu", **kw):
        calls.append(str(path))
        return real(path, device, **kw)

    monkeypatch.setattr(checkpoint, "load_checkpoint", counting)
    checkpoint._load_cached.cache_clear()
    yield calls
    checkpoint._load_cached.cache_clear()


def test_cached_until_the_files_change(counted, tmp_path):
    ckpt = tmp_path / "water_unet"
    shutil.copytree(WATER, ckpt)
    a = checkpoint.load_checkpoint_cached(ckpt)
    b = checkpoint.load_checkpoint_cached(
        tmp_path / "." / "water_unet"
    )  # same file, other spelling
    assert a is b and len(counted) == 1
    weights = ckpt / checkpoint.WEIGHTS_NAME
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # replaced weights
    c = checkpoint.load_checkpoint_cached(ckpt)
    assert c is not a and len(counted) == 2
    with pytest.raises(ModelError, match="not found"):
        checkpoint.load_checkpoint_cached(tmp_path / "missing")


def test_pipeline_loads_the_model_once_for_many_runs(counted, tmp_path, landsat_path):
    import rasterio
    from rasterio.windows import Window
    from rasterio.windows import transform as window_transform

    tiles = []
    with rasterio.open(landsat_path) as ds:  # two small tiles of the scene
        for k in range(2):
            win = Window(k * 64, 0, 64, 64)
            prof = {**ds.profile, "width": 64, "height": 64,
                    "transform": window_transform(win, ds.transform)}  # fmt: skip
            for key in ("blockxsize", "blockysize", "tiled"):
                prof.pop(key, None)
            tiles.append(tmp_path / f"t{k}.tif")
            with rasterio.open(tiles[-1], "w", **prof) as dst:
                dst.write(ds.read(window=win))
    sets = ["model.method=checkpoint", f"model.checkpoint={WATER}", "outputs.polygons=false",
            "outputs.quicklook=false"]  # fmt: skip
    for k, tile in enumerate(tiles):
        res = run_pipeline("flood", input=tile, output=tmp_path / f"o{k}", overrides=sets)
        assert res.report["method"].startswith("checkpoint:")
    assert counted == [str(WATER.resolve())]
