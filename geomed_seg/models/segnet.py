"""SegNet (Badrinarayanan et al., 2017): an encoder-decoder that upsamples with max-pooling indices.

Written here because no maintained package ships it: segmentation-models-pytorch, MONAI,
torchvision and timm have no SegNet, and the repositories that do are unmaintained scripts.
It is small: each encoder stage is ``n`` (3×3 conv, batch norm, ReLU) blocks then a 2×2 max
pool that *returns its indices*; each decoder stage unpools with the indices of the matching
encoder stage (``MaxUnpool2d``: values go back exactly where the maxima were, zeros
elsewhere), then ``n`` conv blocks. A final 1×1 conv gives the class logits. No
fully-connected layers, so any window whose edges divide by ``2 ** len(features)`` works.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def _block(c_in: int, c_out: int, n: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(n):
        layers += [
            nn.Conv2d(c_in if i == 0 else c_out, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
        ]
    return nn.Sequential(*layers)


class SegNet(nn.Module):
    """SegNet for 2D rasters: ``forward(x (N, C, y, x)) -> logits (N, K, y, x)``.

    Parameters
    ----------
    in_channels : int
        Input bands.
    num_classes : int
        Output classes.
    features : sequence of int
        Channels of each encoder stage (VGG-16 SegNet: 64, 128, 256, 512, 512).
    convs : sequence of int
        Conv blocks per stage (VGG-16 SegNet: 2, 2, 3, 3, 3).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        features: Sequence[int] = (64, 128, 256, 512, 512),
        convs: Sequence[int] = (2, 2, 3, 3, 3),
    ) -> None:
        super().__init__()
        if len(features) != len(convs) or not features:
            raise ValueError(f"features {features} and convs {convs} must have the same length")
        self.encoders = nn.ModuleList()
        c = in_channels
        for f, n in zip(features, convs, strict=True):
            self.encoders.append(_block(c, f, n))
            c = f
        self.decoders = nn.ModuleList()
        outs = [*features[-2::-1], features[0]]  # each stage ends at the next shallower width
        for f_out, n in zip(outs, convs[::-1], strict=True):
            self.decoders.append(_block(c, f_out, n))
            c = f_out
        self.head = nn.Conv2d(c, num_classes, 1)
        self.pool = nn.MaxPool2d(2, 2, return_indices=True)
        self.unpool = nn.MaxUnpool2d(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits ``(N, K, y, x)``; ``y`` and ``x`` must divide by ``2 ** stages``."""
        indices, sizes = [], []
        for enc in self.encoders:
            x = enc(x)
            sizes.append(x.shape)
            x, idx = self.pool(x)
            indices.append(idx)
        for dec, idx, size in zip(self.decoders, indices[::-1], sizes[::-1], strict=True):
            x = dec(self.unpool(x, idx, output_size=size))
        return self.head(x)
