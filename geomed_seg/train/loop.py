"""The training loop: AdamW, cosine/poly schedule, AMP, clipping, validation, checkpoints.

One epoch is ``steps_per_epoch`` optimiser steps on random patches; every ``val_every``
epochs the model segments the WHOLE validation images through the sliding-window engine
(:mod:`geomed_seg.train.validate`) and the mean Dice selects the best checkpoint.

Output folder::

    last/   model.safetensors + card.json + trainer_state.pt   (every epoch)
    best/   the same, for the best validation score
    train_log.csv                                              (one row per epoch)

``trainer_state.pt`` holds only plain tensors, numbers and dicts (optimizer, scheduler,
GradScaler and torch RNG states, epoch, best score) and is read with
``torch.load(weights_only=True)``: no pickled objects. Patches depend only on
``(seed, epoch, index)``, so a resumed run draws the same patches as an uninterrupted one.

AMP: on CUDA, fp16 autocast with a ``GradScaler`` (``amp="auto"``); on CPU, bf16 autocast
only when asked (``amp="bf16"``). Reproducibility: seeds, fixed thread count and
``torch.use_deterministic_algorithms(True, warn_only=True)``.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import pickle
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geomed_seg.errors import ConfigError, ModelError
from geomed_seg.io.atomic import atomic_output
from geomed_seg.models.card import MeanStd, ModelCard, TrainingInfo
from geomed_seg.models.checkpoint import load_checkpoint, save_checkpoint
from geomed_seg.models.registry import build_model
from geomed_seg.train.augment import build_augment
from geomed_seg.train.config import TrainConfig
from geomed_seg.train.data import PatchDataset, Split, load_split, make_loader, mean_std
from geomed_seg.train.losses import build_loss
from geomed_seg.train.mixing import mix_batch
from geomed_seg.train.sampling import PatchSampler
from geomed_seg.train.transfer import (
    encoder_eval,
    freeze_encoder,
    load_encoder_weights,
    load_init_checkpoint,
)
from geomed_seg.train.validate import validate

logger = logging.getLogger(__name__)

STATE_NAME = "trainer_state.pt"
LOG_NAME = "train_log.csv"


@dataclass
class TrainResult:
    """What a run produced: best score/epoch, paths, the per-epoch log rows and wall time."""

    best_score: float
    best_epoch: int
    last_epoch: int
    output: Path
    card: ModelCard
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def seed_everything(seed: int, threads: int | None = None) -> None:
    """Seed torch and numpy, fix the thread count and ask torch for deterministic kernels."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    if threads is not None:
        torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    if torch.cuda.is_available():
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False


def resolve_device(device: str) -> str:
    """Return ``"cuda"`` for ``"auto"`` when a GPU is visible, else ``"cpu"``; check others."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked for but no CUDA GPU is visible")
    return device


def lr_factor(step: int, total: int, schedule: str, warmup: int) -> float:
    """Return the learning-rate multiplier at optimiser ``step`` (0-based) of ``total``."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    t = min(max(step - warmup, 0) / max(total - warmup, 1), 1.0)
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * t))
    if schedule == "poly":
        return (1 - t) ** 0.9
    return 1.0


def make_card(cfg: TrainConfig, split: Split, metrics: dict[str, float] | None = None) -> ModelCard:
    """Return the model card of this run (normalisation ``"auto"``: mean/std of training data)."""
    c = cfg.card
    norm = c.normalisation
    if norm == "auto":
        mean, std = mean_std(split.train)
        norm = MeanStd(mean=mean, std=std)
    grid = split.train[0].image.grid
    spacing = [float(v) for v in (grid.spacing_zyx if cfg.spatial_dims == 3 else grid.res[::-1])]
    return ModelCard(
        name=c.name,
        description=c.description,
        architecture=cfg.model.architecture,
        architecture_kwargs=dict(cfg.model.kwargs),
        spatial_dims=cfg.spatial_dims,
        in_channels=split.train[0].image.n_channels,
        band_names=c.band_names,
        normalisation=norm,
        spacing=spacing,
        spacing_unit="mm" if cfg.spatial_dims == 3 else "m",
        classes=c.classes,
        ignore_index=cfg.loss.ignore_index,
        roi_size=list(cfg.roi_size),
        overlap=cfg.val_overlap,
        training=TrainingInfo(
            dataset=c.dataset,
            notes=_transfer_notes(cfg, c.notes),
            weak_labels=c.weak_labels,
            metrics=metrics or {},
            pretrained=cfg.model.encoder_weights is not None,
        ),
        licence=c.licence,
    )


