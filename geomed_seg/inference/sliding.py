"""In-memory sliding-window inference on a torch tensor: a drop-in for MONAI's.

Same signature and results as ``monai.inferers.sliding_window_inference`` (MONAI 1.6),
including ``roi_weight_map``, ``process_fn``, ``buffer_steps``/``buffer_dim``,
``with_coord``, ``condition=`` and extra ``*args``/``**kwargs`` forwarded to the predictor,
and tuple/list/dict outputs at their own scale. It is a short loop over separately tested
pieces: the window plan of :mod:`geomed_seg.inference.plan` (shared with the streaming
engine, so parity with MONAI is tested on the plan and again end to end here), the batch
schedule :func:`window_groups`, and the :class:`~geomed_seg.inference.stitch.Stitcher`.

Where MONAI's result is not a defensible blend we differ on purpose, and say so here:
buffered runs keep every output (MONAI keeps only the first), a ``process_fn`` weight that
changes per batch is normalised by the weights actually used, scaled outputs take their
weight straight from the roi weight, integer inputs are blended in the default float dtype,
and a total weight of 0 anywhere is refused instead of returning NaN.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from geomed_seg.errors import InvalidInputError
from geomed_seg.inference.plan import WindowPlan, importance_map, plan_windows
from geomed_seg.inference.stitch import Job, Stitcher, flatten_outputs, pack_outputs

PADDING_MODES = ("constant", "reflect", "replicate", "circular")


@dataclass(frozen=True)
class WindowGroup:
    """Windows run back to back; a slab group gathers its sums in one buffer first.

    Attributes
    ----------
    jobs : tuple of (int, int)
        ``(image index, window index)`` pairs in predictor order.
    slab : tuple of int or None
        ``(image, axis, start, stop)``: the buffer spans ``[start, stop)`` of spatial ``axis``
        (padded coordinates) of one image; ``None`` when not buffered.
    """

    jobs: tuple[Job, ...]
    slab: tuple[int, int, int, int] | None = None


def window_groups(
    plan: WindowPlan, n_images: int, buffer_steps: int | None = None, buffer_dim: int = -1
) -> list[WindowGroup]:
    """Return the order in which windows are predicted, as MONAI orders them.

    Unbuffered: one group, every window of image 0, then image 1, ... (batches may span two
    images). Buffered: windows sorted (stably) by their start along ``buffer_dim``; each image
    is cut into slabs of ``buffer_steps`` distinct starts, one group per (image, slab).
    """
    n_win = len(plan)
    if not buffer_steps or buffer_steps <= 0:
        return [WindowGroup(tuple((b, i) for b in range(n_images) for i in range(n_win)))]
    axis = buffer_dim + plan.ndim if buffer_dim < 0 else buffer_dim
    starts = np.array([w[axis].start for w in plan.windows])
    order = np.argsort(starts, kind="stable")
    distinct = np.flatnonzero(np.diff(starts[order])) + 1  # where a new start begins
    bounds = [0, *distinct.tolist(), n_win][:: min(len(distinct) + 1, int(buffer_steps))]
    if bounds[-1] != n_win:
        bounds.append(n_win)
    groups = []
    for b in range(n_images):
        for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
            idx = order[lo:hi].tolist()
            start = plan.windows[idx[0]][axis].start
            stop = max(plan.windows[i][axis].stop for i in idx)
            groups.append(WindowGroup(tuple((b, i) for i in idx), (b, axis, start, stop)))
    return groups


def sliding_window_inference(
    inputs: torch.Tensor,
    roi_size: int | Sequence[int | None] | None,
    sw_batch_size: int,
    predictor: Callable[..., Any],
    overlap: float | Sequence[float] = 0.25,
    mode: str = "constant",
    sigma_scale: float | Sequence[float] = 0.125,
    padding_mode: str = "constant",
    cval: float = 0.0,
    sw_device: torch.device | str | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
    roi_weight_map: torch.Tensor | None = None,
    process_fn: Callable | None = None,
    buffer_steps: int | None = None,
    buffer_dim: int = -1,
    with_coord: bool = False,
    *args: Any,
    **kwargs: Any,
) -> torch.Tensor | tuple[torch.Tensor, ...] | dict[Any, torch.Tensor]:
    """Return the blended prediction of ``predictor`` over windows of ``inputs``.

    Parameters
    ----------
    inputs : torch.Tensor
        ``(N, C, *spatial)``, spatial in array order ((x,), (y, x), (z, y, x), ...).
    roi_size : int, sequence or None
        Window size (samples); ``None``/non-positive entries take the image size. A sequence
        must have one value per spatial axis.
    sw_batch_size : int
        Windows per predictor call.
    predictor : callable
        ``predictor(windows, *args, **kwargs)`` (``predictor(windows, coords, ...)`` with
        ``with_coord``) on ``(B, C, *roi_size)``; returns a tensor, a tuple/list or a dict of
        tensors ``(B, K, *roi_size * scale)``, each output at its own scale.
    overlap, mode, sigma_scale, padding_mode, cval, sw_device, device, progress
        As in MONAI: overlap fraction in [0, 1) per axis; blend ``"constant"`` or
        ``"gaussian"`` (sigma ``sigma_scale * roi``); ``torch.nn.functional.pad`` mode and
        value when the image is smaller than the roi; devices of windows and of the output;
        a tqdm progress bar over batches.
    roi_weight_map : torch.Tensor, optional
        Non-negative blending weight of one window, ``roi_size`` or ``(1, 1, *roi_size)``;
        replaces the ``mode`` weight.
    process_fn : callable, optional
        ``process_fn(outputs, windows, weight) -> (outputs, weight)`` on each batch's tuple of
        outputs, before blending; the returned weight may differ per batch or per window
        (``(B, 1, *roi)``).
    buffer_steps, buffer_dim : int
        Gather the sums of ``buffer_steps`` window rows along spatial axis ``buffer_dim`` on
        ``sw_device`` before adding them to the output on ``device`` (fewer transfers when
        the model runs on a GPU and the output stays on the host). Same result as unbuffered.
    with_coord : bool
        Pass each batch's window coordinates (list of ``[image slice, channel slice,
        *spatial slices]`` in padded coordinates) as the predictor's second argument.
    *args, **kwargs
        Forwarded to ``predictor``. ``condition=`` (a tensor shaped like ``inputs``) is
        padded and windowed like ``inputs`` and passed as the ``condition`` keyword.

    Returns
    -------
    torch.Tensor, tuple or dict
        Shaped like the predictor's output: ``(N, K, *spatial * scale)`` per output, in the
        input's floating dtype, on ``device`` (default: the input's device).

    Raises
    ------
    InvalidInputError
        Inconsistent shapes or arguments (also a ``ValueError``).
    ModelError
        A predictor output that cannot be blended.
    """
    _check_args(inputs, roi_size, sw_batch_size, padding_mode, buffer_steps, buffer_dim)
    condition = kwargs.pop("condition", None)
    like, inputs = inputs, _plain(inputs)
    n_images, _, *spatial = inputs.shape
    device = torch.device(device) if device is not None else inputs.device
    sw_device = torch.device(sw_device) if sw_device is not None else inputs.device
    dtype = inputs.dtype if inputs.is_floating_point() else torch.get_default_dtype()
    plan = plan_windows(spatial, roi_size, overlap)
    inputs = _pad(inputs, plan, padding_mode, cval)
    if condition is not None:
        condition = _pad(_plain(condition), plan, padding_mode, cval)
    weight = _roi_weight(plan, mode, sigma_scale, roi_weight_map, sw_device, dtype, process_fn)
    stitch = Stitcher(
        plan, n_images, dtype, device, sw_device, dynamic_weight=process_fn is not None
    )
    keys = None
    for group, jobs, first, last in _batches(
        plan, n_images, sw_batch_size, buffer_steps, buffer_dim, progress
    ):
        if group.slab is not None and first:
            stitch.open_slab(*group.slab)
        coords = [[slice(b, b + 1), slice(None), *plan.windows[i]] for b, i in jobs]
        windows = torch.cat([inputs[tuple(c)] for c in coords]).to(sw_device)
        if condition is not None:
            kwargs["condition"] = torch.cat([condition[tuple(c)] for c in coords]).to(sw_device)
        extra = (coords, *args) if with_coord else args
        keys, preds = flatten_outputs(predictor(windows, *extra, **kwargs))
        w = weight
        if process_fn is not None:
            preds, w = process_fn(preds, windows, weight)
            preds = flatten_outputs(preds)[1]
        allocate = not stitch.sums
        stitch.add(jobs, preds, w)
        if allocate and process_fn is None:
            stitch.fixed_counts(weight)
        if group.slab is not None and last:
            stitch.close_slab()
    outputs = [_like_input(o.to(dtype), like) for o in stitch.result()]
    return pack_outputs(outputs, keys)


def _batches(
    plan: WindowPlan,
    n_images: int,
    sw_batch_size: int,
    buffer_steps: int | None,
    buffer_dim: int,
    progress: bool,
) -> Iterable[tuple[WindowGroup, tuple[Job, ...], bool, bool]]:
    """Yield ``(group, jobs, first of group, last of group)``; a batch never spans two groups."""
    pairs = [
        (g, g.jobs[i : i + sw_batch_size], i == 0, i + sw_batch_size >= len(g.jobs))
        for g in window_groups(plan, n_images, buffer_steps, buffer_dim)
        for i in range(0, len(g.jobs), sw_batch_size)
    ]
    if progress:
        from tqdm.auto import tqdm

        return tqdm(pairs)
    return pairs


def _check_args(
    inputs: torch.Tensor,
    roi_size: object,
    sw_batch_size: int,
    padding_mode: str,
    buffer_steps: int | None,
    buffer_dim: int,
) -> None:
    """Raise :class:`InvalidInputError` for arguments MONAI would refuse or misuse."""
    if not isinstance(inputs, torch.Tensor) or inputs.ndim < 3:
        shape = tuple(getattr(inputs, "shape", ()))
        raise InvalidInputError(f"inputs must be a tensor (N, C, *spatial), got shape {shape}")
    nd = inputs.ndim - 2
    if isinstance(roi_size, Sequence) and len(roi_size) != nd:
        n = len(roi_size)
        raise InvalidInputError(
            f"inputs must have {n + 2} dimensions (N, C, {n} spatial) for a {n}D roi_size "
            f"{tuple(roi_size)}, got shape {tuple(inputs.shape)}; move a channel-last axis "
            "first (e.g. monai.transforms.EnsureChannelFirst)"
        )
    if int(sw_batch_size) < 1:
        raise InvalidInputError(f"sw_batch_size must be >= 1, got {sw_batch_size}")
    if padding_mode not in PADDING_MODES:
        raise InvalidInputError(
            f"unknown padding_mode {padding_mode!r}; use one of {PADDING_MODES}"
        )
    if buffer_steps is not None and buffer_steps > 0 and not -nd <= buffer_dim < nd:
        raise InvalidInputError(f"buffer_dim must be in [{-nd}, {nd - 1}], got {buffer_dim}")


def _plain(t: torch.Tensor) -> torch.Tensor:
    """Return ``t`` as a plain tensor (a MONAI MetaTensor would slow every window op)."""
    return t if type(t) is torch.Tensor else t.as_subclass(torch.Tensor)


def _like_input(out: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Return ``out`` wrapped in the input's tensor subclass with its metadata (MetaTensor)."""
    if type(like) is torch.Tensor or not hasattr(like, "copy_meta_from"):
        return out
    wrapped = type(like)(out)
    wrapped.copy_meta_from(like, copy_attr=False)
    return wrapped


