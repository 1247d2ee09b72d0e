"""``geomed-seg maskrcnn`` / ``geomed-seg sam`` end to end on a small rotated GeoTIFF:
geometry checked with rasterio, world prompts with rasterio's inverse transform, nothing
downloaded (empty TORCH_HOME/HF_HOME, HF_HUB_OFFLINE=1), user errors as one line + exit 2."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS

from geomed_seg.cli import main


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """Empty model caches and offline hub: any download attempt fails or leaves files."""
    home = tmp_path / "cache_home"
    home.mkdir()
    monkeypatch.setenv("TORCH_HOME", str(home / "torch"))
    monkeypatch.setenv("HF_HOME", str(home / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    yield home
    assert not [p for p in home.rglob("*") if p.is_file()], "something was downloaded"


@pytest.fixture
def scene(tmp_path):
    """128 x 128, 3-band uint8 GeoTIFF in EPSG:32633 with a rotated (20 deg) transform and a
    bright square around pixel (row 40, col 90)."""
    t = Affine.translation(500000.0, 5200000.0) @ Affine.rotation(20) @ Affine.scale(10, -10)
    a = np.random.default_rng(0).integers(0, 60, (3, 128, 128)).astype(np.uint8)
    a[:, 32:49, 82:99] = 230
    path = tmp_path / "scene.tif"
    with rasterio.open(
        path, "w", driver="GTiff", width=128, height=128, count=3, dtype="uint8",
        crs=CRS.from_epsg(32633), transform=t,
    ) as dst:  # fmt: skip
        dst.write(a)
    return path


def _one_error_line(capsys, *words):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:"), err
    for w in words:
        assert w in err[0], err[0]


def _same_geometry(a, b):
    with rasterio.open(a) as src, rasterio.open(b) as out:
        assert out.crs == src.crs and out.transform == src.transform
        assert (out.height, out.width) == (src.height, src.width)
        return out.read(1), out.transform


def test_maskrcnn_random_init_writes_instances_and_table(scene, tmp_path, offline, capsys):
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(1)
    out, tab = tmp_path / "inst.tif", tmp_path / "inst.csv"
    args = ["maskrcnn", str(scene), "-o", str(out), "--random-init", "--tile", "96"]
    args += ["--overlap", "32", "--rgb", "3,2,1", "--score", "0", "--table", str(tab)]
    args += ["--classes", "1:building,2:tree"]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "random weights: results are meaningless, for testing the pipeline" in captured.err
    ids, transform = _same_geometry(scene, out)
    assert ids.dtype == np.uint32
    table = pd.read_csv(tab)
    assert sorted(table["id"]) == sorted(set(np.unique(ids)) - {0})
    assert set(table["class_name"]) <= {"building", "tree"}
    assert len(table) > 0  # seeded random model at --score 0 detects something
    row = table.iloc[0]  # world centroid = rasterio transform of the mean pixel centre
    r, c = np.nonzero(ids == row["id"])
    x, y = transform @ (c.mean() + 0.5, r.mean() + 0.5)
    assert np.allclose([row["centroid_x"], row["centroid_y"]], [x, y], atol=1e-6)
    assert row["n_pixels"] == len(r)
    # the output exists now: no silent overwrite
    assert main(args) == 2
    _one_error_line(capsys, str(out), "--overwrite")


def test_maskrcnn_needs_weights_and_names_bad_files(scene, tmp_path, offline, capsys):
    out = tmp_path / "inst.tif"
    assert main(["maskrcnn", str(scene), "-o", str(out)]) == 2
    _one_error_line(capsys, "needs --weights")
    assert main(["maskrcnn", str(scene), "-o", str(out), "--weights", "nope.pt"]) == 2
    _one_error_line(capsys, "nope.pt")
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"II*\x00garbage")
    assert main(["maskrcnn", str(bad), "-o", str(out), "--random-init"]) == 2
    _one_error_line(capsys, str(bad))
    assert {p.name for p in tmp_path.iterdir()} == {"scene.tif", "bad.tif", "cache_home"}


def _tiny_sam(folder):
    """Save a tiny random SAM (hidden size 32, 64 px input) as a local checkpoint folder."""
    import torch
    from transformers import SamConfig, SamImageProcessor, SamModel, SamProcessor

    torch.manual_seed(0)
    cfg = SamConfig(
        vision_config=dict(
            hidden_size=32, output_channels=32, num_hidden_layers=1, num_attention_heads=2,
            image_size=64, patch_size=8, window_size=4, global_attn_indexes=[0],
            num_pos_feats=16, mlp_dim=64,
        ),
        prompt_encoder_config=dict(
            hidden_size=32, image_size=64, patch_size=8, mask_input_channels=4
        ),
        mask_decoder_config=dict(
            hidden_size=32, mlp_dim=64, num_hidden_layers=1, num_attention_heads=2,
            iou_head_hidden_dim=32,
        ),
    )  # fmt: skip
    SamModel(cfg).save_pretrained(folder)
    SamProcessor(
        image_processor=SamImageProcessor(
            size={"longest_edge": 64}, pad_size={"height": 64, "width": 64}
        )
    ).save_pretrained(folder)
    return folder


def test_sam_world_point_lands_on_its_pixel(scene, tmp_path, offline, capsys, monkeypatch):
    pytest.importorskip("transformers")
    from geomed_seg.instances.sam import SamSegmenter

    ckpt = _tiny_sam(tmp_path / "sam")
    with rasterio.open(scene) as src:
        x, y = src.xy(40, 90)  # pixel centre, world CRS units
        bx = [*src.xy(30, 80), *src.xy(50, 100)]
    out = tmp_path / "mask.tif"
    # 1) the real tiny model end to end: mask on the input grid, nothing outside the window
    args = ["sam", str(scene), "--checkpoint", str(ckpt), "-o", str(out)]
    assert main([*args, "--point", f"{x},{y}", "--window", "64"]) == 0
    mask, _ = _same_geometry(scene, out)
    assert set(np.unique(mask)) <= {0, 1}
    # 2) a random model's mask is arbitrary, so to prove WHERE the prompt lands, replace the
    # network by one that answers a 3x3 square at the prompt pixel it receives
    seen = {}

    def at_prompt(self, rgb8, points, labels, box):
        seen["box"] = box
        m = np.zeros(rgb8.shape[:2], bool)
        c, r = np.asarray(points[0]).round().astype(int)
        m[r - 1 : r + 2, c - 1 : c + 2] = True
        return m

    monkeypatch.setattr(SamSegmenter, "__call__", at_prompt)
    assert main([*args, "--overwrite", "--point", f"{x},{y}", "--point", f"{x + 5},{y + 5}"]) == 0
    mask, transform = _same_geometry(scene, out)
    r, c = rasterio.transform.rowcol(transform, x, y)
    assert (r, c) == (40, 90) and mask[40, 90] == 1 and mask.sum() == 9
    assert seen["box"] is None
    capsys.readouterr()
    empty = tmp_path / "empty_sam"
    empty.mkdir()
    assert main([*args[:3], str(empty), *args[4:], "--overwrite", "--point", f"{x},{y}"]) == 2
    _one_error_line(capsys, "empty_sam", "not a SAM checkpoint")
    assert main([*args, "--overwrite", "--box", ",".join(map(str, bx)), "--point", f"{x},{y}"]) == 0
    x0, y0, x1, y1 = seen["box"]
    assert (x1 - x0, y1 - y0) == (20, 20)  # corners (30, 80) and (50, 100) in window pixels
    capsys.readouterr()


def test_sam_missing_checkpoint_or_prompt_is_one_line(scene, tmp_path, offline, capsys):
    out = tmp_path / "mask.tif"
    base = ["sam", str(scene), "-o", str(out), "--checkpoint", str(tmp_path / "nosam")]
    assert main([*base, "--point", "500000,5200000"]) == 2
    _one_error_line(capsys, "nosam")
    empty = tmp_path / "empty_sam"
    empty.mkdir()
    assert main(["sam", str(scene), "-o", str(out), "--checkpoint", str(empty)]) == 2
    _one_error_line(capsys, "--point")
    assert not out.exists()
