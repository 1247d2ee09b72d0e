"""In-memory stitching of window predictions: weighted sums, counts, scaled outputs, slabs.

The accumulating half of :func:`geomed_seg.inference.sliding.sliding_window_inference`,
kept apart from the loop that calls the predictor. A predictor may return one tensor, a
tuple/list or a dict of tensors; each output may have its own spatial scale relative to the
window (``(B, K, *roi * scale)``, e.g. deep-supervision heads at 1/2 and 1/4), and is blended
on its own grid of ``int(padded_size * scale)`` samples, as MONAI 1.6 does.

Blending is a weighted mean: every window adds ``weight * prediction`` to the output and
``weight`` to a count map, and the output is divided by the count at the end. With a fixed
weight the count is computed once from the plan (as MONAI); with weights that a
``process_fn`` returns per batch it is accumulated window by window, so the result stays a
weighted mean (MONAI normalises by the first batch's weight only; both agree whenever the
weight does not change). Hand-written because MONAI's version is one closed function and the
scaled-weight chaining of its multi-output path depends on the output order.

All spatial shapes and slices are in array order ((y, x) or (z, y, x)), in samples.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from geomed_seg.errors import InvalidInputError, ModelError
from geomed_seg.inference.plan import Window, WindowPlan

log = logging.getLogger(__name__)

Job = tuple[int, int]  # (image index in the batch, window index in the plan)


def flatten_outputs(out: object) -> tuple[list | None, tuple[torch.Tensor, ...]]:
    """Return ``(dict keys or None, tensors)`` of a predictor output (tensor, tuple/list, dict).

    Dict keys are sorted, as MONAI does, so the output order does not depend on insertion.
    """
    keys = None
    if isinstance(out, torch.Tensor):
        items: tuple = (out,)
    elif isinstance(out, Mapping):
        keys = sorted(out.keys())
        items = tuple(out[k] for k in keys)
    elif isinstance(out, tuple | list):
        items = tuple(out)
    else:
        raise ModelError(
            f"predictor returned a {type(out).__name__}; expected a tensor, a tuple/list or a "
            "dict of tensors (N, K, *spatial)"
        )
    bad = [i for i, t in enumerate(items) if not isinstance(t, torch.Tensor)]
    if not items or bad:
        raise ModelError(
            f"predictor output {'is empty' if not items else f'item(s) {bad} are not tensors'}; "
            "expected a tensor, a tuple/list or a dict of tensors (N, K, *spatial)"
        )
    return keys, items


def pack_outputs(outputs: Sequence[torch.Tensor], keys: list | None) -> Any:
    """Return outputs in the predictor's structure: dict by ``keys``, one tensor, or a tuple."""
    if keys is not None:
        return dict(zip(keys, outputs, strict=True))
    return outputs[0] if len(outputs) == 1 else tuple(outputs)


def scaled(window: Window, scale: Sequence[float]) -> Window:
    """Return ``window`` on an output grid ``scale`` times the input's (floor of each bound)."""
    return tuple(
        slice(int(s.start * z), int(s.stop * z)) for s, z in zip(window, scale, strict=True)
    )


