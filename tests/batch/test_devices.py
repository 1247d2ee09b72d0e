"""batch --devices: one local worker per device, each running its tiles on its own device."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import rasterio

from geomed_seg.batch.cluster import open_client, pin_devices
from geomed_seg.batch.options import ClusterOptions
from geomed_seg.batch.runner import run_batch
from geomed_seg.errors import ConfigError, InvalidInputError
from geomed_seg.inference.options import worker_device

WATER = Path(__file__).resolve().parents[2] / "checkpoints" / "water_unet"
MODEL = ("model.method=checkpoint", f"model.checkpoint={WATER}")


def test_devices_size_the_local_cluster_and_refuse_other_clusters():
    kw = ClusterOptions(devices=("cpu", "cpu")).client_kwargs()
    assert kw["workers"] == 2 and kw["threads"] == 1 and "devices" not in kw
    with pytest.raises(InvalidInputError, match="--scheduler or --jobqueue"):
        ClusterOptions(devices=("cpu",), scheduler="tcp://127.0.0.1:1").client_kwargs()
    with pytest.raises(InvalidInputError, match="one worker per device"):
        ClusterOptions(devices=("cpu", "cpu"), workers=3).client_kwargs()


def test_each_worker_is_pinned_to_its_own_device():
    """Two workers get two different device names, seen by the tasks they run."""
    assert worker_device() is None  # outside a worker: the config's device stands
    with open_client(workers=2, threads=1, processes=False) as client:
        pin_devices(client, ("cpu", "cuda:7"))
        workers = sorted(client.scheduler_info()["workers"])
        seen = [client.submit(worker_device, pure=False, workers=[a]).result() for a in workers]
        assert seen == ["cpu", "cuda:7"]  # pinned in address order, seen inside tasks
        with pytest.raises(ConfigError, match="need one per device"):
            pin_devices(client, ("cpu",) * 3, timeout=1)


def test_pinned_device_reaches_the_engine(tiles, tmp_path, fast, monkeypatch):
    """A worker pinned to a device this machine lacks fails its tile naming that device
    (so the pin really replaces the config's engine.device)."""
    import geomed_seg.pipelines.methods as methods

    monkeypatch.setattr(methods, "worker_device", lambda: "cuda:7")
    res = run_batch("flood", tiles[:1], tmp_path / "out", overrides=(*fast, *MODEL),
                    processes=False, retries=0)  # fmt: skip
    assert res.failed, "the tile should fail on the missing device"
    err = " ".join(res.failed.values())
    assert re.search("cuda|nvidia|device", err.lower()), err


def test_batch_on_two_devices_equals_one(tiles, tmp_path, fast):
    """cpu,cpu workers give the same labels as the plain batch (model pipeline)."""
    sets = (*fast, *MODEL)
    one = run_batch("flood", tiles[:2], tmp_path / "one", overrides=sets, processes=False)
    two = run_batch("flood", tiles[:2], tmp_path / "two", overrides=sets,
                    cluster=ClusterOptions(devices=("cpu", "cpu"), processes=False))  # fmt: skip
    assert sorted(one.done) == sorted(two.done) and not two.failed
    for stem in one.done:
        with (
            rasterio.open(tmp_path / "one" / "tiles" / stem / "labels.tif") as a,
            rasterio.open(tmp_path / "two" / "tiles" / stem / "labels.tif") as b,
        ):
            assert (a.read() == b.read()).all()
