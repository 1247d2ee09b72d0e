"""Per-window overhead of the engine: ours vs MONAI (in memory) vs the I/O floor, in one run.

The CPU proxy for GPU readiness (issue #18): with a near-free model (a 1×1 convolution,
4 → 2 channels, random weights, seed 0) the model costs almost nothing, so whatever time a
run takes above the floor is engine overhead that a fast GPU would wait on.

Input: a 4-band uint16 DEFLATE-tiled (512²) GeoTIFF of ``--size``² pixels (default 8192²,
1849 windows of 256² at overlap 0.25), once dense and once with a 40 % nodata strip (nodata
0). Generated once and cached under ``--workdir`` (default ``/tmp/geomed-overhead``).
Output: a uint8 label COG (512 tiles, DEFLATE + predictor, mode overviews).

Runs (all in this process, after imports, same torch thread count):

``floor``
    decode every input block once (rasterio, block by block, one thread) + encode the label
    COG from an in-memory label array with GDAL's COG driver (one thread). The labels are
    computed per pixel from the decoded blocks outside the timed part.
``ours``
    ``geomed_seg.segment(open_image(path), model, sink="out.tif")``: roi 256, overlap 0.25,
    gaussian, batch 16, mean/std normalisation from the model card, labels COG out.
``monai``
    rasterio reads the whole scene, normalise, ``monai.inferers.sliding_window_inference``
    (same roi, overlap, gaussian, batch 16, softmax predictor), argmax, nodata where the
    input is invalid, label COG written as for the floor.

Usage::

    python benchmarks/overhead.py                 # 8192², dense + 40 % nodata, writes RESULTS.md
    python benchmarks/overhead.py --size 2048 --no-write     # quick
    python benchmarks/overhead.py --runs ours --cases dense --profile 30  # cProfile of ours
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import platform
import pstats
import sys
import time
from functools import partial
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import numpy as np  # noqa: E402

ROI = 256
OVERLAP = 0.25
BATCH = 16
BLOCK = 512
PIXEL_M = 10.0  # ground sample distance of the scene (its transform), for km²/s
MEAN = [2000.0, 2200.0, 1800.0, 3200.0]
STD = [600.0] * 4
COG_OPTS = dict(
    BLOCKSIZE=BLOCK, COMPRESS="DEFLATE", PREDICTOR="STANDARD", OVERVIEW_RESAMPLING="MODE",
    BIGTIFF="IF_SAFER",
)  # fmt: skip


# -- data ---------------------------------------------------------------------------------
def write_scene(path: Path, size: int, nodata_fraction: float) -> None:
    """Write a 4-band uint16 DEFLATE-tiled GeoTIFF, block by block, nodata 0 in a left strip
    (sliding_window.py's scene, compressed), under a temporary name renamed when complete."""
    import rasterio

    from benchmarks.sliding_window import write_scene as write_tiles

    part = path.with_suffix(".part.tif")
    with rasterio.Env(GDAL_NUM_THREADS="ALL_CPUS"):
        write_tiles(part, size, nodata_fraction, BLOCK, compress="DEFLATE", predictor=2)
    os.replace(part, path)


def scene(workdir: Path, size: int, case: str) -> Path:
    """Return the cached input of ``case`` (``dense`` / ``nodata40``), generating it once."""
    path = workdir / f"scene_{size}_{case}.tif"
    if not path.exists():
        t0 = time.perf_counter()
        write_scene(path, size, 0.4 if case == "nodata40" else 0.0)
        print(f"generated {path} in {time.perf_counter() - t0:.1f} s", flush=True)
    return path


def near_free_model():
    """Return ``(module, card)``: a 1×1 conv 4→2 (seed 0) and its card (mean/std, 2 classes)."""
    import torch

    from geomed_seg.models import ModelCard

    torch.manual_seed(0)
    module = torch.nn.Conv2d(4, 2, 1).eval()
    card = ModelCard(
        name="conv1x1", architecture="conv1x1", spatial_dims=2, in_channels=4,
        normalisation={"type": "meanstd", "mean": MEAN, "std": STD},
        classes=[{"index": 0, "name": "land"}, {"index": 1, "name": "water"}],
        nodata_label=255, roi_size=[ROI, ROI], overlap=OVERLAP, mode="gaussian",
    )  # fmt: skip
    return module, card


# -- runs ---------------------------------------------------------------------------------
def _write_labels_cog(labels: np.ndarray, src_profile: dict, out: Path) -> None:
    """Encode ``labels`` (rows, cols) uint8 as a COG with GDAL's COG driver, one thread."""
    import rasterio
    import rasterio.shutil
    from rasterio.io import MemoryFile

    prof = dict(
        driver="GTiff", width=labels.shape[1], height=labels.shape[0], count=1, dtype="uint8",
        crs=src_profile["crs"], transform=src_profile["transform"], nodata=255,
    )  # fmt: skip
    with rasterio.Env(GDAL_NUM_THREADS=1), MemoryFile() as mem:
        with mem.open(**prof) as dst:
            dst.write(labels, 1)
        rasterio.shutil.copy(mem.name, out, driver="COG", **COG_OPTS)


def run_floor(path: Path, out: Path, module, card) -> dict:
    """Decode every block once, then encode the label COG (labels computed untimed)."""
    import rasterio

    w = module.weight.detach().numpy()[:, :, 0, 0]
    b = module.bias.detach().numpy()
    mean = np.asarray(MEAN, np.float32)[:, None, None]
    std = np.asarray(STD, np.float32)[:, None, None]
    decode = 0.0
    with rasterio.Env(GDAL_NUM_THREADS=1), rasterio.open(path) as src:
        labels = np.empty((src.height, src.width), np.uint8)
        profile = dict(src.profile)
        for _, win in src.block_windows(1):
            t0 = time.perf_counter()
            block = src.read(window=win)
            decode += time.perf_counter() - t0
            x = (block.astype(np.float32) - mean) / std
            logits = np.tensordot(w, x, axes=1) + b[:, None, None]
            lab = np.argmax(logits, axis=0).astype(np.uint8)
            lab[(block == 0).all(axis=0)] = 255
            labels[
                win.row_off : win.row_off + win.height, win.col_off : win.col_off + win.width
            ] = lab
    t0 = time.perf_counter()
    _write_labels_cog(labels, profile, out)
    encode = time.perf_counter() - t0
    return {"seconds": decode + encode, "decode_s": decode, "encode_s": encode}


#: Extra keyword arguments of ``segment`` for "ours" (set from the command line).
OURS_KW: dict = {}


def run_ours(path: Path, out: Path, module, card, device: str, batch: int) -> dict:
    from types import SimpleNamespace

    from geomed_seg import open_image
    from geomed_seg.inference.segment import segment

    t0 = time.perf_counter()
    image = open_image(path)
    res = segment(
        image, SimpleNamespace(module=module, card=card), batch_size=batch, device=device,
        sink=out, overwrite=True, **OURS_KW,
    )  # fmt: skip
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, **{k: res.stats[k] for k in ("windows_total", "windows_run")}}


