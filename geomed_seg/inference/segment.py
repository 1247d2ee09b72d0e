"""``segment()``: the public entry point of the streaming engine.

Three steps, each a function of its own:

1. :func:`resolve_run`: the model (a checkpoint's ``LoadedModel`` with its card, or a bare
   torch module), the options resolved against the card
   (:meth:`~geomed_seg.inference.options.EngineOptions.resolve`), the window plan and
   weights, classes and label lookup, output spec, skip rule, device and sink;
2. :func:`execute`: :func:`geomed_seg.inference.engine.run_windows` into the sink, with a
   :class:`ProgressReporter`;
3. :func:`run_stats`: the counters of the run.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geomed_seg.core.bands import physical_values
from geomed_seg.core.grid import GeoGrid
from geomed_seg.core.image import Image
from geomed_seg.core.labels import ClassInfo
from geomed_seg.core.resample_grid import spacing_differs
from geomed_seg.errors import InvalidInputError, ModelError
from geomed_seg.inference.blend import ReduceRules, label_format, reduce_chunk
from geomed_seg.inference.crop import CroppedSink, nonzero_box
from geomed_seg.inference.device import (
    DeviceModel,
    ModelOptions,
    auto_batch_size,
    torch_normaliser,
)
from geomed_seg.inference.device_engine import run_windows_on_device
from geomed_seg.inference.engine import (
    EngineStats,
    Predictor,
    WindowJob,
    empty_windows,
    run_windows,
)
from geomed_seg.inference.options import EngineOptions
from geomed_seg.inference.plan import importance_map, plan_windows, regular_chunks, schedule_chunks
from geomed_seg.inference.sinks import OutputSpec, Sink, check_disk_space, sink_for
from geomed_seg.inference.tiled import tile_runs
from geomed_seg.inference.tiles import is_tiled, tiled_window_count
from geomed_seg.models.case_stats import case_normaliser

log = logging.getLogger(__name__)


@dataclass
class SegmentResult:
    """Output of :func:`segment`: the image on the input grid, where it went, and counters."""

    image: Image
    path: Path | None = None
    stats: dict[str, Any] = field(default_factory=dict)


def _resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _unpack_model(model: Any) -> tuple[Callable, Any]:
    """Return ``(module, card or None)`` for a LoadedModel, an nn.Module or a callable."""
    if hasattr(model, "module") and hasattr(model, "card"):
        return model.module, model.card
    if callable(model):
        return model, None
    raise ModelError(f"model must be a LoadedModel, torch.nn.Module or callable, got {type(model)}")


def _match_bands(image: Image, card: Any) -> Image:
    """Return ``image`` with its bands in the card's order (by name when both have names)."""
    want = getattr(card, "band_names", None)
    have = image.channel_names
    if want and have and list(want) != list(have):
        missing = [b for b in want if b not in have]
        if missing:
            raise ModelError(f"model {card.name!r} needs bands {want}; image has {have}")
        data = image.data.sel({image.channel_dim: list(want)})
        image = Image(data, image.grid, image.nodata, image.mask, image.attrs)
    if image.n_channels != card.in_channels:
        raise ModelError(
            f"model {card.name!r} reads {card.in_channels} channels; image has {image.n_channels}"
        )
    if card.spatial_dims != len(image.spatial_shape):
        raise ModelError(f"model {card.name!r} is {card.spatial_dims}D; image is {image.kind}")
    if hasattr(card, "check_orientation"):
        card.check_orientation(image)
    return image


def _warn_spacing(image: Image, card: Any) -> None:
    """Log a warning naming the input when a volume's spacing is not the card's (> 10 %).

    ``segment`` runs at the input's spacing as asked; the CLI and pipelines resample to the
    card's spacing first (:mod:`geomed_seg.inference.respaced`) unless told not to.
    """
    spacing = getattr(card, "spacing", None)
    if image.kind != "volume" or not spacing:
        return
    have = tuple(image.grid.spacing_zyx)
    if spacing_differs(have, tuple(spacing)):
        log.warning(
            "%s: spacing %s mm (z, y, x) differs from model %r's %s mm; running as is "
            "(geomed_seg.inference.respaced.segment_resampled runs at the model's spacing "
            "and returns results on the input grid)",
            image.attrs.get("source") or "input", tuple(round(v, 3) for v in have),
            card.name, tuple(spacing),
        )  # fmt: skip


