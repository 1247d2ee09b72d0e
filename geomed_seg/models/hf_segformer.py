"""Hugging Face SegFormer as a plain logits-in-logits-out module for the engine.

``SegformerForSemanticSegmentation`` returns an output object whose logits are at 1/4 of the
input resolution; its image processor's ``post_process_semantic_segmentation`` resizes them
with ``F.interpolate(mode="bilinear", align_corners=False)`` to the target size before the
argmax. :class:`SegformerLogits` does exactly that resize inside ``forward`` (to the window),
so the engine blends full-resolution logits like any other model's. The state dict keys are
those of the HF class, so HF weights load unchanged.

Only the network comes from ``transformers``; it is built from the stored config dict, never
with ``from_pretrained`` (nothing is downloaded, no remote code).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from transformers import SegformerConfig, SegformerForSemanticSegmentation

#: config.json keys that describe the checkpoint file, not the network.
NON_NETWORK_KEYS = (
    "architectures",
    "id2label",
    "label2id",
    "num_labels",
    "num_channels",
    "transformers_version",
    "_name_or_path",
    "dtype",
    "torch_dtype",
    "model_type",
)


class SegformerLogits(SegformerForSemanticSegmentation):
    """SegFormer whose ``forward(x)`` returns logits ``(N, K, y, x)`` at the input's size."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """Return bilinear-upsampled logits for ``x`` ``(N, C, y, x)`` (HF post-processing)."""
        logits = super().forward(pixel_values=x).logits
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def build_segformer(
    num_channels: int, num_labels: int, config: dict[str, Any] | None = None
) -> SegformerLogits:
    """Return a randomly initialised :class:`SegformerLogits` for an HF config dict.

    Parameters
    ----------
    num_channels : int
        Input bands.
    num_labels : int
        Output classes.
    config : dict, optional
        ``config.json`` of the HF model (keys of :data:`NON_NETWORK_KEYS` are ignored).
    """
    kwargs = {k: v for k, v in (config or {}).items() if k not in NON_NETWORK_KEYS}
    cfg = SegformerConfig(**kwargs, num_channels=int(num_channels), num_labels=int(num_labels))
    return SegformerLogits(cfg).eval()


def load_local(
    folder: str, *, use_safetensors: bool, weights_only: bool = True
) -> SegformerForSemanticSegmentation:
    """Return HF's SegFormer saved in ``folder``, with HF's own key conversions applied.

    ``from_pretrained`` with ``local_files_only=True`` on the concrete HF class (never an Auto
    class, so no remote code; its conversions are registered by that class name): it renames legacy checkpoint keys (e.g. ``decode_head.linear_c``
    -> ``linear_projections``) as transformers does. Any missing, unexpected or mismatched key
    raises ``ValueError`` instead of HF's silent random initialisation.
    """
    module, info = SegformerForSemanticSegmentation.from_pretrained(
        folder,
        local_files_only=True,
        use_safetensors=use_safetensors,
        weights_only=weights_only,
        output_loading_info=True,
    )
    bad = {k: v for k, v in info.items() if k != "error_msgs" and v}
    if bad or info.get("error_msgs"):
        raise ValueError(f"weights do not fit the config: {bad or info['error_msgs']}")
    return module.float().eval()
