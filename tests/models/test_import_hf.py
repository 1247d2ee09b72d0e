"""HF SegFormer import: parity with transformers' own model, image processor and post-processing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from affine import Affine
from rasterio.crs import CRS

from geomed_seg.core.grid import GeoGrid
from geomed_seg.core.image import Image
from geomed_seg.errors import ModelError
from geomed_seg.models.card import NoNormalisation
from geomed_seg.models.checkpoint import load_checkpoint
from geomed_seg.models.importers import detect_format, import_model

MEAN, STD = [0.30, 0.40, 0.50, 0.45], [0.20, 0.25, 0.15, 0.30]


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    from transformers import (
        SegformerConfig,
        SegformerForSemanticSegmentation,
        SegformerImageProcessor,
    )

    torch.manual_seed(0)
    cfg = SegformerConfig(
        num_channels=4, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1],
        num_attention_heads=[1, 1, 1, 2], decoder_hidden_size=16, num_labels=3,
        id2label={0: "land", 1: "water", 2: "cloud"}, label2id={"land": 0, "water": 1, "cloud": 2},
    )  # fmt: skip
    model = SegformerForSemanticSegmentation(cfg).eval()
    folder = tmp_path_factory.mktemp("hf") / "segformer_tiny"
    model.save_pretrained(folder)
    SegformerImageProcessor(
        image_mean=MEAN, image_std=STD, size={"height": 512, "width": 512}
    ).save_pretrained(folder)
    (folder / "README.md").write_text(
        "---\nlicense: apache-2.0\n---\nauthors: A. Person, B. Person\n"
    )
    return folder


def _scene(size: int = 1024) -> np.ndarray:
    """Smooth 4-band uint8 scene ``(band, y, x)`` (random but spatially structured)."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(3)
    noise = rng.normal(size=(4, size, size))
    smooth = np.stack([gaussian_filter(b, 12) for b in noise])
    smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min())
    return (smooth * 255).astype(np.uint8)


def _hf_reference(folder, scene):
    """HF image processor -> model -> post_process_semantic_segmentation on the whole scene."""
    from transformers import SegformerForSemanticSegmentation, SegformerImageProcessor

    proc = SegformerImageProcessor.from_pretrained(folder, local_files_only=True)
    model = SegformerForSemanticSegmentation.from_pretrained(folder, local_files_only=True).eval()
    inputs = proc(
        images=scene, do_resize=False, input_data_format="channels_first", return_tensors="pt"
    )
    with torch.no_grad():
        out = model(**inputs)
    size = scene.shape[1:]
    res = proc.post_process_semantic_segmentation(
        out, target_sizes=[size], return_segmentation_scores=True
    )[0]
    logits = res.segmentation_scores
    return model, proc, res.segmentation.numpy(), torch.softmax(logits, 0).numpy(), logits.numpy()


def _image(scene):
    grid = GeoGrid(CRS.from_epsg(32633), Affine(10, 0, 500000, 0, -10, 5200000), scene.shape[1:])
    return Image.from_array(scene, grid)


def test_hf_import_card(hf_folder, tmp_path):
    assert detect_format(hf_folder) == "hf"
    card = import_model(hf_folder, tmp_path / "ckpt")
    assert [c.name for c in card.classes] == ["land", "water", "cloud"]
    assert card.architecture == "hf.Segformer" and card.in_channels == 4
    assert card.roi_size == [512, 512]
    np.testing.assert_allclose(card.normalisation.mean, np.array(MEAN) * 255, rtol=1e-6)
    np.testing.assert_allclose(card.normalisation.std, np.array(STD) * 255, rtol=1e-6)
    prov = card.provenance
    assert prov.source_format == "hf" and prov.licence == "apache-2.0" == card.licence
    assert prov.authors == ["A. Person", "B. Person"]
    assert set(prov.source_sha256) == {
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "README.md",
    }
    assert any("do_resize" in n for n in prov.notes)


def test_hf_one_window_exact_and_blended_interior(hf_folder, tmp_path):
    from monai.inferers import sliding_window_inference

    from geomed_seg.inference.segment import segment

    scene = _scene()
    model, proc, ref_labels, ref_prob, ref_logits = _hf_reference(hf_folder, scene)
    top2 = np.sort(ref_logits, axis=0)[-2:]
    tie = (top2[1] - top2[0]) < 1e-5  # HF's own logits tie within float32 rounding
    import_model(hf_folder, tmp_path / "ckpt")
    loaded = load_checkpoint(tmp_path / "ckpt")
    image = _image(scene)

    # one window over the whole scene, overlap 0: HF logits -> upsample -> argmax, exactly
    one = segment(
        image, loaded, roi_size=(1024, 1024), overlap=0.0, mode="constant", output="probabilities"
    )
    assert one.image.grid == image.grid
    prob = one.image.data.values
    assert np.abs(prob - ref_prob).max() < 1e-4
    lab = segment(image, loaded, roi_size=(1024, 1024), overlap=0.0, mode="constant")
    # the card's z-score (x - m/r)/(s/r) rounds differently from HF's (x*r - m)/s in float32,
    # so labels may differ only where HF's two top logits (nearly) tie
    top2p = np.sort(ref_prob, axis=0)[-2:]
    differ = lab.image.data.values[0] != ref_labels
    assert differ.mean() < 1e-4 and ((top2p[1] - top2p[0])[differ] < 1e-4).all()
    # fed HF's own normalised pixel values, the engine's labels are HF's except exact ties
    pixels = proc(
        images=scene, do_resize=False, input_data_format="channels_first", return_tensors="np"
    )
    raw = loaded.__class__(
        loaded.module,
        loaded.card.model_copy(update={"normalisation": NoNormalisation()}),
        loaded.path,
    )
    exact = segment(
        _image(pixels["pixel_values"][0]), raw, roi_size=(1024, 1024), overlap=0.0, mode="constant"
    )
    differ = exact.image.data.values[0] != ref_labels
    assert not (differ & ~tie).any(), (differ.sum(), (differ & ~tie).sum())

    # 512 windows, gaussian blending: equal to MONAI's sliding window over HF model + resize
    res = segment(image, loaded, overlap=0.25, mode="gaussian", output="probabilities")
    x = proc(
        images=scene, do_resize=False, input_data_format="channels_first", return_tensors="pt"
    )["pixel_values"]

    def hf_window(w):
        logits = model(pixel_values=w).logits
        up = torch.nn.functional.interpolate(
            logits, size=w.shape[-2:], mode="bilinear", align_corners=False
        )
        return torch.softmax(up, 1)

    with torch.no_grad():
        ref_sw = sliding_window_inference(
            x, (512, 512), 4, hf_window, overlap=0.25, mode="gaussian"
        )[0].numpy()
    assert np.abs(res.image.data.values - ref_sw).max() < 1e-4
    # against the whole-scene HF answer: SegFormer attention is global within its input, so
    # windows differ from one whole-scene pass; most interior labels still agree
    interior = (slice(128, -128), slice(128, -128))
    agree = (res.image.data.values.argmax(0)[interior] == ref_labels[interior]).mean()
    assert agree > 0.9, agree


def test_hf_other_model_type_refused(tmp_path):
    folder = tmp_path / "vit"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "vit", "num_labels": 2}))
    with pytest.raises(ModelError, match="model_type 'vit' is not supported"):
        import_model(folder, tmp_path / "out")
