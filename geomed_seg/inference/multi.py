"""One scene on several devices: one dask worker process per device, one tile per task.

The scene is cut into tiles by :mod:`geomed_seg.inference.tiles` (each tile runs exactly the
windows of the whole plan that touch its core, so the result equals the single-device run);
tiles go round-robin to the workers, each worker runs the host engine
(:func:`~geomed_seg.inference.engine.run_windows`) on its own device and returns its core
chunks, and this process writes them into the one sink as they arrive. dask's
``LocalCluster`` runs the workers (one thread each); each task names its worker's device
explicitly (``cuda:N`` or ``cpu``), so ``--devices cpu,cpu`` runs two CPU processes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from geomed_seg.core.image import Image
from geomed_seg.errors import InvalidInputError
from geomed_seg.inference.engine import (
    EngineStats,
    Predictor,
    WindowJob,
    empty_windows,
    run_windows,
)
from geomed_seg.inference.plan import WindowPlan, schedule_chunks
from geomed_seg.inference.sinks import Sink
from geomed_seg.inference.tiles import TILE_EDGE, PlanTile, split_plan

log = logging.getLogger(__name__)


def resolve_devices(spec: str | Sequence[str]) -> tuple[str, ...]:
    """Return the devices of ``spec``: ``"cuda:0,cuda:1"``, ``"cpu,cpu"`` or ``"all"`` (GPUs)."""
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec)]
    if items == ["all"]:
        n = torch.cuda.device_count()
        if n == 0:
            raise InvalidInputError("--devices all: no CUDA device is visible")
        return tuple(f"cuda:{i}" for i in range(n))
    out = []
    for item in items:
        try:
            dev = torch.device(item)
        except RuntimeError as exc:
            raise InvalidInputError(f"--devices: {item!r} is not a device (cpu, cuda:N)") from exc
        if dev.type == "cuda":
            index = 0 if dev.index is None else dev.index
            if index >= torch.cuda.device_count():
                raise InvalidInputError(
                    f"--devices: {item} is not available ({torch.cuda.device_count()} CUDA "
                    "devices visible)"
                )
            item = f"cuda:{index}"
        elif dev.type != "cpu":
            raise InvalidInputError(f"--devices: {item!r}: use cpu or cuda:N")
        out.append(item)
    if not out:
        raise InvalidInputError("--devices: no device given")
    return tuple(out)


def device_tiles(
    plan: WindowPlan, chunks: Sequence[Sequence[int]], n_devices: int
) -> list[PlanTile]:
    """Return tiles of ``plan``, at least two per device where the chunks allow it."""
    edge = TILE_EDGE.get(plan.ndim, max(plan.image_shape))
    smallest = max(max(ax) for ax in chunks)
    tiles = list(split_plan(plan, chunks, edge))
    while len(tiles) < 2 * n_devices and edge > smallest:
        edge = max(edge // 2, smallest)
        tiles = list(split_plan(plan, chunks, edge))
    return tiles


class _Collect(Sink):
    """Keep a tile's core chunks (image coordinates) to send back to the writing process."""

    def __init__(self, tile: PlanTile) -> None:
        self.tile, self.items = tile, []

    def write(self, array: np.ndarray, slices: tuple[slice, ...]) -> None:
        if self.tile.in_core(slices):
            shifted = tuple(
                slice(r.start + s.start, r.start + s.stop)
                for s, r in zip(slices, self.tile.read, strict=True)
            )
            self.items.append((np.array(array), shifted))


_PREDICTORS: dict[tuple[int, str], Predictor] = {}  # per worker process: one per model/device


def _run_tile(
    image: Image,
    job: WindowJob,
    module: Any,
    options: Any,
    device: str,
    tile: PlanTile,
    skip_empty: bool,
) -> tuple[list, EngineStats]:
    """Run one tile in a worker on ``device``; return its core chunks and counters."""
    key = (id(module), device)
    if key not in _PREDICTORS:
        mod = module.eval().to(device) if isinstance(module, torch.nn.Module) else module
        torch.set_num_threads(1)
        _PREDICTORS[key] = Predictor(mod, torch.device(device), options)
    sub = image.sel_window(tile.read)
    known = empty_windows(sub, tile.plan) if skip_empty else frozenset()
    sub_job = replace(
        job, plan=tile.plan, schedule=schedule_chunks(tile.plan, tile.chunks), known_empty=known
    )
    sink = _Collect(tile)
    stats = run_windows(sub, sub_job, _PREDICTORS[key], sink)
    return sink.items, stats


def run_on_devices(
    image: Image,
    job: WindowJob,
    predictor: Predictor,
    sink: Sink,
    tiles: Sequence[PlanTile],
    devices: Sequence[str],
    *,
    skip_empty: bool,
    on_progress: Callable[[int], None] | None = None,
) -> tuple[EngineStats, int]:
    """Return ``(summed counters, tiles)`` of running ``job``'s ``tiles`` (:func:`device_tiles`)
    over ``devices`` into ``sink``."""
    from distributed import Client, LocalCluster, as_completed

    module, options = predictor.model.module, predictor.model.options
    if options.compile:
        raise InvalidInputError("--devices with --compile is not supported (compile per worker)")
    total = EngineStats()
    with (
        LocalCluster(
            n_workers=len(devices), threads_per_worker=1, processes=True,
            dashboard_address=None, silence_logs=logging.ERROR,
        ) as cluster,
        Client(cluster) as client,
    ):  # fmt: skip
        workers = sorted(client.scheduler_info()["workers"])
        model = client.scatter(module, broadcast=True)
        futures = [
            client.submit(
                _run_tile,
                image,
                job,
                model,
                options,
                devices[k % len(devices)],
                tile,
                skip_empty,
                workers=[workers[k % len(workers)]],
                allow_other_workers=False,
                pure=False,
            )  # fmt: skip
            for k, tile in enumerate(tiles)
        ]
        log.info("%d tiles on %s", len(tiles), ", ".join(devices))
        for future in as_completed(futures):
            items, stats = future.result()
            for array, slices in items:
                sink.write(array, slices)
            total.windows_total += stats.windows_total
            total.windows_run += stats.windows_run
            total.windows_skipped += stats.windows_skipped
            if on_progress is not None:
                on_progress(stats.windows_total)
    return total, len(tiles)
