"""Relative paths: in a config file they mean "beside the file"; in --set, "from the cwd"."""

from __future__ import annotations

import shutil

from geomed_seg.pipelines.schema import load_config


def test_config_paths_anchor_to_file_and_overrides_to_cwd(tmp_path, monkeypatch, landsat_path):
    cfg_dir = tmp_path / "configs"
    cfg_dir.mkdir()
    shutil.copy(landsat_path, cfg_dir / "scene.tif")
    (cfg_dir / "p.yaml").write_text(
        "name: t\nkind: raster\ninput:\n  path: scene.tif\nmodel:\n  method: ndwi_otsu\n"
    )
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    cfg = load_config(cfg_dir / "p.yaml", overrides=["evaluation.reference=ref/labels.tif"])
    assert cfg.resolve(cfg.input.path) == cfg_dir / "scene.tif"
    assert cfg.resolve(cfg.evaluation.reference) == work / "ref" / "labels.tif"
