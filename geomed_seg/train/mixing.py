"""MixUp and CutMix for segmentation batches: image and mask mixed consistently.

Both pair each patch with another patch of the same batch (a random permutation) and draw
``lam ~ Beta(alpha, alpha)``:

* **MixUp** (Zhang et al., 2018): ``x = lam * x_a + (1 - lam) * x_b`` and the *soft* target
  ``lam * onehot(y_a) + (1 - lam) * onehot(y_b)`` ``(N, K, *roi)``; our losses accept such
  probability targets (:class:`geomed_seg.train.losses.SegLoss`). A sample ignored in either
  patch gets the all-zero target vector, which the losses ignore.
* **CutMix** (Yun et al., 2019): a box covering a fraction ``1 - lam`` of the patch (every
  spatial axis scaled by ``(1 - lam) ** (1 / ndim)``) is copied from ``x_b`` into ``x_a``
  and from ``y_b`` into ``y_a``: labels stay integer classes.

Batch-level (they need two patches), so they run in the training loop after collation, not
in the per-patch MONAI pipeline of :mod:`.augment`. MONAI has no segmentation MixUp/CutMix
that mixes the mask consistently, hence this small module.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


def one_hot_valid(y: torch.Tensor, num_classes: int, ignore_index: int | None) -> torch.Tensor:
    """Return float one-hot targets ``(N, K, *roi)`` of labels ``(N, *roi)``; ignored -> zeros."""
    valid = torch.ones_like(y, dtype=torch.bool) if ignore_index is None else y != ignore_index
    t = torch.where(valid, y, torch.zeros_like(y)).clamp(0, num_classes - 1)
    return F.one_hot(t, num_classes).movedim(-1, 1).float() * valid[:, None]


def mixup(
    x: torch.Tensor, y: torch.Tensor, lam: float, perm: torch.Tensor, num_classes: int,
    ignore_index: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Return ``(mixed images, soft targets (N, K, *roi))`` (see module docstring)."""
    ta = one_hot_valid(y, num_classes, ignore_index)
    tb = ta[perm]
    both = (ta.sum(1, keepdim=True) > 0) & (tb.sum(1, keepdim=True) > 0)
    soft = (lam * ta + (1 - lam) * tb) * both
    return lam * x + (1 - lam) * x[perm], soft


def cutmix_box(shape: tuple[int, ...], lam: float, rng: np.random.Generator) -> tuple[slice, ...]:
    """Return a random box (slices, array order) covering about ``1 - lam`` of ``shape``."""
    ratio = (1.0 - lam) ** (1.0 / len(shape))
    box = []
    for n in shape:
        size = int(round(n * ratio))
        start = int(rng.integers(0, n - size + 1))
        box.append(slice(start, start + size))
    return tuple(box)


def cutmix(
    x: torch.Tensor, y: torch.Tensor, box: tuple[slice, ...], perm: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(x, y)`` with ``box`` of every patch replaced by that of patch ``perm[i]``."""
    x, y = x.clone(), y.clone()
    x[(slice(None), slice(None), *box)] = x[perm][(slice(None), slice(None), *box)]
    y[(slice(None), *box)] = y[perm][(slice(None), *box)]
    return x, y


@dataclass(frozen=True)
class MixOptions:
    """Batch mixing of a training run: CutMix with ``cutmix_prob``, else MixUp with
    ``mixup_prob``; mixing weights drawn from Beta(alpha, alpha)."""

    mixup_prob: float = 0.0
    mixup_alpha: float = 0.4
    cutmix_prob: float = 0.0
    cutmix_alpha: float = 1.0


def mix_batch(
    x: torch.Tensor,
    y: torch.Tensor,
    rng: np.random.Generator,
    options: MixOptions,
    *,
    num_classes: int,
    ignore_index: int | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply CutMix (probability ``cutmix_prob``) or else MixUp (``mixup_prob``) to a batch.

    Returns images ``(N, C, *roi)`` and integer labels ``(N, *roi)`` (unchanged or CutMix) or
    soft targets ``(N, K, *roi)`` (MixUp). A batch of one patch is returned unchanged.
    """
    o = options
    if x.shape[0] < 2:
        return x, y
    u = rng.random()
    perm = torch.as_tensor(rng.permutation(x.shape[0]), device=x.device)
    if u < o.cutmix_prob:
        lam = float(rng.beta(o.cutmix_alpha, o.cutmix_alpha))
        return cutmix(x, y, cutmix_box(tuple(y.shape[1:]), lam, rng), perm)
    if u < o.cutmix_prob + o.mixup_prob:
        lam = float(rng.beta(o.mixup_alpha, o.mixup_alpha))
        return mixup(x, y, lam, perm, num_classes, ignore_index)
    return x, y


__all__ = ["MixOptions", "cutmix", "cutmix_box", "mix_batch", "mixup", "one_hot_valid"]
