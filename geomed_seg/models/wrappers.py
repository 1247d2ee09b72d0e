"""Small module wrappers that adapt imported networks to the engine's array order.

Our volumes are ``(z, y, x)`` arrays with ``x`` the NIfTI index ``i`` (ITK/numpy order).
MONAI's ``LoadImage`` with nibabel gives ``(i, j, k)`` = ``(x, y, z)`` arrays instead, so a
network trained in a MONAI bundle saw the spatial axes in the reverse order. Feeding it our
arrays unchanged would transpose the anatomy; :class:`ReversedAxes` reverses the spatial
axes on the way in and back on the way out, so the network sees what it was trained on.
"""

from __future__ import annotations

from typing import Any

import torch


class ReversedAxes(torch.nn.Module):
    """``forward(x)`` = ``net(x with spatial axes reversed)`` with the output's axes reversed back.

    Parameters
    ----------
    net : torch.nn.Module
        Takes and returns ``(N, C, *spatial)``.
    """

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    @staticmethod
    def _reverse(x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 1, *range(x.ndim - 1, 1, -1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits ``(N, K, *spatial)`` in the input's axis order."""
        return self._reverse(self.net(self._reverse(x)))


def build_reversed_axes(
    in_channels: int, num_classes: int, inner: str, inner_kwargs: dict[str, Any] | None = None
) -> ReversedAxes:
    """Return registry architecture ``inner`` built with ``inner_kwargs``, in :class:`ReversedAxes`."""
    from geomed_seg.models.registry import build_model

    return ReversedAxes(build_model(inner, in_channels, num_classes, **(inner_kwargs or {})))