class Stitcher:
    """Blend window predictions of every output into full-size tensors on ``device``.

    Parameters
    ----------
    plan : WindowPlan
        The windows (padded coordinates) and padding of the image.
    n_images : int
        Images in the input batch.
    dtype : torch.dtype
        Floating dtype of sums, counts and outputs.
    device, sw_device : torch.device
        Where the outputs live, and where windows are weighted and slab buffers live.
    dynamic_weight : bool
        Whether weights may change per batch (``process_fn``): counts are then accumulated per
        image and window instead of computed once from the plan.
    """

    def __init__(
        self,
        plan: WindowPlan,
        n_images: int,
        dtype: torch.dtype,
        device: torch.device,
        sw_device: torch.device,
        dynamic_weight: bool = False,
    ) -> None:
        self.plan, self.n_images, self.dtype = plan, n_images, dtype
        self.device, self.sw_device, self.dynamic = device, sw_device, dynamic_weight
        self.sums: list[torch.Tensor] = []
        self.counts: list[torch.Tensor] = []
        self.scales: list[tuple[float, ...]] = []
        self.channels: list[int] = []
        self.window_shapes: list[tuple[int, ...]] = []  # spatial shape of each output's window
        self._slab: tuple[int, int, int, int] | None = None  # image, axis, start, stop
        self._slab_sums: list[torch.Tensor] = []

    # -- slabs (MONAI's buffer_steps): sums gathered on sw_device, added to device at close --

    def open_slab(self, image: int, axis: int, start: int, stop: int) -> None:
        """Gather the next windows of ``image`` in a buffer spanning ``[start, stop)`` of ``axis``."""
        self._slab = (image, axis, start, stop)
        self._slab_sums = []

    def close_slab(self) -> None:
        """Add the slab buffers into the outputs and stop buffering."""
        if self._slab is None:
            return
        image, axis, start, stop = self._slab
        for k, buf in enumerate(self._slab_sums):
            lo, hi = self._slab_bounds(k)
            index = [slice(image, image + 1), slice(None)] + [slice(None)] * self.plan.ndim
            index[axis + 2] = slice(lo, hi)
            self.sums[k][tuple(index)] += buf.to(self.device)
        self._slab, self._slab_sums = None, []

    def _slab_bounds(self, k: int) -> tuple[int, int]:
        assert self._slab is not None
        _, axis, start, stop = self._slab
        z = self.scales[k][axis]
        return int(start * z), int(stop * z)

    # -- accumulation --------------------------------------------------------------------

    def add(self, jobs: Sequence[Job], preds: Sequence[torch.Tensor], weight: torch.Tensor) -> None:
        """Add one batch: ``preds[k]`` is ``(len(jobs), K_k, *roi * scale_k)``.

        ``weight`` is ``roi_size`` (spatial), ``(1, 1, *roi)`` or ``(len(jobs), 1, *roi)``,
        non-negative; it is resampled (nearest) to each output's scale.
        """
        if not self.sums:
            self._allocate(preds)
        if len(preds) != len(self.sums):
            raise ModelError(
                f"predictor returned {len(preds)} outputs for this batch, {len(self.sums)} before"
            )
        weight = weight.to(device=self.sw_device, dtype=self.dtype)
        if weight.ndim == self.plan.ndim:
            weight = weight[None, None]
        for k, pred in enumerate(preds):
            self._check(k, pred, len(jobs))
            w = self._resample(weight, k)
            weighted = pred.to(device=self.sw_device, dtype=self.dtype) * w
            self._place(k, jobs, weighted)
            if self.dynamic:
                ws = w.expand(len(jobs), *w.shape[1:]).to(self.device)
                for (b, i), one in zip(jobs, ws, strict=True):
                    self.counts[k][
                        (b, slice(None), *scaled(self.plan.windows[i], self.scales[k]))
                    ] += one

    def _place(self, k: int, jobs: Sequence[Job], weighted: torch.Tensor) -> None:
        scale = self.scales[k]
        if self._slab is None:
            weighted = weighted.to(self.device)
            for (b, i), p in zip(jobs, weighted, strict=True):
                self.sums[k][(b, slice(None), *scaled(self.plan.windows[i], scale))] += p
            return
        _, axis, _, _ = self._slab
        lo, hi = self._slab_bounds(k)
        if len(self._slab_sums) <= k:
            shape = list(self.sums[k].shape[2:])
            shape[axis] = hi - lo
            self._slab_sums.append(
                torch.zeros((1, self.channels[k], *shape), dtype=self.dtype, device=self.sw_device)
            )
        for (_, i), p in zip(jobs, weighted, strict=True):
            win = list(scaled(self.plan.windows[i], scale))
            win[axis] = slice(win[axis].start - lo, win[axis].stop - lo)
            self._slab_sums[k][(0, slice(None), *win)] += p

    def _resample(self, weight: torch.Tensor, k: int) -> torch.Tensor:
        shape = self.window_shapes[k]
        if shape == tuple(weight.shape[2:]):
            return weight
        # straight from the roi weight to this output's grid (not chained from another output)
        return F.interpolate(weight, shape, mode="nearest-exact")

    def _check(self, k: int, pred: torch.Tensor, n_jobs: int) -> None:
        want = (n_jobs, self.channels[k])
        spatial = self.window_shapes[k]
        if tuple(pred.shape[:2]) != want or tuple(pred.shape[2:]) != spatial:
            raise ModelError(
                f"predictor output {k} has shape {tuple(pred.shape)} for {n_jobs} windows of roi "
                f"{self.plan.roi_size}; expected {(*want, *spatial)} as in the first batch"
            )

    def _allocate(self, preds: Sequence[torch.Tensor]) -> None:
        nd, roi = self.plan.ndim, self.plan.roi_size
        padded = self.plan.padded_shape
        for k, pred in enumerate(preds):
            if pred.ndim != nd + 2 or min(pred.shape[2:], default=0) < 1:
                raise ModelError(
                    f"predictor output {k} has shape {tuple(pred.shape)}; expected "
                    f"(N, K, *spatial) with {nd} spatial axes for roi {roi}"
                )
            scale = tuple(o / float(r) for o, r in zip(pred.shape[2:], roi, strict=True))
            self.scales.append(scale)
            self.window_shapes.append(tuple(int(n) for n in pred.shape[2:]))
            self.channels.append(int(pred.shape[1]))
            _warn_if_unaligned(k, scale, self.plan)
            shape = tuple(int(p * z) for p, z in zip(padded, scale, strict=True))
            self.sums.append(
                torch.zeros(
                    (self.n_images, pred.shape[1], *shape), dtype=self.dtype, device=self.device
                )
            )
            lead = self.n_images if self.dynamic else 1
            self.counts.append(torch.zeros((lead, 1, *shape), dtype=self.dtype, device=self.device))

    def fixed_counts(self, weight: torch.Tensor) -> None:
        """Compute every output's count map once from ``weight`` and all windows of the plan."""
        weight = weight.to(device=self.sw_device, dtype=self.dtype)
        if weight.ndim == self.plan.ndim:
            weight = weight[None, None]
        for k, count in enumerate(self.counts):
            w = self._resample(weight, k).to(self.device)[0]
            for window in self.plan.windows:
                count[(0, slice(None), *scaled(window, self.scales[k]))] += w

    # -- result --------------------------------------------------------------------------

    def result(self) -> list[torch.Tensor]:
        """Return each output divided by its counts and cropped to the unpadded image."""
        out = []
        for k, (total, count) in enumerate(zip(self.sums, self.counts, strict=True)):
            if not bool((count > 0).all()):
                raise InvalidInputError(
                    f"output {k}: some samples got a total blending weight of 0 (a zero "
                    "roi_weight_map/process_fn weight where no other window covers them); "
                    "use weights > 0 everywhere"
                )
            crop = tuple(
                slice(int(round(b * z)), int(round((b + n) * z)))
                for (b, _), n, z in zip(
                    self.plan.pad, self.plan.image_shape, self.scales[k], strict=True
                )
            )
            out.append((total / count)[(slice(None), slice(None), *crop)])
        return out


def _warn_if_unaligned(k: int, scale: tuple[float, ...], plan: WindowPlan) -> None:
    """Log a warning when scaled windows start between output samples (floored, as MONAI)."""
    if all(z == 1.0 for z in scale):
        return
    off = [
        ax
        for ax, z in enumerate(scale)
        if any((w[ax].start * z) % 1 or (w[ax].stop * z) % 1 for w in plan.windows)
        or (plan.padded_shape[ax] * z) % 1
    ]
    if off:
        log.warning(
            "output %d at scale %s: windows on axes %s fall between output samples and are "
            "floored (up to 1 sample off); choose roi/overlap so that roi*(1-overlap)*scale and "
            "the image size*scale are integers",
            k,
            tuple(round(z, 4) for z in scale),
            off,
        )
