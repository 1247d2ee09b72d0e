"""Training configuration: one validated pydantic model read from YAML.

Every section forbids unknown keys (``extra="forbid"``), so a typo in a config file is an
error naming the key, not a silently ignored setting. Sizes are in samples (pixels/voxels)
and in array order ((y, x) or (z, y, x)).

Data comes from exactly one source:

* ``cases``: image/label file pairs, split by case (``split_file``, ``val_ids`` or
  ``val_fraction``) so no case contributes patches to both training and validation;
* ``weak_water``: one multispectral scene with weak NDWI + Otsu labels, split in space
  (``spatial_split``: the first part along an axis trains, the rest validates);
* ``phantoms``: BraTS-like synthetic cases (:mod:`geomed_seg.synthetic.phantom`), split by seed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from geomed_seg.errors import ConfigError, validation_problems
from geomed_seg.models.card import (
    ClassSpec,
    MeanStd,
    NoNormalisation,
    NonZeroZScore,
    Percentile,
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CaseSpec(_Strict):
    """One image + label pair (files of any supported format, same grid)."""

    id: str | None = None
    image: Path
    label: Path


class SpatialSplit(_Strict):
    """Split ONE scene in two along ``axis``: ``[0, fraction)`` trains, the rest validates.

    ``gap`` samples between the parts are dropped from both, so training patches never
    touch validation samples. ``train="last"`` swaps the roles.
    """

    axis: Literal["y", "x"] = "y"
    fraction: float = Field(0.5, gt=0, lt=1)
    gap: int = Field(0, ge=0)
    train: Literal["first", "last"] = "first"


class WeakWater(_Strict):
    """Weak water labels of a multispectral scene: NDWI + scene-wide Otsu + clean-up."""

    scene: Path
    bands: dict[str, int | str] = Field(default_factory=lambda: {"green": 2, "nir": 4})
    min_object_px: int = Field(16, ge=0)
    opening_radius: int = Field(1, ge=0)
    split: SpatialSplit = Field(default_factory=SpatialSplit)


class PhantomSpec(_Strict):
    """BraTS-like phantoms on a T1 template; training and validation seeds never overlap."""

    t1: Path
    train_seeds: list[int] = Field(min_length=1)
    val_seeds: list[int] = Field(min_length=1)
    zoom: int = Field(3, ge=1, le=4)

    @model_validator(mode="after")
    def _disjoint(self) -> PhantomSpec:
        both = set(self.train_seeds) & set(self.val_seeds)
        if both:
            raise ValueError(f"seeds {sorted(both)} are in both train_seeds and val_seeds")
        return self


class DataConfig(_Strict):
    """Where samples come from (exactly one of ``cases``, ``weak_water``, ``phantoms``)."""

    cases: list[CaseSpec] | None = None
    split_file: Path | None = None
    val_ids: list[str] | None = None
    val_fraction: float = Field(0.2, ge=0, lt=1)
    weak_water: WeakWater | None = None
    phantoms: PhantomSpec | None = None

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        given = [n for n in ("cases", "weak_water", "phantoms") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one data source of cases/weak_water/phantoms (got {given or 'none'})"
            )
        return self


class ModelConfig(_Strict):
    """Registry architecture name and constructor keyword arguments.

    ``encoder_weights``: a local state dict (timm/torchvision backbone, e.g. a TorchGeo
    Sentinel-2 ResNet) loaded into the smp encoder (:mod:`geomed_seg.train.transfer`);
    ``freeze_encoder``: train the decoder only. ``init_checkpoint``: start from the weights
    of one of our checkpoints (e.g. made by ``geomed-seg import-model``) to fine-tune it; its
    card must name the same architecture, keyword arguments, channels and class count.
    """

    architecture: str
    kwargs: dict[str, Any] = Field(default_factory=dict)
    encoder_weights: Path | None = None
    freeze_encoder: bool = False
    init_checkpoint: Path | None = None


class LossConfig(_Strict):
    """Loss by name (see :data:`geomed_seg.train.losses.LOSSES`)."""

    name: Literal["dice_ce", "dice", "focal", "tversky", "dice_focal", "bce_dice", "ce"] = "dice_ce"
    class_weights: list[float] | None = None
    ignore_index: int | None = None
    include_background: bool = False
    kwargs: dict[str, Any] = Field(default_factory=dict)


class AugmentConfig(_Strict):
    """Random augmentation probabilities and ranges (0 disables a transform)."""

    flip_prob: float = Field(0.5, ge=0, le=1)
    rot90_prob: float = Field(0.5, ge=0, le=1)
    affine_prob: float = Field(0.2, ge=0, le=1)
    rotate_deg: float = Field(15.0, ge=0, le=180)
    scale_range: float = Field(0.1, ge=0, lt=1)
    elastic_prob: float = Field(0.0, ge=0, le=1)
    intensity_prob: float = Field(0.3, ge=0, le=1)
    gamma_range: tuple[float, float] = (0.8, 1.25)
    noise_prob: float = Field(0.15, ge=0, le=1)
    noise_std: float = Field(0.05, ge=0)
    band_dropout_prob: float = Field(0.0, ge=0, le=1)
    mixup_prob: float = Field(0.0, ge=0, le=1)
    mixup_alpha: float = Field(0.4, gt=0)
    cutmix_prob: float = Field(0.0, ge=0, le=1)
    cutmix_alpha: float = Field(1.0, gt=0)

    @model_validator(mode="after")
    def _mix(self) -> AugmentConfig:
        if self.mixup_prob + self.cutmix_prob > 1:
            raise ValueError("mixup_prob + cutmix_prob must be <= 1 (one of them per batch)")
        return self


class OptimConfig(_Strict):
    """AdamW and the learning-rate schedule (stepped once per optimiser step)."""

    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    schedule: Literal["cosine", "poly", "constant"] = "cosine"
    warmup_steps: int = Field(0, ge=0)
    grad_clip: float | None = Field(12.0, gt=0)


class CardConfig(_Strict):
    """Fields of the model card written with each checkpoint."""

    name: str
    description: str = ""
    classes: list[ClassSpec] = Field(min_length=2)
    band_names: list[str] | None = None
    normalisation: Literal["auto"] | MeanStd | Percentile | NonZeroZScore | NoNormalisation = "auto"
    licence: str | None = None
    dataset: str | None = None
    weak_labels: str | None = None
    notes: str = ""


class TrainConfig(_Strict):
    """A full training run (see module docstring)."""

    data: DataConfig
    model: ModelConfig
    card: CardConfig
    loss: LossConfig = Field(default_factory=LossConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    roi_size: list[int] = Field(min_length=2, max_length=3)
    batch_size: int = Field(4, ge=1)
    epochs: int = Field(10, ge=1)
    steps_per_epoch: int = Field(50, ge=1)
    val_every: int = Field(1, ge=1)
    patience: int | None = Field(None, ge=1)
    foreground_fraction: float = Field(0.33, ge=0, le=1)
    min_valid_fraction: float = Field(0.5, ge=0, le=1)
    val_overlap: float = Field(0.25, ge=0, lt=1)
    val_regions: dict[str, list[int]] | str | None = None
    seed: int = 0
    threads: int | None = Field(None, ge=1)
    device: str = "auto"
    amp: Literal["auto", "off", "bf16"] = "auto"
    num_workers: int = Field(0, ge=0)
    output: Path = Path("runs/train")
    tensorboard: bool = False

    @property
    def spatial_dims(self) -> int:
        return len(self.roi_size)


def load_config(path: str | os.PathLike, **overrides: Any) -> TrainConfig:
    """Return the validated config of a YAML file, with top-level ``overrides`` applied.

    Relative paths inside the file are resolved against the file's folder. Overrides whose
    value is ``None`` are ignored (CLI options not given).

    Raises
    ------
    ConfigError
        Unreadable file, bad YAML, unknown key or wrong type (the file and the key named).
    """
    import yaml

    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text())
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read training config ({exc.strerror or exc})") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: invalid YAML ({' '.join(str(exc).split())[:200]})") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: a training config must be a mapping, got {type(raw).__name__}")
    raw.update({k: v for k, v in overrides.items() if v is not None})
    cfg = config_from_dict(raw, source=p)
    return resolve_paths(cfg, p.parent)


def config_from_dict(data: dict[str, Any], source: str | os.PathLike = "<config>") -> TrainConfig:
    """Validate ``data``; raise :class:`ConfigError` naming ``source`` and the bad keys."""
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as exc:
        problems = validation_problems(exc, limit=5)
        raise ConfigError(f"{source}: invalid training config ({problems})") from exc


def resolve_paths(cfg: TrainConfig, base: Path) -> TrainConfig:
    """Return ``cfg`` with relative data paths (and output) made relative to ``base``."""

    def fix(p: Path | None) -> Path | None:
        return None if p is None or p.is_absolute() else (base / p)

    d = cfg.data
    upd: dict[str, Any] = {}
    if d.cases is not None:
        upd["cases"] = [
            c.model_copy(
                update={"image": fix(c.image) or c.image, "label": fix(c.label) or c.label}
            )
            for c in d.cases
        ]
    if d.split_file is not None:
        upd["split_file"] = fix(d.split_file) or d.split_file
    if d.weak_water is not None:
        upd["weak_water"] = d.weak_water.model_copy(
            update={"scene": fix(d.weak_water.scene) or d.weak_water.scene}
        )
    if d.phantoms is not None:
        upd["phantoms"] = d.phantoms.model_copy(update={"t1": fix(d.phantoms.t1) or d.phantoms.t1})
    model = cfg.model
    for key in ("encoder_weights", "init_checkpoint"):
        value = getattr(model, key)
        if value is not None:
            model = model.model_copy(update={key: fix(value) or value})
    return cfg.model_copy(
        update={
            "data": d.model_copy(update=upd),
            "model": model,
            "output": fix(cfg.output) or cfg.output,
        }
    )


__all__ = [
    "AugmentConfig",
    "CardConfig",
    "CaseSpec",
    "DataConfig",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "PhantomSpec",
    "SpatialSplit",
    "TrainConfig",
    "WeakWater",
    "config_from_dict",
    "load_config",
    "resolve_paths",
]
