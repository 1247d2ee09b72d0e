"""Run ``segment`` on a lazily generated square raster and print peak RSS (MiB) as JSON.

Usage: ``python -m tests.inference.memory_probe SIZE [ROI]``. The image is a dask random array
(never materialised); output goes to a sink that only checks and drops chunks, so the
measured peak is the engine's own working set (windows in flight + open output chunks).
"""

from __future__ import annotations

import json
import resource
import sys
import time

import dask.array as da
import numpy as np
import torch
from affine import Affine

from geomed_seg.core.grid import GeoGrid
from geomed_seg.core.image import Image
from geomed_seg.inference.segment import segment
from geomed_seg.inference.sinks import Sink


class CountingSink(Sink):
    """Counts written pixels, keeps nothing."""

    def __init__(self) -> None:
        self.chunk, self.pixels, self.path = 512, 0, None

    def write(self, array: np.ndarray, slices: tuple[slice, ...]) -> None:
        self.pixels += int(np.prod([s.stop - s.start for s in slices]))

    def finish(self):
        return None


def main(size: int, roi: int) -> dict:
    torch.set_num_threads(2)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Conv2d(4, 2, 1))
    # cheap lazy pixels (a ramp): generating them must not dominate the run
    ramp = da.arange(size, chunks=512, dtype=np.float32) / size
    arr = da.broadcast_to(ramp[None, None, :] + ramp[None, :, None], (3, size, size))
    arr = arr.rechunk((3, 512, 512))
    img = Image.from_array(arr, GeoGrid(None, Affine(10, 0, 0, 0, -10, 0), (size, size)))
    sink = CountingSink()
    t0 = time.perf_counter()
    res = segment(img, net, roi_size=(roi, roi), batch_size=4, device="cpu", sink=sink, skip="none")
    assert sink.pixels == size * size, sink.pixels
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"size": size, "peak_rss_mib": peak, "seconds": time.perf_counter() - t0,
            "windows": res.stats["windows_total"]}  # fmt: skip


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 512)))
