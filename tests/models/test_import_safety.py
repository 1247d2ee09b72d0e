"""Sources that need code execution to load are refused by every importer (the canary never runs)."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from geomed_seg.cli import main
from geomed_seg.errors import ModelError
from geomed_seg.models.importers import import_model


class Payload:
    """Unpickling this creates the canary file: proof that code ran."""

    def __init__(self, canary):
        self.canary = str(canary)

    def __reduce__(self):
        return (open, (self.canary, "w"))


def _evil(path, canary):
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"weight": torch.zeros(1), "x": Payload(canary)}, path)
    return path


def _state_dict_source(tmp, canary):
    return _evil(tmp / "weights.pt", canary), {
        "arch": "smp.Unet",
        "in_channels": 3,
        "classes": [{"index": 0, "name": "a"}],
    }


def _smp_source(tmp, canary):
    src = tmp / "smp_folder"
    _evil(src / "pytorch_model.bin", canary)
    (src / "config.json").write_text(
        json.dumps(
            {"_model_class": "Unet", "encoder_name": "resnet18", "in_channels": 3, "classes": 2}
        )
    )
    return src, {}


def _hf_source(tmp, canary):
    src = tmp / "hf_folder"
    _evil(src / "pytorch_model.bin", canary)
    (src / "config.json").write_text(json.dumps({"model_type": "segformer", "num_labels": 2}))
    return src, {}


def _bundle_source(tmp, canary):
    src = tmp / "bundle"
    _evil(src / "models" / "model.pt", canary)
    (src / "configs").mkdir()
    net = {"_target_": "UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 2,
           "channels": [4, 8], "strides": [2]}  # fmt: skip
    (src / "configs" / "inference.json").write_text(json.dumps({"network_def": net}))
    (src / "configs" / "metadata.json").write_text(json.dumps({"version": "0.1"}))
    return src, {"roi_size": (16, 16, 16)}


def _nnunet_source(tmp, canary):
    from nnunet_data import dataset_dict, plans_dict

    src = tmp / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    _evil(src / "fold_0" / "checkpoint_final.pth", canary)
    (src / "plans.json").write_text(json.dumps(plans_dict([2.0, 1.0, 1.0], [16, 32, 32])))
    (src / "dataset.json").write_text(json.dumps(dataset_dict()))
    return src, {}


SOURCES = {
    "nnunet": _nnunet_source,
    "state-dict": _state_dict_source,
    "smp": _smp_source,
    "hf": _hf_source,
    "monai-bundle": _bundle_source,
}


@pytest.mark.parametrize("fmt", sorted(SOURCES))
def test_reduce_payload_refused_under_every_format(tmp_path, fmt):
    canary = tmp_path / "CANARY"
    src, opts = SOURCES[fmt](tmp_path, canary)
    for given in ("auto", fmt):
        with pytest.raises(ModelError, match="refusing to unpickle.*--trust-code"):
            import_model(src, tmp_path / f"out_{given}", format=given, **opts)
        assert not canary.exists()
        assert not (tmp_path / f"out_{given}").exists()


def test_torchscript_refused_unless_trusted(tmp_path, caplog):
    import segmentation_models_pytorch as smp

    torch.manual_seed(0)
    model = smp.Unet("resnet18", encoder_weights=None, encoder_depth=3,
                     decoder_channels=(32, 16, 8), in_channels=3, classes=2).eval()  # fmt: skip
    ts = tmp_path / "model_ts.pt"
    torch.jit.trace(model, torch.zeros(1, 3, 64, 64)).save(str(ts))
    opts = dict(arch="smp.Unet", in_channels=3, classes=[{"index": 0, "name": "a"},
                {"index": 1, "name": "b"}], arch_args={"encoder_name": "resnet18",
                "encoder_depth": 3, "decoder_channels": [32, 16, 8]})  # fmt: skip
    with pytest.raises(ModelError, match="TorchScript archive.*--trust-code"):
        import_model(ts, tmp_path / "refused", **opts)
    with caplog.at_level(logging.WARNING):
        card = import_model(ts, tmp_path / "trusted", trust_code=True, **opts)
    assert any("RUNS CODE" in r.getMessage() for r in caplog.records)
    assert card.provenance.trusted_code is True
    from geomed_seg.models.checkpoint import load_checkpoint

    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(load_checkpoint(tmp_path / "trusted").module(x), model(x))


def test_cli_import_and_refusal(tmp_path, capsys):
    from monai.networks.nets import UNet

    net = UNet(
        spatial_dims=3,
        in_channels=1,
        out_channels=2,
        channels=(4, 8),
        strides=(2,),
        num_res_units=2,
    )
    pt = tmp_path / "unet.pt"
    torch.save(net.state_dict(), pt)
    args = ["import-model", str(pt), "-o", str(tmp_path / "ckpt"), "--arch", "monai.UNet",
            "--arch-args", '{"channels": [4, 8], "strides": [2], "num_res_units": 2}',
            "--in-channels", "1", "--classes", "0:background,1:lesion", "--roi", "32,32,32",
            "--card-json", '{"spacing": [1.0, 1.0, 1.0], "spacing_unit": "mm"}']  # fmt: skip
    assert main(args) == 0
    card = json.loads((tmp_path / "ckpt" / "card.json").read_text())
    assert card["classes"][1]["name"] == "lesion" and card["roi_size"] == [32, 32, 32]
    assert (
        card["spacing"] == [1.0, 1.0, 1.0] and card["provenance"]["source_format"] == "state-dict"
    )
    capsys.readouterr()
    canary = tmp_path / "CANARY"
    evil = _evil(tmp_path / "evil.pt", canary)
    code = main(["import-model", str(evil), "-o", str(tmp_path / "x"), "--arch", "UNet"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert not canary.exists() and not (tmp_path / "x").exists()


def test_nnunet_folder_with_unusable_plans_is_refused_with_a_reason(tmp_path, capsys):
    src = tmp_path / "Dataset001_Test" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    (src / "fold_0").mkdir(parents=True)
    (src / "plans.json").write_text("{}")
    (src / "dataset.json").write_text("{}")
    with pytest.raises(ModelError, match="plans.json: no configuration '3d_fullres'"):
        import_model(src, tmp_path / "out")
    assert main(["import-model", str(src), "-o", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert not (tmp_path / "out").exists()
