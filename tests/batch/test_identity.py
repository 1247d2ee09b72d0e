"""What makes a batch redo work: retrained weights, replaced VRT sources, --restart; halos."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from geomed_seg.batch.journal import Journal, config_hash, input_identity
from geomed_seg.batch.manifest import default_halo
from geomed_seg.batch.mosaic import write_vrt
from geomed_seg.pipelines.schema import load_config

WATER = Path(__file__).resolve().parents[2] / "checkpoints" / "water_unet"


def _retrained(src: Path, dst: Path) -> None:
    """Write ``src``'s model with changed weights to ``dst`` (same kind of checkpoint)."""
    import torch

    from geomed_seg.models.checkpoint import load_checkpoint, save_checkpoint

    loaded = load_checkpoint(src)
    with torch.no_grad():
        next(loaded.module.parameters()).add_(0.01)
    save_checkpoint(loaded.module, loaded.card.model_copy(update={"weights_sha256": None}), dst,
                    overwrite=True)  # fmt: skip


def test_retrained_weights_at_the_same_path_change_the_config_hash(tmp_path):
    ckpt = tmp_path / "water_unet"
    shutil.copytree(WATER, ckpt)
    sets = ["model.method=checkpoint", f"model.checkpoint={ckpt}"]
    before = config_hash(load_config("flood", sets))
    assert config_hash(load_config("flood", sets)) == before  # stable
    _retrained(WATER, ckpt)
    assert config_hash(load_config("flood", sets)) != before
    # a classical config does not depend on a checkpoint
    classical = config_hash(load_config("flood"))
    shutil.rmtree(ckpt)
    assert config_hash(load_config("flood")) == classical


def test_replaced_vrt_source_is_a_new_input(tiles, tmp_path):
    vrt = tmp_path / "scene.vrt"
    assert write_vrt(tiles, vrt) is None
    first = input_identity(vrt)
    assert "input_sources" in first and input_identity(vrt) == first
    st = tiles[2].stat()
    shutil.copy(tiles[3], tiles[2])  # same size, other pixels: a replaced source
    os.utime(tiles[2], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert input_identity(vrt)["input_sources"] != first["input_sources"]
    assert input_identity(vrt)["input_size"] == first["input_size"]  # the .vrt itself unchanged


def test_restart_removes_batch_level_outputs(tmp_path):
    journal = Journal(tmp_path)
    journal.open("a" * 64, restart=False)
    for name in ("mosaic.vrt", "mosaic.tif", "polygons.gpkg", "summary.json"):
        (tmp_path / name).write_text("old")
    Journal(tmp_path).open("b" * 64, restart=True)
    assert not any((tmp_path / n).exists() for n in ("mosaic.vrt", "mosaic.tif", "polygons.gpkg"))
    assert Journal(tmp_path).header["config_hash"] == "b" * 64


@pytest.mark.parametrize(
    ("sets", "halo"),
    [
        ([], 256),  # flood: engine.roi_size 256
        (["postprocess.opening=200"], 401),  # morphology needs 2 (opening + closing) + 1
        (["engine.roi_size=null", "postprocess.opening=2", "postprocess.closing=1"], 7),
    ],
)
def test_default_halo(sets, halo):
    assert default_halo(load_config("flood", sets)) == halo


def test_default_halo_from_a_single_file_checkpoint(tmp_path):
    from geomed_seg.models.checkpoint import load_checkpoint, save_checkpoint

    loaded = load_checkpoint(WATER)
    single = tmp_path / "water.safetensors"  # card embedded in the file's metadata
    save_checkpoint(loaded.module, loaded.card, single)
    cfg = load_config("flood", ["model.method=checkpoint", f"model.checkpoint={single}",
                                "engine.roi_size=null"])  # fmt: skip
    assert default_halo(cfg) == max(loaded.card.roi_size) == 64
