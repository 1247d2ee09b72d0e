"""``segment()``: the public entry point of the streaming engine.

Resolves the model (a checkpoint's ``LoadedModel`` with its card, or a bare torch module),
the window plan, the output chunking, skip rule, device and sink, then runs
:func:`geomed_seg.inference.engine.run_windows`.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geomed_seg.core.bands import physical_values
from geomed_seg.core.grid import GeoGrid
from geomed_seg.core.image import Image
from geomed_seg.core.labels import ClassInfo
from geomed_seg.errors import InvalidInputError, ModelError
from geomed_seg.inference.blend import activate_numpy, label_format, reduce_chunk
from geomed_seg.inference.engine import Predictor, empty_windows, run_windows
from geomed_seg.inference.plan import importance_map, plan_windows, regular_chunks, schedule_chunks
from geomed_seg.inference.sinks import OutputSpec, Sink, sink_for
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
    from geomed_seg.inference.respaced import spacing_differs

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
    if threshold is None and image.mask is None:
        return None
    t = threshold

    def volume_rule(data: np.ndarray, valid: np.ndarray) -> bool:
        fg = valid if t is None else valid & (data > t).any(axis=0)
        return not fg.any()

    return volume_rule


def _output_chunks(image: Image, sink: Sink, roi: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
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


def _progress_bar(total: int, quiet: bool):
    """Return ``(update(n), close())`` of a rich bar on a TTY, or no-ops."""
    if quiet or not sys.stderr.isatty():
        return None, lambda: None
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
    task = bar.add_task("segment", total=total)
    bar.start()
    return (lambda n: bar.update(task, advance=n)), bar.stop


def segment(
    image: Image,
    model: Any,
    *,
    roi_size: Any = None,
    overlap: float | None = None,
    mode: str | None = None,
    sigma_scale: float = 0.125,
    batch_size: int = 4,
    device: str | torch.device = "auto",
    amp: bool = True,
    tta: bool = False,
    output: str = "labels",
    sink: Sink | str | os.PathLike | None = None,
    skip: str | Callable | None = "auto",
    foreground_threshold: float | None = None,
    overwrite: bool = False,
    quiet: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> SegmentResult:
    """Return the sliding-window segmentation of ``image``, streamed into ``sink``.

    Parameters
    ----------
    image : Image
        Lazy raster ``(band, y, x)`` or volume ``(channel, z, y, x)``.
    model : LoadedModel, torch.nn.Module or callable
        A checkpoint (card gives normalisation, classes, roi, overlap, mode) or a bare module
        fed raw float32 windows (then ``roi_size`` is required).
    roi_size, overlap, mode, sigma_scale
        Window size (array order, pixels), overlap fraction, blending ``"gaussian"`` /
        ``"constant"`` (or ``"nnunet"``: nnU-Net's window steps and Gaussian) and Gaussian
        sigma per roi; defaults from the card (overlap 0.25, gaussian).
    batch_size : int
        Windows per forward pass.
    device, amp, tta
        ``"auto"`` = CUDA when available; autocast (bf16/fp16) on CUDA only; average over the
        ``2**ndim`` mirrorings of the spatial axes (of the card's ``mirror_axes`` only, when
        it names them).
    output : {"labels", "probabilities"}
        Labels (uint8/uint16, class indices of the card, nodata where the input is invalid)
        or float32 class probabilities ``(class, *spatial)`` (NaN where invalid).
    sink : Sink, path or None
        None: in memory; a path by suffix (.tif/.tiff COG, .zarr, .nii/.nii.gz).
    skip : "auto", "none" or callable
        "auto": rasters skip windows without any valid pixel (output nodata); volumes skip
        windows without a voxel above ``foreground_threshold`` inside ``image.mask`` (output
        background class). A callable gets ``(data (C, *window), valid (*window))`` and
        returns True to skip.
    overwrite, quiet, progress
        Replace an existing output; show a rich bar on a TTY when not quiet; ``progress`` is
        called with ``(windows_done, windows_total)``.
    """
    if output not in ("labels", "probabilities"):
        raise InvalidInputError(f"output must be 'labels' or 'probabilities', got {output!r}")
    if batch_size < 1:
        raise InvalidInputError(f"batch_size must be >= 1, got {batch_size}")
    module, card = _unpack_model(model)
    if card is not None:
        image = _match_bands(image, card)
        if card.normalisation.apply_scale_offset:  # the card asks for physical values
            image = physical_values(image)
        roi_size = roi_size if roi_size is not None else tuple(card.roi_size)
        overlap = card.overlap if overlap is None else overlap
        mode = mode or card.mode
        normalise = case_normaliser(card, image)  # pass 1 for per-case statistics
        _warn_spacing(image, card)
        classes = list(card.class_infos())
    else:
        if roi_size is None:
            raise InvalidInputError("roi_size is required for a model without a card")
        classes = []

        def normalise(batch: np.ndarray) -> np.ndarray:
            return np.asarray(batch, dtype=np.float32)

    overlap = 0.25 if overlap is None else overlap
    mode = mode or "gaussian"
    dev = _resolve_device(device)
    if isinstance(module, torch.nn.Module):
        module = module.eval().to(dev)
    blend_logits = getattr(card, "blend", "probabilities") == "logits"
    activation = getattr(card, "activation", "auto")
    predictor = Predictor(
        module, dev, amp, tta, activate=not blend_logits,
        tta_axes=getattr(card, "mirror_axes", None), activation=activation,
    )  # fmt: skip
    steps = "nnunet" if mode == "nnunet" else "monai"
    plan = plan_windows(image.spatial_shape, roi_size, overlap, steps=steps)
    weight = importance_map(plan.roi_size, mode, sigma_scale)
    if not classes:  # bare module: one probe window tells the number of output channels
        probe = np.zeros((1, image.n_channels, *plan.roi_size), np.float32)
        try:
            n_out = predictor(probe).shape[1]
        except RuntimeError as exc:  # shape/channel mismatch inside the module
            raise ModelError(f"model failed on a {probe.shape} window: {exc}") from exc
        classes = [ClassInfo(k, f"class_{k}") for k in range(n_out)]
    n_classes = len(classes)
    lut = np.array([c.index for c in classes], dtype=np.int64)

    out_sink = sink_for(sink, overwrite=overwrite)
    is_raster = isinstance(image.grid, GeoGrid)
    if output == "labels":
        dtype, nodata = label_format(
            [c.index for c in classes], getattr(card, "nodata_label", None)
        )
        count, band_names = 1, ["labels"]
    else:
        dtype, nodata = np.dtype(np.float32), float("nan")
        count, band_names = n_classes, [c.name for c in classes]
    spec = OutputSpec(image.grid, count, dtype, nodata, classes, band_names, dict(image.attrs))
    schedule = schedule_chunks(plan, _output_chunks(image, out_sink, plan.roi_size))

    def reduce(p: np.ndarray, wsum: np.ndarray, valid: np.ndarray) -> np.ndarray:
        if blend_logits:
            p = activate_numpy(p, activation)
        return reduce_chunk(
            p, wsum, valid, output=output, lut=lut, dtype=dtype, nodata=nodata,
            mask_invalid=is_raster, activation=activation,
        )  # fmt: skip

    log.info(
        "segment %s on %s: %d windows of %s, overlap %s, %s blend, sink %s",
        image.kind, dev, len(plan), plan.roi_size, overlap, mode, type(out_sink).__name__,
    )  # fmt: skip
    update, close_bar = _progress_bar(len(plan), quiet)
    done = [0]

    def on_progress(n: int) -> None:
        done[0] += n
        if update is not None:
            update(n)
        if progress is not None:
            progress(done[0], len(plan))

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    out_sink.start(spec)
    try:
        stats = run_windows(
            image, plan, schedule, predictor, normalise, weight, n_classes, out_sink,
            batch_size=batch_size, skip=_skip_rule(image, skip, foreground_threshold),
            background_skips=not is_raster, reduce=reduce, on_progress=on_progress,
            known_empty=empty_windows(image, plan) if skip == "auto" else frozenset(),
        )  # fmt: skip
        result_image = out_sink.finish()
    except BaseException:
        out_sink.abort()
        raise
    finally:
        close_bar()
    seconds = time.perf_counter() - t0
    info = {
        "windows_total": stats.windows_total,
        "windows_run": stats.windows_run,
        "windows_skipped": stats.windows_skipped,
        "seconds": seconds,
        "device": str(dev),
        "peak_gpu_bytes": torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else None,
        "peak_rss_mib": _peak_rss_mib(),
    }
    log.info(
        "segmented %d windows (%d skipped) in %.1f s",
        stats.windows_total, stats.windows_skipped, seconds,
    )  # fmt: skip
    return SegmentResult(result_image, out_sink.path, info)
