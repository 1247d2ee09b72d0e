"""Sliding-window inference: geomed-seg's streaming ``segment`` vs MONAI, in one run.

Every case runs in a fresh subprocess (``python sliding_window.py --case NAME``) so that peak
RSS (``ru_maxrss`` of that process) and wall time belong to that case alone. The parent
prints ratios, says whether each target is met, and rewrites its section of
``benchmarks/RESULTS.md``.

Cases (``--quick`` sizes in brackets):

a. 2D: 4-band uint16 tiled GeoTIFF 8192² [1024²], smp Unet(resnet18, random init, 4→2),
   roi 256, overlap 0.25, gaussian, batch 4. MONAI gets the array read with rasterio, as a
   user would. Targets: RSS ≤ 0.25× MONAI, time ≤ 1.05× MONAI.
b. the same scene with 40 % nodata (left strip): time ≤ 0.6× MONAI.
c. 32768² [8192²], ours only: peak RSS < 3 GB (a tiny 2D MONAI BasicUNet: memory is the point).
d. 3D: 4×155×240×240 [4×64×96×96] (channel, z, y, x) float32 NIfTI with an ellipsoid
   "brain" ≈ 40 % of voxels, MONAI BasicUNet (small features), roi 128³ [64³]: time ≤ 0.7×
   MONAI with skipping, identical labels inside the foreground.
e. ``--gpu`` on CUDA: windows/s of ``segment`` vs a bare batched forward loop ≥ 0.9.

Usage: ``python benchmarks/sliding_window.py [--quick] [--gpu] [--workdir DIR] [--no-write]``.
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
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks.results_md import write_section  # noqa: E402

UNET = {"encoder_name": "resnet18"}
TINY2D = {"spatial_dims": 2, "features": [4, 4, 8, 8, 16, 4]}  # case c: memory, not model speed
BASICUNET = {"features": [8, 8, 16, 32, 64, 8]}


def sizes(quick: bool) -> dict:
    if quick:
        # 1024² (not 2048²) so that the whole --quick run fits ~10 min on a shared 2-core box
        return {"scene": 1024, "big": 8192, "vol": (64, 96, 96), "roi3d": 64}
    return {"scene": 8192, "big": 32768, "vol": (155, 240, 240), "roi3d": 128}


# -- data -----------------------------------------------------------------------------------
def write_scene(
    path: Path, size: int, nodata_fraction: float = 0.0, block: int = 512, **creation: object
) -> None:
    """Write a 4-band uint16 tiled GeoTIFF, block by block (bounded memory).

    ``creation``: extra GTiff creation options (``compress="DEFLATE"``...); the pixels do not
    depend on them (benchmarks/overhead.py writes the same scene compressed).
    """
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin

    profile = dict(
        driver="GTiff", width=size, height=size, count=4, dtype="uint16", crs="EPSG:32633",
        transform=from_origin(500000, 5000000, 10, 10), tiled=True, blockxsize=block,
        blockysize=block, nodata=0, BIGTIFF="IF_SAFER",
    )  # fmt: skip
    profile.update(creation)
    rng = np.random.default_rng(0)
    edge = int(round(size * nodata_fraction))
    yy, xx = np.mgrid[0:block, 0:block].astype(np.float32)
    with rasterio.open(path, "w", **profile) as dst:
        for r in range(0, size, block):
            for c in range(0, size, block):
                h, w = min(block, size - r), min(block, size - c)
                base = 2000 + 800 * np.sin((yy[:h, :w] + r) / 97.0) * np.cos(
                    (xx[:h, :w] + c) / 131.0
                )
                tile = base[None] + rng.normal(0, 150, size=(4, h, w)).astype(np.float32)
                tile = np.clip(
                    tile * np.array([1.0, 1.1, 0.9, 1.6], np.float32)[:, None, None], 1, 65535
                )
                tile = tile.astype(np.uint16)
                if edge > c:
                    tile[:, :, : max(0, min(w, edge - c))] = 0
                dst.write(tile, window=((r, r + h), (c, c + w)))


def write_volume(path: Path, shape_zyx: tuple[int, int, int]) -> None:
    """Write a 4-channel float32 NIfTI with an ellipsoid foreground (≈40 % of voxels)."""
    import nibabel as nib
    import numpy as np

    z, y, x = shape_zyx
    zz, yy, xx = np.ogrid[:z, :y, :x]
    s = 0.916 / 2  # 0.5236 * 0.916**3 ≈ 0.40 of the box
    inside = ((zz - z / 2) / (s * z)) ** 2 + ((yy - y / 2) / (s * y)) ** 2 + (
        (xx - x / 2) / (s * x)
    ) ** 2 <= 1
    rng = np.random.default_rng(0)
    vol = np.zeros((4, z, y, x), np.float32)
    vol[:, inside] = rng.gamma(4.0, 0.25, size=(4, int(inside.sum()))).astype(np.float32)
    # nibabel order (i, j, k, c) = (x, y, z, c)
    nib.save(nib.Nifti1Image(vol.transpose(3, 2, 1, 0), np.diag([1.0, 1.0, 1.0, 1.0])), path)
    np.save(path.with_suffix("").with_suffix(".mask.npy"), inside)


def write_checkpoints(work: Path) -> None:
    import torch

    from geomed_seg.models import ModelCard, build_model, save_checkpoint

    norm = {"type": "meanstd", "mean": [2000.0, 2200.0, 1800.0, 3200.0], "std": [600.0] * 4}
    classes = [{"index": 0, "name": "land"}, {"index": 1, "name": "water"}]
    for name, arch, kw in (("unet", "smp.Unet", UNET), ("tiny2d", "monai.BasicUNet", TINY2D)):
        card = ModelCard(
            name=name, architecture=arch, architecture_kwargs=kw, spatial_dims=2, in_channels=4,
            normalisation=norm, classes=classes, nodata_label=255, roi_size=[256, 256],
        )  # fmt: skip
        torch.manual_seed(0)
        model = build_model(arch, 4, 2, **kw).eval()
        save_checkpoint(model, card, work / f"{name}.safetensors", overwrite=True)
    card = ModelCard(
        name="basicunet", architecture="monai.BasicUNet", architecture_kwargs=BASICUNET, spatial_dims=3,
        in_channels=4, classes=[{"index": i, "name": f"c{i}"} for i in range(4)], roi_size=[64, 64, 64],
    )  # fmt: skip
    torch.manual_seed(0)
    model = build_model("monai.BasicUNet", 4, 4, **BASICUNET).eval()
    save_checkpoint(model, card, work / "basicunet.safetensors", overwrite=True)


# -- child cases ----------------------------------------------------------------------------
def _peak_rss_mb() -> float:
    """Peak RSS of this process in MB from ``VmHWM``.

    ``getrusage(RUSAGE_SELF).ru_maxrss`` is not used: Linux carries the parent's peak into a
    child started with fork + execve, which would inflate small cases.
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def case_ours(
    work: Path,
    scene: str,
    ckpt: str,
    roi: list[int],
    out: str,
    device: str,
    threshold: float | None = None,
) -> dict:
    from geomed_seg.inference.segment import segment
    from geomed_seg.io.registry import open_image
    from geomed_seg.models import load_checkpoint

    t0 = time.perf_counter()
    image = open_image(work / scene)
    model = load_checkpoint(work / ckpt)
    res = segment(
        image, model, roi_size=tuple(roi), overlap=0.25, mode="gaussian", batch_size=4,
        device=device, amp=device != "cpu", output="labels", sink=work / out, skip="auto",
        foreground_threshold=threshold, overwrite=True,
    )  # fmt: skip
    seconds = time.perf_counter() - t0
    stats = res.stats if isinstance(res.stats, dict) else vars(res.stats)
    return {
        "seconds": seconds,
        "rss_mb": _peak_rss_mb(),
        "stats": {k: _plain(v) for k, v in stats.items()},
    }


