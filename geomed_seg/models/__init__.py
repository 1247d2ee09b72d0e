"""Models: architecture registry, model cards and safe checkpoints.

Importing this package does not import torch; building or loading a model does.
"""

from __future__ import annotations

from geomed_seg.models.card import ModelCard
from geomed_seg.models.checkpoint import LoadedModel, load_checkpoint, read_card, save_checkpoint
from geomed_seg.models.registry import ModelSpec, available_models, build_model, get_spec

__all__ = [
    "LoadedModel",
    "ModelCard",
    "ModelSpec",
    "available_models",
    "build_model",
    "get_spec",
    "load_checkpoint",
    "read_card",
    "save_checkpoint",
]