def _transfer_notes(cfg: TrainConfig, notes: str) -> str:
    m = cfg.model
    if m.encoder_weights is None:
        return notes
    extra = f"encoder initialised from {Path(m.encoder_weights).name}" + (
        " and frozen" if m.freeze_encoder else ""
    )
    return f"{notes}; {extra}" if notes else extra


def _normalisers(card: ModelCard, split: Split):
    """Return the sampler's normaliser: the card's, or one per training case (per-case stats)."""
    if not card.needs_case_statistics:
        return card.normalise
    from geomed_seg.models.case_stats import case_normaliser

    return [case_normaliser(card, c.image) for c in split.train]


def _autocast(device: str, amp: str):
    if device.startswith("cuda") and amp in ("auto", "bf16"):
        dtype = torch.bfloat16 if amp == "bf16" else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    if device == "cpu" and amp == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return torch.autocast(device.split(":")[0], enabled=False)


def _save(module, card, folder: Path, state: dict[str, Any]) -> ModelCard:
    card = save_checkpoint(module, card, folder, overwrite=True)
    with atomic_output(folder / STATE_NAME, True) as tmp:
        torch.save(state, tmp)
    return card


def _load_state(path: Path) -> dict[str, Any]:
    f = path / STATE_NAME
    if not f.is_file():
        raise ModelError(f"{path}: no {STATE_NAME} beside the weights; cannot resume")
    try:
        return torch.load(f, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError) as exc:
        raise ModelError(f"{f}: unreadable trainer state ({exc})") from exc


def _progress(quiet: bool):
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    disable = quiet or not sys.stderr.isatty()
    return Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"),
                    TimeRemainingColumn(), disable=disable)  # fmt: skip