def run_monai(path: Path, out: Path, module, card, device: str, batch: int) -> dict:
    import rasterio
    import torch
    from monai.inferers import sliding_window_inference

    t0 = time.perf_counter()
    with rasterio.open(path) as src:
        arr = src.read()
        valid = src.dataset_mask() > 0
        profile = dict(src.profile)
    mean = torch.tensor(MEAN).view(1, -1, 1, 1)
    std = torch.tensor(STD).view(1, -1, 1, 1)
    x = (torch.from_numpy(arr.astype(np.float32))[None] - mean) / std
    del arr
    dev = torch.device(device)
    module = module.to(dev)

    def predictor(batch_x):
        return torch.softmax(module(batch_x), dim=1)

    with torch.inference_mode():
        prob = sliding_window_inference(
            x.to(dev), (ROI, ROI), batch, predictor, overlap=OVERLAP, mode="gaussian"
        )
        labels = torch.argmax(prob[0], dim=0).to(torch.uint8).cpu().numpy()
    del prob, x
    labels[~valid] = 255
    _write_labels_cog(labels, profile, out)
    return {"seconds": time.perf_counter() - t0}


# -- driver -------------------------------------------------------------------------------
def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    import torch

    return (
        f"{cpu}, {os.cpu_count()} cores, load average {load:.1f} at start, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), Python {platform.python_version()}"
    )


