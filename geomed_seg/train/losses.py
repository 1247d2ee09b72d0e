"""Segmentation losses chosen by name, built from ``monai.losses``, with class weights and an
ignore index.

Names (:data:`LOSSES`): ``dice_ce`` (MONAI ``DiceCELoss``), ``dice`` (``DiceLoss``), ``focal``
(``FocalLoss``), ``tversky`` (``TverskyLoss``), ``dice_focal`` (``DiceFocalLoss``), ``ce``
(cross-entropy) and ``bce_dice`` for binary tasks (BCE on the foreground logit margin + Dice
of its sigmoid; with two output channels this is the two-class softmax written as a sigmoid).

The model gives logits ``(N, K, *spatial)``; targets are class indices ``(N, *spatial)``
(channel ``k`` is the k-th class of the card). Without an ignore index the MONAI losses are
used as they are (``to_onehot_y=True, softmax=True``). With one, the MONAI region terms
(Dice, Tversky) get softmax probabilities and one-hot targets both multiplied by the valid
mask — so ignored samples count neither as true nor false — and the voxel-wise terms
(cross-entropy, focal) are averaged over valid samples only. MONAI's composite losses cannot
mask, which is why this small wrapper exists.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss, DiceFocalLoss, DiceLoss, FocalLoss, TverskyLoss
from torch import nn

from geomed_seg.errors import ConfigError

LOSSES = ("dice_ce", "dice", "focal", "tversky", "dice_focal", "ce", "bce_dice")


class SegLoss(nn.Module):
    """A named loss on logits ``(N, K, *spatial)`` and integer targets ``(N, *spatial)``.

    Parameters
    ----------
    name : str
        One of :data:`LOSSES`.
    num_classes : int
        Output channels K.
    class_weights : sequence of float, optional
        Per-class weights of the cross-entropy/focal terms (length K).
    ignore_index : int, optional
        Target value excluded from the loss.
    include_background : bool
        Whether the Dice/Tversky terms include channel 0.
    **kwargs
        Passed to the MONAI loss (e.g. ``alpha``/``beta`` for Tversky, ``gamma`` for focal).
    """

    def __init__(
        self,
        name: str,
        num_classes: int,
        *,
        class_weights: Sequence[float] | None = None,
        ignore_index: int | None = None,
        include_background: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        if name not in LOSSES:
            raise ConfigError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
        if class_weights is not None and len(class_weights) != num_classes:
            raise ConfigError(
                f"loss.class_weights has {len(class_weights)} values for {num_classes} classes"
            )
        if name == "bce_dice" and num_classes not in (1, 2):
            raise ConfigError(f"bce_dice is for binary tasks, got {num_classes} classes")
        self.name = name
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        w = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32)
        self.register_buffer("weight", w)
        self.include_background = include_background
        self.kwargs = dict(kwargs)
        # region terms on probabilities (masked); voxel terms done here or by MONAI
        self.dice = DiceLoss(include_background=include_background, **_only(kwargs, "smooth"))
        self.tversky = TverskyLoss(include_background=include_background, **_only(kwargs, "ab"))
        gamma = float(kwargs.get("gamma", 2.0))
        self.focal = FocalLoss(gamma=gamma, use_softmax=True, reduction="none", to_onehot_y=True)
        self.focal_soft = FocalLoss(gamma=gamma, use_softmax=True, reduction="none")

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Return the scalar loss of ``logits`` ``(N, K, *spatial)`` vs ``target`` ``(N, *spatial)``."""
        logits = logits.float()
        if target.is_floating_point() and target.ndim == logits.ndim:
            return self._soft(logits, target)
        target = target.long()
        if self.ignore_index is None and self.name in ("dice_ce", "dice_focal", "dice"):
            return self._monai(logits, target)
        valid = (
            torch.ones_like(target, dtype=torch.bool)
            if self.ignore_index is None
            else target != self.ignore_index
        )
        t = torch.where(valid, target, torch.zeros_like(target)).clamp_(0, self.num_classes - 1)
        vm = valid[:, None].to(logits.dtype)
        n_valid = valid.sum().clamp_min(1)
        if self.name == "bce_dice":
            margin = logits[:, 1] - logits[:, 0] if logits.shape[1] == 2 else logits[:, 0]
            fg = (t == 1).to(logits.dtype)
            bce = F.binary_cross_entropy_with_logits(margin, fg, reduction="none")
            bce = (bce * valid).sum() / n_valid
            prob = torch.sigmoid(margin)[:, None] * vm
            return bce + DiceLoss()(prob, fg[:, None] * vm)
        probs = torch.softmax(logits, 1) * vm
        onehot = F.one_hot(t, self.num_classes).movedim(-1, 1).to(logits.dtype) * vm
        loss = logits.new_zeros(())
        if self.name in ("dice_ce", "dice", "dice_focal"):
            loss = loss + self.dice(probs, onehot)
        if self.name == "tversky":
            loss = loss + self.tversky(probs, onehot)
        if self.name in ("dice_ce", "ce"):
            ce = F.cross_entropy(logits, t, weight=self.weight, reduction="none")
            if self.weight is not None:
                denom = (self.weight[t] * valid).sum().clamp_min(1e-8)
            else:
                denom = n_valid
            loss = loss + (ce * valid).sum() / denom
        if self.name in ("focal", "dice_focal"):
            fl = self.focal(logits, t[:, None])
            if self.weight is not None:
                fl = fl * self.weight.view(1, -1, *[1] * (fl.ndim - 2))
            loss = loss + (fl.mean(1) * valid).sum() / n_valid
        return loss

    def _soft(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Loss against probability targets ``(N, K, *spatial)`` (MixUp); all-zero = ignored.

        Without an ignore index, Dice-based losses go to MONAI as they are (MONAI accepts
        probability targets; with class weights its cross-entropy then averages over samples
        rather than over the samples' weights). Otherwise, with one-hot targets every term
        equals the integer-target loss: region terms take
        the (masked) target probabilities instead of one-hot vectors, cross-entropy is
        ``-sum_k t_k log p_k`` (class-weighted by ``sum_k w_k t_k``), focal likewise.
        """
        if target.shape[1] != logits.shape[1]:
            raise ConfigError(
                f"soft targets have {target.shape[1]} channels for {logits.shape[1]} classes"
            )
        t = target.float()
        if self.ignore_index is None and self.name in ("dice_ce", "dice_focal", "dice"):
            return self._monai(logits, t)  # MONAI's losses take probability targets as they are
        valid = t.sum(1) > 0
        vm = valid[:, None].to(logits.dtype)
        n_valid = valid.sum().clamp_min(1)
        if self.name == "bce_dice":
            margin = logits[:, 1] - logits[:, 0] if logits.shape[1] == 2 else logits[:, 0]
            fg = t[:, 1] if t.shape[1] == 2 else t[:, 0]
            bce = F.binary_cross_entropy_with_logits(margin, fg, reduction="none")
            bce = (bce * valid).sum() / n_valid
            return bce + DiceLoss()(torch.sigmoid(margin)[:, None] * vm, fg[:, None] * vm)
        probs = torch.softmax(logits, 1) * vm
        t = t * vm
        w = self.weight.view(1, -1, *[1] * (t.ndim - 2)) if self.weight is not None else None
        loss = logits.new_zeros(())
        if self.name in ("dice_ce", "dice", "dice_focal"):
            loss = loss + self.dice(probs, t)
        if self.name == "tversky":
            loss = loss + self.tversky(probs, t)
        if self.name in ("dice_ce", "ce"):
            wt = t * w if w is not None else t
            ce = -(wt * torch.log_softmax(logits, 1)).sum(1)
            denom = wt.sum() if w is not None else n_valid
            loss = loss + ce.sum() / denom.clamp_min(1e-8)
        if self.name in ("focal", "dice_focal"):
            fl = self.focal_soft(logits, t)
            if w is not None:
                fl = fl * w
            loss = loss + (fl.sum(1) * valid).sum() / n_valid / logits.shape[1]
        return loss

    def _monai(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        soft = target.is_floating_point() and target.ndim == logits.ndim
        t = target if soft else target[:, None]
        common = {"include_background": self.include_background, "to_onehot_y": not soft,
                  "softmax": True}  # fmt: skip
        if self.name == "dice":
            return DiceLoss(**common, **_only(self.kwargs, "smooth"))(logits, t)
        if self.name == "dice_ce":
            return DiceCELoss(**common, weight=self.weight)(logits, t)
        return DiceFocalLoss(
            **common, gamma=float(self.kwargs.get("gamma", 2.0)), weight=self.weight
        )(logits, t)


def _only(kwargs: dict[str, Any], which: str) -> dict[str, Any]:
    keys = {"smooth": ("smooth_nr", "smooth_dr"), "ab": ("alpha", "beta", "smooth_nr", "smooth_dr")}
    return {k: v for k, v in kwargs.items() if k in keys[which]}


def build_loss(
    name: str,
    num_classes: int,
    *,
    class_weights: Sequence[float] | None = None,
    ignore_index: int | None = None,
    include_background: bool = False,
    **kwargs: Any,
) -> SegLoss:
    """Return the :class:`SegLoss` called ``name`` (see :data:`LOSSES`)."""
    return SegLoss(
        name,
        num_classes,
        class_weights=class_weights,
        ignore_index=ignore_index,
        include_background=include_background,
        **kwargs,
    )


__all__ = ["LOSSES", "SegLoss", "build_loss"]
