"""Sliding-window inference: pure planning, an in-memory MONAI-equal loop, a streaming engine.

The public entry point is :func:`geomed_seg.inference.segment.segment` (also
``geomed_seg.segment``). It is not re-exported here because the attribute ``segment`` of this
package is the submodule of that name. Importing this package does not import torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_LAZY = {
    "SegmentResult": "geomed_seg.inference.segment",
    "EngineOptions": "geomed_seg.inference.options",
    "labels_from_probabilities": "geomed_seg.inference.blend",
    "sliding_window_inference": "geomed_seg.inference.sliding",
    "plan_windows": "geomed_seg.inference.plan",
    "importance_map": "geomed_seg.inference.plan",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'geomed_seg.inference' has no attribute {name!r}")
