"""``geomed-seg segment`` / ``model-card`` end to end, checked with rasterio (independent)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pystac
import pytest

from geomed_seg.cli import main
from geomed_seg.models import ModelCard, build_model, save_checkpoint

torch = pytest.importorskip("torch")
rasterio = pytest.importorskip("rasterio")


def _card(in_channels: int, **kw) -> ModelCard:
    fields = dict(
        name="landsat-tiny",
        architecture="smp.Unet",
        architecture_kwargs={
            "encoder_name": "resnet18",
            "encoder_depth": 3,
            "decoder_channels": [16, 8, 8],
        },
        spatial_dims=2,
        in_channels=in_channels,
        normalisation={
            "type": "meanstd",
            "mean": [60.0] * in_channels,
            "std": [30.0] * in_channels,
        },
        classes=[
            {"index": 0, "name": "land", "color": [0, 128, 0]},
            {"index": 1, "name": "water", "color": [0, 0, 255]},
        ],
        nodata_label=255,
        roi_size=[64, 64],
    )
    fields.update(kw)
    return ModelCard(**fields)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpt")
    out = {}
    for bands in (6, 4):
        card = _card(bands)
        torch.manual_seed(0)
        model = build_model(card.architecture, bands, card.num_classes, **card.architecture_kwargs)
        out[bands] = root / f"unet{bands}.safetensors"
        save_checkpoint(model.eval(), card, out[bands])
    return out


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: ")
    return err[0]


def test_segment_landsat_keeps_geometry(tmp_path, landsat_path, checkpoints, capsys):
    out = tmp_path / "labels.tif"
    rc = main(
        ["segment", str(landsat_path), "-m", str(checkpoints[6]), "-o", str(out), "--roi", "64,64"]
    )
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "windows" in captured.out and str(out.name) in captured.out
    with rasterio.open(landsat_path) as src, rasterio.open(out) as dst:
        assert dst.crs == src.crs
        assert dst.transform == src.transform
        assert (dst.height, dst.width) == (src.height, src.width)
        labels = dst.read(1)
        pixel_km2 = abs(dst.transform.a * dst.transform.e) / 1e6
    assert set(np.unique(labels)) <= {0, 1, 255}
    # the headline names the class and its ground area (UTM: within 1 % of pixel count x size)
    head = captured.out.splitlines()[0]
    assert head.startswith("water: ") and head.endswith(" km²"), head
    water_km2 = float(head.split()[1])
    assert water_km2 == pytest.approx((labels == 1).sum() * pixel_km2, rel=0.01, abs=1e-3)
    # existing output is refused without --overwrite
    rc = main(["segment", str(landsat_path), "-m", str(checkpoints[6]), "-o", str(out), "--quiet"])
    assert rc == 2 and "exists" in _one_error_line(capsys)


def test_band_count_mismatch_exit_2(tmp_path, landsat_path, checkpoints, capsys):
    rc = main(
        ["segment", str(landsat_path), "-m", str(checkpoints[4]), "-o", str(tmp_path / "x.tif")]
    )
    assert rc == 2
    line = _one_error_line(capsys)
    assert "landsat7_olinda_L7_ETMs.tif" in line and "6 bands" in line and "expects 4" in line
    assert not (tmp_path / "x.tif").exists()


def test_output_larger_than_free_disk_exit_2(
    tmp_path, landsat_path, checkpoints, capsys, monkeypatch
):
    from collections import namedtuple

    from geomed_seg.inference import sinks

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(sinks.shutil, "disk_usage", lambda p: usage(2**40, 2**40, 1000))
    out = tmp_path / "x.tif"
    rc = main(["segment", str(landsat_path), "-m", str(checkpoints[6]), "-o", str(out)])
    assert rc == 2
    line = _one_error_line(capsys)
    assert "x.tif" in line and "may need up to" in line and "GiB" in line
    assert not out.exists()


def test_bad_devices_exit_2(tmp_path, landsat_path, checkpoints, capsys):
    out = tmp_path / "x.tif"
    rc = main(["segment", str(landsat_path), "-m", str(checkpoints[6]), "-o", str(out),
               "--devices", "cpu,gpu0"])  # fmt: skip
    assert rc == 2
    assert "gpu0" in _one_error_line(capsys) and not out.exists()


@pytest.mark.slow
def test_two_cpu_devices_write_the_one_device_labels(tmp_path, landsat_path, checkpoints):
    args = ["segment", str(landsat_path), "-m", str(checkpoints[6]), "--device", "cpu"]
    assert main([*args, "-o", str(tmp_path / "one.tif")]) == 0
    assert main([*args, "-o", str(tmp_path / "two.tif"), "--devices", "cpu,cpu"]) == 0
    with rasterio.open(tmp_path / "one.tif") as a, rasterio.open(tmp_path / "two.tif") as b:
        np.testing.assert_array_equal(a.read(), b.read())
        assert a.transform == b.transform and a.crs == b.crs


def test_volume_with_2d_model_exit_2(tmp_path, mni_t1_path, checkpoints, capsys):
    rc = main(
        ["segment", str(mni_t1_path), "-m", str(checkpoints[6]), "-o", str(tmp_path / "x.nii.gz")]
    )
    assert rc == 2
    line = _one_error_line(capsys)
    assert "2D" in line and "3D volume" in line and mni_t1_path.name in line


def test_corrupt_checkpoint_exit_2(tmp_path, landsat_path, capsys):
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    rc = main(["segment", str(landsat_path), "-m", str(bad), "-o", str(tmp_path / "x.tif")])
    assert rc == 2
    assert "broken.safetensors" in _one_error_line(capsys)


def test_bad_roi_exit_2(tmp_path, landsat_path, checkpoints, capsys):
    rc = main(
        [
            "segment",
            str(landsat_path),
            "-m",
            str(checkpoints[6]),
            "-o",
            str(tmp_path / "x.tif"),
            "--roi",
            "64,64,64",
        ]
    )
    assert rc == 2
    assert "--roi" in _one_error_line(capsys)


def test_model_card_print_and_stac(tmp_path, checkpoints, capsys):
    assert main(["model-card", str(checkpoints[6])]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["name"] == "landsat-tiny" and printed["weights_sha256"]
    stac = tmp_path / "item.json"
    assert main(["model-card", str(checkpoints[6]), "--stac", str(stac)]) == 0
    item = json.loads(stac.read_text())
    assert item["properties"]["mlm:input"][0]["input"]["shape"] == [-1, 6, 64, 64]
    # the weights link resolves from the item's folder (was the bare file name, #17)
    weights = (stac.parent / item["assets"]["weights"]["href"]).resolve()
    assert weights == checkpoints[6].resolve() and weights.is_file()
    read = pystac.Item.from_file(str(stac))
    assert Path(read.assets["weights"].get_absolute_href()).resolve() == weights
    assert read.datetime is not None  # the weights' date, not null without start/end
    assert read.properties["mlm:input"][0]["bands"] == []  # unnamed: no channel_0..5


@pytest.mark.slow  # three CLI runs of the landsat scene (~20 s each on 2 busy cores)
def test_segment_engine_flags_batch_auto_amp_give_the_same_labels(tmp_path, landsat_path,
                                                                   checkpoints, capsys):  # fmt: skip
    """--batch-size auto and --amp off/bf16 on CPU: the labels of the default run (bf16 may
    flip near-ties only); a bad --amp or --batch-size is one error line, exit 2."""
    base = ["segment", str(landsat_path), "-m", str(checkpoints[6]), "--roi", "64,64", "-q"]
    outs = {}
    for name, extra in (("default", []), ("auto", ["--batch-size", "auto", "--amp", "off"]),
                        ("bf16", ["--amp", "bf16"])):  # fmt: skip
        outs[name] = tmp_path / f"{name}.tif"
        assert main([*base, "-o", str(outs[name]), *extra]) == 0, capsys.readouterr().err
    with rasterio.open(outs["default"]) as a, rasterio.open(outs["auto"]) as b:
        ref = a.read(1)
        np.testing.assert_array_equal(ref, b.read(1))
    with rasterio.open(outs["bf16"]) as c:
        assert (c.read(1) == ref).mean() > 0.98
    for bad in (["--amp", "fp8"], ["--batch-size", "many"]):
        assert main([*base, "-o", str(tmp_path / "bad.tif"), *bad]) == 2
        line = _one_error_line(capsys)
        assert bad[0] in line and bad[1] in line