def _plain(v):
    return v if isinstance(v, int | float | str | bool | type(None)) else str(v)


def _softmax(module):
    """Predictor blending class probabilities (as our engine and nnU-Net do), not logits."""
    return lambda x: module(x).softmax(1)


def case_monai2d(work: Path, scene: str, ckpt: str, out: str) -> dict:
    import numpy as np
    import rasterio
    import torch
    from monai.inferers import sliding_window_inference

    from geomed_seg.models import load_checkpoint

    t0 = time.perf_counter()
    with rasterio.open(work / scene) as src:
        arr, profile = src.read(), src.profile
    model = load_checkpoint(work / ckpt)
    x = torch.from_numpy(model.card.normalise(arr[None]))
    with torch.no_grad():
        prob = sliding_window_inference(
            x, (256, 256), 4, _softmax(model.module), overlap=0.25, mode="gaussian"
        )
    labels = prob[0].argmax(0).numpy().astype(np.uint8)
    profile.update(count=1, dtype="uint8", nodata=None)
    with rasterio.open(work / out, "w", **profile) as dst:
        dst.write(labels, 1)
    return {"seconds": time.perf_counter() - t0, "rss_mb": _peak_rss_mb()}


def case_monai3d(work: Path, roi: int) -> dict:
    import nibabel as nib
    import numpy as np
    import torch
    from monai.inferers import sliding_window_inference

    from geomed_seg.models import load_checkpoint

    t0 = time.perf_counter()
    arr = np.asarray(nib.load(work / "volume.nii.gz").dataobj, dtype=np.float32)  # (x, y, z, c)
    x = torch.from_numpy(np.ascontiguousarray(arr.transpose(3, 2, 1, 0))[None])  # our (c, z, y, x)
    model = load_checkpoint(work / "basicunet.safetensors")
    with torch.no_grad():
        prob = sliding_window_inference(
            x, (roi,) * 3, 4, _softmax(model.module), overlap=0.25, mode="gaussian"
        )
    np.save(work / "monai3d.npy", prob[0].argmax(0).numpy().astype(np.uint8))
    return {"seconds": time.perf_counter() - t0, "rss_mb": _peak_rss_mb()}


