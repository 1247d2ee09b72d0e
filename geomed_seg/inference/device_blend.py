"""Blending on the device: per-chunk accumulators as torch tensors, labels computed there.

The torch twin of :class:`geomed_seg.inference.blend.ChunkAccumulator` and
:func:`geomed_seg.inference.blend.reduce_chunk`, for the device path: window outputs arrive
already multiplied by the importance map (:class:`~geomed_seg.inference.device.DeviceModel`)
and stay on the device; when an output chunk is complete it is normalised, activated (cards
that blend logits), reduced to labels (threshold / argmax, label lookup table, nodata) on the
device, and only the uint8/uint16 labels (or the requested float32 probabilities) are copied
back. The same rules as the host path, so both give the same labels (tested on CPU, where
these tensors live on ``"cpu"``).

Buffers of finished chunks are zeroed and reused for the next chunk of the same shape: no
allocation per window, and per chunk only until the pool holds a row of chunks.
Validity (from the host reader) is OR-ed on the host: it is a bool per pixel and is needed
only at flush time.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from geomed_seg.inference.blend import (  # noqa: F401 - DEFAULT_THRESHOLD re-exported
    DEFAULT_THRESHOLD,
    ReduceRules,
    window_overlap,
)
from geomed_seg.inference.plan import ChunkSchedule, Window, WindowPlan


class DeviceChunkAccumulator:
    """Per-output-chunk sums of ``weight * prob`` (K, *chunk) and ``weight`` on the device.

    Parameters
    ----------
    plan, schedule
        The windows and the output chunks they touch.
    weight : torch.Tensor
        Importance map ``roi_size`` on the device (the one the window outputs were multiplied
        by).
    n_classes : int
        Output channels K.
    background_skips : bool
        Skipped windows count as probability 1 for channel 0 (volumes); otherwise they add
        nothing (rasters: nodata).
    """

    def __init__(
        self,
        plan: WindowPlan,
        schedule: ChunkSchedule,
        weight: torch.Tensor,
        n_classes: int,
        background_skips: bool,
    ) -> None:
        self.plan, self.schedule, self.weight = plan, schedule, weight
        self.device = weight.device
        self.n_classes, self.background_skips = n_classes, background_skips
        self.remaining = dict(schedule.counts)
        self.open: dict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor, np.ndarray]] = {}
        self.free: dict[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self.peak_open = 0
        self.allocated = 0

    def _buffers(self, block: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        bufs = self.open.get(block)
        if bufs is None:
            shape = tuple(s.stop - s.start for s in self.schedule.block_slices(block))
            pool = self.free.get(shape)
            if pool:
                acc, wsum = pool.pop()
                acc.zero_()
                wsum.zero_()
            else:
                acc = torch.zeros((self.n_classes, *shape), dtype=torch.float32, device=self.device)
                wsum = torch.zeros(shape, dtype=torch.float32, device=self.device)
                self.allocated += 1
            bufs = self.open[block] = (acc, wsum, np.zeros(shape, bool))
            self.peak_open = max(self.peak_open, len(self.open))
        return bufs

    def release(self, acc: torch.Tensor, wsum: torch.Tensor) -> None:
        """Give a finished chunk's buffers back for reuse (after its result was taken)."""
        self.free.setdefault(tuple(wsum.shape), []).append((acc, wsum))

    def add(
        self, index: int, valid: np.ndarray, wprob: torch.Tensor | None
    ) -> Iterator[tuple[tuple[int, ...], Window, torch.Tensor, torch.Tensor, np.ndarray]]:
        """Blend window ``index``; yield the chunks it completes.

        ``wprob`` is the window's ``weight * prob`` ``(K, *roi_size)`` on the device, or None
        for a skipped window; ``valid`` its input validity ``(*clip)`` on the host. Yields
        ``(block, slices, sum (K, *chunk), weight_sum (*chunk), valid (*chunk))``; call
        :meth:`release` with the two tensors once the chunk is reduced.
        """
        img, win = self.plan.clip(index)
        for block in self.schedule.touches[index]:
            bsl = self.schedule.block_slices(block)
            in_block, in_win, in_clip = window_overlap(img, win, bsl)
            acc, wsum, vbuf = self._buffers(block)
            if wprob is not None:
                acc[(slice(None), *in_block)] += wprob[(slice(None), *in_win)]
                wsum[in_block] += self.weight[in_win]
            elif self.background_skips:
                w = self.weight[in_win]
                acc[(0, *in_block)] += w
                wsum[in_block] += w
            vbuf[in_block] |= valid[in_clip]
            self.remaining[block] -= 1
            if self.remaining[block] == 0:
                acc, wsum, vbuf = self.open.pop(block)
                yield block, bsl, acc, wsum, vbuf