def _pad(t: torch.Tensor, plan: WindowPlan, padding_mode: str, cval: float) -> torch.Tensor:
    """Return ``t`` padded to at least the roi on every spatial axis (MONAI's split)."""
    if not any(b or a for b, a in plan.pad):
        return t
    flat = [w for pair in reversed(plan.pad) for w in pair]  # F.pad: last axis first
    value = cval if padding_mode == "constant" else None
    return F.pad(t, flat, mode=padding_mode, value=value)


def _roi_weight(
    plan: WindowPlan,
    mode: str,
    sigma_scale: float | Sequence[float],
    roi_weight_map: torch.Tensor | None,
    sw_device: torch.device,
    dtype: torch.dtype,
    process_fn: Callable | None,
) -> torch.Tensor:
    """Return the window weight: ``roi_weight_map`` (checked) or the ``mode`` importance map.

    Spatial shape only when a ``process_fn`` receives it (as MONAI hands it over), else
    ``(1, 1, *roi)``.
    """
    if roi_weight_map is None:
        weight = torch.as_tensor(importance_map(plan.roi_size, mode, sigma_scale))
    else:
        weight = torch.as_tensor(roi_weight_map)
        if tuple(weight.shape[-plan.ndim :]) != plan.roi_size or weight.numel() != int(
            np.prod(plan.roi_size)
        ):
            raise InvalidInputError(
                f"roi_weight_map shape {tuple(weight.shape)} does not match roi {plan.roi_size}"
            )
        if bool((weight < 0).any()):
            raise InvalidInputError("roi_weight_map has negative weights; use weights >= 0")
        weight = weight.reshape(plan.roi_size)
        if process_fn is not None:
            roi_weight_map = torch.as_tensor(roi_weight_map)
            return roi_weight_map.to(device=sw_device, dtype=dtype)
    weight = weight.to(device=sw_device, dtype=dtype)
    return weight if process_fn is not None else weight[None, None]
