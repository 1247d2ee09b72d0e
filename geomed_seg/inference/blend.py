"""Blending of window predictions and the one path from probabilities to labels.

Pure numpy (no torch, no I/O): the streaming engine (:mod:`geomed_seg.inference.engine`)
feeds it model outputs, pipelines and training validation use
:func:`labels_from_probabilities` on probabilities they hold, so a one-channel (sigmoid)
model or a card's nodata label give the same labels whichever path computed them.

* :class:`ChunkAccumulator`: per output chunk, float32 sums of ``weight * prob`` and
  ``weight``; a chunk is normalised and handed out as soon as its last window is added.
* :func:`activate_numpy`: softmax / sigmoid of blended logits (``blend: logits`` cards).
* :func:`labels_from_probabilities`: threshold (one channel) or argmax (several), label
  lookup table, nodata.
* :func:`reduce_chunk`: a finished chunk as the sink wants it (labels or probabilities),
  by the :class:`ReduceRules` of the run.

All arrays are channel-first, ``(K, *spatial)`` with spatial axes in array order
(``(y, x)`` for rasters, ``(z, y, x)`` for volumes). Hand-written rather than MONAI's
``Merger`` classes, which are torch tensors over the whole output image.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from geomed_seg.errors import InvalidInputError
from geomed_seg.inference.plan import ChunkSchedule, Window, WindowPlan

#: Probability above which a one-channel (sigmoid) model's pixel is foreground.
DEFAULT_THRESHOLD = 0.5

#: A finished chunk: ``(block, slices, probabilities (K, *chunk), weight_sum, valid)``.
FinishedChunk = tuple[tuple[int, ...], Window, np.ndarray, np.ndarray, np.ndarray]


def window_overlap(img: Window, win: Window, bsl: Window) -> tuple[Window, Window, Window]:
    """Return ``(in_block, in_window, in_clip)`` slices of a window's part inside a block.

    ``img`` is the window's clip in image coordinates, ``win`` the matching part of the
    ``roi_size`` window array, ``bsl`` the block's image slices. Shared by the host
    (:class:`ChunkAccumulator`) and device
    (:class:`~geomed_seg.inference.device_blend.DeviceChunkAccumulator`) accumulators.
    """
    inter = tuple(
        slice(max(a.start, b.start), min(a.stop, b.stop)) for a, b in zip(img, bsl, strict=True)
    )
    in_block = tuple(
        slice(i.start - b.start, i.stop - b.start) for i, b in zip(inter, bsl, strict=True)
    )
    in_win = tuple(
        slice(w.start + i.start - a.start, w.start + i.stop - a.start)
        for i, a, w in zip(inter, img, win, strict=True)
    )
    in_clip = tuple(
        slice(i.start - a.start, i.stop - a.start) for i, a in zip(inter, img, strict=True)
    )
    return in_block, in_win, in_clip


class ChunkAccumulator:
    """Per-output-chunk float32 sums of ``weight * prob`` and ``weight``, flushed when complete.

    Parameters
    ----------
    plan : WindowPlan
        The windows.
    schedule : ChunkSchedule
        Output chunks and which windows touch each (reference counts).
    weight : numpy.ndarray
        Blending weights of one window, shape ``plan.roi_size``
        (:func:`~geomed_seg.inference.plan.importance_map`).
    n_classes : int
        Output channels K.
    background_skips : bool
        Skipped windows count as probability 1 for channel 0 (volumes: skipped = background);
        otherwise they add nothing (rasters: their area becomes nodata).
    """

    def __init__(
        self,
        plan: WindowPlan,
        schedule: ChunkSchedule,
        weight: np.ndarray,
        n_classes: int,
        background_skips: bool,
    ) -> None:
        self.plan, self.schedule, self.weight = plan, schedule, weight
        self.n_classes, self.background_skips = n_classes, background_skips
        self.remaining = dict(schedule.counts)
        self.open: dict[tuple[int, ...], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self.peak_open = 0

    def _buffers(self, block: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if block not in self.open:
            shape = tuple(s.stop - s.start for s in self.schedule.block_slices(block))
            self.open[block] = (
                np.zeros((self.n_classes, *shape), np.float32),
                np.zeros(shape, np.float32),
                np.zeros(shape, bool),
            )
            self.peak_open = max(self.peak_open, len(self.open))
        return self.open[block]

    def add(
        self, index: int, valid: np.ndarray, prob: np.ndarray | None
    ) -> Iterator[FinishedChunk]:
        """Blend window ``index``; yield the chunks it completes.

        Parameters
        ----------
        index : int
            Window index into ``plan.windows``.
        valid : numpy.ndarray of bool
            Input validity of the window's clip inside the image (``plan.clip(index)[0]``).
        prob : numpy.ndarray or None
            The window's prediction ``(K, *roi_size)``, or None for a skipped window.

        Yields
        ------
        tuple
            ``(block, slices, probabilities (K, *chunk), weight_sum (*chunk), valid (*chunk))``;
            probabilities are the weighted mean where ``weight_sum > 0``.
        """
        img, win = self.plan.clip(index)
        for block in self.schedule.touches[index]:
            bsl = self.schedule.block_slices(block)
            in_block, in_win, in_clip = window_overlap(img, win, bsl)
            acc, wsum, vbuf = self._buffers(block)
            w = self.weight[in_win]
            if prob is not None:
                acc[(slice(None), *in_block)] += prob[(slice(None), *in_win)] * w
                wsum[in_block] += w
            elif self.background_skips:
                acc[(0, *in_block)] += w
                wsum[in_block] += w
            vbuf[in_block] |= valid[in_clip]
            self.remaining[block] -= 1
            if self.remaining[block] == 0:
                acc, wsum, vbuf = self.open.pop(block)
                np.divide(acc, wsum, out=acc, where=wsum > 0)
                yield block, bsl, acc, wsum, vbuf


def activate_numpy(logits: np.ndarray, activation: str = "auto") -> np.ndarray:
    """Return probabilities of blended logits ``(K, *chunk)``: softmax over K, sigmoid if K == 1
    or if ``activation == "sigmoid"`` (region outputs: one sigmoid per channel).

    For models whose card says ``blend: logits`` (nnU-Net, MONAI bundles): their home tools
    blend the windows' logits and activate once, which this reproduces.
    """
    x = logits.astype(np.float32, copy=False)
    if x.shape[0] == 1 or activation == "sigmoid":
        return (1.0 / (1.0 + np.exp(-x))).astype(np.float32)
    e = np.exp(x - x.max(axis=0, keepdims=True))
    return (e / e.sum(axis=0, keepdims=True)).astype(np.float32)


def label_format(classes: Sequence[int] | np.ndarray, nodata: int | None) -> tuple[np.dtype, int]:
    """Return ``(dtype, nodata)`` of a label image of class values ``classes``.

    uint8 when every class value fits below 255, else uint16; ``nodata`` is the card's
    ``nodata_label`` or, when None, the dtype's maximum (255 / 65535). A nodata value that
    does not fit uint8 widens to uint16.
    """
    values = np.asarray(classes, dtype=np.int64)
    top = int(values.max()) if values.size else 1
    dtype = np.dtype(np.uint8) if top < 255 else np.dtype(np.uint16)
    if nodata is None:
        nodata = int(np.iinfo(dtype).max)
    if nodata > np.iinfo(dtype).max:
        dtype = np.dtype(np.uint16)
    return dtype, int(nodata)


def channel_argmax(prob: np.ndarray) -> np.ndarray:
    """Return ``np.argmax(prob, axis=0)`` of ``prob (K, *spatial)`` (first channel on ties).

    K element-wise passes over contiguous planes: ~5x faster than numpy's strided reduction
    over the leading axis for the few channels of a segmentation model. No NaN in ``prob``.
    """
    best = prob[0].copy()
    index = np.zeros(prob.shape[1:], np.intp)
    for k in range(1, prob.shape[0]):
        better = prob[k] > best
        index[better] = k
        np.maximum(best, prob[k], out=best)
    return index


def labels_from_probabilities(
    prob: np.ndarray,
    classes: Sequence[int] | np.ndarray,
    nodata: int | None = None,
    *,
    invalid: np.ndarray | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    dtype: Any = None,
    activation: str = "auto",
) -> np.ndarray:
    """Return the label array ``(*spatial)`` of class probabilities ``prob (K, *spatial)``.

    The one rule from probabilities to labels, shared by the engine, pipelines and
    validation:

    * one channel (a sigmoid model): ``classes[0]`` where ``prob > threshold``, else 0
      (the implicit background);
    * several channels: ``classes[argmax over K]`` (NaN never wins);
    * ``activation="sigmoid"`` (region outputs, a card's ``activation``): 0, overwritten in
      channel order by ``classes[k]`` where ``prob[k] > threshold``, so the last such
      channel wins, as nnU-Net's ``regions_class_order`` paints regions;
    * ``nodata`` where ``invalid`` is True or any channel is NaN (when ``nodata`` is not None;
      otherwise such pixels keep their label).

    Parameters
    ----------
    prob : numpy.ndarray
        Probabilities ``(K, *spatial)``, channel-first, spatial axes in array order.
    classes : sequence of int
        Label value of each channel (a card's ``channel_to_label()``), length K.
    nodata : int, optional
        Label of pixels without an answer (a card's ``nodata_label``).
    invalid : numpy.ndarray of bool, optional
        ``(*spatial)``; True where the input had no valid data.
    threshold : float
        Foreground probability threshold of one-channel models, in ``(0, 1)``.
    dtype : numpy dtype, optional
        Output dtype; default from :func:`label_format`.
    """
    lut = np.asarray(classes)
    if prob.ndim < 2 or prob.shape[0] != lut.shape[0]:
        raise InvalidInputError(
            f"probabilities of shape {prob.shape} need one label per channel; got {lut.shape[0]}"
        )
    if not 0.0 < threshold < 1.0:
        raise InvalidInputError(f"threshold must be in (0, 1), got {threshold}")
    if dtype is None:
        dtype = label_format(lut, nodata)[0]
    nan = np.isnan(prob).any(axis=0)
    if prob.shape[0] == 1:
        labels = np.where(prob[0] > threshold, lut[0], 0).astype(dtype)
    elif activation == "sigmoid":
        labels = np.zeros(prob.shape[1:], dtype)
        for k in range(prob.shape[0]):
            labels[prob[k] > threshold] = lut[k]
    else:
        p = np.where(np.isnan(prob), -np.inf, prob) if nan.any() else prob
        labels = lut[channel_argmax(p)].astype(dtype)
    if nodata is not None:
        bad = nan if invalid is None else nan | invalid
        if bad.any():
            labels[bad] = nodata
    return labels


@dataclass(frozen=True)
class ReduceRules:
    """How a finished chunk becomes output (:func:`reduce_chunk`, and its device twin).

    Attributes
    ----------
    output : {"labels", "probabilities"}
    lut : numpy.ndarray
        Label value of each channel (int64, length K).
    dtype : numpy.dtype
        Label dtype (uint8/uint16) or float32 for probabilities.
    nodata : float or None
        Label of pixels without an answer (NaN for probabilities).
    mask_invalid : bool
        Invalid input pixels get nodata (rasters).
    blend_logits : bool
        Blended values are logits: activate once after blending.
    threshold : float
        Foreground probability of one-channel and region (sigmoid) models.
    activation : {"auto", "sigmoid"}
        "sigmoid": region channels, painted in channel order.
    """

    output: str
    lut: np.ndarray
    dtype: np.dtype
    nodata: float | None
    mask_invalid: bool
    blend_logits: bool = False
    threshold: float = DEFAULT_THRESHOLD
    activation: str = "auto"


def reduce_chunk(
    prob: np.ndarray, wsum: np.ndarray, valid: np.ndarray, rules: ReduceRules
) -> np.ndarray:
    """Return the chunk to write: labels ``(1, *chunk)`` or probabilities ``(K, *chunk)``.

    ``prob`` is the blended chunk ``(K, *chunk)`` (logits when ``rules.blend_logits``:
    activated here, :func:`activate_numpy`). Pixels no run window covered (``wsum == 0``)
    and, when ``rules.mask_invalid``, invalid input pixels (``valid`` False) get ``nodata``
    (labels, :func:`labels_from_probabilities`) or NaN (probabilities).
    """
    if rules.blend_logits:
        prob = activate_numpy(prob, rules.activation)
    bad = wsum <= 0
    if rules.mask_invalid:
        bad |= ~valid
    if rules.output == "probabilities":
        out = prob.astype(np.float32, copy=False)
        if bad.any():
            out[:, bad] = np.nan
        return out
    nd = None if rules.nodata is None else int(rules.nodata)
    labels = labels_from_probabilities(
        prob, rules.lut, nd, invalid=bad, threshold=rules.threshold, dtype=rules.dtype,
        activation=rules.activation,
    )  # fmt: skip
    return labels[None]


__all__ = [
    "DEFAULT_THRESHOLD",
    "ChunkAccumulator",
    "ReduceRules",
    "activate_numpy",
    "channel_argmax",
    "label_format",
    "labels_from_probabilities",
    "reduce_chunk",
    "window_overlap",
]
