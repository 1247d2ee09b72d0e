"""Registry: every architecture builds offline, with the right output shape."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from geomed_seg.errors import ModelError
from geomed_seg.models.registry import available_models, build_model, get_spec, resolve_kwargs

torch = pytest.importorskip("torch")


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection (weight download) fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


CASES_2D = ["smp.Unet", "smp.UnetPlusPlus", "smp.DeepLabV3Plus", "smp.FPN", "smp.Segformer"]
CASES_3D = {
    "monai.UNet": ({"channels": (4, 8, 16), "strides": (2, 2), "num_res_units": 1}, 32),
    "monai.BasicUNet": ({"features": (4, 4, 8, 8, 16, 4)}, 32),
    "monai.SegResNet": ({"init_filters": 8}, 32),
}


def test_all_expected_architectures_registered():
    assert set(CASES_2D) | set(CASES_3D) | {"monai.SwinUNETR"} <= set(available_models())


@pytest.mark.parametrize("name", CASES_2D)
def test_smp_builds_any_band_count_offline(name, no_network):
    torch.manual_seed(0)
    model = build_model(name, in_channels=7, num_classes=3, encoder_name="resnet18")
    if name == "smp.Segformer":  # MiT encoder
        model = build_model(name, in_channels=7, num_classes=3)
    assert get_spec(name).spatial_dims == 2
    with torch.no_grad():
        out = model.eval()(torch.randn(1, 7, 64, 64))
    assert tuple(out.shape) == (1, 3, 64, 64)


@pytest.mark.parametrize("name", sorted(CASES_3D))
def test_monai_3d_builds(name, no_network):
    kwargs, size = CASES_3D[name]
    model = build_model(name, in_channels=2, num_classes=3, **kwargs)
    assert get_spec(name).spatial_dims == 3
    with torch.no_grad():
        out = model.eval()(torch.randn(1, 2, size, size, size))
    assert tuple(out.shape) == (1, 3, size, size, size)


@pytest.mark.slow
def test_swin_unetr_builds(no_network):
    model = build_model(
        "monai.SwinUNETR", in_channels=1, num_classes=2, feature_size=12, depths=(1, 1, 1, 1)
    )
    with torch.no_grad():
        out = model.eval()(torch.randn(1, 1, 64, 64, 64))
    assert tuple(out.shape) == (1, 2, 64, 64, 64)


def test_smp_encoder_weights_forced_none():
    assert resolve_kwargs("smp.Unet", 4, 2)["encoder_weights"] is None
    with pytest.raises(ModelError, match="download"):
        resolve_kwargs("smp.Unet", 4, 2, encoder_weights="imagenet")


def test_builder_parameters_match_library_directly():
    """Same constructor as calling smp ourselves (independent reference)."""
    import segmentation_models_pytorch as smp

    ours = build_model("Unet", 5, 2, encoder_name="resnet18")
    ref = smp.Unet(encoder_name="resnet18", encoder_weights=None, in_channels=5, classes=2)
    assert [tuple(p.shape) for p in ours.parameters()] == [tuple(p.shape) for p in ref.parameters()]


def test_unknown_name_suggests():
    with pytest.raises(ModelError, match=r"did you mean 'smp\.Unet'"):
        get_spec("smp.Unett")
    with pytest.raises(ModelError, match="did you mean 'SegResNet'"):
        get_spec("SegResnet")


def test_aliases_are_case_sensitive_between_libraries():
    assert get_spec("Unet").name == "smp.Unet"
    assert get_spec("UNet").name == "monai.UNet"
    assert get_spec("SMP.UNET").name == "smp.Unet"


def test_bad_kwargs_become_model_error():
    with pytest.raises(ModelError, match="smp.Unet"):
        build_model("smp.Unet", 3, 2, encoder_name="no-such-encoder")
    with pytest.raises(ModelError, match="in_channels/num_classes"):
        build_model("smp.Unet", 3, 2, classes=4)


def test_spec_and_card_import_without_torch():
    code = (
        "import sys; import geomed_seg.models as m; m.get_spec('smp.Unet');"
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