def _skip_rule(
    image: Image, skip: str | Callable | None, threshold: float | None
) -> Callable[[np.ndarray, np.ndarray], bool] | None:
    """Return ``rule(data (C, *win), valid (*win)) -> True to skip`` or None for no skipping."""
    if skip in ("none", None, False):
        return None
    if callable(skip):
        return skip
    if skip != "auto":
        raise InvalidInputError(f"skip must be 'auto', 'none' or a callable, got {skip!r}")
    if image.kind == "raster":
        return lambda data, valid: not valid.any()
    t = threshold

    def volume_rule(data: np.ndarray, valid: np.ndarray) -> bool:
        # zero background (skull-stripped MRI, masked CT): a window of zeros is background
        above = (data != 0) if t is None else (data > t)
        return not (valid & above.any(axis=0)).any()

    return volume_rule


def _output_chunks(image: Image, sink: Sink) -> tuple[tuple[int, ...], ...]:
    edge = sink.chunk or (512 if image.kind == "raster" else 128)
    return regular_chunks(image.spatial_shape, edge)


def _peak_rss_mib() -> float | None:
    """Peak resident memory of this process so far (MiB), where the OS reports it."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


class ProgressReporter:
    """Counts finished windows: a rich bar on a TTY (unless quiet) and an optional callback.

    Call it with the number of windows just finished; :meth:`close` removes the bar.
    """

    def __init__(
        self, total: int, quiet: bool, callback: Callable[[int, int], None] | None = None
    ) -> None:
        self.total, self.done, self.callback = total, 0, callback
        self._bar = None
        if not quiet and sys.stderr.isatty():
            self._bar = self._start_bar(total)

    @staticmethod
    def _start_bar(total: int) -> Any:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeRemainingColumn,
        )

        bar = Progress(
            TextColumn("windows"), BarColumn(), MofNCompleteColumn(),
            TaskProgressColumn(show_speed=True), TimeRemainingColumn(),
            console=Console(stderr=True), transient=True,
        )  # fmt: skip
        bar.add_task("segment", total=total)
        bar.start()
        return bar

    def __call__(self, n: int) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(self._bar.task_ids[0], advance=n)
        if self.callback is not None:
            self.callback(self.done, self.total)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


@dataclass
class EngineRun:
    """Everything one engine run needs, resolved (see :func:`resolve_run`)."""

    image: Image
    options: EngineOptions
    device: torch.device
    predictor: Predictor
    job: WindowJob
    spec: OutputSpec
    sink: Sink
    #: The device path (:mod:`geomed_seg.inference.device_engine`) when it is used.
    device_model: DeviceModel | None = None
    #: How the device path turns a finished chunk into output.
    device_reduce: ReduceRules | None = None
    #: Output chunks of the whole image; the run goes tile by tile when the plan is tiled
    #: (:mod:`geomed_seg.inference.tiles`; ``job.schedule`` is then None).
    chunks: tuple[tuple[int, ...], ...] | None = None


def _prepare_input(image: Image, card: Any) -> tuple[Image, Callable[[np.ndarray], np.ndarray]]:
    """Return ``(image, normalise)``: bands in card order, physical values if asked, and the
    card's normaliser (pass 1 for per-case statistics); raw float32 without a card."""
    if card is None:
        return image, _as_float32
    image = _match_bands(image, card)
    if card.normalisation.apply_scale_offset:  # the card asks for physical values
        image = physical_values(image)
    normalise = case_normaliser(card, image)
    _warn_spacing(image, card)
    return image, normalise


