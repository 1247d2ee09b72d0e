"""Cropping to the non-zero box: the outside boxes tile the rest, the sink shifts and fills."""

from __future__ import annotations

import numpy as np
import pytest

from geomed_seg.core.grid import VoxelGrid
from geomed_seg.core.image import Image
from geomed_seg.inference.crop import CroppedSink, nonzero_box, outside_boxes
from geomed_seg.inference.sinks import MemorySink, OutputSpec


@pytest.mark.parametrize(
    ("shape", "box"),
    [((9, 8, 7), (slice(2, 5), slice(0, 8), slice(3, 6))), ((4, 5, 6), (slice(0, 1),) * 3),
     ((6, 6, 6), (slice(1, 5), slice(2, 3), slice(5, 6)))],
)  # fmt: skip
def test_outside_boxes_tile_the_complement(shape, box):
    count = np.zeros(shape, int)
    for region in outside_boxes(shape, box):
        count[region] += 1
    count[box] += 1
    assert (count == 1).all()


def test_nonzero_box_and_cropped_sink():
    data = np.zeros((2, 6, 7, 8), np.float32)
    data[1, 2:4, 1:6, 3] = 5.0
    data[0, 4, 2, 6] = -1.0
    image = Image.from_array(data, VoxelGrid(np.eye(4), (6, 7, 8)))
    box = nonzero_box(image)
    assert box == (slice(2, 5), slice(1, 6), slice(3, 7))
    assert nonzero_box(Image.from_array(data + 1, VoxelGrid(np.eye(4), (6, 7, 8)))) is None
    sink = CroppedSink(MemorySink(), box, np.array([1.0, 0.0]))
    sink.start(OutputSpec(image.grid, 2, np.dtype(np.float32), None))
    inner = np.full((2, 3, 5, 4), 0.25, np.float32)
    sink.write(inner, (slice(0, 3), slice(0, 5), slice(0, 4)))
    out = sink.finish().darray.compute()
    expect = np.zeros((2, 6, 7, 8), np.float32)
    expect[0] = 1.0
    expect[(slice(None), *box)] = 0.25
    np.testing.assert_array_equal(out, expect)
