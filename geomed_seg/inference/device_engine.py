"""The streaming loop with the window work on the device (CPU or CUDA, one code path).

Same contract as :func:`geomed_seg.inference.engine.run_windows` (windows in chunk order,
skips, output chunks flushed as soon as complete), but after reading:

1. the reader thread gathers raw windows into a batch and stages it to the device
   (:class:`~geomed_seg.inference.device.BatchStager`: pinned buffer, ``non_blocking`` copy
   on its own CUDA stream), so the copy of batch ``i+1`` overlaps the model on batch ``i``;
2. the main thread normalises, runs the model (memory format, autocast, TTA), activates and
   weights the windows on the device (:class:`~geomed_seg.inference.device.DeviceModel`) and
   adds them into device accumulators
   (:class:`~geomed_seg.inference.device_blend.DeviceChunkAccumulator`);
3. a finished chunk is reduced on the device and only its labels (uint8/uint16) or the
   requested probabilities come back to the host for the sink.

CUDA work is queued asynchronously; the host waits only when a finished chunk's result is
copied back.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator

import numpy as np
import torch

from geomed_seg.core.image import Image
from geomed_seg.errors import ModelError
from geomed_seg.inference.device import BatchStager, DeviceModel, StagedBatch
from geomed_seg.inference.device_blend import (
    DeviceChunkAccumulator,
    ReduceRules,
    reduce_chunk_device,
)
from geomed_seg.inference.engine import (
    EngineStats,
    WindowItem,
    WindowJob,
    iter_batches,
    prefetch,
)
from geomed_seg.inference.reader import WindowReader
from geomed_seg.inference.sinks import Sink

log = logging.getLogger(__name__)


def _staged(
    batches: Iterator[tuple[list[WindowItem], np.ndarray | None]], stager: BatchStager
) -> Iterator[tuple[list[WindowItem], StagedBatch | None]]:
    for items, batch in batches:
        yield items, (None if batch is None else stager(batch))


def run_windows_on_device(
    image: Image,
    job: WindowJob,
    model: DeviceModel,
    sink: Sink,
    rules: ReduceRules,
    on_progress: Callable[[int], None] | None = None,
) -> EngineStats:
    """Run every window of ``job.plan`` on ``model.device``; stream finished chunks to ``sink``.

    When ``model`` normalises on the device (``model.normalise``), raw windows travel and
    ``job.normalise`` is not used; otherwise batches are normalised on the host first.
    ``rules``: how a finished chunk becomes output
    (:class:`~geomed_seg.inference.device_blend.ReduceRules`).
    """
    plan, schedule, n_classes = job.plan, job.schedule, job.n_classes
    dev = model.device
    if model.weight is None:
        model.weight = torch.as_tensor(np.asarray(job.weight, np.float32)).to(dev)
    acc = DeviceChunkAccumulator(plan, schedule, model.weight, n_classes, job.background_skips)
    lut = torch.as_tensor(np.asarray(rules.lut, np.int64)).to(dev)
    stats = EngineStats(windows_total=len(plan))
    stop = threading.Event()
    reader = WindowReader(image, plan, [i for i in schedule.order if i not in job.known_empty])
    on_device = model.normalise is not None
    batches = iter_batches(
        reader, plan, schedule.order, job.batch_size, None if on_device else job.normalise,
        job.skip, stop, job.known_empty,
    )  # fmt: skip
    stream = prefetch(_staged(batches, BatchStager(dev)))
    try:
        for items, staged in stream:
            probs = None if staged is None else model.predict(staged.wait())
            if probs is not None and probs.shape[1] != n_classes:
                raise ModelError(
                    f"model gave {probs.shape[1]} output channels, expected {n_classes}"
                )
            k = 0
            for it in items:
                wprob = None
                if it.data is not None:
                    wprob = probs[k]  # type: ignore[index]
                    k += 1
                for _, bsl, a, w, valid in acc.add(it.index, it.valid, wprob):
                    sink.write(reduce_chunk_device(a, w, valid, rules, lut), bsl)
                    acc.release(a, w)
            stats.windows_run += k
            stats.windows_skipped += len(items) - k
            if on_progress is not None:
                on_progress(len(items))
    finally:
        stop.set()
        stream.close()
        reader.close()
    log.debug("peak open output chunks: %d (%d buffers)", acc.peak_open, acc.allocated)
    return stats
