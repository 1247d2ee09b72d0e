"""MixUp/CutMix with soft targets, encoder_weights and freeze_encoder.

References: torch's soft-label cross-entropy and our integer-target losses (MONAI) for the
soft-target losses; torchvision/timm ResNet state dicts for the encoder mapping.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from geomed_seg.errors import ConfigError, ModelError
from geomed_seg.train.config import config_from_dict
from geomed_seg.train.losses import LOSSES, build_loss
from geomed_seg.train.mixing import (
    MixOptions,
    cutmix,
    cutmix_box,
    mix_batch,
    mixup,
    one_hot_valid,
)
from geomed_seg.train.transfer import freeze_encoder, load_encoder_weights

from .conftest import tiny_config


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("ignore", [None, 9])
@pytest.mark.parametrize("weighted", [False, True])
def test_soft_one_hot_targets_equal_integer_targets(name, ignore, weighted):
    if weighted and ignore is None and name.startswith("dice"):
        pytest.skip("MONAI's weighted soft-label CE averages over samples (documented)")
    torch.manual_seed(0)
    k = 2 if name == "bce_dice" else 3
    logits = torch.randn(2, k, 8, 8)
    y = torch.randint(0, k, (2, 8, 8))
    if ignore is not None:
        y[0, :2] = ignore
    weights = [0.5, 1.0, 2.0][:k] if weighted and name != "bce_dice" else None
    loss = build_loss(name, k, class_weights=weights, ignore_index=ignore)
    hard = loss(logits, y)
    soft = loss(logits, one_hot_valid(y, k, ignore))
    torch.testing.assert_close(soft, hard, rtol=1e-5, atol=1e-6)


def test_soft_cross_entropy_equals_torch_soft_labels():
    torch.manual_seed(1)
    logits = torch.randn(3, 4, 6, 6)
    target = torch.softmax(torch.randn(3, 4, 6, 6), 1)
    ours = build_loss("ce", 4)(logits, target)
    torch.testing.assert_close(ours, F.cross_entropy(logits, target))


def test_mixup_mixes_image_and_mask_consistently():
    torch.manual_seed(0)
    x = torch.randn(4, 2, 8, 8)
    y = torch.randint(0, 3, (4, 8, 8))
    y[1, 0, 0] = 255
    perm = torch.tensor([1, 0, 3, 2])
    xm, t = mixup(x, y, 0.7, perm, 3, ignore_index=255)
    torch.testing.assert_close(xm, 0.7 * x + 0.3 * x[perm])
    assert t.shape == (4, 3, 8, 8)
    assert t[0, :, 0, 0].sum() == 0 and t[1, :, 0, 0].sum() == 0  # ignored in one of the pair
    s = t.sum(1)
    assert torch.allclose(s[s > 0], torch.ones_like(s[s > 0]))
    expected = 0.7 * F.one_hot(y[2], 3).movedim(-1, 0) + 0.3 * F.one_hot(y[3], 3).movedim(-1, 0)
    torch.testing.assert_close(t[2], expected.float())
    xi, ti = mixup(x, y, 1.0, perm, 3, ignore_index=255)
    torch.testing.assert_close(xi, x)
    assert (ti.argmax(1)[ti.sum(1) > 0] == y[ti.sum(1) > 0]).all()


def test_cutmix_cuts_image_and_mask_in_the_same_box():
    rng = np.random.default_rng(0)
    x = torch.arange(4 * 1 * 10 * 12, dtype=torch.float32).view(4, 1, 10, 12)
    y = torch.arange(4).view(4, 1, 1).expand(4, 10, 12).clone()
    box = cutmix_box((10, 12), 0.75, rng)
    area = (box[0].stop - box[0].start) * (box[1].stop - box[1].start)
    assert abs(area / 120 - 0.25) < 0.06
    perm = torch.tensor([3, 2, 1, 0])
    xc, yc = cutmix(x, y, box, perm)
    inside = torch.zeros(10, 12, dtype=torch.bool)
    inside[box] = True
    for i in range(4):
        assert (yc[i][inside] == perm[i]).all() and (yc[i][~inside] == i).all()
        assert torch.equal(xc[i, 0][inside], x[perm[i], 0][inside])
        assert torch.equal(xc[i, 0][~inside], x[i, 0][~inside])
    off = MixOptions(mixup_prob=0.0, mixup_alpha=0.4, cutmix_prob=0.0, cutmix_alpha=1.0)
    xs, ys = mix_batch(x, y, rng, off, num_classes=4, ignore_index=None)
    assert xs is x and ys is y


def test_training_with_mixup_and_cutmix(tiny_cases, tmp_path):
    from geomed_seg.train.loop import train

    cfg = tiny_config(tiny_cases, tmp_path / "run", epochs=1, steps_per_epoch=4)
    cfg["augment"].update({"mixup_prob": 0.5, "cutmix_prob": 0.5})
    res = train(config_from_dict(cfg))
    assert np.isfinite(res.history[-1]["train_loss"])
    with pytest.raises(ConfigError, match="mixup_prob \\+ cutmix_prob"):
        config_from_dict({**cfg, "augment": {"mixup_prob": 0.7, "cutmix_prob": 0.7}})


def _smp_unet(in_channels=2):
    from geomed_seg.models.registry import build_model

    return build_model("smp.Unet", in_channels, 2, encoder_name="resnet18", encoder_depth=3,
                       decoder_channels=[32, 16, 8])  # fmt: skip


def test_encoder_weights_from_torchvision_and_timm(tmp_path):
    import timm
    from torchvision.models import resnet18

    tv = resnet18(weights=None)
    torch.save(tv.state_dict(), tmp_path / "tv.pth")
    model = _smp_unet(3)
    rep = load_encoder_weights(model, tmp_path / "tv.pth")
    assert rep.unexpected == ["fc.bias", "fc.weight"] and rep.prefix_stripped == ""
    for k, v in tv.state_dict().items():
        if not k.startswith("fc."):
            assert torch.equal(model.encoder.state_dict()[k], v), k
    # a TorchGeo-style multispectral timm ResNet, saved inside a wrapper ("backbone.")
    tm = timm.create_model("resnet18", pretrained=False, in_chans=2)
    torch.save({f"backbone.{k}": v for k, v in tm.state_dict().items()}, tmp_path / "timm.pt")
    model = _smp_unet(2)
    rep = load_encoder_weights(model, tmp_path / "timm.pt")
    assert rep.prefix_stripped == "backbone." and rep.loaded > 50
    assert torch.equal(model.encoder.conv1.weight, tm.conv1.weight)
    with pytest.raises(ModelError, match=r"conv1.weight \(64, 2, 7, 7\) vs \(64, 4, 7, 7\)"):
        load_encoder_weights(_smp_unet(4), tmp_path / "timm.pt")
    from monai.networks.nets import UNet

    with pytest.raises(ConfigError, match="needs a model with an encoder"):
        load_encoder_weights(UNet(2, 1, 2, (4, 8), (2,)), tmp_path / "timm.pt")


def test_train_with_frozen_pretrained_encoder(tiny_cases, tmp_path):
    import timm

    from geomed_seg.models.checkpoint import load_checkpoint
    from geomed_seg.train.loop import train

    tm = timm.create_model("resnet18", pretrained=False, in_chans=2)
    torch.save(tm.state_dict(), tmp_path / "s2_resnet18.pth")
    cfg = tiny_config(tiny_cases, tmp_path / "run", epochs=1, steps_per_epoch=3, roi_size=[32, 32])
    cfg["model"] = {
        "architecture": "smp.Unet",
        "kwargs": {"encoder_name": "resnet18", "encoder_depth": 3, "decoder_channels": [32, 16, 8]},
        "encoder_weights": str(tmp_path / "s2_resnet18.pth"),
        "freeze_encoder": True,
    }
    res = train(config_from_dict(cfg))
    trained = load_checkpoint(tmp_path / "run" / "last").module
    enc = trained.encoder.state_dict()
    for k, v in tm.state_dict().items():
        if k in enc:  # weights AND batch-norm running statistics unchanged
            assert torch.equal(enc[k], v), k
    report = json.loads((tmp_path / "run" / "encoder_weights.json").read_text())
    assert report["unexpected"] == ["fc.bias", "fc.weight"]
    assert res.card.training.pretrained and "frozen" in res.card.training.notes
    fresh = _smp_unet(2)
    assert not torch.equal(trained.decoder.state_dict()[next(iter(fresh.decoder.state_dict()))],
                           fresh.decoder.state_dict()[next(iter(fresh.decoder.state_dict()))])  # fmt: skip
    assert freeze_encoder(_smp_unet(2)) > 0


def test_fine_tune_an_imported_checkpoint(tiny_cases, tmp_path):
    """A state dict imported with import-model is the starting point of a training run."""
    from monai.networks.nets import UNet

    from geomed_seg.models.checkpoint import load_checkpoint
    from geomed_seg.models.importers import import_model
    from geomed_seg.train.loop import train

    kwargs = {"spatial_dims": 2, "channels": [8, 16], "strides": [2], "num_res_units": 0}
    torch.manual_seed(5)
    net = UNet(in_channels=2, out_channels=2, **kwargs)
    torch.save(net.state_dict(), tmp_path / "theirs.pt")
    import_model(tmp_path / "theirs.pt", tmp_path / "imported", arch="monai.UNet",
                 arch_args=kwargs, in_channels=2, classes=[{"index": 0, "name": "land"},
                 {"index": 1, "name": "water"}])  # fmt: skip
    cfg = tiny_config(tiny_cases, tmp_path / "run", epochs=1, steps_per_epoch=1)
    cfg["optim"]["lr"] = 1e-12  # one step that barely moves: the start must be their weights
    cfg["model"]["init_checkpoint"] = str(tmp_path / "imported")
    train(config_from_dict(cfg))
    last = load_checkpoint(tmp_path / "run" / "last").module.state_dict()
    for k, v in net.state_dict().items():
        if v.is_floating_point() and "running" not in k:
            torch.testing.assert_close(last[k], v, rtol=0, atol=1e-6)
    bad = tiny_config(tiny_cases, tmp_path / "run2", epochs=1, steps_per_epoch=1)
    bad["model"]["kwargs"]["channels"] = [4, 8]
    bad["model"]["init_checkpoint"] = str(tmp_path / "imported")
    with pytest.raises(ConfigError, match="init_checkpoint .* does not fit the run .*kwargs"):
        train(config_from_dict(bad))
