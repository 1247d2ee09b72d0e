"""SAM on a window of a large scene: world prompts land on the right pixel (rotated south-up
GeoGrid, oblique VoxelGrid) and a tiny randomly initialised SamModel runs end to end."""

from __future__ import annotations

import numpy as np
import pytest
from affine import Affine

from geomed_seg.core import GeoGrid, Image, VoxelGrid
from geomed_seg.errors import InvalidInputError
from geomed_seg.instances.sam import SamSegmenter, sam_segment, sam_window

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tiny_sam_folder(tmp_path_factory):
    """A SAM checkpoint folder with a tiny random config (hidden size 32, 64 px input)."""
    import torch
    from transformers import SamConfig, SamImageProcessor, SamModel, SamProcessor

    torch.manual_seed(0)
    cfg = SamConfig(
        vision_config=dict(
            hidden_size=32,
            output_channels=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=64,
            patch_size=8,
            window_size=4,
            global_attn_indexes=[0],
            num_pos_feats=16,
            mlp_dim=64,
        ),
        prompt_encoder_config=dict(
            hidden_size=32, image_size=64, patch_size=8, mask_input_channels=4
        ),
        mask_decoder_config=dict(
            hidden_size=32,
            mlp_dim=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            iou_head_hidden_dim=32,
        ),
    )
    folder = tmp_path_factory.mktemp("sam")
    SamModel(cfg).save_pretrained(folder)
    proc = SamProcessor(
        image_processor=SamImageProcessor(
            size={"longest_edge": 64}, pad_size={"height": 64, "width": 64}
        )
    )
    proc.save_pretrained(folder)
    return folder


def _rotated_scene():
    t = Affine(10.0, 0, 5000.0, 0, 10.0, 9000.0) @ Affine.rotation(25)  # south-up, rotated
    a = np.zeros((3, 300, 280), np.float32)
    a[:, 123, 201] = 100.0  # marker pixel
    return Image.from_array(a, GeoGrid(None, t, (300, 280)), chunks=(3, 128, 128))


def test_world_point_lands_on_marker_pixel_rotated_south_up():
    image = _rotated_scene()
    x, y = image.grid.xy(123, 201)
    w = sam_window(image, points=[(x, y)], window=64)
    c, r = w.points[0]
    assert w.rgb8[r, c].tolist() == [255, 255, 255]
    assert w.rgb8.shape == (64, 64, 3) and w.labels.tolist() == [1]
    assert (w.slices[0].start + r, w.slices[1].start + c) == (123, 201)


def test_box_prompt_corners_to_pixels():
    image = _rotated_scene()
    g = image.grid
    w = sam_window(image, box=(*g.xy(110, 190), *g.xy(130, 215)), window=64)
    r0, c0 = w.slices[0].start, w.slices[1].start
    assert w.box == (190 - c0, 110 - r0, 215 - c0, 130 - r0)
    with pytest.raises(InvalidInputError):
        sam_window(image, box=(*g.xy(0, 0), *g.xy(200, 200)), window=64)


def test_oblique_volume_prompt_lands_on_marker_voxel():
    rot = np.array([[np.cos(0.3), -np.sin(0.3), 0], [np.sin(0.3), np.cos(0.3), 0], [0, 0, 1]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag([0.8, 0.9, 2.5])
    aff[:3, 3] = (-40, 12, 7)
    vol = np.zeros((1, 12, 50, 60), np.float32)
    vol[0, 7, 31, 44] = 500.0
    image = Image.from_array(vol, VoxelGrid(aff, vol.shape[1:]), chunks=(1, 6, 25, 30))
    ras = image.grid.world(7, 31, 44)
    w = sam_window(image, points=[ras], window=32)
    c, r = w.points[0]
    assert w.slices[0] == slice(7, 8)
    assert w.rgb8[r, c].tolist() == [255, 255, 255] and w.rgb8.sum() == 3 * 255


@pytest.mark.slow  # importing transformers + building the model: ~20 s on a loaded 2-core box
def test_tiny_sam_end_to_end_on_scene_and_volume(tiny_sam_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    seg = SamSegmenter(tiny_sam_folder)
    image = _rotated_scene()
    g = image.grid
    out = sam_segment(
        image, seg, points=[g.xy(123, 201)], box=(*g.xy(110, 190), *g.xy(130, 215)), window=64
    )
    m = out.compute()[0]
    assert out.grid == image.grid and m.dtype == np.uint8 and set(np.unique(m)) <= {0, 1}
    w = sam_window(
        image, points=[g.xy(123, 201)], box=(*g.xy(110, 190), *g.xy(130, 215)), window=64
    )
    outside = np.ones(m.shape, bool)
    outside[w.slices] = False
    assert m[outside].sum() == 0  # nothing leaks outside the window read
    vol = Image.from_array(
        np.random.default_rng(0).random((1, 6, 40, 40)).astype(np.float32),
        VoxelGrid(np.diag([1.0, 1.0, 3.0, 1.0]), (6, 40, 40)),
        chunks=(1, 3, 20, 20),
    )
    mv = sam_segment(vol, seg, points=[vol.grid.world(2, 20, 20)], window=32).compute()[0]
    assert mv.shape == (6, 40, 40) and mv[[0, 1, 3, 4, 5]].sum() == 0
    with pytest.raises(Exception, match="not a SAM checkpoint"):
        SamSegmenter(tmp_path / "missing")