def case_gpu(work: Path, scene: str) -> dict:
    import torch

    from geomed_seg.models import load_checkpoint

    ours = case_ours(work, scene, "unet.safetensors", [256, 256], "gpu_labels.tif", "cuda")
    n = int(ours["stats"].get("windows_run") or 0)
    model = load_checkpoint(work / "unet.safetensors", device="cuda")
    batch = torch.randn(4, 4, 256, 256, device="cuda")
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16):
        for _ in range(3):
            model.module(batch)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(max(n // 4, 1)):
            model.module(batch).float().softmax(1).cpu()
        torch.cuda.synchronize()
        bare = time.perf_counter() - t0
    ours_seconds = float(ours["stats"].get("seconds") or ours["seconds"])
    return {"ours_ips": n / ours_seconds, "bare_ips": max(n // 4, 1) * 4 / bare, "windows": n,
            "device": torch.cuda.get_device_name(0)}  # fmt: skip


def run_case(args: argparse.Namespace) -> dict:
    work, sz = Path(args.workdir), sizes(args.quick)
    name = args.case
    if name == "gen":
        t0 = time.perf_counter()
        write_scene(work / "scene.tif", sz["scene"])
        write_scene(work / "scene_nodata.tif", sz["scene"], nodata_fraction=0.4)
        if "c" in args.cases.split(","):
            write_scene(work / "big.tif", sz["big"])
        write_volume(work / "volume.nii.gz", sz["vol"])
        write_checkpoints(work)
        return {"seconds": time.perf_counter() - t0}
    roi3 = [sz["roi3d"]] * 3
    table = {
        "a_ours": lambda: case_ours(
            work, "scene.tif", "unet.safetensors", [256, 256], "a_ours.tif", "cpu"
        ),
        "a_monai": lambda: case_monai2d(work, "scene.tif", "unet.safetensors", "a_monai.tif"),
        "b_ours": lambda: case_ours(
            work, "scene_nodata.tif", "unet.safetensors", [256, 256], "b_ours.tif", "cpu"
        ),
        "b_monai": lambda: case_monai2d(
            work, "scene_nodata.tif", "unet.safetensors", "b_monai.tif"
        ),
        "c_ours": lambda: case_ours(
            work, "big.tif", "tiny2d.safetensors", [256, 256], "c_ours.tif", "cpu"
        ),
        "d_ours": lambda: case_ours(
            work, "volume.nii.gz", "basicunet.safetensors", roi3, "d_ours.nii.gz", "cpu", 0.0
        ),
        "d_monai": lambda: case_monai3d(work, sz["roi3d"]),
        "e_gpu": lambda: case_gpu(work, "scene.tif"),
    }
    return table[name]()


# -- parent ---------------------------------------------------------------------------------
def spawn(case: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--case", case, "--workdir", args.workdir]
    cmd += ["--cases", args.cases] + (["--quick"] if args.quick else [])
    print(f"[{time.strftime('%H:%M:%S')}] case {case} ...", flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        print(f"    FAILED: {' | '.join(tail)}", flush=True)
        return {"error": " ".join(tail)[-300:]}
    result = json.loads(lines[-1][len("RESULT ") :])
    print(f"    {result}", flush=True)
    return result


def identical_in_foreground(work: Path) -> tuple[float, int]:
    """Return (fraction of foreground voxels with equal labels, number of differing voxels)."""
    import numpy as np

    from geomed_seg.io.registry import open_image

    mask = np.load(work / "volume.mask.npy")
    ours = open_image(work / "d_ours.nii.gz").compute()[0]
    ref = np.load(work / "monai3d.npy")
    same = ours[mask] == ref[mask]
    return float(same.mean()), int((~same).sum())


def machine() -> str:
    import psutil
    import torch

    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram = psutil.virtual_memory().total / 2**30
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return (
        f"{cpu}, {os.cpu_count()} cores, {ram:.0f} GiB RAM{gpu}, torch {torch.__version__}, "
        f"Python {platform.python_version()}"
    )


def verdict(value: float | None, target: float, below: bool = True) -> str:
    if value is None:
        return "n/a"
    ok = value <= target if below else value >= target
    return "met" if ok else "NOT met"


def report(res: dict, args: argparse.Namespace, fg: tuple[float, int] | None) -> str:
    def ratio(a: str, b: str, key: str) -> float | None:
        try:
            return res[a][key] / res[b][key]
        except (KeyError, TypeError, ZeroDivisionError):
            return None

    def fmt(v: float | None, unit: str = "") -> str:
        return "—" if v is None else f"{v:.2f}{unit}"

    def get(case: str, key: str) -> float | None:
        return res.get(case, {}).get(key)

    sz = sizes(args.quick)
    ra_rss, ra_t, rb_t = (
        ratio("a_ours", "a_monai", "rss_mb"),
        ratio("a_ours", "a_monai", "seconds"),
        ratio("b_ours", "b_monai", "seconds"),
    )
    rd_t = ratio("d_ours", "d_monai", "seconds")
    c_rss = get("c_ours", "rss_mb")
    rows = [
        ("a", f"2D {sz['scene']}², 4-band uint16", "peak RSS ours/MONAI", fmt(ra_rss), "≤ 0.25", verdict(ra_rss, 0.25)),
        ("a", "", "time ours/MONAI", fmt(ra_t), "≤ 1.05", verdict(ra_t, 1.05)),
        ("b", "same, 40 % nodata", "time ours/MONAI", fmt(rb_t), "≤ 0.6", verdict(rb_t, 0.6)),
        ("c", f"2D {sz['big']}², ours only", "peak RSS", fmt(c_rss and c_rss / 1024, " GB"), "< 3 GB",
         verdict(c_rss and c_rss / 1024, 3.0)),
        ("d", f"3D 4×{'×'.join(map(str, sz['vol']))}, roi {sz['roi3d']}³", "time ours/MONAI", fmt(rd_t), "≤ 0.7", verdict(rd_t, 0.7)),
        ("d", "", "labels equal in foreground", "—" if fg is None else f"{fg[0]:.6f} ({fg[1]} differ)", "1.0",
         "n/a" if fg is None else ("met" if fg[1] == 0 else "NOT met")),
    ]  # fmt: skip
    if "e_gpu" in res and "ours_ips" in res["e_gpu"]:
        e = res["e_gpu"]
        r = e["ours_ips"] / e["bare_ips"]
        rows.append(
            (
                "e",
                f"GPU {e['device']}",
                "windows/s ours/bare loop",
                fmt(r),
                "≥ 0.9",
                verdict(r, 0.9, below=False),
            )
        )
    else:
        rows.append(
            ("e", "GPU", "windows/s ours/bare loop", "not run", "≥ 0.9", "n/a (no --gpu / no CUDA)")
        )
    lines = [
        "## Sliding-window inference (`benchmarks/sliding_window.py`)",
        "",
        f"Run: `python benchmarks/sliding_window.py{' --quick' if args.quick else ''}{' --gpu' if args.gpu else ''}`"
        f" on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        f"Machine: {machine()}.",
    ]
    if args.quick:
        lines.append(
            "**--quick sizes**, CPU only, on a 2-core machine shared with other jobs: timings are noisy."
        )
    lines += [
        "",
        "| case | data | measure | value | target | verdict |",
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| {' | '.join(r)} |" for r in rows]
    lines += ["", "Raw numbers (seconds, peak RSS MB per subprocess):", ""]
    for case, r in res.items():
        if case != "gen":
            lines.append(
                f"- `{case}`: "
                + ", ".join(f"{k}={fmt(v) if isinstance(v, float) else v}" for k, v in r.items())
            )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (minutes on a laptop CPU)")
    ap.add_argument("--gpu", action="store_true", help="also run case e on CUDA")
    ap.add_argument(
        "--workdir", default=None, help="folder for generated data (default: a temp dir)"
    )
    ap.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    ap.add_argument("--cases", default="a,b,c,d", help="comma list of a,b,c,d (e via --gpu)")
    ap.add_argument("--tag", default="sliding_window", help="RESULTS.md section marker")
    ap.add_argument("--report", help="also write the section text to this file")
    ap.add_argument("--case", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        print("RESULT " + json.dumps(run_case(args)), flush=True)
        return
    import tempfile

    tmp = None
    if args.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="geomed-bench-")
        args.workdir = tmp.name
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    res = {"gen": spawn("gen", args)}
    wanted = args.cases.split(",")
    for letter, cases in (("a", ["a_monai", "a_ours"]), ("b", ["b_monai", "b_ours"]), ("c", ["c_ours"]),
                          ("d", ["d_monai", "d_ours"])):  # fmt: skip
        if letter in wanted:
            for case in cases:
                res[case] = spawn(case, args)
    if args.gpu:
        res["e_gpu"] = spawn("e_gpu", args)
    fg = None
    if "error" not in res.get("d_ours", {"error": 1}) and "error" not in res.get(
        "d_monai", {"error": 1}
    ):
        fg = identical_in_foreground(Path(args.workdir))
    text = report(res, args, fg)
    print("\n" + text)
    if args.report:
        Path(args.report).write_text(text + "\n")
    if not args.no_write:
        write_section(args.tag, text)
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