def train(
    cfg: TrainConfig, *, resume: str | os.PathLike | None = None, quiet: bool = True
) -> TrainResult:
    """Train the model ``cfg`` describes; return the best score and where checkpoints are.

    Parameters
    ----------
    cfg : TrainConfig
    resume : path, optional
        A ``last``/``best`` checkpoint folder of an earlier run of the same config: weights,
        optimiser, scheduler, scaler, RNG state and epoch counter are restored.
    quiet : bool
        No progress display (it is also off when stderr is not a terminal).
    """
    start = time.perf_counter()
    seed_everything(cfg.seed, cfg.threads)
    device = resolve_device(cfg.device)
    split = load_split(cfg)
    card = make_card(cfg, split)
    module = build_model(
        cfg.model.architecture, card.in_channels, card.num_classes, **cfg.model.kwargs
    ).to(device)
    if cfg.model.init_checkpoint is not None:
        load_init_checkpoint(module, cfg.model.init_checkpoint, card)
    if cfg.model.encoder_weights is not None:
        report = load_encoder_weights(module, cfg.model.encoder_weights)
        Path(cfg.output).mkdir(parents=True, exist_ok=True)
        (Path(cfg.output) / "encoder_weights.json").write_text(
            json.dumps(report.as_dict(), indent=2) + "\n"
        )
    if cfg.model.freeze_encoder:
        logger.info("froze %d encoder parameters", freeze_encoder(module))
    fg = [c.index for c in card.classes[1:]]
    ignore = cfg.loss.ignore_index
    sampler = PatchSampler(
        [(c.image, _to_channels(c.label, card, ignore)) for c in split.train],
        cfg.roi_size,
        [fg_i for fg_i in range(1, card.num_classes)],
        foreground_fraction=cfg.foreground_fraction,
        min_valid_fraction=cfg.min_valid_fraction,
        pad_label=ignore if ignore is not None else 0,
        seed=cfg.seed,
        normalise=_normalisers(card, split),
    )
    logger.info("training %s on %d cases (foreground classes %s)", card.name, len(split.train), fg)
    dataset = PatchDataset(
        sampler,
        cfg.steps_per_epoch * cfg.batch_size,
        build_augment(cfg.augment, cfg.spatial_dims, cfg.roi_size),
    )
    loader = make_loader(dataset, cfg.batch_size, cfg.num_workers)
    loss_fn = build_loss(
        cfg.loss.name, card.num_classes, class_weights=cfg.loss.class_weights,
        ignore_index=ignore, include_background=cfg.loss.include_background, **cfg.loss.kwargs,
    ).to(device)  # fmt: skip
    opt = torch.optim.AdamW(
        [p for p in module.parameters() if p.requires_grad],
        lr=cfg.optim.lr,
        weight_decay=cfg.optim.weight_decay,
    )
    total = cfg.epochs * cfg.steps_per_epoch
    o = cfg.optim
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, total, o.schedule, o.warmup_steps)
    )
    use_scaler = device.startswith("cuda") and cfg.amp == "auto"
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)

    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    first_epoch, best, best_epoch, stale = 0, -math.inf, -1, 0
    history: list[dict[str, Any]] = []
    if resume is not None:
        loaded = load_checkpoint(resume)
        module.load_state_dict(loaded.module.state_dict())
        st = _load_state(Path(resume))
        opt.load_state_dict(st["optimizer"])
        sched.load_state_dict(st["scheduler"])
        scaler.load_state_dict(st["scaler"])
        torch.set_rng_state(st["torch_rng"])
        first_epoch, best, best_epoch = (
            int(st["epoch"]) + 1,
            float(st["best"]),
            int(st["best_epoch"]),
        )
        stale = int(st["stale"])
        logger.info("resumed %s at epoch %d (best %.4f)", resume, first_epoch, best)
    mixing = cfg.augment.mixup_prob > 0 or cfg.augment.cutmix_prob > 0
    mix_rng = np.random.default_rng([cfg.seed, first_epoch])  # resumes differ only in mixing
    writer = _tensorboard(out) if cfg.tensorboard else None
    regions = cfg.val_regions

    with _progress(quiet) as progress:
        task = progress.add_task(card.name, total=(cfg.epochs - first_epoch) * cfg.steps_per_epoch,
                                 info="")  # fmt: skip
        for epoch in range(first_epoch, cfg.epochs):
            t0 = time.perf_counter()
            module.train()
            if cfg.model.freeze_encoder:
                encoder_eval(module)
            dataset.set_epoch(epoch)
            losses = []
            for batch in loader:
                x = batch["image"].to(device, non_blocking=True)
                y = batch["label"].to(device, non_blocking=True)
                if mixing:
                    a = cfg.augment
                    x, y = mix_batch(
                        x, y, mix_rng, num_classes=card.num_classes, ignore_index=ignore,
                        mixup_prob=a.mixup_prob, mixup_alpha=a.mixup_alpha,
                        cutmix_prob=a.cutmix_prob, cutmix_alpha=a.cutmix_alpha,
                    )  # fmt: skip
                opt.zero_grad(set_to_none=True)
                with _autocast(device, cfg.amp):
                    logits = module(x)
                loss = loss_fn(logits.float(), y)
                scaler.scale(loss).backward()
                if o.grad_clip:
                    scaler.unscale_(opt)
                    torch.nn.utils.clip_grad_norm_(module.parameters(), o.grad_clip)
                scaler.step(opt)
                scaler.update()
                sched.step()
                losses.append(float(loss.detach()))
                progress.update(task, advance=1, info=f"epoch {epoch} loss {losses[-1]:.4f}")
            row: dict[str, Any] = {
                "epoch": epoch,
                "step": (epoch + 1) * cfg.steps_per_epoch,
                "train_loss": float(np.mean(losses)),
                "lr": float(sched.get_last_lr()[0]),
            }
            improved = False
            if (epoch + 1) % cfg.val_every == 0 or epoch == cfg.epochs - 1:
                val = validate(module, card, split.val, overlap=cfg.val_overlap, device=device,
                               regions=regions, ignore_index=ignore)  # fmt: skip
                row.update({f"val_{k}": v for k, v in val.metrics.items()})
                row["val_score"] = val.score
                improved = bool(val.score > best)
                if improved:
                    best, best_epoch, stale = float(val.score), epoch, 0
                else:
                    stale += 1
            row["seconds"] = round(time.perf_counter() - t0, 3)
            history.append(row)
            _append_csv(out / LOG_NAME, row, fresh=(epoch == 0))
            if writer is not None:
                for k, v in row.items():
                    if k != "epoch":
                        writer.add_scalar(k, v, epoch)
            metrics = {k: float(v) for k, v in row.items() if k.startswith("val_")}
            metrics["epoch"] = float(epoch)
            state = {
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "scaler": scaler.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "epoch": epoch,
                "best": best,
                "best_epoch": best_epoch,
                "stale": stale,
            }
            ecard = card.model_copy(
                update={"training": card.training.model_copy(update={"metrics": metrics})}
            )
            _save(module, ecard, out / "last", state)
            if improved:
                _save(module, ecard, out / "best", state)
            if cfg.patience is not None and stale >= cfg.patience:
                logger.info("early stop at epoch %d (no improvement for %d)", epoch, stale)
                break
    if writer is not None:
        writer.close()
    best_card = out / "best" / "card.json"
    card_best = ModelCard.load(best_card) if best_card.is_file() else card
    last = history[-1]["epoch"] if history else first_epoch - 1
    return TrainResult(best, best_epoch, last, out, card_best, history,
                       time.perf_counter() - start)  # fmt: skip


