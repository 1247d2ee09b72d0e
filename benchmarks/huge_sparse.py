"""Resident memory of ``segment`` on a huge sparse GeoTIFF, sampled while it runs (issue #18).

Input: a ``--size``² (default 200000²) 4-band uint16 GeoTIFF, DEFLATE, 512² tiles, nodata 0,
created with GDAL's ``SPARSE_OK``: only ``--blocks`` tiles (default 64, spread along the
diagonal) hold data, every other tile is absent from the file and reads as nodata. Created
once under ``--workdir`` (a few MB).

Run: ``segment`` with a near-free model (1×1 convolution 4 → 2, seed 0), roi 256, overlap
0.25, batch 16, labels to ``--output`` (default a ``.zarr`` store: a 200000² label COG may
need more free disk than a small machine has, and ``segment`` refuses it up front, which this
script also shows with ``--output x.tif``). The run happens in a child process; its RSS is
sampled every second and printed at the ``--at`` marks (seconds, default 60 120 240), then
the child is stopped (a full run of a million windows takes hours on 2 cores).

Usage::

    python benchmarks/huge_sparse.py                      # 200000², RSS at 1, 2, 4 min
    python benchmarks/huge_sparse.py --size 40000 --at 20 40   # quick
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def make_sparse(path: Path, size: int, blocks: int) -> Path:
    """Create the sparse 4-band uint16 GeoTIFF (only ``blocks`` tiles written)."""
    import numpy as np
    import rasterio
    from affine import Affine
    from rasterio.windows import Window

    if path.exists():
        return path
    profile = dict(
        driver="GTiff", width=size, height=size, count=4, dtype="uint16", nodata=0,
        tiled=True, blockxsize=512, blockysize=512, compress="deflate", BIGTIFF="YES",
        SPARSE_OK=True, crs="EPSG:32633", transform=Affine(10, 0, 300000, 0, -10, 5000000),
    )  # fmt: skip
    rng = np.random.default_rng(0)
    tmp = path.with_suffix(".part.tif")
    with rasterio.open(tmp, "w", **profile) as dst:
        n = size // 512
        for k in range(blocks):
            b = (k * n) // blocks
            data = rng.integers(1, 4000, (4, 512, 512), dtype=np.uint16)
            dst.write(data, window=Window(b * 512, b * 512, 512, 512))
    tmp.rename(path)
    return path


def child(src: str, out: str) -> None:
    """Run ``segment`` (in the child process); ``out == "discard"``: a sink that drops chunks."""
    import torch

    from geomed_seg import open_image, segment
    from geomed_seg.inference.sinks import Sink

    class Discard(Sink):
        chunk, path = 512, None

        def write(self, array, slices):  # noqa: ANN001 - Sink's signature
            pass

        def finish(self):  # noqa: ANN201
            return None

    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = torch.nn.Conv2d(4, 2, 1).eval()
    segment(
        open_image(src), model, roi_size=(256, 256), overlap=0.25, batch_size=16,
        device="cpu", sink=Discard() if out == "discard" else out, overwrite=True,
    )  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=200_000)
    ap.add_argument("--blocks", type=int, default=64)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/geomed-huge"))
    ap.add_argument(
        "--output", default=None, help="default: WORKDIR/labels.zarr; 'discard': no file"
    )
    ap.add_argument("--at", type=float, nargs="+", default=[60, 120, 240])
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return
    import psutil

    args.workdir.mkdir(parents=True, exist_ok=True)
    src = make_sparse(args.workdir / f"sparse_{args.size}.tif", args.size, args.blocks)
    out = args.output or str(args.workdir / "labels.zarr")
    env = dict(os.environ, PYTHONPATH=str(HERE.parent))
    proc = subprocess.Popen(
        [sys.executable, __file__, "--child", str(src), out], env=env, stderr=subprocess.PIPE
    )
    ps = psutil.Process(proc.pid)
    t0, marks, samples, peak = time.monotonic(), sorted(args.at), {}, 0
    while marks and proc.poll() is None:
        time.sleep(1.0)
        try:
            rss = ps.memory_info().rss
        except psutil.NoSuchProcess:
            break
        peak = max(peak, rss)
        if time.monotonic() - t0 >= marks[0]:
            samples[f"{marks.pop(0):g}s"] = round(rss / 2**20)
    if proc.poll() is None:
        proc.terminate()
    _, err = proc.communicate(timeout=60)
    result = {
        "size": args.size, "file_mb": round(src.stat().st_size / 2**20, 1),
        "rss_mib": samples, "peak_rss_mib": round(peak / 2**20), "exit": proc.returncode,
        "stderr_tail": err.decode(errors="replace").strip().splitlines()[-1:],
    }  # fmt: skip
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
