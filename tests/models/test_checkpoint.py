"""Checkpoints: save -> load predicts identically; unsafe and broken files are refused."""

from __future__ import annotations

import json

import pytest
from model_helpers import tiny_card

from geomed_seg.errors import ModelError, OutputExistsError
from geomed_seg.models import build_model, load_checkpoint, read_card, save_checkpoint
from geomed_seg.models.checkpoint import CARD_KEY

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def model_and_card():
    card = tiny_card()
    torch.manual_seed(1)
    model = build_model(
        card.architecture, card.in_channels, card.num_classes, **card.architecture_kwargs
    )
    # non-trivial BatchNorm statistics, so buffers must round-trip too
    model.train()
    with torch.no_grad():
        model(torch.randn(2, 4, 64, 64) * 3 + 1)
    return model.eval(), card


def _predict(module, x):
    with torch.no_grad():
        return module.eval()(x)


@pytest.mark.parametrize("name", ["ckpt.safetensors", "ckpt_folder"])
def test_round_trip_predicts_identically(tmp_path, model_and_card, name):
    model, card = model_and_card
    path = tmp_path / name
    saved = save_checkpoint(model, card, path)
    assert saved.weights_sha256 and len(saved.weights_sha256) == 64
    loaded = load_checkpoint(path)
    assert not loaded.module.training
    assert loaded.card == saved
    x = torch.randn(2, 4, 64, 64)
    torch.testing.assert_close(_predict(loaded.module, x), _predict(model, x), rtol=0, atol=0)
    assert read_card(path) == saved


def test_single_file_card_lives_in_safetensors_metadata(tmp_path, model_and_card):
    from safetensors import safe_open

    model, card = model_and_card
    path = tmp_path / "m.safetensors"
    save_checkpoint(model, card, path)
    with safe_open(str(path), framework="pt") as f:  # independent reader
        meta = f.metadata()
        keys = set(f.keys())
    assert json.loads(meta[CARD_KEY])["name"] == "tiny-unet"
    assert keys == set(model.state_dict())


def test_no_overwrite_and_atomic(tmp_path, model_and_card):
    model, card = model_and_card
    path = tmp_path / "m.safetensors"
    save_checkpoint(model, card, path)
    with pytest.raises(OutputExistsError):
        save_checkpoint(model, card, path)
    save_checkpoint(model, card, path, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


def test_state_dict_pt_via_weights_only(tmp_path, model_and_card):
    model, card = model_and_card
    pt = tmp_path / "weights.pt"
    torch.save(
        {"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}, "epoch": 3}, pt
    )
    with pytest.raises(ModelError, match="no model card found"):
        load_checkpoint(pt)
    (tmp_path / "weights.json").write_text(card.to_json())
    loaded = load_checkpoint(pt)
    x = torch.randn(1, 4, 64, 64)
    torch.testing.assert_close(_predict(loaded.module, x), _predict(model, x), rtol=0, atol=0)


class Exploit:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickled_full_model_refused(tmp_path, model_and_card, capsys):
    model, card = model_and_card
    (tmp_path / "card.json").write_text(card.to_json())
    full = tmp_path / "full.pth"
    torch.save(model, full)
    with pytest.raises(ModelError, match=r"refusing to unpickle .*full\.pth.*save_checkpoint"):
        load_checkpoint(full)
    evil = tmp_path / "evil.pt"
    torch.save({"x": Exploit()}, evil)
    with pytest.raises(ModelError, match="refusing to unpickle"):
        load_checkpoint(evil)
    assert "pwned" not in capsys.readouterr().out


def test_corrupt_and_missing_files(tmp_path, model_and_card):
    model, card = model_and_card
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ModelError, match="bad.safetensors: unreadable safetensors"):
        load_checkpoint(bad)
    good = tmp_path / "good.safetensors"
    save_checkpoint(model, card, good)
    truncated = tmp_path / "trunc.safetensors"
    truncated.write_bytes(good.read_bytes()[:-1000])
    with pytest.raises(ModelError, match="trunc.safetensors"):
        load_checkpoint(truncated)
    with pytest.raises(ModelError, match="not found"):
        load_checkpoint(tmp_path / "nope.safetensors")
    folder = tmp_path / "empty_ckpt"
    folder.mkdir()
    with pytest.raises(ModelError, match="has no model.safetensors"):
        load_checkpoint(folder)
    notpt = tmp_path / "x.pt"
    notpt.write_bytes(b"not a torch file")
    (tmp_path / "x.json").write_text(card.to_json())
    with pytest.raises(ModelError, match="x.pt"):
        load_checkpoint(notpt)


def test_weights_changed_after_save_detected(tmp_path, model_and_card):
    from safetensors.torch import load_file, save_file

    model, card = model_and_card
    folder = tmp_path / "ckpt"
    save_checkpoint(model, card, folder)
    tensors = load_file(folder / "model.safetensors")
    first = next(iter(tensors))
    tensors[first] = tensors[first] + 1
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(ModelError, match="sha256"):
        load_checkpoint(folder)


def test_architecture_mismatch(tmp_path, model_and_card):
    model, card = model_and_card
    path = tmp_path / "m.safetensors"
    save_checkpoint(model, card, path)
    other = card.model_copy(
        update={"in_channels": 3, "band_names": None, "normalisation": {"type": "none"}}
    )
    with pytest.raises(ModelError, match="do not fit smp.Unet"):
        load_checkpoint(path, card=other.model_copy(update={"weights_sha256": None}))
    with pytest.raises(ModelError, match="does not fit|do not fit|cannot build"):
        save_checkpoint(
            model,
            card.model_copy(update={"num_classes_extra": 1, "classes": card.classes[:1]}),
            tmp_path / "x",
        )
