"""Run a volume's non-zero bounding box only, as nnU-Net does, and answer on the whole grid.

nnU-Net crops every case to the bounding box of its non-zero voxels (any channel) before
predicting, places its sliding windows inside that box, and writes background outside it
(``revert_cropping_on_probabilities``: probability 1 for channel 0 of softmax outputs, 0 for
sigmoid regions; label 0). A card with ``crop_to_nonzero`` gets the same: :func:`nonzero_box`
finds the box (one streamed pass over the channels, one bool per voxel held), the engine
runs on ``image.sel_window(box)``, and :class:`CroppedSink` shifts its chunks into the
full-grid sink and fills the rest. No torch here.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from geomed_seg.core.image import Image
from geomed_seg.inference.sinks import OutputSpec, Sink

#: Slabs outside the box are written in pieces of at most this many voxels per channel.
FILL_VOXELS = 1 << 22


def nonzero_box(image: Image) -> tuple[slice, ...] | None:
    """Return the non-zero bounding box of ``image`` (spatial slices), or None if it is all of it.

    A voxel is non-zero when any channel is; an all-zero image gives None (nnU-Net then
    keeps the whole image too).
    """
    from geomed_seg.models.nnunet_norm import nonzero_bbox

    union = np.asarray((image.darray != 0).any(axis=0).compute())
    box = nonzero_bbox(union)
    if all(s.start == 0 and s.stop == n for s, n in zip(box, image.spatial_shape, strict=True)):
        return None
    return box


def outside_boxes(shape: tuple[int, ...], box: tuple[slice, ...]) -> Iterator[tuple[slice, ...]]:
    """Yield disjoint boxes that tile ``shape`` minus ``box`` (at most two per axis)."""
    inner: list[slice] = [slice(0, n) for n in shape]
    for axis, (s, n) in enumerate(zip(box, shape, strict=True)):
        for part in (slice(0, s.start), slice(s.stop, n)):
            if part.stop > part.start:
                yield (*inner[:axis], part, *inner[axis + 1 :])
        inner[axis] = s


def _pieces(region: tuple[slice, ...]) -> Iterator[tuple[slice, ...]]:
    """Split ``region`` along its first axis into pieces of about :data:`FILL_VOXELS`."""
    first = region[0]
    plane = int(np.prod([s.stop - s.start for s in region[1:]]))
    step = max(FILL_VOXELS // max(plane, 1), 1)
    for start in range(first.start, first.stop, step):
        yield (slice(start, min(start + step, first.stop)), *region[1:])


class CroppedSink(Sink):
    """A sink for the full grid fed chunks of the box: writes are shifted by the box start,
    and :meth:`finish` fills everything outside the box with ``fill`` (one value per band)."""

    def __init__(self, inner: Sink, box: tuple[slice, ...], fill: np.ndarray) -> None:
        self.inner, self.box, self.fill = inner, box, np.asarray(fill)
        self.chunk, self.path = inner.chunk, inner.path

    def start(self, spec: OutputSpec) -> None:
        super().start(spec)
        self.inner.start(spec)

    def write(self, array: np.ndarray, slices: tuple[slice, ...]) -> None:
        shifted = tuple(
            slice(s.start + b.start, s.stop + b.start)
            for s, b in zip(slices, self.box, strict=True)
        )
        self.inner.write(array, shifted)

    def finish(self) -> Image:
        shape = self.spec.grid.shape
        for region in outside_boxes(tuple(shape), self.box):
            for piece in _pieces(region):
                size = tuple(s.stop - s.start for s in piece)
                block = np.broadcast_to(
                    self.fill.reshape((-1,) + (1,) * len(size)), (self.fill.size, *size)
                )
                self.inner.write(np.ascontiguousarray(block, dtype=self.spec.dtype), piece)
        return self.inner.finish()

    def abort(self) -> None:
        self.inner.abort()


__all__ = ["CroppedSink", "nonzero_box", "outside_boxes"]
