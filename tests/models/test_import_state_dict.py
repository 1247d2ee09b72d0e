"""Importing bare state dicts and smp save_pretrained folders (references: the modules themselves)."""

from __future__ import annotations

import hashlib

import pytest
import torch

from geomed_seg.errors import ModelError
from geomed_seg.models.card import ModelCard
from geomed_seg.models.checkpoint import load_checkpoint
from geomed_seg.models.importers import detect_format, import_model

UNET_ARGS = {"spatial_dims": 3, "channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1}


def _monai_unet():
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    return UNet(in_channels=2, out_channels=3, **UNET_ARGS).eval()


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_monai_unet_state_dict_imports_and_matches_module(tmp_path):
    net = _monai_unet()
    assert all(k.startswith("model.") for k in net.state_dict())  # the keys the old loader broke
    pt = tmp_path / "unet_weights.pt"
    torch.save(net.state_dict(), pt)
    assert detect_format(pt) == "state-dict"
    card = import_model(
        pt, tmp_path / "ckpt", arch="monai.UNet",
        arch_args={**UNET_ARGS, "in_channels": 2, "out_channels": 3},
        classes=[{"index": 0, "name": "bg"}, {"index": 1, "name": "a"}, {"index": 2, "name": "b"}],
    )  # fmt: skip
    assert card.provenance.source_format == "state-dict"
    assert card.provenance.source_sha256 == {"unet_weights.pt": _sha(pt)}
    assert card.spatial_dims == 3 and card.num_classes == 3 and card.in_channels == 2
    loaded = load_checkpoint(tmp_path / "ckpt")
    x = torch.randn(1, 2, 16, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(x), net(x), rtol=0, atol=0)


def test_monai_unet_pt_with_card_loads_without_losing_model_prefix(tmp_path):
    """The bug of issue 15: the loader stripped ``model.`` from every MONAI UNet key."""
    net = _monai_unet()
    pt = tmp_path / "w.pt"
    torch.save(net.state_dict(), pt)
    card = ModelCard(
        name="u", architecture="monai.UNet", architecture_kwargs=UNET_ARGS, spatial_dims=3,
        in_channels=2, classes=[{"index": i, "name": f"c{i}"} for i in range(3)],
        roi_size=[16, 16, 16],
    )  # fmt: skip
    loaded = load_checkpoint(pt, card=card)
    x = torch.randn(1, 2, 16, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(x), net(x), rtol=0, atol=0)
    # a real wrapper prefix on top (Lightning "model." around the UNet's own "model.") goes
    torch.save({"state_dict": {f"model.{k}": v for k, v in net.state_dict().items()}}, pt)
    loaded = load_checkpoint(pt, card=card)
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(x), net(x), rtol=0, atol=0)
    # DataParallel's module. around it too
    torch.save({f"module.{k}": v for k, v in net.state_dict().items()}, pt)
    with torch.no_grad():
        torch.testing.assert_close(load_checkpoint(pt, card=card).module(x), net(x), rtol=0, atol=0)


def test_state_dict_through_the_engine_equals_module_softmax(tmp_path):
    from geomed_seg.core.grid import VoxelGrid
    from geomed_seg.core.image import Image
    from geomed_seg.inference.segment import segment

    net = _monai_unet()
    pt = tmp_path / "w.pth"
    torch.save(net.state_dict(), pt)
    import_model(
        pt, tmp_path / "ckpt", arch="UNet", arch_args=UNET_ARGS, in_channels=2,
        classes=[{"index": i, "name": f"c{i}"} for i in range(3)], roi_size=(16, 16, 16),
    )  # fmt: skip
    loaded = load_checkpoint(tmp_path / "ckpt")
    rng = __import__("numpy").random.default_rng(1)
    vol = rng.normal(size=(2, 16, 16, 16)).astype("float32")
    image = Image.from_array(vol, VoxelGrid(__import__("numpy").eye(4), (16, 16, 16)))
    res = segment(image, loaded, overlap=0.0, mode="constant", output="probabilities")
    with torch.no_grad():
        ref = torch.softmax(net(torch.from_numpy(vol)[None]), 1)[0].numpy()
    got = res.image.data.values
    assert abs(got - ref).max() < 1e-5


def test_state_dict_needs_arch_and_channels(tmp_path):
    pt = tmp_path / "w.pt"
    torch.save(_monai_unet().state_dict(), pt)
    with pytest.raises(ModelError, match="--arch"):
        import_model(pt, tmp_path / "a")
    with pytest.raises(ModelError, match="--in-channels and --classes"):
        import_model(pt, tmp_path / "b", arch="monai.UNet", arch_args=UNET_ARGS)
    with pytest.raises(ModelError, match="do not fit monai.UNet"):
        import_model(
            pt, tmp_path / "c", arch="monai.UNet", in_channels=2, classes=[{"index": 0, "name": "x"}],
            arch_args={**UNET_ARGS, "channels": [4, 8, 32]},
        )  # fmt: skip
    assert not (tmp_path / "c").exists()


def test_smp_save_pretrained_matches_from_pretrained(tmp_path):
    import segmentation_models_pytorch as smp

    torch.manual_seed(0)
    model = smp.Unet(
        "resnet18", encoder_weights=None, encoder_depth=3, decoder_channels=(32, 16, 8),
        in_channels=4, classes=3, activation="softmax2d",
    )  # fmt: skip
    src = tmp_path / "smp_model"
    model.save_pretrained(str(src))
    assert detect_format(src) == "smp"
    card = import_model(src, tmp_path / "ckpt", classes=[
        {"index": 0, "name": "bg"}, {"index": 1, "name": "water"}, {"index": 2, "name": "urban"}
    ])  # fmt: skip
    assert card.architecture == "smp.Unet" and card.architecture_kwargs["encoder_depth"] == 3
    assert card.provenance.source_sha256["model.safetensors"] == _sha(src / "model.safetensors")
    assert card.licence == card.provenance.licence == "mit"  # smp's README front matter
    assert any("softmax2d" in n for n in card.provenance.notes)
    reference = smp.from_pretrained(str(src)).eval()  # smp's own loader
    loaded = load_checkpoint(tmp_path / "ckpt")
    x = torch.randn(2, 4, 64, 64)
    with torch.no_grad():
        ours = torch.softmax(loaded.module(x), 1)  # the engine's activation
        torch.testing.assert_close(ours, reference(x), rtol=0, atol=1e-6)
