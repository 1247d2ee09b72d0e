"""The bundled demo checkpoints reach what their cards state on their held-out data.

Re-evaluated here through the same engine and the metrics module (tolerance 1e-3); the water
model's comparison with the classical baseline is checked to be stated honestly in its card.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from geomed_seg.models.checkpoint import load_checkpoint
from geomed_seg.train.config import load_config

ROOT = Path(__file__).resolve().parents[2]
CKPT = ROOT / "checkpoints"


@pytest.mark.skipif(not (CKPT / "water_unet").is_dir(), reason="water_unet not bundled")
def test_water_unet_heldout_scores_match_card():
    import importlib.util

    spec = importlib.util.spec_from_file_location("tdm", ROOT / "scripts" / "train_demo_models.py")
    tdm = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tdm)
    model = load_checkpoint(CKPT / "water_unet")
    assert (CKPT / "water_unet" / "model.safetensors").stat().st_size < 20 * 2**20
    cfg = load_config(ROOT / "configs" / "train_water.yaml")
    scores = tdm.evaluate_water(cfg, model.module, model.card)
    card = model.card.training.metrics
    for k, v in scores.items():
        assert v == pytest.approx(card[k], abs=1e-3), k
    m, b = scores["heldout_model_iou_water"], scores["heldout_baseline_iou_water"]
    notes = model.card.training.notes
    assert ("does NOT beat" in notes) == (m < b)
    assert "WEAK" in notes and model.card.training.weak_labels


@pytest.mark.slow  # builds three phantoms and segments them: ~6 s idle, > 20 s under load
@pytest.mark.skipif(not (CKPT / "brats_unet").is_dir(), reason="brats_unet not bundled")
def test_brats_unet_heldout_dice_matches_card():
    from geomed_seg.train.data import load_split
    from geomed_seg.train.validate import validate

    model = load_checkpoint(CKPT / "brats_unet")
    assert (CKPT / "brats_unet" / "model.safetensors").stat().st_size < 20 * 2**20
    cfg = load_config(ROOT / "configs" / "train_brats.yaml")
    res = validate(model.module, model.card, load_split(cfg).val, regions="2023")
    card = model.card.training.metrics
    for region in ("WT", "TC", "ET"):
        assert res.metrics[f"dice_{region}"] == pytest.approx(
            card[f"heldout_dice_{region}"], abs=1e-3
        )
    assert res.metrics["mean_region_dice"] > 0.5
