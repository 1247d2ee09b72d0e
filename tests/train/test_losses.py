"""Losses vs MONAI and torch references; the ignore index really masks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss, DiceFocalLoss, TverskyLoss

from geomed_seg.errors import ConfigError
from geomed_seg.train.losses import LOSSES, build_loss


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 8, 8, generator=g)
    target = torch.randint(0, 3, (2, 8, 8), generator=g)
    return logits, target


def test_dice_ce_and_dice_focal_equal_monai(batch):
    logits, target = batch
    ref = DiceCELoss(include_background=False, to_onehot_y=True, softmax=True)
    assert torch.allclose(build_loss("dice_ce", 3)(logits, target), ref(logits, target[:, None]))
    ref = DiceFocalLoss(include_background=False, to_onehot_y=True, softmax=True)
    assert torch.allclose(build_loss("dice_focal", 3)(logits, target), ref(logits, target[:, None]))


def test_masked_path_without_ignored_samples_equals_monai(batch):
    logits, target = batch
    # ignore_index set but absent: the masked implementation must equal MONAI's own losses
    ours = build_loss("dice_ce", 3, ignore_index=255)(logits, target)
    ref = DiceCELoss(include_background=False, to_onehot_y=True, softmax=True)
    assert torch.allclose(ours, ref(logits, target[:, None]), atol=1e-6)
    ours = build_loss("tversky", 3, ignore_index=255, alpha=0.3, beta=0.7)(logits, target)
    ref = TverskyLoss(include_background=False, to_onehot_y=True, softmax=True, alpha=0.3, beta=0.7)
    assert torch.allclose(ours, ref(logits, target[:, None]), atol=1e-6)


def test_weighted_ce_with_ignore_equals_torch(batch):
    logits, target = batch
    target = target.clone()
    target[:, :2] = 255
    w = [0.2, 1.0, 3.0]
    ours = build_loss("ce", 3, class_weights=w, ignore_index=255)(logits, target)
    ref = F.cross_entropy(logits, target, weight=torch.tensor(w), ignore_index=255)
    assert torch.allclose(ours, ref, atol=1e-6)


@pytest.mark.parametrize("name", [n for n in LOSSES if n != "bce_dice"])
def test_ignored_samples_do_not_change_the_loss(batch, name):
    logits, target = batch
    target = target.clone()
    target[:, 3:5] = 255
    fn = build_loss(name, 3, ignore_index=255)
    other = logits.clone()
    other[:, :, 3:5] = torch.randn_like(other[:, :, 3:5]) * 10
    assert torch.allclose(fn(logits, target), fn(other, target), atol=1e-6)
    assert not torch.allclose(fn(logits, target), build_loss(name, 3)(logits, target.clamp(0, 2)))


def test_bce_dice_binary_equals_bce_plus_dice():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 2, 8, 8, generator=g)
    target = torch.randint(0, 2, (2, 8, 8), generator=g)
    margin = logits[:, 1] - logits[:, 0]
    p = torch.sigmoid(margin)
    t = target.float()
    dice = 1 - ((2 * (p * t).sum((1, 2)) + 1e-5) / (p.sum((1, 2)) + t.sum((1, 2)) + 1e-5)).mean()
    ref = F.binary_cross_entropy_with_logits(margin, t) + dice
    assert torch.allclose(build_loss("bce_dice", 2)(logits, target), ref, atol=1e-6)


def test_bad_names_and_weights_are_config_errors():
    with pytest.raises(ConfigError, match="unknown loss"):
        build_loss("dise", 3)
    with pytest.raises(ConfigError, match="class_weights"):
        build_loss("ce", 3, class_weights=[1, 2])