def channel_argmax(prob: torch.Tensor) -> torch.Tensor:
    """Return the index of the largest channel of ``prob (K, *spatial)`` (first one on ties).

    ``torch.argmax`` over a leading axis is ~10x slower than K element-wise passes on CPU
    (a strided reduction); this loop is equal to it and fast on every device.
    """
    best = prob[0].clone()
    index = torch.zeros(prob.shape[1:], dtype=torch.int64, device=prob.device)
    for k in range(1, prob.shape[0]):
        better = prob[k] > best
        index.masked_fill_(better, k)
        torch.maximum(best, prob[k], out=best)
    return index


def _activate(x: torch.Tensor, activation: str) -> torch.Tensor:
    if x.shape[0] == 1 or activation == "sigmoid":
        return torch.sigmoid(x)
    return torch.softmax(x, dim=0)


def reduce_chunk_device(
    acc: torch.Tensor,
    wsum: torch.Tensor,
    valid: np.ndarray,
    rules: ReduceRules,
    lut: torch.Tensor | None = None,
) -> np.ndarray:
    """Return the chunk to write, computed on the device: labels ``(1, *chunk)`` or probabilities.

    The rules of :func:`geomed_seg.inference.blend.reduce_chunk`: the weighted mean where
    ``wsum > 0``; activated once for cards that blend logits; one channel thresholds
    (``lut[0]`` above ``threshold``, else 0), several take ``lut[argmax]`` (NaN never wins),
    region models (``activation="sigmoid"``) paint ``lut[k]`` where channel k is above
    ``threshold``, in channel order; ``nodata`` (labels) or NaN (probabilities) where no
    run window covered the pixel, where a channel is NaN and, when ``mask_invalid``, where
    the input is invalid. ``lut``: ``rules.lut`` already on the device (saves a copy per
    chunk).
    """
    r = rules
    if lut is None:
        lut = torch.as_tensor(np.asarray(r.lut, np.int64)).to(acc.device)
    covered = wsum > 0
    prob = torch.where(covered, acc / torch.where(covered, wsum, 1.0), acc)
    if r.blend_logits:
        prob = _activate(prob, r.activation)
    bad = ~covered
    if r.mask_invalid:
        bad |= ~torch.from_numpy(np.ascontiguousarray(valid)).to(prob.device, non_blocking=True)
    if r.output == "probabilities":
        prob = prob.masked_fill(bad, float("nan"))
        return prob.cpu().numpy().astype(np.float32, copy=False)
    nan = torch.isnan(prob).any(dim=0)
    if prob.shape[0] == 1:
        labels = torch.where(prob[0] > r.threshold, lut[0], torch.zeros_like(lut[0]))
    elif r.activation == "sigmoid":  # regions: painted in channel order, the last one wins
        labels = torch.zeros(prob.shape[1:], dtype=lut.dtype, device=prob.device)
        for k in range(prob.shape[0]):
            labels.masked_fill_(prob[k] > r.threshold, lut[k])
    else:
        labels = lut[channel_argmax(prob.masked_fill(torch.isnan(prob), float("-inf")))]
    if r.nodata is not None:
        labels = labels.masked_fill(bad | nan, int(r.nodata))
    small = torch.uint8 if np.dtype(r.dtype) == np.uint8 else torch.int32
    return labels.to(small).cpu().numpy().astype(r.dtype, copy=False)[None]


__all__ = ["DeviceChunkAccumulator", "ReduceRules", "channel_argmax", "reduce_chunk_device"]
