"""nnU-Net v2's resampling, for models imported with ``resampling`` in their card.

nnU-Net predicts a case that is not at the plans' spacing in this order (``nnUNetPredictor``
with ``DefaultPreprocessor``): crop to the non-zero box, normalise there, resample the box
to the target spacing with ``resample_data_or_seg_to_shape`` (third-order splines through
``skimage.transform.resize``; when the spacing is more than 3x anisotropic, in-plane only
and nearest along the low-resolution axis), run the sliding window, resample the *logits*
back to the box (order 1, nearest along that axis), activate, and write background outside
the box. :func:`segment_nnunet_resampled` does the same around our engine, so an imported
model answers as nnU-Net does on inputs at any spacing.

:func:`resample_to_shape` is nnU-Net's ``resample_data_or_seg`` (data branch) written out,
because nnunetv2 is not a runtime dependency. The case is held in memory (the box, at both
spacings), as nnU-Net holds it; use the streaming trilinear path
(:mod:`geomed_seg.inference.respaced`) for volumes that do not fit. No torch here.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import numpy as np

from geomed_seg.core.grid import VoxelGrid
from geomed_seg.core.image import Image

log = logging.getLogger(__name__)

#: Spacing ratio above which nnU-Net resamples the low-resolution axis separately.
ANISO_THRESHOLD = 3.0


def _separate_axis(force: bool | None, current: np.ndarray, new: np.ndarray) -> int | None:
    """Return the axis resampled separately (nnU-Net's ``determine_do_sep_z_and_axis``)."""

    def lowres(sp: np.ndarray) -> np.ndarray:
        return np.where(max(sp) / sp == 1)[0]

    if force is not None:
        axes = lowres(current) if force else None
    elif max(current) / min(current) > ANISO_THRESHOLD:
        axes = lowres(current)
    elif max(new) / min(new) > ANISO_THRESHOLD:
        axes = lowres(new)
    else:
        axes = None
    if axes is None or len(axes) != 1:
        return None
    return int(axes[0])


def resample_to_shape(
    data: np.ndarray,
    new_shape: tuple[int, ...],
    current_spacing: tuple[float, ...],
    new_spacing: tuple[float, ...],
    *,
    order: int = 3,
    order_z: int = 0,
    force_separate_z: bool | None = None,
) -> np.ndarray:
    """Return ``data`` ``(C, *spatial)`` resampled to ``new_shape`` as nnU-Net resamples images.

    Spacings in mm, same axis order as ``data``. ``skimage.transform.resize`` (``mode="edge"``,
    no anti-aliasing) with ``order``; with a separate axis, 2D resizes per slice and
    ``scipy.ndimage.map_coordinates(order=order_z, mode="nearest")`` along that axis.
    """
    from scipy.ndimage import map_coordinates
    from skimage.transform import resize

    shape = np.array(data.shape[1:])
    new = np.array(new_shape)
    if np.array_equal(shape, new):
        return data
    axis = _separate_axis(force_separate_z, np.asarray(current_spacing), np.asarray(new_spacing))
    out = np.zeros((data.shape[0], *new), dtype=data.dtype)
    x = data.astype(float, copy=False)
    kw = {"mode": "edge", "anti_aliasing": False}
    for c in range(data.shape[0]):
        if axis is None:
            out[c] = resize(x[c], new, order, **kw)
            continue
        plane = [int(n) for i, n in enumerate(new) if i != axis]
        tmp_shape = new.copy()
        tmp_shape[axis] = shape[axis]
        here = np.zeros(tmp_shape)
        for s in range(shape[axis]):
            index = (slice(None),) * axis + (s,)
            here[index] = resize(x[c][index], plane, order, **kw)
        if shape[axis] == new[axis]:
            out[c] = here
            continue
        scale = np.array(here.shape, float) / new
        grid = np.mgrid[tuple(slice(0, int(n)) for n in new)].astype(float)
        coords = scale.reshape(-1, 1, 1, 1) * (grid + 0.5) - 0.5
        out[c] = map_coordinates(here, coords, order=order_z, mode="nearest")
    return out


def new_shape_for(shape: tuple[int, ...], current: tuple[float, ...], new: tuple[float, ...]):
    """Return nnU-Net's ``compute_new_shape``: ``round(current / new * shape)`` per axis."""
    return tuple(int(round(c / n * s)) for s, c, n in zip(shape, current, new, strict=True))


def _logits_of(prob: np.ndarray, activation: str) -> np.ndarray:
    """Return logits equivalent to probabilities ``prob`` for a linear resampling.

    Softmax: ``log p`` differs from the logits by one value per voxel, which linear
    interpolation carries along and softmax cancels. Sigmoid: ``log(p / (1 - p))``.
    Probabilities are clipped to ``[1e-30, 1 - 1e-7]`` (float32).
    """
    p = np.clip(prob.astype(np.float64), 1e-30, 1.0 - 1e-7)
    if activation == "sigmoid" or prob.shape[0] == 1:
        return np.log(p) - np.log1p(-p)
    return np.log(p)


def segment_nnunet_resampled(image: Image, model: Any, options: Any = None, **changes: Any):
    """Return ``segment``'s result for ``image`` computed as nnU-Net does at another spacing.

    Parameters
    ----------
    image : Image
        ``(channel, z, y, x)`` volume on its own grid.
    model : LoadedModel
        An imported nnU-Net model (card ``resampling``, ``spacing``, ``crop_to_nonzero``).
    options : EngineOptions, optional
        As :func:`~geomed_seg.inference.segment.segment` (``changes`` by name on top); its
        ``output`` (labels or probabilities) is given on ``image``'s grid, in memory.
    """
    from geomed_seg.inference.blend import activate_numpy, label_format, labels_from_probabilities
    from geomed_seg.inference.crop import nonzero_box
    from geomed_seg.inference.options import EngineOptions
    from geomed_seg.inference.segment import SegmentResult, _match_bands, segment
    from geomed_seg.models.card import NoNormalisation
    from geomed_seg.models.case_stats import case_normaliser

    card = model.card
    rs = card.resampling
    changes.pop("sink", None)
    opts = EngineOptions.of(options, **changes)
    image = _match_bands(image, card)
    box = nonzero_box(image) if card.crop_to_nonzero else None
    crop = image.sel_window(box) if box is not None else image
    normalise = case_normaliser(card, crop)
    data = normalise(np.asarray(crop.darray.compute(), np.float32)[None])[0]
    current = tuple(float(v) for v in crop.grid.spacing_zyx)
    target = tuple(float(v) for v in card.spacing)
    shape = new_shape_for(data.shape[1:], current, target)
    small = resample_to_shape(data, shape, current, target, order=rs.data_order,
                              order_z=rs.data_order_z, force_separate_z=rs.data_force_separate_z)  # fmt: skip
    affine = np.diag([target[2], target[1], target[0], 1.0])
    inner_card = card.model_copy(
        update={"normalisation": NoNormalisation(), "crop_to_nonzero": False, "band_names": None}
    )
    inner = SimpleNamespace(module=model.module, card=inner_card)
    run_opts = replace(opts, output="probabilities", skip="none")
    res = segment(Image.from_array(small, VoxelGrid(affine, shape)), inner, run_opts)
    logits = _logits_of(np.asarray(res.image.darray.compute()), card.activation)
    back = resample_to_shape(logits, data.shape[1:], target, current, order=rs.prob_order,
                             order_z=rs.prob_order_z, force_separate_z=rs.prob_force_separate_z)  # fmt: skip
    prob = activate_numpy(back.astype(np.float32), card.activation)
    full = np.zeros((prob.shape[0], *image.spatial_shape), np.float32)
    if card.activation != "sigmoid" and prob.shape[0] > 1:
        full[0] = 1.0  # background outside the box, as nnU-Net
    full[(slice(None), *(box or ()))] = prob
    attrs = {**dict(image.attrs), "classes": [
        {"index": c.index, "name": c.name, "color": c.color} for c in card.classes]}  # fmt: skip
    if opts.output == "probabilities":
        out = Image.from_array(full, image.grid, channel_names=[c.name for c in card.classes],
                               attrs=attrs)  # fmt: skip
    else:
        lut = card.channel_to_label()
        dtype, _ = label_format(lut, card.nodata_label)
        labels = labels_from_probabilities(full, lut, None, dtype=dtype, activation=card.activation)
        out = Image.from_array(labels[None], image.grid, attrs=attrs)
    stats = {**res.stats, "resampled_to_mm_zyx": list(target), "resampling": "nnunet"}
    log.info("ran the model at %s mm (z, y, x) with nnU-Net's resampling", target)
    return SegmentResult(out, None, stats)


__all__ = ["new_shape_for", "resample_to_shape", "segment_nnunet_resampled"]
