"""Streaming sliding-window executor: prefetch, batch, run, blend per output chunk, flush.

The loop (see DESIGN.md, "The engine's contract"):

1. a reader thread reads windows in chunk order (:func:`~geomed_seg.inference.plan.
   schedule_chunks`) from the lazy image, decides skips from the window's own validity, and
   normalises runnable windows, one batch ahead of the model;
2. the main thread runs the model (``torch.inference_mode``, AMP on CUDA, optional mirror TTA)
   and adds ``weight * probability`` and ``weight`` into float32 buffers of only the output
   chunks the window touches;
3. when a chunk's remaining-window count reaches zero it is normalised, reduced (labels by
   :func:`~geomed_seg.inference.blend.labels_from_probabilities`, nodata where the input is
   invalid) and handed to the sink, then freed. The blending itself is torch-free, in
   :mod:`geomed_seg.inference.blend`.

Peak memory is bounded by the batches in flight and the open chunks (about one row of
chunks), not by the image size. Hand-written because MONAI's ``sliding_window_inference``
and ``SlidingWindowInferer`` hold the whole image and output in memory.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from geomed_seg.core.image import Image
from geomed_seg.errors import ModelError
from geomed_seg.inference.blend import (  # noqa: F401 - re-exported for older imports
    ChunkAccumulator,
    activate_numpy,
    reduce_chunk,
)
from geomed_seg.inference.device import (  # noqa: F401 - mirror_axes, one_tensor re-exported
    DeviceModel,
    ModelOptions,
    mirror_axes,
    one_tensor,
)
from geomed_seg.inference.plan import ChunkSchedule, WindowPlan
from geomed_seg.inference.reader import WindowReader
from geomed_seg.inference.sinks import Sink

log = logging.getLogger(__name__)

SkipRule = Callable[[np.ndarray, np.ndarray], bool]


@dataclass
class WindowItem:
    """One read window: plan index, normalised data (None if skipped) and validity."""

    index: int
    data: np.ndarray | None
    valid: np.ndarray


@dataclass
class EngineStats:
    """Counters of one run."""

    windows_total: int = 0
    windows_run: int = 0
    windows_skipped: int = 0


# -- reading -------------------------------------------------------------------------------


def pad_window(arr: np.ndarray, plan: WindowPlan, index: int, cval: float = 0.0) -> np.ndarray:
    """Return ``arr`` (C, *clip) placed in a ``roi_size`` window filled with ``cval``."""
    _, win = plan.clip(index)
    if arr.shape[1:] == plan.roi_size:
        return arr
    out = np.full((arr.shape[0], *plan.roi_size), cval, dtype=arr.dtype)
    out[(slice(None), *win)] = arr
    return out


def iter_batches(
    reader: WindowReader,
    plan: WindowPlan,
    order: tuple[int, ...],
    batch_size: int,
    normalise: Callable[[np.ndarray], np.ndarray] | None,
    skip: SkipRule | None,
    stop: threading.Event,
    known_empty: frozenset[int] = frozenset(),
) -> Iterator[tuple[list[WindowItem], np.ndarray | None]]:
    """Yield ``(items, batch)``: up to ``batch_size`` runnable windows (skipped ones ride along).

    ``batch`` is the normalised float32 ``(N, C, *roi)`` array of the runnable items (None
    when all were skipped); ``item.data`` is a view of its row. Raw windows are gathered into
    one buffer and normalised once per batch. Where the plan pads (image smaller than the
    roi), each window is normalised on its own and padded with 0 afterwards, as MONAI pads
    the normalised image. Windows in ``known_empty`` (no valid pixel, known from the mask
    alone) are skipped unread. ``normalise=None``: the batch holds the raw windows in their
    own dtype (for a normalisation on the device).
    """
    keep_dtype = normalise is None
    padded = any(b or a for b, a in plan.pad)
    items: list[WindowItem] = []
    rows: list[np.ndarray] = []  # padded plans: normalised windows
    raw: np.ndarray | None = None  # otherwise: raw windows, (batch_size, C, *roi)

    def finish() -> tuple[list[WindowItem], np.ndarray | None]:
        n = len(rows) if padded else sum(it.data is not None for it in items)
        if n == 0:
            return items, None
        if padded:
            batch = np.stack(rows)
        else:
            batch = raw[:n] if normalise is None else normalise(raw[:n])  # type: ignore[index]
        if keep_dtype:  # raw windows for a normalisation on the device, cleaned there
            batch = np.ascontiguousarray(batch)
        else:
            batch = np.ascontiguousarray(batch, dtype=np.float32)  # a fresh buffer per batch
            finite = np.isfinite(batch)
            if not finite.all():  # NaN nodata would turn every output of its windows into NaN
                batch[~finite] = 0.0
        k = 0
        for it in items:
            if it.data is not None:
                it.data = batch[k]
                k += 1
        return items, batch

    n_run = 0
    for index in order:
        if stop.is_set():
            return
        if index in known_empty:
            shape = tuple(s.stop - s.start for s in plan.clip(index)[0])
            items.append(WindowItem(index, None, np.zeros(shape, bool)))
            continue
        data, valid = reader.read(index)
        if skip is not None and skip(data, valid):
            items.append(WindowItem(index, None, valid))
            continue
        if padded:
            rows.append(pad_window(normalise(data[None])[0], plan, index))
        else:
            if raw is None:
                raw = np.empty((batch_size, *data.shape), data.dtype)
            raw[n_run] = data
        items.append(WindowItem(index, data, valid))  # data: placeholder until finish()
        n_run += 1
        if n_run == batch_size:
            yield finish()
            items, rows, raw, n_run = [], [], None, 0
    if items:
        yield finish()


def empty_windows(image: Image, plan: WindowPlan) -> frozenset[int]:
    """Return the windows without any valid pixel, from a per-chunk ``any()`` of ``image.mask``.

    Reads only the mask (cheap next to the data); empty when the image has no mask.
    Conservative: a window is listed only if every mask chunk it touches is all False.
    """
    if image.mask is None:
        return frozenset()
    mask = image.valid_mask()
    one = tuple((1,) * len(c) for c in mask.chunks)
    any_block = mask.map_blocks(
        lambda b: np.array(b.any()).reshape((1,) * b.ndim), chunks=one, dtype=bool
    ).compute()
    bounds = [np.cumsum((0, *c)) for c in mask.chunks]
    empty = set()
    for i in range(len(plan)):
        img, _ = plan.clip(i)
        blocks = tuple(
            slice(int(np.searchsorted(b, s.start, "right") - 1), int(np.searchsorted(b, s.stop)))
            for s, b in zip(img, bounds, strict=True)
        )
        if not any_block[blocks].any():
            empty.add(i)
    return frozenset(empty)


def prefetch(iterator: Iterator, depth: int = 2) -> Iterator:
    """Run ``iterator`` in a thread, ``depth`` items ahead; re-raise its errors here."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()

    def work() -> None:
        try:
            for item in iterator:
                q.put(item)
        except BaseException as exc:  # handed to the consumer, re-raised there
            q.put(exc)
        q.put(done)

    thread = threading.Thread(target=work, name="geomed-seg-reader", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                break
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        # unblock a reader waiting on a full queue (it stops at its next window)
        while thread.is_alive():
            try:
                q.get(timeout=0.1)
            except queue.Empty:
                pass


# -- model ---------------------------------------------------------------------------------


class Predictor:
    """Run a torch module on numpy batches and return numpy probabilities (the host path).

    A thin host-side wrapper of :class:`~geomed_seg.inference.device.DeviceModel` (device
    transfer, memory format, AMP, TTA and activation in one place); the device path
    (:mod:`geomed_seg.inference.device_engine`) keeps the outputs on the device instead.
    """

    def __init__(
        self,
        module: Callable,
        device: torch.device,
        options: ModelOptions = ModelOptions(nan_to_zero=False),  # noqa: B008 - frozen value
    ) -> None:
        self.model = DeviceModel(module, device, options)
        self.device, self.tta, self.amp_dtype = device, options.tta, self.model.amp_dtype

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Return float32 probabilities ``(N, K, *roi)`` of a normalised ``(N, C, *roi)`` batch."""
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        if self.device.type == "cuda":
            x = x.pin_memory().to(self.device, non_blocking=True)
        return self.model.predict(x).cpu().numpy().astype(np.float32, copy=False)


@dataclass(frozen=True)
class WindowJob:
    """What :func:`run_windows` does besides the image, model and sink.

    Attributes
    ----------
    plan, schedule : WindowPlan, ChunkSchedule
        The windows and the output chunks they touch.
    normalise : callable
        ``(N, C, *window)`` raw -> float32 model input.
    weight : numpy.ndarray
        Blending weights of one window, shape ``plan.roi_size``.
    n_classes : int
        Model output channels.
    batch_size : int
        Runnable windows per forward pass.
    skip : callable or None
        ``skip(data (C, *window), valid (*window)) -> bool``.
    background_skips : bool
        Skipped windows count as class 0 (volumes) instead of no answer (rasters).
    reduce : callable
        ``reduce(prob (K, *chunk), weight_sum, valid) -> array to write``.
    known_empty : frozenset of int
        Windows known to hold no valid pixel (skipped unread).
    """

    plan: WindowPlan
    schedule: ChunkSchedule
    normalise: Callable[[np.ndarray], np.ndarray]
    weight: np.ndarray
    n_classes: int
    batch_size: int
    skip: SkipRule | None
    background_skips: bool
    reduce: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
    known_empty: frozenset[int] = frozenset()


def run_windows(
    image: Image,
    job: WindowJob,
    predictor: Callable[[np.ndarray], np.ndarray],
    sink: Sink,
    on_progress: Callable[[int], None] | None = None,
) -> EngineStats:
    """Run every window of ``job.plan`` through ``predictor`` and stream finished chunks to
    ``sink``; ``on_progress(n)`` after each batch of ``n`` windows."""
    plan, schedule, n_classes = job.plan, job.schedule, job.n_classes
    stats = EngineStats(windows_total=len(plan))
    acc = ChunkAccumulator(plan, schedule, job.weight, n_classes, job.background_skips)
    stop = threading.Event()
    order = [i for i in schedule.order if i not in job.known_empty]
    reader = WindowReader(image, plan, order)
    batches = iter_batches(
        reader, plan, schedule.order, job.batch_size, job.normalise, job.skip, stop,
        job.known_empty,
    )  # fmt: skip
    stream = prefetch(batches)
    try:
        for items, batch in stream:
            n_run = 0 if batch is None else len(batch)
            probs = iter(predictor(batch) if batch is not None else [])
            for it in items:
                prob = next(probs) if it.data is not None else None
                if prob is not None and prob.shape[0] != n_classes:
                    raise ModelError(
                        f"model gave {prob.shape[0]} output channels, expected {n_classes}"
                    )
                for _, bsl, p, wsum, valid in acc.add(it.index, it.valid, prob):
                    sink.write(job.reduce(p, wsum, valid), bsl)
            stats.windows_run += n_run
            stats.windows_skipped += len(items) - n_run
            if on_progress is not None:
                on_progress(len(items))
    finally:
        stop.set()
        stream.close()
        reader.close()
    log.debug("peak open output chunks: %d", acc.peak_open)
    return stats
