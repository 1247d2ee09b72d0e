"""FCN (torchvision) and SegNet in the registry (references: torchvision's FCN, scatter by indices)."""

from __future__ import annotations

import pytest
import torch

from geomed_seg.models.registry import build_model, get_spec


def test_fcn_equals_torchvision_fcn():
    from torchvision.models.segmentation import fcn_resnet50

    torch.manual_seed(0)
    ref = fcn_resnet50(weights=None, weights_backbone=None, num_classes=4, aux_loss=True).eval()
    ours = build_model("torchvision.fcn_resnet50", 3, 4, aux_loss=True).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)  # torchvision's own key names
    x = torch.randn(2, 3, 72, 88)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x)["out"], rtol=0, atol=0)
    assert ours(x).shape == (2, 4, 72, 88)


def test_fcn_other_band_count_and_import(tmp_path):
    from geomed_seg.models.checkpoint import load_checkpoint
    from geomed_seg.models.importers import import_model

    torch.manual_seed(0)
    model = build_model("FCN_resnet50", 6, 3).eval()
    assert model.backbone.conv1.in_channels == 6
    pt = tmp_path / "fcn.pth"
    torch.save(model.state_dict(), pt)
    import_model(pt, tmp_path / "ckpt", arch="torchvision.fcn_resnet50", in_channels=6,
                 classes=[{"index": i, "name": f"c{i}"} for i in range(3)])  # fmt: skip
    x = torch.randn(1, 6, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(load_checkpoint(tmp_path / "ckpt").module(x), model(x))


def test_segnet_shapes_training_step_and_divisor():
    assert get_spec("SegNet").divisor == 32
    torch.manual_seed(0)
    net = build_model("SegNet", 4, 3, features=[8, 16, 16], convs=[1, 2, 2])
    x = torch.randn(2, 4, 32, 48)
    out = net(x)
    assert out.shape == (2, 3, 32, 48)
    loss = torch.nn.functional.cross_entropy(out, torch.randint(0, 3, (2, 32, 48)))
    loss.backward()
    assert all(p.grad is not None for p in net.parameters())


def test_segnet_unpools_with_the_encoder_indices():
    """Each unpooling puts values back exactly at the encoder's max positions (scatter reference)."""
    torch.manual_seed(0)
    net = build_model("SegNet", 1, 2, features=[4, 8], convs=[1, 1]).eval()
    pooled, unpooled = [], []
    net.pool.register_forward_hook(lambda m, i, o: pooled.append((i[0].shape, o[0], o[1])))
    net.unpool.register_forward_hook(lambda m, i, o: unpooled.append((i[0], o)))
    with torch.no_grad():
        net(torch.randn(1, 1, 16, 16))
    for (size, _values, idx), (inp, out) in zip(pooled[::-1], unpooled, strict=True):
        expected = torch.zeros(size).flatten(2)
        expected.scatter_(2, idx.flatten(2), inp.flatten(2))
        torch.testing.assert_close(out, expected.view(size), rtol=0, atol=0)
        assert not torch.equal(idx, torch.zeros_like(idx))
    with pytest.raises(ValueError, match="same length"):
        build_model("SegNet", 1, 2, features=[4, 8], convs=[1])
