"""A few epochs of a demo training config with CUDA AMP (fp16 autocast + GradScaler), checked.

Checks (exit 1 when one fails, each printed):

1. the training loss decreases (last epoch < first epoch);
2. the ``last`` checkpoint reloads (safetensors + card) and its weights equal the trained ones;
3. labels of the reloaded model with fp16 inference agree with an fp32 run on the same input
   (≥ 99 % of pixels/voxels: fp16 may flip near-ties only).

Usage::

    python benchmarks/gpu_train.py --config configs/train_water.yaml --out OUT/train_water
    python benchmarks/gpu_train.py --config configs/train_water.yaml --device cpu --epochs 2 \\
        --steps 2      # dry run (no AMP on CPU)
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


def _input_image(card, size: int):
    """A random image of the card's channels and dims (seed 0), ``size`` per axis."""
    from geomed_seg.core import GeoGrid, Image, VoxelGrid

    rng = np.random.default_rng(0)
    if card.spatial_dims == 2:
        arr = rng.random((card.in_channels, size, size), dtype=np.float32) * 255
        from affine import Affine

        return Image.from_array(arr, GeoGrid(None, Affine(30, 0, 0, 0, -30, 0), (size, size)))
    arr = rng.random((card.in_channels, size, size, size), dtype=np.float32)
    return Image.from_array(arr, VoxelGrid(np.eye(4), (size, size, size)))


def main(argv: list[str] | None = None) -> int:
    import torch

    from geomed_seg.inference.segment import segment
    from geomed_seg.models.checkpoint import load_checkpoint
    from geomed_seg.train.config import load_config
    from geomed_seg.train.loop import train

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--steps", type=int, default=None, help="steps per epoch (default: config's)")
    ap.add_argument("--size", type=int, default=None, help="label-check input edge")
    args = ap.parse_args(argv)
    cuda = args.device.startswith("cuda")
    cfg = load_config(
        args.config, epochs=args.epochs, device=args.device, amp="auto" if cuda else "off",
        output=str(args.out), val_every=args.epochs, steps_per_epoch=args.steps,
    )  # fmt: skip
    t0 = time.perf_counter()
    res = train(cfg)
    seconds = time.perf_counter() - t0
    losses = [float(r["train_loss"]) for r in res.history]
    checks: dict[str, bool] = {"loss_decreases": len(losses) > 1 and losses[-1] < losses[0]}

    trained = load_checkpoint(args.out / "last", device=args.device)
    again = load_checkpoint(args.out / "last", device="cpu")
    same = all(
        torch.equal(a.detach().cpu(), b)
        for a, b in zip(
            trained.module.state_dict().values(), again.module.state_dict().values(), strict=True
        )
    )
    checks["checkpoint_reloads"] = same and again.card.name == cfg.card.name

    size = args.size or (512 if again.card.spatial_dims == 2 else 96)
    img = _input_image(again.card, size)
    fp32 = segment(img, again, device="cpu", amp="off").image.compute()
    fp16 = segment(img, trained, device=args.device, amp="fp16" if cuda else "off").image.compute()
    agree = float((fp32 == fp16).mean())
    checks["labels_match_fp32"] = agree >= 0.99
    out = {
        "config": str(args.config), "device": args.device, "amp": cfg.amp, "epochs": args.epochs,
        "seconds": round(seconds, 1), "train_loss": losses, "fp16_vs_fp32_agreement": agree,
        "checks": checks, "scaler_enabled": cuda and cfg.amp == "auto",
    }  # fmt: skip
    print(json.dumps(out, indent=2))
    (args.out / "gpu_train.json").write_text(json.dumps(out, indent=2))
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
