"""Training: patch sampling, augmentation, losses, the loop and validation through the engine.

Import :func:`geomed_seg.train.loop.train` and :func:`geomed_seg.train.config.load_config`;
this package imports torch, so nothing outside ``train``/``inference``/``models`` imports it.
"""

from __future__ import annotations
