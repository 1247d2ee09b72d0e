"""GPU throughput: ours vs a bare fp16 channels_last batched loop vs MONAI, in one run.

Model: smp ``Unet(resnet18)`` 4 → 2 classes, random weights (seed 0); scene: ``--size``² 4-band
uint16-like values generated in memory (seed 0); roi 256, overlap 0.25, batch ``--batch``.

``bare``
    the scene normalised and on the GPU as fp16; windows sliced from it, stacked in batches,
    ``channels_last``, one forward + softmax per batch, nothing blended or written: the
    ceiling of what any engine can do with this model (windows/s).
``ours``
    ``segment()`` of the in-memory image with ``device=cuda``, ``amp="fp16"``, labels into
    memory (reads, normalises on the device, blends, argmax, copies labels back).
``monai``
    ``monai.inferers.sliding_window_inference`` with input and output on the GPU, fp16
    autocast, Gaussian blending, then argmax on the GPU.

Targets (issue #18): ours ≥ 0.9× bare and ≥ 1.0× MONAI. ``--devices cuda:0,cuda:1`` also
times ours on each device listed, then the scene on all of them at once (``segment
devices=...``, one worker per device; target ≥ 1.8× one device, same labels). Dry run on
CPU: ``--device cpu --size 512`` (``--devices cpu,cpu`` exercises the multi-device step).

Writes one JSON object to ``--json`` (and prints it).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import numpy as np  # noqa: E402

ROI = 256
OVERLAP = 0.25
MEAN, STD = 2000.0, 600.0


def _scene(size: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.normal(MEAN, STD, (4, size, size)).clip(1, 65535).astype(np.uint16)


def _model(device):
    import torch

    from geomed_seg.models import build_model

    torch.manual_seed(0)
    return build_model("smp.Unet", 4, 2, encoder_name="resnet18").eval().to(device)


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_bare(arr: np.ndarray, device, batch: int, dtype) -> dict:
    import torch

    from geomed_seg.inference.plan import plan_windows

    model = _model(device).to(memory_format=torch.channels_last)
    plan = plan_windows(arr.shape[1:], (ROI, ROI), OVERLAP)
    x = ((torch.from_numpy(arr.astype(np.float32)) - MEAN) / STD).to(device, dtype)[None]
    windows = list(plan.windows)
    with (
        torch.inference_mode(),
        torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32),
    ):
        for w in windows[:batch]:  # warm-up (cuDNN autotune)
            model(x[(slice(None), slice(None), *w)].contiguous(memory_format=torch.channels_last))
        _sync(device)
        t0 = time.perf_counter()
        for i in range(0, len(windows), batch):
            b = torch.cat([x[(slice(None), slice(None), *w)] for w in windows[i : i + batch]])
            torch.softmax(model(b.contiguous(memory_format=torch.channels_last)), 1)
        _sync(device)
    s = time.perf_counter() - t0
    return {"seconds": s, "windows": len(windows), "windows_per_s": len(windows) / s}


def run_ours(arr: np.ndarray, device, batch: int | None, amp: str, devices=None) -> dict:
    from types import SimpleNamespace

    from affine import Affine

    from geomed_seg.core import GeoGrid, Image
    from geomed_seg.inference.segment import segment
    from geomed_seg.models import ModelCard

    card = ModelCard(
        name="unet", architecture="smp.Unet", architecture_kwargs={"encoder_name": "resnet18"},
        spatial_dims=2, in_channels=4, normalisation={"type": "meanstd", "mean": [MEAN],
        "std": [STD]}, classes=[{"index": 0, "name": "a"}, {"index": 1, "name": "b"}],
        nodata_label=255, roi_size=[ROI, ROI], overlap=OVERLAP,
    )  # fmt: skip
    grid = GeoGrid(None, Affine(10, 0, 0, 0, -10, 0), arr.shape[1:])
    img = Image.from_array(arr, grid, chunks=(4, 2048, 2048))
    model = SimpleNamespace(module=_model(device), card=card)
    small = Image.from_array(
        arr[:, :512, :512], GeoGrid(None, Affine(10, 0, 0, 0, -10, 0), (512, 512))
    )
    segment(small, model, device=str(device), amp=amp, batch_size=batch)  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    extra = {"devices": tuple(devices)} if devices else {}
    res = segment(img, model, device=str(device), amp=amp, batch_size=batch, **extra)
    labels = res.image.compute()
    _sync(device)
    s = time.perf_counter() - t0
    n = res.stats["windows_total"]
    return {"seconds": s, "windows": n, "windows_per_s": n / s, "stats": {
        k: res.stats.get(k) for k in ("batch_size", "device_blend", "peak_gpu_bytes")
    }, "labels_sum": int(labels.sum())}  # fmt: skip


def run_monai(arr: np.ndarray, device, batch: int, dtype) -> dict:
    import torch
    from monai.inferers import sliding_window_inference

    from geomed_seg.inference.plan import plan_windows

    model = _model(device)
    x = ((torch.from_numpy(arr.astype(np.float32)) - MEAN) / STD).to(device)[None]
    n = len(plan_windows(arr.shape[1:], (ROI, ROI), OVERLAP))

    def predictor(t):
        return torch.softmax(model(t), 1)

    with (
        torch.inference_mode(),
        torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32),
    ):
        sliding_window_inference(
            x[..., :512, :512], (ROI, ROI), batch, predictor, OVERLAP, "gaussian"
        )
        _sync(device)
        t0 = time.perf_counter()
        out = sliding_window_inference(x, (ROI, ROI), batch, predictor, OVERLAP, "gaussian")
        torch.argmax(out[0], 0).to(torch.uint8)
        _sync(device)
    s = time.perf_counter() - t0
    return {"seconds": s, "windows": n, "windows_per_s": n / s}


def main(argv: list[str] | None = None) -> int:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=8192)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--devices", default="", help="comma list: time ours on each too")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--runs", default="bare,ours,monai")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    amp = "fp16" if device.type == "cuda" else "off"
    arr = _scene(args.size)
    out: dict = {
        "size": args.size,
        "device": str(device),
        "batch": args.batch,
        "torch": torch.__version__,
    }
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
    runs = args.runs.split(",")
    if "bare" in runs:
        out["bare"] = run_bare(arr, device, args.batch, dtype)
    if "ours" in runs:
        out["ours"] = run_ours(arr, device, args.batch, amp)
        out["ours_auto_batch"] = run_ours(arr, device, None, amp)
    if "monai" in runs:
        out["monai"] = run_monai(arr, device, args.batch, dtype)
    listed = [d for d in args.devices.split(",") if d]
    for d in listed:
        out[f"ours_{d}"] = run_ours(arr, torch.device(d), args.batch, amp)
    if len(listed) > 1:  # one scene on all listed devices (segment --devices), same labels?
        try:
            multi = run_ours(arr, device, args.batch, amp, devices=listed)
            out["ours_multi"] = multi
            one = out[f"ours_{listed[0]}"]
            out["multi_over_one"] = multi["windows_per_s"] / one["windows_per_s"]
            out["multi_labels_equal"] = multi["labels_sum"] == one["labels_sum"]
        except Exception as exc:  # recorded in the JSON: the suite goes on
            out["ours_multi"] = {"error": f"{type(exc).__name__}: {exc}"}
    best = max(
        (out[k]["windows_per_s"] for k in ("ours", "ours_auto_batch") if k in out), default=None
    )
    if best and "bare" in out:
        out["ours_over_bare"] = best / out["bare"]["windows_per_s"]
    if best and "monai" in out:
        out["ours_over_monai"] = best / out["monai"]["windows_per_s"]
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