def _to_channels(label, card: ModelCard, ignore: int | None):
    """Return ``label`` with card label values mapped to output channel indices 0..K-1.

    The ignore index and the label nodata value are kept as they are.
    """
    values = [c.index for c in card.classes]
    if values == list(range(len(values))):
        return label
    import dask.array as da

    lut = np.zeros(65536, np.int64)
    for v in (ignore, label.nodata):
        if v is not None and np.isfinite(v):
            lut[int(v)] = int(v)
    for ch, v in enumerate(values):
        lut[v] = ch
    data = da.map_blocks(lambda b: lut[b.astype(np.int64)], label.darray, dtype=np.int64)
    return label.with_data(data, nodata=label.nodata)


def _append_csv(path: Path, row: dict[str, Any], fresh: bool) -> None:
    """Append ``row``; a new column (validation runs every few epochs) rewrites the header."""
    rows: list[dict[str, Any]] = []
    fields = list(row)
    if path.is_file() and not fresh:
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            header = list(reader.fieldnames or [])
        fields = header + [k for k in row if k not in header]
        if fields == header:
            with path.open("a", newline="") as f:
                csv.DictWriter(f, fieldnames=fields, restval="").writerow(row)
            return
    with atomic_output(path, True) as tmp, tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, restval="")
        w.writeheader()
        w.writerows([*rows, row])


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        logger.warning("tensorboard is not installed; logging to CSV only")
        return None
    return SummaryWriter(str(out / "tensorboard"))


__all__ = ["STATE_NAME", "TrainResult", "lr_factor", "make_card", "resolve_device",
           "seed_everything", "train"]  # fmt: skip
