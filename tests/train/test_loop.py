"""Training loop on tiny generated data: loss goes down, resume is exact, bad data fails early."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from affine import Affine

from geomed_seg.cli import main
from geomed_seg.errors import ConfigError, GeometryError
from geomed_seg.models.checkpoint import load_checkpoint
from geomed_seg.train.config import config_from_dict, load_config
from geomed_seg.train.loop import STATE_NAME, lr_factor, train

from .conftest import make_scene, tiny_config, write_tif


def test_few_steps_lower_the_loss_and_write_checkpoints(tiny_cases, tmp_path):
    cfg = config_from_dict(tiny_config(tiny_cases, tmp_path / "run", epochs=3, steps_per_epoch=6))
    res = train(cfg)
    losses = [r["train_loss"] for r in res.history]
    assert losses[-1] < 0.8 * losses[0]
    assert 0 <= res.best_score <= 1 and res.best_epoch >= 0
    best = load_checkpoint(tmp_path / "run" / "best")
    assert best.card.training.metrics["val_score"] == pytest.approx(res.best_score)
    assert [c.name for c in best.card.classes] == ["land", "water"]
    with (tmp_path / "run" / "train_log.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    assert float(rows[0]["train_loss"]) == pytest.approx(losses[0])
    # normalisation "auto": mean/std of the training cases, checked against numpy
    imgs = [make_scene(i)[0] for i in (0, 1)]
    mean = np.concatenate([x.reshape(2, -1) for x in imgs], 1).mean(1)
    np.testing.assert_allclose(best.card.normalisation.mean, mean, rtol=1e-5)


def test_resume_continues_with_identical_state(tiny_cases, tmp_path):
    full = config_from_dict(tiny_config(tiny_cases, tmp_path / "full", epochs=2))
    train(full)
    half = config_from_dict(tiny_config(tiny_cases, tmp_path / "half", epochs=1))
    train(half)
    assert (tmp_path / "half" / "last" / STATE_NAME).is_file()
    resumed = half.model_copy(update={"epochs": 2})
    res = train(resumed, resume=tmp_path / "half" / "last")
    assert [r["epoch"] for r in res.history] == [1]
    a = load_checkpoint(tmp_path / "full" / "last").module.state_dict()
    b = load_checkpoint(tmp_path / "half" / "last").module.state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    sa = torch.load(tmp_path / "full" / "last" / STATE_NAME, weights_only=True)
    sb = torch.load(tmp_path / "half" / "last" / STATE_NAME, weights_only=True)
    assert sa["epoch"] == sb["epoch"] == 1
    assert sa["optimizer"]["param_groups"] == sb["optimizer"]["param_groups"]
    for k, st in sa["optimizer"]["state"].items():
        for name, v in st.items():
            torch.testing.assert_close(v, sb["optimizer"]["state"][k][name], rtol=0, atol=0)
    assert sa["scheduler"] == sb["scheduler"]


def test_lr_schedules():
    assert lr_factor(0, 100, "cosine", 0) == 1.0
    assert lr_factor(50, 100, "cosine", 0) == pytest.approx(0.5)
    assert lr_factor(99, 100, "poly", 0) == pytest.approx((1 - 99 / 100) ** 0.9)
    assert lr_factor(4, 100, "cosine", 10) == pytest.approx(0.5)


def test_label_on_another_grid_is_a_geometry_error(tiny_cases, tmp_path):
    _, lab = make_scene(0)
    moved = write_tif(tmp_path / "moved.tif", lab, Affine(10, 0, 500005, 0, -10, 4e6))
    cases = [dict(tiny_cases[0], label=str(moved)), *tiny_cases[1:]]
    with pytest.raises(GeometryError, match="moved.tif"):
        train(config_from_dict(tiny_config(cases, tmp_path / "run")))


def test_label_values_outside_classes_fail_in_cli(tiny_cases, tmp_path, capsys):
    _, lab = make_scene(1)
    lab[0, 0] = 5
    bad = write_tif(tmp_path / "bad_lab.tif", lab)
    cases = [tiny_cases[0], dict(tiny_cases[1], label=str(bad)), tiny_cases[2]]
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(tiny_config(cases, tmp_path / "run")))
    with pytest.raises(ConfigError, match="bad_lab.tif"):
        train(load_config(cfg_path))
    assert main(["train", str(cfg_path), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad_lab.tif" in err[0] and "[5]" in err[0]


def test_unknown_config_key_is_named(tmp_path: Path, tiny_cases):
    d = tiny_config(tiny_cases, tmp_path / "run")
    d["optim"]["learning_rate"] = 0.1
    with pytest.raises(ConfigError, match="optim.learning_rate"):
        config_from_dict(d)


def test_cli_train_with_overrides(tiny_cases, tmp_path, capsys):
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(tiny_config(tiny_cases, tmp_path / "ignored")))
    out = tmp_path / "cli_run"
    rc = main(["train", str(cfg_path), "--epochs", "1", "--output", str(out), "--quiet"])
    assert rc == 0, capsys.readouterr().err
    assert "best" in capsys.readouterr().out
    with (out / "train_log.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 1
    assert not (tmp_path / "ignored").exists()
    assert load_checkpoint(out / "last").card.training.metrics["epoch"] == 0


def test_trainer_state_with_pickled_objects_is_refused(tmp_path):
    from geomed_seg.errors import ModelError
    from geomed_seg.train.loop import _load_state

    torch.save({"epoch": 1, "evil": Path("/etc")}, tmp_path / STATE_NAME)
    with pytest.raises(ModelError, match="trainer state"):
        _load_state(tmp_path)
    with pytest.raises(ModelError, match="cannot resume"):
        _load_state(tmp_path / "missing")


def test_early_stopping_and_cpu_bf16(tiny_cases, tmp_path):
    # lr 0: the score cannot improve after the first validation, so patience 1 stops at epoch 1
    d = tiny_config(tiny_cases, tmp_path / "run", epochs=5, steps_per_epoch=2, patience=1,
                    amp="bf16")  # fmt: skip
    d["optim"]["lr"] = 1e-12
    res = train(config_from_dict(d))
    assert [r["epoch"] for r in res.history] == [0, 1]
    assert res.best_epoch == 0
    assert all(np.isfinite(r["train_loss"]) for r in res.history)


def test_workers_give_the_same_batches(tiny_cases, tmp_path):
    from geomed_seg.train.augment import build_augment
    from geomed_seg.train.data import PatchDataset, load_split, make_loader
    from geomed_seg.train.sampling import PatchSampler

    cfg = config_from_dict(tiny_config(tiny_cases, tmp_path / "run"))
    split = load_split(cfg)
    sampler = PatchSampler([(c.image, c.label) for c in split.train], (16, 16), [1], seed=2)
    ds = PatchDataset(sampler, 8, build_augment(cfg.augment, 2))
    ds.set_epoch(3)
    a = [b["image"] for b in make_loader(ds, 4, num_workers=0)]
    b = [b["image"] for b in make_loader(ds, 4, num_workers=2)]
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
