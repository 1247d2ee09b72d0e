"""In-memory sliding-window inference on a torch tensor, numerically equal to MONAI's.

A short loop over the pieces of :mod:`geomed_seg.inference.plan` (window grid, padding,
importance map). It exists beside MONAI's ``sliding_window_inference`` as the in-memory
reference of our streaming engine: both share the one window plan, so parity with MONAI is
tested once, on the plan, and again end to end here. Tuple/dict outputs and outputs at a
different resolution than the input (MONAI extras) are not supported.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from geomed_seg.errors import InvalidInputError
from geomed_seg.inference.engine import one_tensor
from geomed_seg.inference.plan import importance_map, plan_windows


def sliding_window_inference(
    inputs: torch.Tensor,
    roi_size: int | Sequence[int | None] | None,
    sw_batch_size: int,
    predictor: Callable[[torch.Tensor], torch.Tensor],
    overlap: float | Sequence[float] = 0.25,
    mode: str = "constant",
    sigma_scale: float | Sequence[float] = 0.125,
    padding_mode: str = "constant",
    cval: float = 0.0,
    sw_device: torch.device | str | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Return the blended prediction of ``predictor`` over windows of ``inputs``.

    Parameters
    ----------
    inputs : torch.Tensor
        ``(N, C, *spatial)``, spatial in array order ((y, x) or (z, y, x)).
    roi_size : int, sequence or None
        Window size (pixels); ``None``/non-positive entries take the image size.
    sw_batch_size : int
        Windows per predictor call.
    predictor : callable
        Maps ``(B, C, *roi_size)`` to ``(B, K, *roi_size)``.
    overlap, mode, sigma_scale, padding_mode, cval, sw_device, device
        As in MONAI: blend ``"constant"`` or ``"gaussian"``; padding (``torch.nn.functional.pad``
        mode) when the image is smaller than the roi; devices of windows and of the output.
    progress : bool
        Ignored (kept for signature compatibility with MONAI).

    Returns
    -------
    torch.Tensor
        ``(N, K, *spatial)`` in ``inputs.dtype``, on ``device`` (default: the input's device).
    """
    if inputs.ndim < 3:
        raise InvalidInputError(f"inputs must be (N, C, *spatial), got shape {tuple(inputs.shape)}")
    if sw_batch_size < 1:
        raise InvalidInputError(f"sw_batch_size must be >= 1, got {sw_batch_size}")
    device = torch.device(device) if device is not None else inputs.device
    sw_device = torch.device(sw_device) if sw_device is not None else inputs.device
    dtype = inputs.dtype
    n_img, _, *spatial = inputs.shape
    plan = plan_windows(spatial, roi_size, overlap)
    if any(b or a for b, a in plan.pad):
        # F.pad takes (before, after) pairs from the last axis backwards
        flat = [w for pair in reversed(plan.pad) for w in pair]
        value = cval if padding_mode == "constant" else None
        inputs = F.pad(inputs, flat, mode=padding_mode, value=value)
    weight = torch.as_tensor(importance_map(plan.roi_size, mode, sigma_scale))
    weight = weight.to(device=sw_device, dtype=dtype)[None, None]

    jobs = [(b, w) for b in range(n_img) for w in plan.windows]
    output: torch.Tensor | None = None
    for first in range(0, len(jobs), sw_batch_size):
        batch = jobs[first : first + sw_batch_size]
        win = torch.cat([inputs[(slice(b, b + 1), slice(None), *w)] for b, w in batch])
        pred = one_tensor(predictor(win.to(sw_device)), "predictor")
        if tuple(pred.shape[2:]) != plan.roi_size:
            raise InvalidInputError(
                f"predictor output spatial shape {tuple(pred.shape[2:])} != roi {plan.roi_size}"
            )
        pred = (pred.to(dtype) * weight).to(device)
        if output is None:
            output = torch.zeros(
                (n_img, pred.shape[1], *plan.padded_shape), dtype=dtype, device=device
            )
        for p, (b, w) in zip(pred, batch, strict=True):
            output[(b, slice(None), *w)] += p
    assert output is not None
    count = torch.zeros((1, 1, *plan.padded_shape), dtype=dtype, device=device)
    w_out = weight.to(device)
    for w in plan.windows:
        count[(slice(None), slice(None), *w)] += w_out
    output /= count
    crop = tuple(slice(b, b + n) for (b, _), n in zip(plan.pad, plan.image_shape, strict=True))
    return output[(slice(None), slice(None), *crop)]
