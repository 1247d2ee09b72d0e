"""Pipeline config validation: unknown keys and wrong types name the key and the file."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from geomed_seg.cli import main
from geomed_seg.errors import ConfigError
from geomed_seg.pipelines.schema import PIPELINES_DIR, apply_overrides, load_config

GOOD = {
    "name": "t",
    "kind": "raster",
    "input": {"path": "scene.tif"},
    "model": {"method": "ndwi_otsu"},
}


def _write(tmp_path: Path, data: dict) -> Path:
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


@pytest.mark.parametrize("name", sorted(p.stem for p in PIPELINES_DIR.glob("*.yaml")))
def test_bundled_pipelines_validate(name):
    cfg = load_config(name)
    assert cfg.name == name
    # relative paths written in the file are anchored beside it
    for value in (cfg.input.path, cfg.model.checkpoint):
        if value:
            assert Path(value).is_absolute()
            assert Path(value).is_relative_to(PIPELINES_DIR)
    if name == "flood":  # the one pipeline whose input and checkpoint are bundled
        assert cfg.resolve(cfg.input.path).is_file()
        assert cfg.resolve(cfg.model.checkpoint).is_dir()


def test_bundled_set_is_complete():
    names = {p.stem for p in PIPELINES_DIR.glob("*.yaml")}
    assert {"flood", "flood-sar", "landcover", "brats"} <= names


def test_unknown_key_names_key_and_file(tmp_path):
    p = _write(tmp_path, {**GOOD, "postprocess": {"min_objet_size": 5}})
    with pytest.raises(ConfigError) as err:
        load_config(p)
    msg = str(err.value)
    assert str(p) in msg and "postprocess.min_objet_size" in msg and "unknown key" in msg


def test_wrong_type_names_key_and_file(tmp_path):
    p = _write(tmp_path, {**GOOD, "engine": {"batch_size": "four"}})
    with pytest.raises(ConfigError, match=r"cfg\.yaml: engine\.batch_size"):
        load_config(p)


def test_unknown_method_and_missing_checkpoint(tmp_path):
    with pytest.raises(ConfigError, match="model.method"):
        load_config(_write(tmp_path, {**GOOD, "model": {"method": "magic"}}))
    with pytest.raises(ConfigError, match="needs checkpoint"):
        load_config(_write(tmp_path, {**GOOD, "model": {"method": "checkpoint"}}))


def test_two_input_sources_rejected(tmp_path):
    bad = {**GOOD, "input": {"path": "a.tif", "folder": "case", "sequences": {"t1n": "*"}}}
    with pytest.raises(ConfigError, match="input"):
        load_config(_write(tmp_path, bad))


def test_overrides_parse_yaml_values(tmp_path):
    raw = apply_overrides(dict(GOOD), ["engine.overlap=0.5", "postprocess.fill_holes=true"], "x")
    assert raw["engine"]["overlap"] == 0.5 and raw["postprocess"]["fill_holes"] is True
    cfg = load_config(_write(tmp_path, GOOD), ["model.threshold=-0.1"])
    assert cfg.model.threshold == -0.1
    with pytest.raises(ConfigError, match="key.sub=value"):
        load_config(_write(tmp_path, GOOD), ["novalue"])


def test_relative_paths_resolve_against_config_folder(tmp_path):
    cfg = load_config(_write(tmp_path, GOOD))
    assert cfg.resolve(cfg.input.path) == tmp_path / "scene.tif"
    assert cfg.resolve("/abs/x.tif") == Path("/abs/x.tif")


def test_cli_bad_config_exits_2_with_one_line(tmp_path, capsys):
    p = _write(tmp_path, {**GOOD, "outputs": {"polygon": True}})
    rc = main(["run", str(p), "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1
    assert err.startswith("error: ") and "outputs.polygon" in err and str(p) in err
    assert not (tmp_path / "out").exists()


def test_cli_unknown_pipeline_exits_2(capsys):
    assert main(["run", "no-such-pipeline"]) == 2
    assert "bundled" in capsys.readouterr().err


def test_cli_run_succeeds_with_input_output_and_set(tmp_path, landsat_path, capsys):
    out = tmp_path / "out"
    rc = main(["run", "flood", "--input", str(landsat_path), "-o", str(out), "--quiet",
               "--set", "outputs.polygons=false", "--set", "outputs.quicklook=false"])  # fmt: skip
    assert rc == 0 and capsys.readouterr().out == ""
    assert (out / "labels.tif").exists() and (out / "run.json").exists()
    assert not (out / "polygons.gpkg").exists()
