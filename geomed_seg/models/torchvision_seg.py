"""torchvision FCN (``fcn_resnet50`` / ``fcn_resnet101``) as a logits-in, logits-out module.

torchvision's segmentation models return ``{"out": logits, "aux": ...}``; :class:`FCNLogits`
is torchvision's own ``FCN`` class whose ``forward`` returns ``out`` only, so the engine and
the losses get a tensor. Submodule names are torchvision's (``backbone.*``,
``classifier.*``, ``aux_classifier.*`` with ``aux_loss=True``), so a torchvision state dict
loads unchanged. Built with ``weights=None, weights_backbone=None``: nothing is downloaded.
A first convolution for ``in_channels != 3`` replaces ResNet's ``conv1``.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.segmentation import fcn_resnet50, fcn_resnet101
from torchvision.models.segmentation.fcn import FCN

_BUILDERS = {"resnet50": fcn_resnet50, "resnet101": fcn_resnet101}


class FCNLogits(FCN):
    """torchvision ``FCN`` whose ``forward(x (N, C, y, x))`` returns logits ``(N, K, y, x)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """Return the main head's logits, upsampled to the input size (torchvision's forward)."""
        return super().forward(x)["out"]


def build_fcn(
    in_channels: int, num_classes: int, backbone: str = "resnet50", aux_loss: bool = False
) -> FCNLogits:
    """Return a randomly initialised FCN with a ResNet-50/101 backbone.

    Parameters
    ----------
    in_channels : int
        Input bands (3 keeps torchvision's first convolution).
    num_classes : int
        Output classes.
    backbone : {"resnet50", "resnet101"}
    aux_loss : bool
        Keep the auxiliary head (only so that torchvision weights with it load).
    """
    if backbone not in _BUILDERS:
        raise ValueError(f"FCN backbone {backbone!r}: choose resnet50 or resnet101")
    base = _BUILDERS[backbone](
        weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=aux_loss
    )
    model = FCNLogits(base.backbone, base.classifier, base.aux_classifier)
    if in_channels != 3:
        model.backbone.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
    return model
