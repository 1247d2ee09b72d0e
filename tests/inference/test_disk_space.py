"""``segment`` refuses an output that may not fit its disk, before running any window."""

from __future__ import annotations

from collections import namedtuple

import numpy as np
import pytest
import torch

from geomed_seg.errors import GeomedSegError, WriteError
from geomed_seg.inference import sinks
from geomed_seg.inference.segment import segment
from tests.inference.conftest import raster

Usage = namedtuple("Usage", "total used free")


class Counting(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 2, 1)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.conv(x)


def _free(monkeypatch, free: int) -> None:
    monkeypatch.setattr(sinks.shutil, "disk_usage", lambda path: Usage(10 * free, 9 * free, free))


def test_cog_that_may_not_fit_is_refused_before_any_window(tmp_path, monkeypatch):
    img = raster(shape=(3, 300, 200), chunks=(3, 100, 100))
    raw = 300 * 200  # uint8 labels, one band
    _free(monkeypatch, 2 * raw)  # a COG may need 8/3 of the raw size while written
    net = Counting()
    with pytest.raises(WriteError, match="may need up to") as err:
        segment(img, net, roi_size=(32, 32), device="cpu", sink=tmp_path / "out.tif")
    assert isinstance(err.value, GeomedSegError)
    assert "out.tif" in str(err.value) and str(tmp_path) in str(err.value)
    assert "1 x 300 x 200 uint8" in str(err.value)
    assert net.calls == 1  # the probe that counts output channels, no window
    assert list(tmp_path.iterdir()) == []


def test_the_bound_is_8_3_of_raw_for_cogs_and_raw_for_zarr(tmp_path, monkeypatch):
    img = raster(shape=(3, 300, 200), chunks=(3, 100, 100))
    raw = 300 * 200
    margin = raw // 100 + 2**20
    _free(monkeypatch, raw + margin)  # enough for a Zarr store, not for a COG
    kw = dict(roi_size=(32, 32), device="cpu")
    res = segment(img, Counting(), sink=tmp_path / "out.zarr", **kw)
    assert res.path is not None and res.image.shape == (1, 300, 200)
    with pytest.raises(WriteError):
        segment(img, Counting(), sink=tmp_path / "out.tif", **kw)
    _free(monkeypatch, (raw + margin) * 8 // 3)
    segment(img, Counting(), sink=tmp_path / "out.tif", **kw)
    assert (tmp_path / "out.tif").exists()


def test_memory_output_needs_no_disk(monkeypatch):
    _free(monkeypatch, 0)
    res = segment(raster(), Counting(), roi_size=(32, 32), device="cpu")
    assert np.asarray(res.image.compute()).shape == (1, 70, 93)
