"""geomed-seg: segment very large satellite scenes and medical volumes with one streaming engine.

Public API (imported lazily so ``geomed-seg info`` starts fast and never imports torch):
``open_image``, ``write_image``, ``segment``, ``segment_file``, ``EngineOptions``, ``evaluate``,
``run_pipeline``, ``Image``, ``GeoGrid``, ``VoxelGrid``.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "Image": "geomed_seg.core.image",
    "GeoGrid": "geomed_seg.core.grid",
    "VoxelGrid": "geomed_seg.core.grid",
    "open_image": "geomed_seg.io.registry",
    "write_image": "geomed_seg.io.registry",
    "segment": "geomed_seg.inference.segment",
    "segment_file": "geomed_seg.inference.segment_file",
    "EngineOptions": "geomed_seg.inference.options",
    "evaluate": "geomed_seg.metrics.evaluate",
    "run_pipeline": "geomed_seg.pipelines.runner",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'geomed_seg' has no attribute {name!r}")


__all__ = ["__version__", *_LAZY]
