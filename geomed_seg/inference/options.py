"""Engine options: one frozen value, resolved against a model card in one place.

The CLI (``segment``), pipelines (:meth:`geomed_seg.pipelines.schema.EngineSpec.to_options`),
training validation and batch runs all build an :class:`EngineOptions`; the engine
(:func:`geomed_seg.inference.segment.segment`) consumes it. ``None`` fields mean "the
card's value": :meth:`EngineOptions.resolve` fills them from the card (or the engine's
defaults for a bare module), so no caller repeats the card-default rules.

Torch-free, so options can be built and validated before torch is imported.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Any

from geomed_seg.errors import InvalidInputError
from geomed_seg.inference.blend import DEFAULT_THRESHOLD
from geomed_seg.inference.plan import BLEND_MODES

#: Engine defaults for a model without a card (a card gives its own overlap and mode).
DEFAULT_OVERLAP = 0.25
DEFAULT_MODE = "gaussian"

OUTPUTS = ("labels", "probabilities")
AMP_CHOICES = ("auto", "fp16", "bf16", "off")
SKIPS = ("auto", "none")


@dataclass(frozen=True)
class EngineOptions:
    """How the sliding-window engine runs (see :func:`geomed_seg.inference.segment.segment`).

    Attributes
    ----------
    roi_size : tuple of int, int or None
        Window size in array order (pixels/voxels; an int for every axis, None/non-positive
        entries take the image size); None = the card's ``roi_size``.
    overlap : float or None
        Fraction of overlap of neighbouring windows in ``[0, 1)``; None = the card's (0.25
        without a card).
    mode : {"gaussian", "constant", "nnunet"} or None
        Blending weights (``"nnunet"``: nnU-Net's window steps and Gaussian); None = the
        card's (``"gaussian"`` without a card).
    sigma_scale : float
        Gaussian sigma per roi (MONAI's 0.125).
    batch_size : int or None
        Windows per forward pass (>= 1); None: chosen from free device memory on CUDA
        (:func:`geomed_seg.inference.device.auto_batch_size`), 4 on CPU.
    device : str
        ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
    amp : bool or {"auto", "fp16", "bf16", "off"}
        Autocast: True/``"auto"`` = bf16 (fp16 where bf16 is unsupported) on CUDA and
        float32 on CPU; ``"fp16"``/``"bf16"`` force a dtype (fp16 needs CUDA).
    tta : bool
        Average over the ``2**ndim`` mirrorings of the spatial axes.
    channels_last : bool or "auto"
        ``channels_last`` memory format for the model input ("auto": for torch modules;
        on CUDA the module's weights too).
    compile : bool
        ``torch.compile`` the module (slow first batches while it compiles).
    device_blend : bool or "auto"
        Normalise, blend and reduce to labels on the device (torch tensors), copying back
        only labels; "auto": on CUDA. False: numpy on the host (faster on CPU).
    threshold : float
        Foreground probability of one-channel (sigmoid) models, in ``(0, 1)``.
    output : {"labels", "probabilities"}
        Labels (card class values) or float32 class probabilities.
    skip : "auto", "none" or callable
        Window skip rule (see ``segment``); a callable gets ``(data (C, *window), valid
        (*window))`` and returns True to skip.
    foreground_threshold : float or None
        Volumes with ``skip="auto"``: a window without a voxel above it is background
        (None: without a non-zero voxel, the zero background of skull-stripped MRI).
    overwrite : bool
        Replace an existing output file.
    quiet : bool
        No progress bar.
    progress : callable or None
        Called with ``(windows_done, windows_total)``.
    devices : str, tuple of str or None
        Several devices for one scene (``"cuda:0,cuda:1"``, ``"all"`` GPUs, ``"cpu,cpu"``):
        one dask worker process per device, the scene cut into tiles
        (:mod:`geomed_seg.inference.multi`); the result equals the one-device run. None: one
        device (``device``).
    """

    roi_size: int | tuple[int | None, ...] | None = None
    overlap: float | None = None
    mode: str | None = None
    sigma_scale: float = 0.125
    batch_size: int | None = 4
    device: str = "auto"
    amp: bool | str = True
    tta: bool = False
    channels_last: bool | str = "auto"
    compile: bool = False
    device_blend: bool | str = "auto"
    threshold: float = DEFAULT_THRESHOLD
    output: str = "labels"
    skip: str | Callable | None = "auto"
    foreground_threshold: float | None = None
    overwrite: bool = False
    quiet: bool = True
    progress: Callable[[int, int], None] | None = None
    devices: str | tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.roi_size is not None:
            object.__setattr__(self, "roi_size", _roi_tuple(self.roi_size))
        if self.overlap is not None and not 0 <= float(self.overlap) < 1:
            raise InvalidInputError(f"overlap must be >= 0 and < 1, got {self.overlap}")
        if self.mode is not None and self.mode not in BLEND_MODES:
            raise InvalidInputError(f"unknown blend mode {self.mode!r}; use one of {BLEND_MODES}")
        if self.batch_size is not None and int(self.batch_size) < 1:
            raise InvalidInputError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.amp not in (True, False, *AMP_CHOICES):
            raise InvalidInputError(f"amp must be a bool or one of {AMP_CHOICES}, got {self.amp!r}")
        for name in ("channels_last", "device_blend"):
            if getattr(self, name) not in (True, False, "auto"):
                raise InvalidInputError(
                    f"{name} must be True, False or 'auto', got {getattr(self, name)!r}"
                )
        if self.output not in OUTPUTS:
            raise InvalidInputError(
                f"output must be 'labels' or 'probabilities', got {self.output!r}"
            )
        if not 0.0 < float(self.threshold) < 1.0:
            raise InvalidInputError(f"threshold must be in (0, 1), got {self.threshold}")
        if not (self.skip in (*SKIPS, None, False) or callable(self.skip)):
            raise InvalidInputError(f"skip must be 'auto', 'none' or a callable, got {self.skip!r}")
        object.__setattr__(self, "device", str(self.device))
        if self.devices is not None:  # checked against torch's devices by the engine
            spec = self.devices
            items = spec.split(",") if isinstance(spec, str) else list(spec)
            object.__setattr__(self, "devices", tuple(str(i).strip() for i in items))

    @classmethod
    def of(cls, options: EngineOptions | None = None, **changes: Any) -> EngineOptions:
        """Return ``options`` (default options when None) with ``changes`` applied.

        Unknown names are refused with the list of known ones.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise TypeError(f"unknown engine option(s) {unknown}; known: {sorted(known)}")
        base = options if options is not None else cls()
        return replace(base, **changes) if changes else base

    def resolve(self, card: Any = None) -> EngineOptions:
        """Return these options with every card default filled in (the one place it is done).

        ``roi_size``, ``overlap`` and ``mode`` left None take the card's values; without a
        card, overlap 0.25 and Gaussian blending, and ``roi_size`` is required.

        Raises
        ------
        InvalidInputError
            No ``roi_size`` and no card.
        """
        roi, overlap, mode = self.roi_size, self.overlap, self.mode
        if card is not None:
            roi = roi if roi is not None else tuple(card.roi_size)
            overlap = card.overlap if overlap is None else overlap
            mode = mode or card.mode
        elif roi is None:
            raise InvalidInputError("roi_size is required for a model without a card")
        overlap = DEFAULT_OVERLAP if overlap is None else overlap
        return replace(self, roi_size=roi, overlap=float(overlap), mode=mode or DEFAULT_MODE)

    @property
    def resolved(self) -> bool:
        """True when ``roi_size``, ``overlap`` and ``mode`` are all set."""
        return None not in (self.roi_size, self.overlap, self.mode)


def _roi_tuple(roi: Any) -> int | tuple[int | None, ...]:
    """Return ``roi`` as an int or a tuple (None / non-positive entries: the image size, as
    :func:`geomed_seg.inference.plan.resolve_roi` reads them)."""
    try:
        if isinstance(roi, int):
            return int(roi)
        return tuple(None if v is None else int(v) for v in roi)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"roi_size {roi!r}: expected integers (array order)") from exc


__all__ = ["DEFAULT_MODE", "DEFAULT_OVERLAP", "EngineOptions"]


#: Attribute set on a dask worker by ``batch --devices`` (see ``batch.cluster.pin_devices``).
WORKER_DEVICE_ATTR = "geomed_seg_device"


def worker_device() -> str | None:
    """Return the device this dask worker was pinned to by ``batch --devices``, else None.

    Outside a dask worker (or when ``distributed`` was never imported) this is None, so
    plain runs keep their configured device.
    """
    import sys

    if "distributed" not in sys.modules:
        return None
    from distributed import get_worker

    try:
        worker = get_worker()
    except ValueError:  # not inside a worker task
        return None
    return getattr(worker, WORKER_DEVICE_ATTR, None)
