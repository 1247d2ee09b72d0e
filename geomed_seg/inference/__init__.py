"""Sliding-window inference: pure planning, an in-memory MONAI-equal loop, a streaming engine."""

from __future__ import annotations

from typing import Any

__all__ = ["SegmentResult", "segment", "sliding_window_inference"]


def __getattr__(name: str) -> Any:
    # lazy: importing geomed_seg.inference.plan must not import torch
    if name in ("segment", "SegmentResult"):
        from geomed_seg.inference import segment as _segment

        return getattr(_segment, name)
    if name == "sliding_window_inference":
        from geomed_seg.inference.sliding import sliding_window_inference

        return sliding_window_inference
    raise AttributeError(name)
