"""Several devices for one scene: dask workers per device give the one-device labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geomed_seg.core.image import Image
from geomed_seg.errors import InvalidInputError
from geomed_seg.inference.multi import device_tiles, resolve_devices
from geomed_seg.inference.plan import plan_windows, regular_chunks
from geomed_seg.inference.segment import segment
from geomed_seg.inference.sinks import MemorySink
from tests.inference.conftest import raster, tiny_net


def test_device_lists_are_checked():
    assert resolve_devices("cpu,cpu") == ("cpu", "cpu")
    assert resolve_devices(["cpu"]) == ("cpu",)
    n = torch.cuda.device_count()
    with pytest.raises(InvalidInputError, match=f"cuda:{n}"):
        resolve_devices(f"cpu,cuda:{n}")
    with pytest.raises(InvalidInputError, match="not a device"):
        resolve_devices("gpu0")
    if n == 0:
        with pytest.raises(InvalidInputError, match="no CUDA device"):
            resolve_devices("all")


def test_every_device_gets_tiles():
    plan = plan_windows((300, 500), 32, 0.25)
    tiles = device_tiles(plan, regular_chunks((300, 500), 64), 2)
    assert len(tiles) >= 4


def test_two_cpu_workers_give_the_one_device_labels():
    x = np.random.default_rng(5).random((3, 200, 230), dtype=np.float32)
    x[:, 20:90, 30:150] = -1  # nodata, larger than a window
    base = raster(shape=(3, 200, 230), chunks=(3, 64, 64))
    img = Image.from_array(x, base.grid, nodata=-1.0, chunks=(3, 64, 64))
    net = tiny_net(2, 3, 3, seed=2)
    kw = dict(roi_size=(32, 32), overlap=0.25, device="cpu", batch_size=8)
    one = segment(img, net, sink=MemorySink(chunk=64), **kw)
    two = segment(img, net, sink=MemorySink(chunk=64), devices="cpu,cpu", **kw)
    assert two.stats["tiles"] == 4  # cores cut at the 128 chunk boundary on both axes
    got = two.image.compute()
    np.testing.assert_array_equal(got, one.image.compute())
    assert (got[0, 30:80, 40:140] == two.image.nodata).all()
    assert two.image.grid == img.grid
