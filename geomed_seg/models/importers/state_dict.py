"""Import a bare state dict (``torch.save(model.state_dict())``) with ``--arch`` from our registry.

The file says nothing about the model, so the architecture, its keyword arguments, the input
channels and the classes come from the user (``--arch``, ``--arch-args``, ``--in-channels``,
``--classes``; ``in_channels``/``out_channels``/``classes`` inside ``--arch-args`` work too).
A wrapper prefix (``module.``, ``model.``...) is stripped only when the keys do not fit the
architecture as they are (:func:`~geomed_seg.models.checkpoint.match_state_keys`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from geomed_seg.errors import ModelError
from geomed_seg.models.importers.base import (
    ImportedModel,
    ImportOptions,
    classes_from_names,
    default_roi,
)
from geomed_seg.models.importers.safe_load import load_state_dict


def build_with_weights(
    arch: str, in_channels: int, num_classes: int, kwargs: dict[str, Any], tensors: dict, src: Path
) -> Any:
    """Return registry architecture ``arch`` built with ``kwargs`` and ``tensors`` loaded strictly.

    Raises
    ------
    ModelError
        The weights do not fit (names the first missing and unexpected keys).
    """
    from geomed_seg.models.checkpoint import match_state_keys
    from geomed_seg.models.registry import build_model

    module = build_model(arch, in_channels, num_classes, **kwargs)
    expected = module.state_dict()
    tensors = match_state_keys(tensors, expected.keys(), str(src))
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ModelError(
            f"{src}: weights do not fit {arch} with {kwargs}: {len(missing)} missing keys "
            f"{missing[:3]}, {len(unexpected)} unexpected keys {unexpected[:3]}"
        )
    try:
        module.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        first = " ".join(str(exc).split())[:300]
        raise ModelError(f"{src}: weights do not fit {arch} with {kwargs} ({first})") from exc
    return module.eval()


_IN_KEYS = ("in_channels", "num_channels")
_OUT_KEYS = ("out_channels", "classes", "num_classes", "num_labels")


def run(src: Path, options: ImportOptions) -> ImportedModel:
    """Import ``src`` (``.pt/.pth/.bin/.ckpt/.safetensors``) as ``options.arch``."""
    from geomed_seg.models.card import ModelCard
    from geomed_seg.models.registry import available_models, get_spec, model_spatial_dims

    if not options.arch:
        raise ModelError(
            f"{src}: a bare state dict does not say its architecture; pass --arch NAME "
            f"(one of {', '.join(available_models())}) and --arch-args JSON"
        )
    spec = get_spec(options.arch)
    kwargs = dict(options.arch_args)
    in_channels = options.in_channels
    for key in (*_IN_KEYS, spec.in_key):
        if key in kwargs:
            in_channels = in_channels or int(kwargs.pop(key))
    n_out = None
    for key in (*_OUT_KEYS, spec.out_key):
        if key in kwargs:
            n_out = n_out or int(kwargs.pop(key))
    classes = options.classes or (
        classes_from_names([f"class_{i}" for i in range(n_out)]) if n_out else None
    )
    if in_channels is None or classes is None:
        raise ModelError(
            f"{src}: pass --in-channels and --classes (or in_channels/out_channels in "
            "--arch-args): a state dict does not record them"
        )
    if n_out is not None and n_out != len(classes):
        raise ModelError(f"{src}: --classes has {len(classes)} classes but out_channels={n_out}")
    tensors, trusted = load_state_dict(src, trust_code=options.trust_code)
    module = build_with_weights(spec.name, in_channels, len(classes), kwargs, tensors, src)
    dims = model_spatial_dims(spec.name, kwargs)
    card = ModelCard(
        name=options.name or src.stem,
        description=f"imported from the state dict {src.name}",
        architecture=spec.name,
        architecture_kwargs=kwargs,
        spatial_dims=dims,
        in_channels=in_channels,
        classes=classes,
        roi_size=list(options.roi_size or default_roi(dims, spec.divisor)),
    )
    return ImportedModel(
        module,
        card,
        [src],
        carried=[f"weights ({len(tensors)} tensors) into {spec.name}"],
        notes=[
            "a state dict records no normalisation, spacing or class names: set them with "
            "--card-json if the model needs them"
        ],
        trusted_code=trusted,
    )
