"""Validation on WHOLE images through the sliding-window engine, scored by the metrics module.

:func:`predict_labels` runs the engine (:func:`geomed_seg.inference.segment.segment`, with the
card's normalisation, roi, overlap and blending mode; labels by
:func:`geomed_seg.inference.blend.labels_from_probabilities`) and returns labels on the image
grid. :func:`validate` scores them with :func:`geomed_seg.metrics.overlap.overlap_metrics`
(per-class Dice) and, when regions are given (BraTS WT/TC/ET),
:func:`geomed_seg.metrics.brats.brats_metrics`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geomed_seg.core.image import Image
from geomed_seg.inference.options import EngineOptions
from geomed_seg.models.card import ModelCard

logger = logging.getLogger(__name__)


def validation_options(
    overlap: float | None = None, batch_size: int = 4, device: str = "cpu"
) -> EngineOptions:
    """Return the engine options of validation: fp32, no test-time augmentation (reproducible),
    the card's roi and mode, ``overlap`` (None = the card's)."""
    return EngineOptions(overlap=overlap, batch_size=batch_size, device=str(device), amp=False)


def predict_labels(
    module: torch.nn.Module,
    card: ModelCard,
    image: Image,
    options: EngineOptions | None = None,
) -> np.ndarray:
    """Return the predicted label array (spatial, array order, card label values) of ``image``.

    ``options`` default to :func:`validation_options`; card defaults are resolved by the
    engine (:meth:`EngineOptions.resolve`).
    """
    opts = options if options is not None else validation_options()
    was_training = module.training
    module.eval()
    try:
        from geomed_seg.inference.segment import segment
        from geomed_seg.models.checkpoint import LoadedModel

        loaded = LoadedModel(module, card, Path("<training>"), opts.device)
        res = segment(image, loaded, opts)  # card defaults resolved by the engine
        return np.asarray(res.image.compute()[0])
    finally:
        module.train(was_training)


@dataclass
class ValidationResult:
    """Scores of one validation pass: ``score`` is what selects the best checkpoint."""

    score: float
    metrics: dict[str, float] = field(default_factory=dict)
    per_case: list[dict[str, float]] = field(default_factory=list)


def validate(
    module: torch.nn.Module,
    card: ModelCard,
    cases: Sequence[Any],
    *,
    overlap: float | None = None,
    device: str = "cpu",
    regions: Mapping[str, Sequence[int]] | str | None = None,
    batch_size: int = 4,
    ignore_index: int | None = None,
) -> ValidationResult:
    """Return Dice scores of ``module`` on whole validation ``cases`` (``.image``, ``.label``).

    ``score`` is the mean region Dice when ``regions`` are given (e.g. ``"2023"`` for
    WT/TC/ET), else the mean Dice of the foreground classes (all classes but the first),
    averaged over cases. Metric names: ``dice_<class name>``, ``dice_<region>``, ``mean_dice``.
    """
    from geomed_seg.metrics.overlap import overlap_metrics

    labels = [c.index for c in card.classes]
    names = [c.name for c in card.classes]
    opts = validation_options(overlap, batch_size, device)
    rows: list[dict[str, float]] = []
    for case in cases:
        pred = predict_labels(module, card, case.image, opts)
        ref = np.asarray(case.label.compute()[0])
        valid = np.asarray(case.image.valid_mask().compute())
        if case.label.nodata is not None and np.isfinite(case.label.nodata):
            valid &= ref != case.label.nodata
        res = overlap_metrics(pred, ref, labels=labels, names=names, valid=valid,
                              ignore_index=ignore_index)  # fmt: skip
        row = {f"dice_{c.name}": float(c.dice) for c in res.classes}
        row[f"iou_{res.classes[-1].name}"] = float(res.classes[-1].iou)
        fg = [float(c.dice) for c in res.classes[1:]]
        row["mean_dice"] = float(np.mean(fg)) if fg else float(res.mean_dice)
        if regions is not None:
            from geomed_seg.metrics.brats import brats_metrics

            grid = case.image.grid
            spacing = tuple(grid.spacing_zyx) if hasattr(grid, "spacing_zyx") else (1.0,) * 2
            results = brats_metrics(pred, ref, spacing, convention=regions, lesion_wise=False)
            for r in results:
                row[f"dice_{r.region}"] = float(r.global_dsc)
            row["mean_region_dice"] = float(np.nanmean([r.global_dsc for r in results]))
        rows.append(row)
    metrics = {k: float(np.nanmean([r[k] for r in rows])) for k in rows[0]} if rows else {}
    score = metrics.get("mean_region_dice", metrics.get("mean_dice", float("nan")))
    return ValidationResult(score, metrics, rows)


__all__ = ["ValidationResult", "predict_labels", "validate", "validation_options"]
