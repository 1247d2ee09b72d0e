"""Run the streaming engine tile by tile (:mod:`geomed_seg.inference.tiles`), any image size.

Each tile is an ordinary engine run over the tile's read region, with its own chunk
schedule, empty-window test and block cache; only the output chunks inside the tile's core
reach the sink. An image that fits one tile runs exactly as before.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import replace

import numpy as np

from geomed_seg.core.image import Image
from geomed_seg.inference.engine import WindowJob, empty_windows
from geomed_seg.inference.plan import schedule_chunks
from geomed_seg.inference.sinks import OutputSpec, Sink
from geomed_seg.inference.tiles import PlanTile, split_plan

log = logging.getLogger(__name__)


class CoreSink(Sink):
    """Pass a tile's core chunks to ``inner`` at image coordinates; drop the others.

    Only :meth:`write` is used: the whole run's sink is started and finished by the caller.
    """

    def __init__(self, inner: Sink, tile: PlanTile) -> None:
        self.inner, self.tile = inner, tile
        self.chunk, self.path = inner.chunk, inner.path

    def start(self, spec: OutputSpec) -> None:
        raise NotImplementedError("a tile's sink is never started; start the whole run's sink")

    def write(self, array: np.ndarray, slices: tuple[slice, ...]) -> None:
        if self.tile.in_core(slices):
            shifted = tuple(
                slice(r.start + s.start, r.start + s.stop)
                for s, r in zip(slices, self.tile.read, strict=True)
            )
            self.inner.write(array, shifted)


def tile_runs(
    image: Image,
    job: WindowJob,
    sink: Sink,
    chunks: Sequence[Sequence[int]] | None,
    *,
    skip_empty: bool,
    tile_edge: int | None = None,
) -> Iterator[tuple[Image, WindowJob, Sink]]:
    """Yield ``(image, job, sink)`` of each tile of ``job.plan`` over output ``chunks``.

    With ``chunks`` None (or a plan that fits one tile) the one run is yielded unchanged.
    Otherwise each tile gets the image of its read region, a job with the tile's plan, chunk
    schedule and (with ``skip_empty``) the windows its mask proves empty
    (:func:`~geomed_seg.inference.engine.empty_windows`), and a :class:`CoreSink`. Tiles are
    made one at a time, so bookkeeping is bounded by one tile.
    """
    if chunks is None:
        yield image, job, sink
        return
    for k, tile in enumerate(split_plan(job.plan, chunks, tile_edge)):
        if tile.plan is job.plan:
            yield image, job, sink
            return
        sub = image.sel_window(tile.read)
        log.debug("tile %d: core %s, %d windows", k, tile.core, len(tile.plan))
        known = empty_windows(sub, tile.plan) if skip_empty else frozenset()
        schedule = schedule_chunks(tile.plan, tile.chunks)
        yield (
            sub,
            replace(job, plan=tile.plan, schedule=schedule, known_empty=known),
            CoreSink(sink, tile),
        )


__all__ = ["CoreSink", "tile_runs"]
