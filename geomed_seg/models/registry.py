"""Model registry: architecture name -> builder, with a spec readable without importing torch.

A :class:`ModelSpec` says what an architecture is (library, spatial dims, default keyword
arguments, the size its inputs must be divisible by) as plain data, so cards can be validated
and ``geomed-seg info`` can list models without the cost of importing torch. The builder
imports segmentation-models-pytorch or MONAI only when a model is actually built.

Pretrained encoder weights are never downloaded: smp builders always pass
``encoder_weights=None``; weights come from our own checkpoints (:mod:`.checkpoint`).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import import_module
from types import MappingProxyType
from typing import Any

from geomed_seg.errors import ModelError

Builder = Callable[..., Any]


@dataclass(frozen=True)
class ModelSpec:
    """What an architecture is, as data (no torch import).

    Parameters
    ----------
    name : str
        Registry name, e.g. ``"smp.Unet"``.
    spatial_dims : int
        2 (input ``(N, C, y, x)``) or 3 (input ``(N, C, z, y, x)``).
    library : str
        ``"segmentation_models_pytorch"``, ``"monai"``, ``"transformers"``, ``"torchvision"``
        or ``"geomed_seg"``.
    target : str
        ``"module:Class"`` that the default builder instantiates.
    defaults : Mapping
        Keyword arguments used unless the card overrides them.
    in_key, out_key : str
        Constructor keywords for the number of input channels and of output classes.
    divisor : int
        Every spatial edge of an input window must be a multiple of this (pixels/voxels).
    """

    name: str
    spatial_dims: int
    library: str
    target: str
    defaults: Mapping[str, Any] = field(default_factory=dict)
    in_key: str = "in_channels"
    out_key: str = "out_channels"
    divisor: int = 1
    description: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "defaults", MappingProxyType(dict(self.defaults)))


_SPECS: dict[str, ModelSpec] = {}
_BUILDERS: dict[str, Builder] = {}
_ALIASES: dict[str, str] = {}


def register_model(
    spec: ModelSpec, builder: Builder | None = None, *, aliases: tuple[str, ...] = ()
) -> None:
    """Register ``spec`` (and an optional custom ``builder(**kwargs) -> nn.Module``)."""
    _SPECS[spec.name] = spec
    if builder is not None:
        _BUILDERS[spec.name] = builder
    for alias in aliases:
        _ALIASES[alias] = spec.name


def available_models() -> list[str]:
    """Return the registered architecture names, sorted."""
    return sorted(_SPECS)


def get_spec(name: str) -> ModelSpec:
    """Return the :class:`ModelSpec` for ``name`` (``"smp.Unet"``, or an alias such as ``"Unet"``).

    Raises
    ------
    ModelError
        Unknown name, with the closest registered names as a suggestion.
    """
    if name in _SPECS:
        return _SPECS[name]
    # aliases are case-sensitive ("Unet" is smp, "UNet" is MONAI); full names are not
    key = _ALIASES.get(name) or {n.lower(): n for n in _SPECS}.get(name.lower())
    if key is not None:
        return _SPECS[key]
    by_lower = {c.lower(): c for c in [*_ALIASES, *_SPECS]}
    close = [
        by_lower[c]
        for c in difflib.get_close_matches(name.lower(), list(by_lower), n=3, cutoff=0.6)
    ]
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise ModelError(
        f"unknown model architecture {name!r}{hint} (available: {', '.join(available_models())})"
    )


def resolve_kwargs(name: str, in_channels: int, num_classes: int, **kwargs: Any) -> dict[str, Any]:
    """Return the full constructor kwargs: spec defaults, then ``kwargs``, then channels/classes."""
    spec = get_spec(name)
    for key in (spec.in_key, spec.out_key):
        if key in kwargs:
            raise ModelError(
                f"{spec.name}: pass the channel count as in_channels/num_classes, not {key!r} in kwargs"
            )
    merged = {
        **spec.defaults,
        **kwargs,
        spec.in_key: int(in_channels),
        spec.out_key: int(num_classes),
    }
    if spec.library == "segmentation_models_pytorch":
        weights = merged.get("encoder_weights")
        if weights is not None:
            raise ModelError(
                f"{spec.name}: encoder_weights={weights!r} would download weights; geomed-seg builds "
                "with encoder_weights=None and loads weights from a checkpoint"
            )
        merged["encoder_weights"] = None
    return merged


def model_spatial_dims(name: str, kwargs: Mapping[str, Any] | None = None) -> int:
    """Return the spatial dims a built model expects (MONAI nets may override ``spatial_dims``)."""
    spec = get_spec(name)
    if spec.name == "reversed_axes" and kwargs and "inner" in kwargs:
        return model_spatial_dims(kwargs["inner"], kwargs.get("inner_kwargs") or {})
    if spec.library == "monai" and kwargs and "spatial_dims" in kwargs:
        return int(kwargs["spatial_dims"])
    return spec.spatial_dims


def build_model(name: str, in_channels: int, num_classes: int, **kwargs: Any) -> Any:
    """Return a freshly initialised ``torch.nn.Module`` for architecture ``name``.

    Parameters
    ----------
    name : str
        Registry name (see :func:`available_models`).
    in_channels : int
        Number of input bands/channels.
    num_classes : int
        Number of output channels (one logit per class).
    **kwargs
        Constructor overrides (e.g. ``encoder_name="resnet18"``, ``features=(8, ...)``).

    Raises
    ------
    ModelError
        Unknown architecture, or the library rejects the arguments.
    """
    spec = get_spec(name)
    merged = resolve_kwargs(spec.name, in_channels, num_classes, **kwargs)
    builder = _BUILDERS.get(spec.name, _import_builder(spec))
    try:
        return builder(**merged)
    except ImportError as exc:  # incl. MONAI's OptionalImportError (e.g. einops for SwinUNETR)
        raise ModelError(
            f"{spec.name}: a package it needs is missing ({exc}); pip install it"
        ) from exc
    except (TypeError, ValueError, KeyError, AssertionError) as exc:
        raise ModelError(f"{spec.name}: cannot build with {merged}: {exc}") from exc


def _import_builder(spec: ModelSpec) -> Builder:
    def build(**kw: Any) -> Any:
        module, _, attr = spec.target.partition(":")
        return getattr(import_module(module), attr)(**kw)

    return build


_SMP = "segmentation_models_pytorch"
for _cls, _enc, _div in (
    ("Unet", "resnet34", 32),
    ("UnetPlusPlus", "resnet34", 32),
    ("DeepLabV3Plus", "resnet34", 16),
    ("FPN", "resnet34", 32),
    ("Segformer", "mit_b0", 32),
):
    register_model(
        ModelSpec(
            name=f"smp.{_cls}",
            spatial_dims=2,
            library=_SMP,
            target=f"{_SMP}:{_cls}",
            defaults={"encoder_name": _enc, "encoder_weights": None},
            in_key="in_channels",
            out_key="classes",
            divisor=_div,
            description=f"segmentation-models-pytorch {_cls} (random init, no downloads)",
        ),
        aliases=(_cls,),
    )

for _cls, _defaults, _div in (
    (
        "UNet",
        {
            "spatial_dims": 3,
            "channels": (16, 32, 64, 128, 256),
            "strides": (2, 2, 2, 2),
            "num_res_units": 2,
        },
        16,
    ),
    ("BasicUNet", {"spatial_dims": 3}, 16),
    ("SegResNet", {"spatial_dims": 3, "init_filters": 16}, 8),
    ("SwinUNETR", {"spatial_dims": 3, "feature_size": 24}, 32),
):
    register_model(
        ModelSpec(
            name=f"monai.{_cls}",
            spatial_dims=3,
            library="monai",
            target=f"monai.networks.nets:{_cls}",
            defaults=_defaults,
            divisor=_div,
            description=f"MONAI {_cls}",
        ),
        aliases=(_cls,),
    )

register_model(
    ModelSpec(
        name="hf.Segformer",
        spatial_dims=2,
        library="transformers",
        target="geomed_seg.models.hf_segformer:build_segformer",
        defaults={"config": {}},
        in_key="num_channels",
        out_key="num_labels",
        divisor=32,
        description="Hugging Face SegFormer (config from an imported config.json; logits "
        "upsampled to the window as the HF post-processing does)",
    ),
    aliases=("SegformerForSemanticSegmentation",),
)

for _name, _backbone in (("fcn_resnet50", "resnet50"), ("fcn_resnet101", "resnet101")):
    register_model(
        ModelSpec(
            name=f"torchvision.{_name}",
            spatial_dims=2,
            library="torchvision",
            target="geomed_seg.models.torchvision_seg:build_fcn",
            defaults={"backbone": _backbone, "aux_loss": False},
            in_key="in_channels",
            out_key="num_classes",
            divisor=8,
            description=f"torchvision FCN {_backbone} (random init or your weights; no downloads)",
        ),
        aliases=(f"FCN_{_backbone}",),
    )

register_model(
    ModelSpec(
        name="geomed.SegNet",
        spatial_dims=2,
        library="geomed_seg",
        target="geomed_seg.models.segnet:SegNet",
        defaults={"features": (64, 128, 256, 512, 512), "convs": (2, 2, 3, 3, 3)},
        in_key="in_channels",
        out_key="num_classes",
        divisor=32,
        description="SegNet encoder-decoder with max-pooling indices (hand-written: no "
        "maintained package has it)",
    ),
    aliases=("SegNet",),
)

register_model(
    ModelSpec(
        name="reversed_axes",
        spatial_dims=3,
        library="geomed_seg",
        target="geomed_seg.models.wrappers:build_reversed_axes",
        defaults={"inner_kwargs": {}},
        in_key="in_channels",
        out_key="num_classes",
        divisor=1,
        description="another registry architecture (inner, inner_kwargs) fed arrays with the "
        "spatial axes reversed: MONAI-bundle networks trained on (x, y, z) arrays",
    )
)

register_model(
    ModelSpec(
        name="nnunet.Network",
        spatial_dims=3,
        library="dynamic_network_architectures",
        target="geomed_seg.models.nnunet_net:build_nnunet",
        defaults={"kw_requires_import": [], "n_folds": 1},
        in_key="in_channels",
        out_key="num_classes",
        divisor=1,
        description="an nnU-Net v2 plans architecture (dynamic_network_architectures U-Net), "
        "one network per fold, logits averaged; imported with --format nnunet",
    )
)

__all__ = [
    "ModelSpec",
    "available_models",
    "build_model",
    "get_spec",
    "model_spatial_dims",
    "register_model",
    "resolve_kwargs",
]
