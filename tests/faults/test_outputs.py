"""Output-path faults: conflicts refused before any work, nothing half-written, no clobbering.

"Before any work" is checked by the folder listing: a refused command leaves no new file.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import rasterio

from tests.faults.conftest import assert_one_line_error, leftovers, snapshot

WATER_UNET = "checkpoints/water_unet"


def test_convert_zarr_under_a_regular_file(cli, hostile, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("keep")
    res = cli("convert", hostile / "scene.tif", blocker / "out.zarr")
    assert_one_line_error(res, match="is a file, not a folder")
    assert blocker.read_text() == "keep" and leftovers(tmp_path) == []


def test_run_output_under_a_regular_file(cli, hostile, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("keep")
    res = cli("run", "flood", "--input", hostile / "scene.tif", "-o", blocker / "sub")
    assert_one_line_error(res, match="is a file, not a folder")
    assert blocker.read_text() == "keep"


def test_run_output_is_an_existing_file(cli, hostile, tmp_path):
    target = tmp_path / "results.txt"
    target.write_text("keep")
    for extra in ((), ("--overwrite",)):
        res = cli("run", "flood", "--input", hostile / "scene.tif", "-o", target, *extra)
        assert_one_line_error(res, match="is a file")
    assert target.read_text() == "keep" and sorted(os.listdir(tmp_path)) == ["results.txt"]


def test_demo_output_is_a_file(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "README.md").write_text("# mine")
    res = cli("demo", "-o", "README.md")
    assert_one_line_error(res, match="README.md")
    assert (tmp_path / "README.md").read_text() == "# mine"
    assert sorted(os.listdir(tmp_path)) == ["README.md"]


def test_segment_output_is_the_input_even_with_overwrite(cli, hostile, tmp_path):
    src = tmp_path / "a.tif"
    src.write_bytes((hostile / "scene.tif").read_bytes())
    link = tmp_path / "link.tif"
    link.symlink_to(src)
    before = snapshot(tmp_path)
    for inp, out in ((src, src), (link, src), (src, link)):
        res = cli("segment", inp, "-m", WATER_UNET, "-o", out, "--overwrite")
        assert_one_line_error(res, match="is the input")
    assert snapshot(tmp_path) == before


def test_convert_output_is_the_input_through_a_link(cli, hostile, tmp_path):
    src = tmp_path / "a.tif"
    src.write_bytes((hostile / "scene.tif").read_bytes())
    (tmp_path / "b.tif").symlink_to(src)
    before = snapshot(tmp_path)
    res = cli("convert", tmp_path / "b.tif", src, "--overwrite")
    assert_one_line_error(res, match="is the input")
    assert snapshot(tmp_path) == before


def test_run_refuses_before_writing_anything(cli, hostile, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "polygons.gpkg").write_text("user's polygons")
    res = cli("run", "flood", "--input", hostile / "scene.tif", "-o", out)
    assert_one_line_error(res, match="polygons.gpkg")
    assert sorted(os.listdir(out)) == ["polygons.gpkg"]  # no labels.tif, no stage
    assert (out / "polygons.gpkg").read_text() == "user's polygons"


def test_instances_table_conflict_writes_no_instances(cli, hostile, tmp_path):
    labels = tmp_path / "water.tif"
    assert cli("classical", "ndwi", hostile / "scene.tif", "-o", labels, "--band-names",
               ",".join(["blue", "green", "red", "nir", "swir1", "swir2"])).code == 0  # fmt: skip
    (tmp_path / "t.csv").write_text("mine")
    before = snapshot(tmp_path)
    res = cli("classical", "instances", labels, "-o", tmp_path / "inst.tif",
              "--table", tmp_path / "t.csv")  # fmt: skip
    assert_one_line_error(res, match="t.csv")
    assert snapshot(tmp_path) == before


def test_engine_values_one_rule_on_cli_and_yaml(cli, hostile, tmp_path):
    run = cli("run", "flood", "--input", hostile / "scene.tif", "-o", tmp_path / "o",
              "--set", "engine.roi_size=[0,0]")  # fmt: skip
    assert_one_line_error(run, match="roi_size")
    seg = cli("segment", hostile / "scene.tif", "-m", WATER_UNET, "-o", tmp_path / "s.tif",
              "--roi", "0,0")  # fmt: skip
    assert_one_line_error(seg, match="--roi")
    for opt, val, word in (("--overlap", "1.0", "--overlap"), ("--batch-size", "0", "--batch")):
        seg = cli("segment", hostile / "scene.tif", "-m", WATER_UNET, "-o", tmp_path / "s.tif",
                  opt, val)  # fmt: skip
        assert_one_line_error(seg, match=word)
    for key, val in (("engine.overlap", "1.0"), ("engine.batch_size", "0")):
        run = cli("run", "flood", "--input", hostile / "scene.tif", "-o", tmp_path / "o",
                  "--set", f"{key}={val}")  # fmt: skip
        assert_one_line_error(run, match=key.split(".")[1])
    assert list(tmp_path.iterdir()) == []


def test_engine_spec_is_the_rule(tmp_path):
    from geomed_seg.errors import ConfigError
    from geomed_seg.pipelines.schema import engine_spec

    assert engine_spec(roi_size=(64, 64), overlap=0.5, batch_size=1).roi_size == [64, 64]
    for bad in ({"roi_size": (0, 64)}, {"roi_size": ()}, {"overlap": -0.1}, {"overlap": 1},
                {"batch_size": 0}):  # fmt: skip
        with pytest.raises(ConfigError):
            engine_spec(**bad)


def _category_names(path):
    root = ET.parse(f"{path}.aux.xml").getroot()
    return [c.text or "" for c in root.iter("Category")]


def test_cog_and_sidecar_commit_together(hostile, tmp_path):
    from geomed_seg.io.registry import open_image, write_image

    img = open_image(hostile / "scene.tif").sel_window((slice(0, 32), slice(0, 32)))
    from geomed_seg.core.image import Image

    lab = Image.from_array((img.darray[:1] > 90).astype(np.uint8), img.grid)
    out = tmp_path / "labels.tif"
    write_image(lab, out, classes="0:land,1:water")
    assert _category_names(out) == ["land", "water"]
    write_image(lab, out, classes="0:ground,1:lake", overwrite=True)
    assert _category_names(out) == ["ground", "lake"]
    with rasterio.open(out) as ds:  # GDAL reads the new names from the committed sidecar
        assert ds.descriptions is not None
    write_image(lab, out, overwrite=True)  # no classes: the stale sidecar must go
    assert not (tmp_path / "labels.tif.aux.xml").exists()
    assert sorted(os.listdir(tmp_path)) == ["labels.tif"]


def test_cog_sidecar_failure_keeps_old_pair(hostile, tmp_path, monkeypatch):
    from geomed_seg.core.image import Image
    from geomed_seg.errors import WriteError
    from geomed_seg.io.registry import open_image, write_image

    img = open_image(hostile / "scene.tif").sel_window((slice(0, 32), slice(0, 32)))
    lab = Image.from_array((img.darray[:1] > 90).astype(np.uint8), img.grid)
    out = tmp_path / "labels.tif"
    write_image(lab, out, classes="0:land,1:water")
    before = snapshot(tmp_path)
    monkeypatch.setenv("GEOMED_SEG_FAULTS", "commit:labels.tif:errno=ENOSPC")
    from geomed_seg.io import faults

    faults._rules.cache_clear()
    try:
        with pytest.raises(WriteError, match="no space left"):
            write_image(lab, out, classes="0:ground,1:lake", overwrite=True)
    finally:
        monkeypatch.delenv("GEOMED_SEG_FAULTS")
        faults._rules.cache_clear()
    assert snapshot(tmp_path) == before


def test_transaction_commits_all_or_nothing(tmp_path, monkeypatch):
    from geomed_seg.io.atomic import atomic_output
    from geomed_seg.io.transaction import OutputTransaction

    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with OutputTransaction(folders=[out]):
            for name in ("a.txt", "run.json"):
                with atomic_output(out / name) as tmp:
                    tmp.write_text(name)
            assert sorted(os.listdir(out))[0].startswith(".geomed-stage-")
            raise RuntimeError("failure after every output was staged")
    assert not out.exists()  # the folder it created is gone too
    order = []
    real = os.replace

    def spy(a, b):
        order.append(os.path.basename(b))
        return real(a, b)

    with OutputTransaction(folders=[out]):
        for name in ("run.json", "a.txt", "b.txt"):
            with atomic_output(out / name) as tmp:
                tmp.write_text(name)
        monkeypatch.setattr(os, "replace", spy)
    monkeypatch.setattr(os, "replace", real)
    assert order[-1] == "run.json"  # the manifest commits last
    assert sorted(os.listdir(out)) == ["a.txt", "b.txt", "run.json"]


def test_overwrite_never_mixes_two_runs(cli, hostile, tmp_path):
    out = tmp_path / "out"
    assert cli("run", "flood", "--input", hostile / "scene.tif", "-o", out, "-q").code == 0
    assert (out / "polygons.gpkg").exists()
    res = cli("run", "flood", "--input", hostile / "scene.tif", "-o", out, "-q", "--overwrite",
              "--set", "outputs.polygons=false")  # fmt: skip
    assert res.code == 0, res.stderr
    assert not (out / "polygons.gpkg").exists()  # the old set's polygons are not the new set's
    assert sorted(p.name for p in out.iterdir()) == [
        "item.json", "labels.qml", "labels.tif", "labels.tif.aux.xml", "quicklook.png",
        "report.html", "report.json", "report.md", "run.json",
    ]  # fmt: skip


def test_evaluate_refuses_a_taken_plot_before_writing_the_report(cli, tmp_path):
    from tests.faults import corpus

    lab = (corpus.scene(32, 32)[:1] > 90).astype(np.uint8)
    pred = corpus.write_tif(tmp_path / "pred.tif", lab)
    ref = corpus.write_tif(tmp_path / "ref.tif", lab[:, ::-1].copy())
    (tmp_path / "cm.png").write_bytes(b"mine")
    before = snapshot(tmp_path)
    res = cli("evaluate", pred, ref, "-o", tmp_path / "scores.csv", "--plot", tmp_path / "cm.png")
    assert_one_line_error(res, match="cm.png")
    assert snapshot(tmp_path) == before  # no scores.csv either
    (tmp_path / "link.png").symlink_to(ref)  # a plot that would overwrite the reference
    before = snapshot(tmp_path)
    res = cli("evaluate", pred, ref, "--plot", tmp_path / "link.png", "--overwrite")
    assert_one_line_error(res, match="is the input")
    assert snapshot(tmp_path) == before
