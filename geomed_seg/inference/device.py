"""Device-side window work: transfer, normalisation, model, TTA and blending weights on the device.

One code path for CPU and CUDA (torch tensors on ``"cpu"`` are the same code, so CPU tests
cover it); only the transfer differs:

* **staging** (:class:`BatchStager`, run in the reader thread): the raw window batch is
  copied into a reusable pinned host buffer and sent with ``non_blocking=True`` on a
  separate CUDA stream, so host→device copies overlap the model; an event tells the compute
  stream when the batch has arrived. On CPU a batch is wrapped without a copy.
* **normalisation on the device** (:func:`torch_normaliser`): mean/std, scale-range and
  per-case non-zero z-score run on the device in float32, with the same operations in the
  same order as :meth:`geomed_seg.models.card.ModelCard.normalise`, so raw uint8/uint16
  windows travel (half the bytes of float32). Per-window percentiles stay on the host.
* **model** (:class:`DeviceModel`): optional ``channels_last`` memory format, fp16/bf16
  autocast, mirror TTA, activation and multiplication by the importance map, all on the
  device; optional ``torch.compile``.
* **batch size** (:func:`auto_batch_size`): from free device memory when not given.

Blending and the argmax/label lookup on the device live in
:mod:`geomed_seg.inference.device_blend`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Any

import numpy as np
import torch

from geomed_seg.errors import InvalidInputError, ModelError
from geomed_seg.inference.options import AMP_CHOICES

log = logging.getLogger(__name__)

#: Batch size on CPU when none is given (the model, not memory, limits CPU throughput).
CPU_BATCH_SIZE = 4
#: Largest automatic batch size; more windows per call gains nothing measurable on a GPU.
MAX_AUTO_BATCH = 64


def mirror_axes(ndim: int, allowed: Sequence[int] | None = None) -> list[tuple[int, ...]]:
    """Return every subset of the spatial axes to flip, as tensor dims (the identity first).

    ``allowed``: the spatial axes (0 = first spatial axis) that may be flipped, e.g. an
    nnU-Net model's ``inference_allowed_mirroring_axes``; None = all ``ndim`` axes.
    """
    axes = range(ndim) if allowed is None else sorted(set(allowed))
    dims = [a + 2 for a in axes]
    return [c for k in range(len(dims) + 1) for c in combinations(dims, k)]


def one_tensor(out: object, what: str = "model") -> torch.Tensor:
    """Return ``out`` if it is one tensor; raise :class:`ModelError` for tuple/dict outputs.

    Deep-supervision and multi-head models return several tensors; which one is the
    segmentation is the user's choice (wrap the model: ``lambda x: model(x)[0]``).
    """
    if isinstance(out, torch.Tensor):
        return out
    kind = type(out).__name__
    keys = f" with keys {sorted(map(str, out))}" if isinstance(out, dict) else ""
    size = f" of {len(out)}" if isinstance(out, tuple | list) else ""
    raise ModelError(
        f"{what} returned a {kind}{size}{keys}, not one tensor (N, C, *roi); tuple/dict "
        "outputs are not supported yet: wrap the model to return the segmentation tensor "
        "(e.g. lambda x: model(x)[0])"
    )


def amp_dtype(amp: bool | str | None, device: torch.device) -> torch.dtype | None:
    """Return the autocast dtype for ``amp`` on ``device`` (None: float32).

    ``True``/``"auto"``: bf16 on CUDA devices that support it, else fp16; float32 on CPU
    (CPU autocast is slower than float32 on most CPUs). ``"fp16"``/``"bf16"``: that dtype
    (``"fp16"`` on CPU is refused: CPU convolutions have no fp16 kernels worth using).
    ``False``/``"off"``/None: float32.
    """
    choice = {True: "auto", False: "off", None: "off"}.get(amp, amp)  # type: ignore[arg-type]
    if choice not in AMP_CHOICES:
        raise InvalidInputError(f"amp must be one of {AMP_CHOICES} (or a bool), got {amp!r}")
    if choice == "off":
        return None
    if device.type == "cuda":
        if choice == "bf16" or (choice == "auto" and torch.cuda.is_bf16_supported()):
            return torch.bfloat16
        return torch.float16
    if choice == "bf16":
        return torch.bfloat16
    if choice == "fp16":
        raise InvalidInputError("amp='fp16' needs a CUDA device; use amp='bf16' on CPU")
    return None


# -- normalisation ---------------------------------------------------------------------------


def torch_normaliser(card: Any, stats: Any = None) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """Return the card's normalisation as a float32 torch function, or None to stay on the host.

    Same operations in the same order as ``ModelCard.normalise`` (float32), so results are
    equal to the host's. None for percentile normalisation (per-window quantiles) and for
    cards this module does not know.
    """
    from geomed_seg.models.card import MeanStd, NoNormalisation, NonZeroZScore, ScaleRange

    norm = getattr(card, "normalisation", None)
    if norm is None or isinstance(norm, NoNormalisation):
        return lambda x: x.float()
    if isinstance(norm, MeanStd):
        values = (norm.mean, norm.std)
    elif isinstance(norm, NonZeroZScore):
        if stats is None:
            return None  # the host path raises the clear error
        values = (stats.mean, stats.std)
    elif isinstance(norm, ScaleRange):

        def scale_range(x: torch.Tensor) -> torch.Tensor:
            y = (x.float() - np.float32(norm.a_min)) / np.float32(norm.a_max - norm.a_min)
            y = y * np.float32(norm.b_max - norm.b_min) + np.float32(norm.b_min)
            if norm.clip:
                y = y.clamp(min(norm.b_min, norm.b_max), max(norm.b_min, norm.b_max))
            return y

        return scale_range
    else:
        return None
    cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
    nonzero = isinstance(norm, NonZeroZScore)

    def mean_std(x: torch.Tensor) -> torch.Tensor:
        key = (x.device, x.ndim)
        if key not in cache:
            shape = (1, -1) + (1,) * (x.ndim - 2)
            cache[key] = tuple(  # type: ignore[assignment]
                torch.as_tensor(np.asarray(v, np.float32)).reshape(shape).to(x.device)
                for v in values
            )
        mean, std = cache[key]
        xf = x.float()
        z = (xf - mean) / std
        return torch.where(xf != 0, z, torch.zeros((), device=x.device)) if nonzero else z

    return mean_std


# -- staging ----------------------------------------------------------------------------------


@dataclass
class StagedBatch:
    """A batch on its way to (or on) the device: ``tensor`` is valid after ``event``."""

    tensor: torch.Tensor
    event: Any = None  # torch.cuda.Event on CUDA
    unsigned16: bool = False  # uint16 data travelled as int16 bits

    def wait(self) -> torch.Tensor:
        """Make the current stream wait for the copy; return the tensor (uint16 as int32)."""
        t = self.tensor
        if self.event is not None:
            stream = torch.cuda.current_stream(t.device)
            stream.wait_event(self.event)
            t.record_stream(stream)  # the allocator must not reuse it early
        if self.unsigned16:
            t = t.to(torch.int32).bitwise_and_(0xFFFF)
        return t


class BatchStager:
    """Send numpy batches to the device: pinned buffers + ``non_blocking`` on a copy stream.

    Called from the reader thread. ``slots`` pinned buffers are reused round-robin; a
    buffer is rewritten only after the copy that used it has finished (its event). On CPU
    the batch is wrapped without a copy.
    """

    def __init__(self, device: torch.device, slots: int = 4) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self.stream = torch.cuda.Stream(device) if self.cuda else None
        self.slots: list[tuple[torch.Tensor | None, Any]] = [(None, None)] * slots
        self.next = 0
        self.lock = threading.Lock()

    def __call__(self, batch: np.ndarray) -> StagedBatch:
        arr = np.ascontiguousarray(batch)
        if not self.cuda:
            return StagedBatch(torch.from_numpy(arr))
        # CUDA kernels for uint16/uint32 are sparse: send uint16 as its int16 bits (same
        # bytes, widened on the device), uint32 widened to int64 here
        unsigned16 = arr.dtype == np.uint16
        if unsigned16:
            arr = arr.view(np.int16)
        elif arr.dtype == np.uint32:
            arr = arr.astype(np.int64)
        host = torch.from_numpy(arr)
        with self.lock:
            k = self.next
            self.next = (k + 1) % len(self.slots)
            buf, done = self.slots[k]
            if done is not None:
                done.synchronize()  # the last copy out of this buffer has finished
            if buf is None or buf.numel() < host.numel() or buf.dtype != host.dtype:
                buf = torch.empty(host.numel(), dtype=host.dtype).pin_memory()
            pinned = buf[: host.numel()].view(host.shape)
            pinned.copy_(host)
            with torch.cuda.stream(self.stream):
                dev = pinned.to(self.device, non_blocking=True)
                event = torch.cuda.Event()
                event.record(self.stream)
            self.slots[k] = (buf, event)
        return StagedBatch(dev, event, unsigned16)


# -- model ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelOptions:
    """How :class:`DeviceModel` runs a module (one value instead of a long argument list).

    Attributes
    ----------
    amp : bool or str
        See :func:`amp_dtype`.
    tta : bool
        Average over the mirrorings of the spatial axes (``tta_axes`` only, when given).
    activate : bool
        Softmax (sigmoid for one channel, or for every channel when ``activation ==
        "sigmoid"``: region models) per window; False returns logits (cards that blend
        logits).
    tta_axes : tuple of int, optional
        Spatial axes TTA may flip (0 = first spatial axis); None: all.
    activation : {"auto", "sigmoid"}
        A card's activation: "sigmoid" for region outputs (one sigmoid per channel).
    channels_last : bool or "auto"
        ``channels_last`` / ``channels_last_3d`` memory format of the input ("auto": for
        torch modules); on CUDA the module's convolution weights are converted too.
    compile : bool
        Wrap the module with ``torch.compile`` (first batches are slow while it compiles).
    nan_to_zero : bool
        Replace non-finite input samples by 0 (float inputs; integer inputs cannot hold
        NaN, so callers pass False for them and save a pass over the batch).
    """

    amp: bool | str = "auto"
    tta: bool = False
    activate: bool = True
    tta_axes: tuple[int, ...] | None = None
    activation: str = "auto"
    channels_last: bool | str = "auto"
    compile: bool = False
    nan_to_zero: bool = True


class DeviceModel:
    """Run a module on device batches: normalise, memory format, autocast, TTA, activation, weight.

    Parameters
    ----------
    module : callable
        ``(N, C, *roi)`` float32 → ``(N, K, *roi)`` logits.
    device : torch.device
    options : ModelOptions
        AMP, TTA, activation, memory format, compile, NaN handling.
    normalise : callable, optional
        Device normalisation (:func:`torch_normaliser`); None: batches arrive normalised.
    weight : numpy.ndarray, optional
        Importance map ``roi_size``; when given, outputs are multiplied by it (blending).
    """

    def __init__(
        self,
        module: Callable,
        device: torch.device,
        options: ModelOptions = ModelOptions(),  # noqa: B008 - frozen value
        normalise: Callable[[torch.Tensor], torch.Tensor] | None = None,
        weight: np.ndarray | None = None,
    ) -> None:
        o = options
        self.device, self.options, self.tta, self.apply_activation = device, o, o.tta, o.activate
        self.nan_to_zero, self.tta_axes, self.activation = o.nan_to_zero, o.tta_axes, o.activation
        self.amp_dtype = amp_dtype(o.amp, device)
        is_module = isinstance(module, torch.nn.Module)
        self.channels_last = is_module if o.channels_last == "auto" else bool(o.channels_last)
        self.normalise = normalise
        self.weight = (
            None if weight is None else torch.as_tensor(np.asarray(weight, np.float32)).to(device)
        )
        if self.channels_last and is_module and device.type == "cuda":
            self._format_module(module)
        self.module = torch.compile(module) if o.compile else module

    def _memory_format(self, ndim: int) -> torch.memory_format | None:
        if not self.channels_last:
            return None
        return {4: torch.channels_last, 5: torch.channels_last_3d}.get(ndim)

    def _format_module(self, module: torch.nn.Module) -> None:
        """Store 2D/3D convolution weights channels-last (cuDNN's fast layout), in place.

        Skipped inside ``torch.inference_mode`` (the parameters would become inference
        tensors that training cannot use). On CPU only the input is converted: oneDNN
        gets the same speed-up from a channels-last input alone and the module is left as
        the caller gave it.
        """
        if torch.is_inference_mode_enabled():
            return
        dims = {p.ndim for p in module.parameters() if p.ndim in (4, 5)}
        if len(dims) == 1:
            fmt = self._memory_format(dims.pop())
            if fmt is not None:
                module.to(memory_format=fmt)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        fmt = self._memory_format(x.ndim)
        if fmt is not None:
            x = x.contiguous(memory_format=fmt)
        if self.amp_dtype is not None:
            with torch.autocast(self.device.type, dtype=self.amp_dtype):
                return one_tensor(self.module(x)).float()
        return one_tensor(self.module(x)).float()

    def activate(self, logits: torch.Tensor) -> torch.Tensor:
        """Return probabilities: softmax over channels, sigmoid for one output channel or
        for every channel of a region (``activation="sigmoid"``) model."""
        if logits.shape[1] == 1 or self.activation == "sigmoid":
            return torch.sigmoid(logits)
        return torch.softmax(logits, dim=1)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Return the float32 model input of a batch on the device (normalised when asked).

        Non-finite samples (float inputs whose nodata is NaN) enter the model as 0, as on
        the host path, so that one NaN does not turn every window that touches it into NaN;
        their pixels are nodata in the output anyway (the input is invalid there).
        """
        x = x.to(self.device)
        x = self.normalise(x) if self.normalise is not None else x.float()
        return torch.where(torch.isfinite(x), x, 0.0) if self.nan_to_zero else x

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``(N, K, *roi)`` float32 probabilities (or logits) of a device batch.

        Multiplied by the importance map when the model has one. Memory format of the
        result is the default (contiguous) one.
        """
        with torch.inference_mode():
            x = self.prepare(x)
            flips = mirror_axes(x.ndim - 2, self.tta_axes) if self.tta else [()]
            prob: torch.Tensor | None = None
            for axes in flips:
                xi = torch.flip(x, axes) if axes else x
                p = self._forward(xi)
                p = self.activate(p) if self.apply_activation else p
                p = torch.flip(p, axes) if axes else p
                prob = p if prob is None else prob + p
            assert prob is not None
            if len(flips) > 1:
                prob = prob / len(flips)
            prob = prob.contiguous()
            if self.weight is not None:
                prob = prob * self.weight
            return prob


def auto_batch_size(
    model: DeviceModel,
    in_channels: int,
    roi_size: tuple[int, ...],
    *,
    fraction: float = 0.5,
    cap: int = MAX_AUTO_BATCH,
) -> int:
    """Return a batch size that fits ``fraction`` of the free device memory.

    On CUDA: one probe window is run and its peak memory (activations, autocast copies,
    TTA) measured; the batch is ``fraction * free / peak``, between 1 and ``cap``. On CPU:
    :data:`CPU_BATCH_SIZE`.
    """
    dev = model.device
    if dev.type != "cuda":
        return CPU_BATCH_SIZE
    torch.cuda.synchronize(dev)
    free, _ = torch.cuda.mem_get_info(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    base = torch.cuda.memory_allocated(dev)
    probe = torch.zeros((1, in_channels, *roi_size), device=dev)
    model.predict(probe)
    torch.cuda.synchronize(dev)
    per_window = max(torch.cuda.max_memory_allocated(dev) - base, 1)
    size = int(fraction * free // per_window)
    chosen = max(1, min(cap, size))
    log.info(
        "batch size %d from %.1f GiB free, %.1f MiB per window", chosen, free / 2**30,
        per_window / 2**20,
    )  # fmt: skip
    return chosen


__all__ = [
    "AMP_CHOICES",
    "BatchStager",
    "DeviceModel",
    "ModelOptions",
    "StagedBatch",
    "amp_dtype",
    "auto_batch_size",
    "mirror_axes",
    "one_tensor",
    "torch_normaliser",
]
