"""Benchmark ``run_batch``: throughput (km²/s) of the flood pipeline over many small tiles.

Cuts the bundled Landsat scene into 4 x 4 tiles, copies them ``--copies`` times (distinct
names) and runs the batch with 1 and with ``--workers`` worker processes.

    PYTHONPATH=. .venv/bin/python benchmarks/batch.py --copies 4 --workers 2
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from geomed_seg.batch.runner import run_batch
from tests.batch.data import FAST, cut_tiles

SCENE = Path(__file__).resolve().parents[1] / "tests" / "data" / "landsat7_olinda_L7_ETMs.tif"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--copies", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        base = cut_tiles(SCENE, root / "base", rows=4, cols=4)
        tiles = []
        for k in range(args.copies):
            for p in base:
                q = root / "tiles" / f"{p.stem}_{k}.tif"
                q.parent.mkdir(exist_ok=True)
                shutil.copy(p, q)
                tiles.append(q)
        rows = []
        for workers in sorted({1, args.workers}):
            res = run_batch("flood", tiles, root / f"out{workers}", overrides=FAST,
                            workers=workers, threads=1)  # fmt: skip
            s = json.loads((res.out / "summary.json").read_text())
            rows.append({"workers": workers, "tiles": len(tiles), "seconds": round(res.seconds, 2),
                         "km2_per_s": round(s["throughput_km2_per_s"], 2)})  # fmt: skip
            resumed = run_batch("flood", tiles, res.out, overrides=FAST, workers=workers)
            rows[-1]["resume_noop_seconds"] = round(resumed.seconds, 2)
            rows[-1]["resume_skipped"] = len(resumed.skipped)
        for r in rows:
            print(json.dumps(r))


if __name__ == "__main__":
    main()
