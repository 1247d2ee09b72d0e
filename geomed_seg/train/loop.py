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
from geomed_seg.train.mixing import MixOptions, mix_batch
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


@dataclass
class _Run:
    """One training run's model, data, optimiser and progress (built by :func:`_build`)."""

    cfg: TrainConfig
    card: ModelCard
    split: Split
    device: str
    module: torch.nn.Module
    dataset: PatchDataset
    loader: Any
    loss_fn: torch.nn.Module
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    out: Path
    first_epoch: int = 0
    best: float = -math.inf
    best_epoch: int = -1
    stale: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    mix_rng: np.random.Generator | None = None


def _build_module(cfg: TrainConfig, card: ModelCard, device: str) -> torch.nn.Module:
    """The model of ``cfg`` on ``device``: initial checkpoint, encoder weights, frozen encoder."""
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
    return module


def _build_data(cfg: TrainConfig, card: ModelCard, split: Split) -> PatchDataset:
    """The epoch's random patches of the training cases (labels as output channels)."""
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
    fg = [c.index for c in card.classes[1:]]
    logger.info("training %s on %d cases (foreground classes %s)", card.name, len(split.train), fg)
    return PatchDataset(
        sampler,
        cfg.steps_per_epoch * cfg.batch_size,
        build_augment(cfg.augment, cfg.spatial_dims, cfg.roi_size),
    )


def _build(cfg: TrainConfig) -> _Run:
    """Seed, load the split and build model, patches, loss, optimiser, schedule and scaler."""
    seed_everything(cfg.seed, cfg.threads)
    device = resolve_device(cfg.device)
    split = load_split(cfg)
    card = make_card(cfg, split)
    module = _build_module(cfg, card, device)
    dataset = _build_data(cfg, card, split)
    loader = make_loader(dataset, cfg.batch_size, cfg.num_workers)
    loss_fn = build_loss(
        cfg.loss.name, card.num_classes, class_weights=cfg.loss.class_weights,
        ignore_index=cfg.loss.ignore_index, include_background=cfg.loss.include_background,
        **cfg.loss.kwargs,
    ).to(device)  # fmt: skip
    o = cfg.optim
    opt = torch.optim.AdamW(
        [p for p in module.parameters() if p.requires_grad], lr=o.lr, weight_decay=o.weight_decay
    )
    total = cfg.epochs * cfg.steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, total, o.schedule, o.warmup_steps)
    )
    use_scaler = device.startswith("cuda") and cfg.amp == "auto"
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    return _Run(cfg, card, split, device, module, dataset, loader, loss_fn, opt, sched, scaler, out)


def _restore(run: _Run, resume: str | os.PathLike) -> None:
    """Load weights, optimiser, schedule, scaler, RNG and counters of a ``last``/``best`` folder."""
    loaded = load_checkpoint(resume)
    run.module.load_state_dict(loaded.module.state_dict())
    st = _load_state(Path(resume))
    run.opt.load_state_dict(st["optimizer"])
    run.sched.load_state_dict(st["scheduler"])
    run.scaler.load_state_dict(st["scaler"])
    torch.set_rng_state(st["torch_rng"])
    run.first_epoch, run.best = int(st["epoch"]) + 1, float(st["best"])
    run.best_epoch, run.stale = int(st["best_epoch"]), int(st["stale"])
    logger.info("resumed %s at epoch %d (best %.4f)", resume, run.first_epoch, run.best)


def _train_epoch(run: _Run, epoch: int, progress: Any, task: Any) -> dict[str, Any]:
    """Run one epoch of optimiser steps; return its log row (epoch, step, loss, lr)."""
    cfg, module, device = run.cfg, run.module, run.device
    a, o = cfg.augment, cfg.optim
    mixing = a.mixup_prob > 0 or a.cutmix_prob > 0
    mix = MixOptions(a.mixup_prob, a.mixup_alpha, a.cutmix_prob, a.cutmix_alpha)
    module.train()
    if cfg.model.freeze_encoder:
        encoder_eval(module)
    run.dataset.set_epoch(epoch)
    losses = []
    for batch in run.loader:
        x = batch["image"].to(device, non_blocking=True)
        y = batch["label"].to(device, non_blocking=True)
        if mixing:
            x, y = mix_batch(x, y, run.mix_rng, mix, num_classes=run.card.num_classes,
                             ignore_index=cfg.loss.ignore_index)  # fmt: skip
        run.opt.zero_grad(set_to_none=True)
        with _autocast(device, cfg.amp):
            logits = module(x)
        loss = run.loss_fn(logits.float(), y)
        run.scaler.scale(loss).backward()
        if o.grad_clip:
            run.scaler.unscale_(run.opt)
            torch.nn.utils.clip_grad_norm_(module.parameters(), o.grad_clip)
        run.scaler.step(run.opt)
        run.scaler.update()
        run.sched.step()
        losses.append(float(loss.detach()))
        progress.update(task, advance=1, info=f"epoch {epoch} loss {losses[-1]:.4f}")
    return {
        "epoch": epoch,
        "step": (epoch + 1) * cfg.steps_per_epoch,
        "train_loss": float(np.mean(losses)),
        "lr": float(run.sched.get_last_lr()[0]),
    }


