"""Tiled Mask R-CNN: scene coordinates and cross-tile NMS with a scripted detector, then the
real torchvision model with random weights end to end (no downloads)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from affine import Affine

from geomed_seg.core import GeoGrid, Image
from geomed_seg.instances.maskrcnn import (
    build_maskrcnn,
    detect_tiled,
    detections_to_instances,
    tile_starts,
)


class BrightBlobDetector:
    """Detects the bright pixels of a tile as one object (box = their extent)."""

    def __call__(self, images):
        x = images[0]
        m = x[0] > 0.5
        if not m.any():
            return [
                {
                    k: torch.zeros((0, 4)) if k == "boxes" else torch.zeros(0)
                    for k in ("boxes", "scores", "labels")
                }
                | {"masks": torch.zeros((0, 1, *m.shape))}
            ]
        rows, cols = torch.nonzero(m, as_tuple=True)
        box = torch.tensor(
            [[cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]], dtype=torch.float32
        )
        return [
            {
                "boxes": box,
                "scores": torch.tensor([m.float().mean()]),
                "labels": torch.tensor([2]),
                "masks": m[None, None].float(),
            }
        ]


def test_tile_starts_cover_the_axis():
    for n, tile, ov in [(100, 32, 8), (32, 32, 8), (20, 32, 8), (257, 64, 16)]:
        starts = tile_starts(n, tile, ov)
        covered = np.zeros(n, bool)
        for s in starts:
            covered[s : s + tile] = True
            assert s + min(tile, n) <= n
        assert covered.all()


def test_objects_in_tile_overlaps_are_detected_once_in_scene_coordinates():
    a = np.zeros((3, 100, 120), np.float32)
    a[:, 40:52, 50:60] = 1.0  # inside the overlap of several tiles
    g = GeoGrid(None, Affine(2.0, 0, 100.0, 0, -2.0, 500.0), (100, 120))
    image = Image.from_array(a, g, chunks=(3, 50, 60))
    det = detect_tiled(image, BrightBlobDetector(), tile=64, overlap=32, score_threshold=0.0)
    assert len(det) == 1
    np.testing.assert_array_equal(det.boxes[0], [50, 40, 60, 52])
    inst, sem, table = detections_to_instances(image, det)
    ids = inst.compute()[0]
    np.testing.assert_array_equal(ids > 0, a[0] > 0.5)
    # no CRS: the area is in CRS units², never claimed as m² (issue 13; was "area_m2")
    assert table.iloc[0]["class"] == 2 and table.iloc[0]["area_crs_units2"] == 120 * 4.0
    assert table.iloc[0]["centroid_x"] == pytest.approx(100.0 + 2 * 55.0)


@pytest.mark.slow  # ResNet-50 FPN build + forward: ~12 s on a loaded 2-core box
def test_random_maskrcnn_end_to_end_without_downloads(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = build_maskrcnn(num_classes=3, image_size=64)
    # user weights round-trip through safetensors
    from safetensors.torch import save_file

    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "w.safetensors"
    )
    model2 = build_maskrcnn(num_classes=3, weights=tmp_path / "w.safetensors", image_size=64)
    k = "roi_heads.box_predictor.cls_score.weight"
    assert torch.equal(model.state_dict()[k], model2.state_dict()[k])
    a = np.random.default_rng(0).integers(0, 255, (4, 64, 64)).astype(np.uint8)
    image = Image.from_array(a, GeoGrid(None, Affine.identity(), (64, 64)), chunks=(4, 32, 32))
    det = detect_tiled(image, model2, tile=64, overlap=16, rgb=(3, 2, 1), score_threshold=0.0)
    inst, sem, table = detections_to_instances(image, det)
    assert inst.spatial_shape == (64, 64) and inst.grid == image.grid
    assert (det.boxes[:, 2] <= 64).all() and (det.boxes[:, 3] <= 64).all()
    assert len(table) <= len(det)
    assert not (tmp_path / "torch_home").exists() or not any(
        (tmp_path / "torch_home").rglob("*.pth")
    )
