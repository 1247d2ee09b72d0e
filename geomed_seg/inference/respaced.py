"""Resample and return: run a model at its own voxel spacing, answer on the input's grid.

When a volume's spacing differs from the spacing a model was trained at (its card's
``spacing``, or a pipeline's ``preprocess.target_spacing_mm``), nnU-Net's recipe is followed:

1. the volume is resampled (trilinear) onto a grid of the model's spacing covering the same
   field of view (:func:`geomed_seg.core.resample_grid.grid_for_spacing`);
2. the engine computes class probabilities on that grid;
3. the probabilities are resampled (trilinear) back onto the input's exact grid and the
   argmax is taken there (:func:`label_image`).

Labels, SEG and reports are thus on the input grid (affine, shape; NIfTI header codes travel
in ``attrs``). Resampling is chunk-wise and lazy (:func:`geomed_seg.core.resample.resample_image`);
the probabilities on the model grid are held in memory (``classes x model-grid voxels x 4``
bytes: 4 classes of a 3 mm brain are ~5 MB).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import numpy as np

from geomed_seg.core.grid import VoxelGrid
from geomed_seg.core.image import Image
from geomed_seg.core.resample import resample_image
from geomed_seg.core.resample_grid import (  # noqa: F401 - spacing_differs re-exported
    SPACING_TOLERANCE,
    grid_for_spacing,
    spacing_differs,
)
from geomed_seg.inference.blend import DEFAULT_THRESHOLD, label_format, labels_from_probabilities

log = logging.getLogger(__name__)


def model_grid(
    image: Image,
    card: Any = None,
    *,
    target_spacing_zyx: tuple[float, ...] | None = None,
    resample_to_model: bool = True,
) -> VoxelGrid | None:
    """Return the grid a volume must be resampled to before the model, or None (run as is).

    ``target_spacing_zyx`` (mm, array order; a pipeline's explicit choice) wins; otherwise the
    card's ``spacing`` when it differs by more than 10 % from the input's and
    ``resample_to_model`` is on. Rasters are never resampled here (None).
    """
    if image.kind != "volume":
        return None
    if target_spacing_zyx is not None:
        return grid_for_spacing(image.grid, target_spacing_zyx)
    spacing = getattr(card, "spacing", None)
    if not resample_to_model or not spacing:
        return None
    if not spacing_differs(tuple(image.grid.spacing_zyx), tuple(spacing)):
        return None
    return grid_for_spacing(image.grid, spacing)


def label_image(
    probs: Image,
    lut: np.ndarray,
    nodata_label: int | None = None,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    activation: str = "auto",
) -> Image:
    """Return the label image of ``probs (class, *spatial)``, lazily, chunk by chunk.

    Each chunk goes through :func:`geomed_seg.inference.blend.labels_from_probabilities`
    (one channel: ``lut[0]`` above ``threshold``, else 0; several: ``lut[argmax]``, or
    regions painted in channel order with ``activation="sigmoid"``), the rule the engine
    applies to its own output. Labels are uint8 when every label fits, else
    uint16 (:func:`~geomed_seg.inference.blend.label_format`). Raster samples whose
    probabilities are NaN (nodata) get ``nodata_label`` (default 255 / 65535), which is
    the label image's nodata; volumes have none.
    """
    lut = np.asarray(lut)
    dtype, nodata = label_format(lut, nodata_label)
    if probs.kind != "raster":
        nodata = None
    arr = probs.darray.rechunk({0: -1})  # every class of a pixel in one block

    def block(b: np.ndarray) -> np.ndarray:
        return labels_from_probabilities(
            b, lut, nodata, threshold=threshold, dtype=dtype, activation=activation
        )

    lab = arr.map_blocks(block, drop_axis=0, dtype=dtype)
    return Image.from_array(lab[None], probs.grid, nodata=nodata, attrs=dict(probs.attrs))


def segment_resampled(
    image: Image, model: Any, grid: VoxelGrid, options: Any = None, **changes: Any
):  # fmt: skip
    """Return :func:`~geomed_seg.inference.segment.segment`'s result computed on ``grid`` and
    brought back onto ``image``'s grid (probabilities linear, then labels; module docstring).

    ``options`` is an :class:`~geomed_seg.inference.options.EngineOptions` (``changes`` by
    name on top, as ``segment`` takes them); its ``output`` is ``"labels"`` or
    ``"probabilities"`` (float32 ``(class, z, y, x)``). The result image is lazy, carries
    ``image.attrs`` (NIfTI header) and the card's classes. There is no sink: write the
    returned image.
    """
    from geomed_seg.inference.options import EngineOptions
    from geomed_seg.inference.segment import segment

    if getattr(getattr(model, "card", None), "resampling", None) is not None:
        from geomed_seg.inference.nnunet_resample import segment_nnunet_resampled

        return segment_nnunet_resampled(image, model, options, **changes)  # nnU-Net's recipe
    changes.pop("sink", None)
    opts = EngineOptions.of(options, **changes)
    small = resample_image(image, grid, order=1, edge="constant", cval=0.0)
    small = replace(small, attrs={**small.attrs, "resampled_from": image.grid.describe()})
    res = segment(small, model, replace(opts, output="probabilities"))
    back = resample_image(res.image, image.grid, order=1, edge="nearest")
    attrs = {**dict(image.attrs), **{k: v for k, v in res.image.attrs.items() if k == "classes"}}
    back = replace(back, attrs=attrs)
    if opts.output == "probabilities":
        res.image = back
    else:
        card = getattr(model, "card", None)
        lut = card.channel_to_label() if card is not None else np.arange(back.n_channels)
        nodata = getattr(card, "nodata_label", None)
        activation = getattr(card, "activation", "auto")
        labels = label_image(back, lut, nodata, threshold=opts.threshold, activation=activation)
        res.image = replace(labels, attrs=attrs)
    sp = ", ".join(f"{s:g}" for s in grid.spacing_zyx)
    res.stats = {
        **res.stats,
        "model_grid": grid.describe(),
        "resampled_to_mm_zyx": list(grid.spacing_zyx),
    }
    log.info(
        "ran the model at (%s) mm (z, y, x); probabilities resampled back to the input grid", sp
    )
    return res


__all__ = [
    "label_image",
    "model_grid",
    "segment_resampled",
    "spacing_differs",
]