def _crop_box(image: Image, card: Any) -> tuple[slice, ...] | None:
    """Return the non-zero box to run (cards with ``crop_to_nonzero``, volumes), or None."""
    if not getattr(card, "crop_to_nonzero", False) or image.kind != "volume":
        return None
    box = nonzero_box(image)
    if box is not None:
        log.info(
            "%s: running the non-zero box %s of %s (crop_to_nonzero); background outside",
            image.attrs.get("source") or "input",
            [(s.start, s.stop) for s in box], image.spatial_shape,
        )  # fmt: skip
    return box


def _outside_fill(output: str, n_classes: int, activation: str) -> np.ndarray:
    """Return the per-band value outside a cropped box: label 0, or background probabilities."""
    if output == "labels":
        return np.zeros(1)
    fill = np.zeros(n_classes)
    if activation != "sigmoid" and n_classes > 1:
        fill[0] = 1.0  # softmax: certain background, as nnU-Net's revert_cropping_on_probabilities
    return fill


def _as_float32(batch: np.ndarray) -> np.ndarray:
    return np.asarray(batch, dtype=np.float32)


def _probe_classes(predictor: Predictor, image: Image, roi: tuple[int, ...]) -> list[ClassInfo]:
    """Return ``class_0..class_{K-1}`` of a bare module: one zero window tells K."""
    probe = np.zeros((1, image.n_channels, *roi), np.float32)
    try:
        n_out = predictor(probe).shape[1]
    except RuntimeError as exc:  # shape/channel mismatch inside the module
        raise ModelError(f"model failed on a {probe.shape} window: {exc}") from exc
    return [ClassInfo(k, f"class_{k}") for k in range(n_out)]


def _output(
    image: Image, classes: list[ClassInfo], card: Any, opts: EngineOptions
) -> tuple[OutputSpec, Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray], ReduceRules]:
    """Return the output spec, ``reduce(prob, wsum, valid)`` of a finished chunk on the host
    and its rules (which the device reduction applies too)."""
    lut = np.array([c.index for c in classes], dtype=np.int64)
    if opts.output == "labels":
        dtype, nodata = label_format(lut, getattr(card, "nodata_label", None))
        count, band_names = 1, ["labels"]
    else:
        dtype, nodata = np.dtype(np.float32), float("nan")
        count, band_names = len(classes), [c.name for c in classes]
    spec = OutputSpec(image.grid, count, dtype, nodata, classes, band_names, dict(image.attrs))
    rules = ReduceRules(
        output=opts.output, lut=lut, dtype=dtype, nodata=nodata,
        mask_invalid=isinstance(image.grid, GeoGrid),
        blend_logits=getattr(card, "blend", "probabilities") == "logits",
        threshold=opts.threshold, activation=getattr(card, "activation", "auto"),
    )  # fmt: skip
    return spec, functools.partial(reduce_chunk, rules=rules), rules