def _profile(fn, top: int) -> tuple[dict, str]:
    prof = cProfile.Profile()
    result = prof.runcall(fn)
    buf = io.StringIO()
    stats = pstats.Stats(prof, stream=buf).strip_dirs().sort_stats("tottime")
    stats.print_stats(top)
    buf.write("\n--- by cumulative time ---\n")
    stats.sort_stats("cumulative").print_stats(top)
    return result, buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=8192, help="scene edge in pixels (default 8192)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/geomed-overhead"))
    ap.add_argument("--runs", default="floor,ours,monai", help="comma list of floor,ours,monai")
    ap.add_argument("--cases", default="dense,nodata40", help="comma list of dense,nodata40")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=BATCH)
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="cProfile 'ours' and print the top N functions")  # fmt: skip
    ap.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    ap.add_argument("--host-blend", action="store_true", help="ours: blend in numpy on the host")
    ap.add_argument("--no-channels-last", action="store_true", help="ours: NCHW input")
    ap.add_argument("--amp", default=None, help="ours: auto, fp16, bf16 or off")
    ap.add_argument("--compile", action="store_true", help="ours: torch.compile the model")
    args = ap.parse_args(argv)
    if args.host_blend:
        OURS_KW["device_blend"] = False
    if args.no_channels_last:
        OURS_KW["channels_last"] = False
    if args.amp:
        OURS_KW["amp"] = args.amp
    if args.compile:
        OURS_KW["compile"] = True

    import torch

    args.workdir.mkdir(parents=True, exist_ok=True)
    runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    module, card = near_free_model()
    machine = _machine()
    print(machine, flush=True)
    # one untimed pass on a small scene: lazy imports and first-call costs stay out of timings
    small = scene(args.workdir, 512, "dense")
    for run in runs:
        runner = {"floor": run_floor, "ours": run_ours, "monai": run_monai}[run]
        extra = () if run == "floor" else (args.device, args.batch)
        runner(small, args.workdir / f"warmup_{run}.tif", module, card, *extra)
    results: dict[tuple[str, str], dict] = {}
    profiles: list[str] = []
    for case in cases:
        path = scene(args.workdir, args.size, case)
        for run in runs:
            out = args.workdir / f"out_{run}_{args.size}_{case}.tif"
            runner = {"floor": run_floor, "ours": run_ours, "monai": run_monai}.get(run)
            if runner is None:
                raise SystemExit(f"unknown run {run!r}")
            extra = () if run == "floor" else (args.device, args.batch)
            fn = partial(runner, path, out, module, card, *extra)
            if run == "ours" and args.profile:
                res, text = _profile(fn, args.profile)
                profiles.append(f"## cProfile of ours, {case}\n{text}")
            else:
                res = fn()
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            results[(case, run)] = res
            print(f"{case:9s} {run:6s} {res['seconds']:8.2f} s  {res}", flush=True)
    from geomed_seg.inference.plan import plan_windows

    n_win = len(plan_windows((args.size, args.size), (ROI, ROI), OVERLAP))
    lines = _table(results, cases, n_win, args.size)
    print("\n".join(lines))
    for text in profiles:
        print(text)
    if not args.no_write:
        from benchmarks.results_md import write_section

        head = (
            f"## Engine overhead (`benchmarks/overhead.py`)\n\n"
            f"Run: `python benchmarks/overhead.py --size {args.size}` on "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, device {args.device}, "
            f"segment options {OURS_KW or 'default'}.\n"
            f"Machine: {machine}.\n"
            f"Near-free model (1×1 conv 4→2), {args.size}² 4-band uint16 DEFLATE-tiled GeoTIFF → "
            f"uint8 label COG, roi {ROI}, overlap {OVERLAP}, batch {args.batch}, {n_win} windows.\n"
        )
        write_section(f"overhead-{args.device.split(':')[0]}", head + "\n" + "\n".join(lines))
    return 0


def _table(results: dict, cases: list[str], n_win: int, size: int) -> list[str]:
    km2 = (size * PIXEL_M / 1000) ** 2  # scene area at 10 m pixels
    lines = ["| case | floor (s) | ours (s) | MONAI (s) | ours/floor | ours/MONAI | ours ms/window "
             "| ours km²/s | MONAI km²/s |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for case in cases:
        f = results.get((case, "floor"), {}).get("seconds")
        o = results.get((case, "ours"), {}).get("seconds")
        m = results.get((case, "monai"), {}).get("seconds")

        def fmt(v, d=2):
            return "—" if v is None else f"{v:.{d}f}"

        def ratio(a, b):
            return "—" if a is None or b is None else f"{a / b:.2f}×"

        per = None if o is None else 1000 * o / n_win
        rate_o = None if o is None else km2 / o
        rate_m = None if m is None else km2 / m
        lines.append(
            f"| {case} | {fmt(f)} | {fmt(o)} | {fmt(m)} | {ratio(o, f)} | {ratio(o, m)} "
            f"| {fmt(per, 1)} | {fmt(rate_o, 0)} | {fmt(rate_m, 0)} |"
        )
    od, on = results.get(("dense", "ours")), results.get(("nodata40", "ours"))
    if od and on:
        lines.append("")
        lines.append(f"ours with 40 % nodata / ours dense: {on['seconds'] / od['seconds']:.2f}×")
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
