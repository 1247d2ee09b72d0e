"""Transfer learning: load a local backbone state dict into a model's encoder, freeze it.

A timm or torchvision ResNet state dict (e.g. the TorchGeo Sentinel-2 ResNets, saved as
plain tensors) uses the same parameter names as segmentation-models-pytorch's ResNet
encoders (``conv1.weight``, ``layer1.0.bn1.running_mean`` ...), minus the classifier
``fc.*``. :func:`load_encoder_weights` maps such a file into ``model.encoder``: a wrapper
prefix (``backbone.``, ``encoder.``, ``model.``, ``module.``) is stripped when that makes more
keys fit; every missing and unexpected key is reported; a key whose shape differs (e.g. a
13-band ``conv1`` for a 4-band model) is refused by name, never silently skipped. The file is
read with the weights-only loader (or safetensors): nothing is unpickled, nothing downloaded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geomed_seg.errors import ConfigError, ModelError

logger = logging.getLogger(__name__)

PREFIXES = ("backbone.", "encoder.", "model.", "module.", "model.encoder.", "model.backbone.")


@dataclass
class EncoderReport:
    """What :func:`load_encoder_weights` loaded: counts and the key names left out."""

    path: str
    loaded: int
    prefix_stripped: str = ""
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """Return the report as JSON-ready data."""
        return {
            "path": self.path, "loaded": self.loaded, "prefix_stripped": self.prefix_stripped,
            "missing": self.missing, "unexpected": self.unexpected,
        }  # fmt: skip


def _encoder(module: Any, what: str) -> Any:
    enc = getattr(module, "encoder", None)
    if enc is None:
        raise ConfigError(
            f"{what} needs a model with an encoder (segmentation-models-pytorch architectures); "
            f"{type(module).__name__} has none"
        )
    return enc


def load_encoder_weights(module: Any, path: str | Path) -> EncoderReport:
    """Load the backbone state dict at ``path`` into ``module.encoder``; return the report.

    Raises
    ------
    ConfigError
        The model has no encoder.
    ModelError
        Unreadable/unsafe file, no key fits, or a key's shape differs (named).
    """
    from geomed_seg.models.importers.safe_load import load_state_dict

    p = Path(path)
    encoder = _encoder(module, "model.encoder_weights")
    tensors, _ = load_state_dict(p)
    expected = encoder.state_dict()
    best, best_prefix = tensors, ""
    for prefix in PREFIXES:
        cand = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        if len(set(cand) & set(expected)) > len(set(best) & set(expected)):
            best, best_prefix = cand, prefix
    common = sorted(set(best) & set(expected))
    if not common:
        raise ModelError(
            f"{p}: no key fits the {type(encoder).__name__} encoder (file keys like "
            f"{sorted(tensors)[:3]}, encoder keys like {sorted(expected)[:3]})"
        )
    wrong = [
        f"{k} {tuple(best[k].shape)} vs {tuple(expected[k].shape)}"
        for k in common
        if best[k].shape != expected[k].shape
    ]
    if wrong:
        raise ModelError(
            f"{p}: {len(wrong)} encoder weights have another shape than the model's "
            f"(file vs model): {'; '.join(wrong[:3])}; check in_channels and encoder_name"
        )
    encoder.load_state_dict({k: best[k] for k in common}, strict=False)
    report = EncoderReport(
        str(p), len(common), best_prefix,
        missing=sorted(set(expected) - set(best)), unexpected=sorted(set(best) - set(expected)),
    )  # fmt: skip
    logger.warning(
        "%s: loaded %d encoder tensors; %d missing %s, %d unexpected %s",
        p, report.loaded, len(report.missing), report.missing[:5], len(report.unexpected),
        report.unexpected[:5],
    )  # fmt: skip
    return report


def load_init_checkpoint(module: Any, path: str | Path, card: Any) -> None:
    """Copy the weights of our checkpoint at ``path`` into ``module`` (fine-tuning start).

    Raises
    ------
    ConfigError
        The checkpoint's card names another architecture, kwargs, channels or class count
        than the run's model (named), so its weights cannot be the run's starting point.
    """
    from geomed_seg.models.checkpoint import load_checkpoint
    from geomed_seg.models.registry import get_spec

    loaded = load_checkpoint(path)
    theirs = loaded.card
    problems = []
    if get_spec(theirs.architecture).name != get_spec(card.architecture).name:
        problems.append(f"architecture {theirs.architecture} vs {card.architecture}")
    if theirs.architecture_kwargs != card.architecture_kwargs:
        problems.append(f"kwargs {theirs.architecture_kwargs} vs {card.architecture_kwargs}")
    if (theirs.in_channels, theirs.num_classes) != (card.in_channels, card.num_classes):
        problems.append(
            f"{theirs.in_channels} channels/{theirs.num_classes} classes vs "
            f"{card.in_channels}/{card.num_classes}"
        )
    if problems:
        raise ConfigError(
            f"model.init_checkpoint {path}: does not fit the run ({'; '.join(problems)})"
        )
    module.load_state_dict(loaded.module.state_dict(), strict=True)
    logger.info("%s: fine-tuning from this checkpoint's weights", path)


def freeze_encoder(module: Any) -> int:
    """Stop gradients to ``module.encoder`` and return how many parameters were frozen.

    Batch-norm statistics of a frozen encoder must stay too: call :func:`encoder_eval`
    after every ``module.train()``.
    """
    encoder = _encoder(module, "model.freeze_encoder")
    n = 0
    for p in encoder.parameters():
        p.requires_grad_(False)
        n += p.numel()
    return n


def encoder_eval(module: Any) -> None:
    """Put a frozen encoder back in eval mode (its batch-norm running stats do not change)."""
    module.encoder.eval()


__all__ = [
    "EncoderReport",
    "encoder_eval",
    "freeze_encoder",
    "load_encoder_weights",
    "load_init_checkpoint",
]