def resolve_run(
    image: Image, model: Any, options: EngineOptions, sink: Sink | str | os.PathLike | None
) -> EngineRun:
    """Return the :class:`EngineRun` of ``model`` on ``image`` with ``options`` into ``sink``."""
    module, card = _unpack_model(model)
    opts = options.resolve(card)
    if opts.devices:  # torch's view of the devices (options stay torch-free)
        from geomed_seg.inference.multi import resolve_devices

        opts = replace(opts, devices=resolve_devices(opts.devices))
    full = image = _match_bands(image, card) if card is not None else image
    box = _crop_box(image, card)
    if box is not None:  # nnU-Net: run the non-zero box only (inference/crop.py)
        image = image.sel_window(box)
    image, normalise = _prepare_input(image, card)
    dev = _resolve_device(opts.device)
    if isinstance(module, torch.nn.Module):
        module = module.eval().to(dev)
    blend_logits = getattr(card, "blend", "probabilities") == "logits"
    axes = getattr(card, "mirror_axes", None)
    model_opts = ModelOptions(
        amp=opts.amp, tta=opts.tta, activate=not blend_logits,
        tta_axes=None if axes is None else tuple(axes),
        activation=getattr(card, "activation", "auto"), channels_last=opts.channels_last,
        compile=opts.compile, nan_to_zero=False,  # host batches: cleaned by iter_batches
    )  # fmt: skip
    predictor = Predictor(module, dev, model_opts)
    steps = "nnunet" if opts.mode == "nnunet" else "monai"
    plan = plan_windows(image.spatial_shape, opts.roi_size, opts.overlap, steps=steps)
    if card is not None:
        classes = list(card.class_infos())
    else:
        classes = _probe_classes(predictor, image, plan.roi_size)
    out_sink = sink_for(sink, overwrite=opts.overwrite)
    spec, reduce, device_reduce = _output(full, classes, card, opts)
    check_disk_space(out_sink, spec)  # refuse now, not after hours of windows
    if box is not None:
        fill = _outside_fill(opts.output, len(classes), getattr(card, "activation", "auto"))
        out_sink = CroppedSink(out_sink, box, fill)
    weight = importance_map(plan.roi_size, opts.mode, opts.sigma_scale)
    device_model = None
    if opts.device_blend is True or (opts.device_blend == "auto" and dev.type == "cuda"):
        # raw windows travel and are normalised on the device, unless the plan pads (each
        # window normalised on its own, then 0-padded) or the card's rule is host-only
        padded = any(b or a for b, a in plan.pad)
        tnorm = None if padded else torch_normaliser(card, getattr(normalise, "stats", None))
        nan = bool(np.issubdtype(image.dtype, np.floating))  # raw windows: cleaned there
        device_model = DeviceModel(
            module, dev, replace(model_opts, nan_to_zero=nan), normalise=tnorm, weight=weight
        )
    batch_size = opts.batch_size
    if batch_size is None:
        batch_size = auto_batch_size(device_model or predictor.model, image.n_channels,
                                     plan.roi_size)  # fmt: skip
    chunks = _output_chunks(image, out_sink)
    tiled = is_tiled(plan, chunks)  # then each tile gets its own schedule and empty windows
    job = WindowJob(
        plan=plan,
        schedule=None if tiled else schedule_chunks(plan, chunks),
        normalise=normalise,
        weight=weight,
        n_classes=len(classes),
        batch_size=batch_size,
        skip=_skip_rule(image, opts.skip, opts.foreground_threshold),
        background_skips=not isinstance(image.grid, GeoGrid),
        reduce=reduce,
        known_empty=(
            empty_windows(image, plan) if opts.skip == "auto" and not tiled else frozenset()
        ),
    )
    return EngineRun(
        image, opts, dev, predictor, job, spec, out_sink, device_model, device_reduce, chunks
    )


def run_stats(stats: Any, seconds: float, device: torch.device) -> dict[str, Any]:
    """Return the counters of a run: windows, seconds, device, peak GPU bytes and RSS (MiB)."""
    return {
        "windows_total": stats.windows_total,
        "windows_run": stats.windows_run,
        "windows_skipped": stats.windows_skipped,
        "seconds": seconds,
        "device": str(device),
        "peak_gpu_bytes": (
            torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
        ),
        "peak_rss_mib": _peak_rss_mib(),
    }