def _validate_epoch(run: _Run, epoch: int, row: dict[str, Any]) -> bool:
    """Validate when due (every ``val_every`` epochs and the last); return whether it improved.

    The validation metrics go into ``row``; best score, best epoch and the count of epochs
    without improvement (``stale``) are updated.
    """
    cfg = run.cfg
    if (epoch + 1) % cfg.val_every != 0 and epoch != cfg.epochs - 1:
        return False
    val = validate(run.module, run.card, run.split.val, overlap=cfg.val_overlap,
                   device=run.device, regions=cfg.val_regions,
                   ignore_index=cfg.loss.ignore_index)  # fmt: skip
    row.update({f"val_{k}": v for k, v in val.metrics.items()})
    row["val_score"] = val.score
    if val.score > run.best:
        run.best, run.best_epoch, run.stale = float(val.score), epoch, 0
        return True
    run.stale += 1
    return False


def _checkpoint(run: _Run, epoch: int, row: dict[str, Any], improved: bool) -> None:
    """Save ``last/`` (and ``best/`` when ``improved``) with the epoch's metrics in the card."""
    metrics = {k: float(v) for k, v in row.items() if k.startswith("val_")}
    metrics["epoch"] = float(epoch)
    state = {
        "optimizer": run.opt.state_dict(),
        "scheduler": run.sched.state_dict(),
        "scaler": run.scaler.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "epoch": epoch,
        "best": run.best,
        "best_epoch": run.best_epoch,
        "stale": run.stale,
    }
    card = run.card
    ecard = card.model_copy(
        update={"training": card.training.model_copy(update={"metrics": metrics})}
    )
    _save(run.module, ecard, run.out / "last", state)
    if improved:
        _save(run.module, ecard, run.out / "best", state)


def _log_epoch(run: _Run, row: dict[str, Any], writer: Any) -> None:
    """Keep ``row`` in the history, ``train_log.csv`` and TensorBoard (when on)."""
    run.history.append(row)
    _append_csv(run.out / LOG_NAME, row, fresh=(row["epoch"] == 0))
    if writer is not None:
        for k, v in row.items():
            if k != "epoch":
                writer.add_scalar(k, v, row["epoch"])


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
    run = _build(cfg)
    if resume is not None:
        _restore(run, resume)
    run.mix_rng = np.random.default_rng([cfg.seed, run.first_epoch])  # resumes differ in mixing
    writer = _tensorboard(run.out) if cfg.tensorboard else None
    with _progress(quiet) as progress:
        steps = (cfg.epochs - run.first_epoch) * cfg.steps_per_epoch
        task = progress.add_task(run.card.name, total=steps, info="")
        for epoch in range(run.first_epoch, cfg.epochs):
            t0 = time.perf_counter()
            row = _train_epoch(run, epoch, progress, task)
            improved = _validate_epoch(run, epoch, row)
            row["seconds"] = round(time.perf_counter() - t0, 3)
            _log_epoch(run, row, writer)
            _checkpoint(run, epoch, row, improved)
            if cfg.patience is not None and run.stale >= cfg.patience:
                logger.info("early stop at epoch %d (no improvement for %d)", epoch, run.stale)
                break
    if writer is not None:
        writer.close()
    best_card = run.out / "best" / "card.json"
    card_best = ModelCard.load(best_card) if best_card.is_file() else run.card
    last = run.history[-1]["epoch"] if run.history else run.first_epoch - 1
    return TrainResult(run.best, run.best_epoch, last, run.out, card_best, run.history,
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
