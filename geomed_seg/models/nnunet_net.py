"""nnU-Net v2 networks, built from a plans file's ``architecture`` entry without nnunetv2.

nnU-Net stores its network as data: ``network_class_name`` (a
``dynamic_network_architectures`` class), ``arch_kwargs`` and ``_kw_requires_import`` (the
kwargs that name classes, e.g. ``"torch.nn.modules.conv.Conv3d"``). nnU-Net resolves those
names with ``pydoc.locate``, which imports anything; here only the U-Nets of
``dynamic_network_architectures.architectures.unet`` and layer classes of ``torch.nn`` and
``dynamic_network_architectures.building_blocks`` are accepted, so a plans file cannot make
the import run arbitrary code.

:class:`NnUNetEnsemble` holds one network per fold and averages their logits (as
``nnUNetPredictor`` does), after permuting our ``(z, y, x)`` windows by the plans'
``transpose_forward`` and back.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import import_module
from typing import Any

import torch

from geomed_seg.errors import ModelError

#: Network classes a plans file may name (module ``dynamic_network_architectures.architectures.unet``).
NETWORKS = ("PlainConvUNet", "ResidualEncoderUNet", "ResidualUNet")
_DNA_UNET = "dynamic_network_architectures.architectures.unet"
#: Module prefixes a ``_kw_requires_import`` value may come from.
LAYER_MODULES = ("torch.nn.", "dynamic_network_architectures.building_blocks.")


def network_class(name: str) -> type:
    """Return the ``dynamic_network_architectures`` class named by a plans file (allowlisted)."""
    short = name.rsplit(".", 1)[-1]
    if short not in NETWORKS or (("." in name) and not name.startswith(f"{_DNA_UNET}.")):
        raise ModelError(
            f"network class {name!r} is not one we build (allowed: "
            f"{', '.join(f'{_DNA_UNET}.{n}' for n in NETWORKS)})"
        )
    try:
        return getattr(import_module(_DNA_UNET), short)
    except ImportError as exc:
        raise ModelError(
            f"{name}: needs the dynamic-network-architectures package ({exc}); pip install it"
        ) from exc


def layer_class(dotted: str) -> type:
    """Return the layer class named ``dotted`` (e.g. ``torch.nn.modules.conv.Conv3d``), allowlisted."""
    if not isinstance(dotted, str) or not dotted.startswith(LAYER_MODULES):
        raise ModelError(
            f"plans name the class {dotted!r}; only classes under {' or '.join(LAYER_MODULES)} "
            "are imported"
        )
    module, _, attr = dotted.rpartition(".")
    try:
        obj = getattr(import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ModelError(f"plans name the class {dotted!r}, which cannot be found ({exc})") from exc
    if not isinstance(obj, type) or not issubclass(obj, torch.nn.Module):
        raise ModelError(f"plans name {dotted!r}, which is not a torch.nn.Module class")
    return obj


def build_network(
    network_class_name: str,
    arch_kwargs: dict[str, Any],
    kw_requires_import: Sequence[str],
    in_channels: int,
    num_classes: int,
) -> torch.nn.Module:
    """Return one fold's network as ``get_network_from_plans`` builds it (no deep supervision)."""
    kwargs = dict(arch_kwargs)
    for key in kw_requires_import:
        if kwargs.get(key) is not None:
            kwargs[key] = layer_class(kwargs[key])
    kwargs["deep_supervision"] = False
    cls = network_class(network_class_name)
    try:
        return cls(input_channels=in_channels, num_classes=num_classes, **kwargs)
    except (TypeError, ValueError, AssertionError) as exc:
        raise ModelError(f"{network_class_name}: cannot build with {arch_kwargs}: {exc}") from exc


class NnUNetEnsemble(torch.nn.Module):
    """``forward(x)`` = mean over folds of ``net(x permuted by transpose_forward)``, permuted back.

    Parameters
    ----------
    nets : sequence of torch.nn.Module
        One network per fold (same architecture), each ``(N, C, *spatial) -> (N, K, *spatial)``.
    transpose_forward : sequence of int
        nnU-Net's axis order: network axis ``j`` is our spatial axis ``transpose_forward[j]``.
    """

    def __init__(self, nets: Sequence[torch.nn.Module], transpose_forward: Sequence[int]) -> None:
        super().__init__()
        self.folds = torch.nn.ModuleList(nets)
        fwd = [int(t) for t in transpose_forward]
        self.forward_perm = (0, 1, *[2 + t for t in fwd])
        self.backward_perm = (0, 1, *[2 + fwd.index(i) for i in range(len(fwd))])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the fold-averaged logits ``(N, K, *spatial)`` in the input's axis order."""
        x = x.permute(self.forward_perm)
        out = self.folds[0](x)
        for net in self.folds[1:]:
            out = out + net(x)
        if len(self.folds) > 1:
            out = out / len(self.folds)
        return out.permute(self.backward_perm)


def build_nnunet(
    in_channels: int,
    num_classes: int,
    network_class_name: str,
    arch_kwargs: dict[str, Any],
    kw_requires_import: Sequence[str] = (),
    n_folds: int = 1,
    transpose_forward: Sequence[int] | None = None,
) -> NnUNetEnsemble:
    """Return an :class:`NnUNetEnsemble` of ``n_folds`` networks of the plans' architecture."""
    if n_folds < 1:
        raise ModelError(f"n_folds must be >= 1, got {n_folds}")
    nets = [
        build_network(network_class_name, arch_kwargs, kw_requires_import, in_channels, num_classes)
        for _ in range(n_folds)
    ]
    ndim = 3 if "3d" in str(arch_kwargs.get("conv_op", "")).lower() else 2
    return NnUNetEnsemble(nets, transpose_forward or tuple(range(ndim)))


__all__ = ["NETWORKS", "NnUNetEnsemble", "build_network", "build_nnunet", "layer_class"]