def execute(run: EngineRun) -> SegmentResult:
    """Run the windows of ``run`` into its sink; return the result with its counters."""
    plan, dev, opts = run.job.plan, run.device, run.options
    log.info(
        "segment %s on %s: %d windows of %s, overlap %s, %s blend, sink %s",
        run.image.kind, dev, len(plan), plan.roi_size, opts.overlap, opts.mode,
        type(run.sink).__name__,
    )  # fmt: skip
    n_windows = len(plan) if run.chunks is None else tiled_window_count(plan, run.chunks)
    if opts.devices:  # one dask worker per device, tiles shared out (inference/multi.py)
        from geomed_seg.inference.multi import device_tiles, run_on_devices

        dev_tiles = device_tiles(plan, run.chunks or (), len(opts.devices))
        n_windows = sum(len(t.plan) for t in dev_tiles)
    reporter = ProgressReporter(n_windows, opts.quiet, opts.progress)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    run.sink.start(run.spec)
    try:
        stats, n_tiles = EngineStats(), 0
        if opts.devices:
            stats, n_tiles = run_on_devices(
                run.image, run.job, run.predictor, run.sink, dev_tiles, opts.devices,
                skip_empty=opts.skip == "auto", on_progress=reporter,
            )  # fmt: skip
        tiles = (
            ()
            if opts.devices
            else tile_runs(run.image, run.job, run.sink, run.chunks, skip_empty=opts.skip == "auto")
        )
        for image, job, sink in tiles:
            if run.device_model is not None:
                part = run_windows_on_device(
                    image, job, run.device_model, sink, run.device_reduce, reporter
                )
            else:
                part = run_windows(image, job, run.predictor, sink, reporter)
            stats.windows_total += part.windows_total
            stats.windows_run += part.windows_run
            stats.windows_skipped += part.windows_skipped
            n_tiles += 1
        result_image = run.sink.finish()
    except BaseException:
        run.sink.abort()
        raise
    finally:
        reporter.close()
    seconds = time.perf_counter() - t0
    log.info(
        "segmented %d windows (%d skipped) in %.1f s",
        stats.windows_total, stats.windows_skipped, seconds,
    )  # fmt: skip
    info = run_stats(stats, seconds, dev)
    info["batch_size"] = run.job.batch_size
    info["device_blend"] = run.device_model is not None
    info["tiles"] = n_tiles
    return SegmentResult(result_image, run.sink.path, info)


def segment(
    image: Image,
    model: Any,
    options: EngineOptions | None = None,
    sink: Sink | str | os.PathLike | None = None,
    **changes: Any,
) -> SegmentResult:
    """Return the sliding-window segmentation of ``image``, streamed into ``sink``.

    Parameters
    ----------
    image : Image
        Lazy raster ``(band, y, x)`` or volume ``(channel, z, y, x)``.
    model : LoadedModel, torch.nn.Module or callable
        A checkpoint (card gives normalisation, classes, roi, overlap, mode) or a bare module
        fed raw float32 windows (then ``roi_size`` is required).
    options : EngineOptions, optional
        How to run (:class:`~geomed_seg.inference.options.EngineOptions`: roi_size,
        overlap, mode, sigma_scale, batch_size, device, amp, tta, threshold, output, skip,
        foreground_threshold, overwrite, quiet, progress); None fields take the card's
        values. Default: ``EngineOptions()``. ``mode="nnunet"``: nnU-Net's window steps
        and Gaussian; TTA mirrors only the card's ``mirror_axes`` when it names them.
    sink : Sink, path or None
        None: in memory; a path by suffix (.tif/.tiff COG, .zarr, .nii/.nii.gz).
    **changes
        Options given by name instead (``segment(img, model, roi_size=(256, 256))``),
        applied on top of ``options``.

    Notes
    -----
    ``output="labels"`` gives uint8/uint16 class values of the card (nodata where the input
    is invalid); one-channel models threshold at ``threshold``, others take the argmax
    (:func:`geomed_seg.inference.blend.labels_from_probabilities`). ``"probabilities"``
    gives float32 ``(class, *spatial)`` (NaN where invalid). ``skip="auto"``: rasters skip
    windows without any valid pixel (output nodata); volumes skip windows without a
    foreground voxel (output background class, channel 0): a voxel is foreground when it
    is valid (inside ``image.mask``) and any channel is non-zero (zero background, as
    skull-stripped MRI) or, with ``foreground_threshold``, above it.
    """
    opts = EngineOptions.of(options, **changes)
    return execute(resolve_run(image, model, opts, sink))
