"""The classical method registry: every method listed, options validated, class tables from
the data catalog, unknown names refused, broken plugins skipped; results against NumPy /
scikit-image."""

from __future__ import annotations

import logging
import subprocess
import sys

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS
from skimage.filters import threshold_otsu

from geomed_seg.catalog import load_card
from geomed_seg.classical import registry
from geomed_seg.classical.api import run_classical
from geomed_seg.classical.registry import ClassicalMethod, MethodOptions, get_method, methods
from geomed_seg.cli import main
from geomed_seg.core import GeoGrid, Image
from geomed_seg.errors import GeomedSegError, InvalidInputError

#: Every classical method this package ships (``geomed-seg classical METHOD``).
SHIPPED = {"ndwi", "mndwi", "ndvi", "ndbi", "otsu", "multiotsu", "sar-threshold", "t2f-otsu",
           "canny", "watershed", "kmeans", "slic", "region-grow", "grabcut", "chan-vese",
           "geodesic", "instances"}  # fmt: skip
#: Values for the options a method requires (the others have defaults).
REQUIRED = {"region-grow": {"seed": [1.0, 2.0], "tolerance": 1.0}, "grabcut": {"box": [0, 0, 1, 1]},
            "chan-vese": {"seed": [1.0, 2.0]}, "geodesic": {"seed": [1.0, 2.0, 3.0]}}  # fmt: skip


def test_registry_lists_every_method_and_the_help_shows_them(capsys):
    assert set(methods()) == SHIPPED
    assert main(["classical", "--help"]) == 0
    out = capsys.readouterr().out
    for name in SHIPPED:
        assert f"{name}:" in out, name


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_each_entrys_options_validate(name):
    m = get_method(name)
    assert m.name == name and issubclass(m.options, MethodOptions)
    opts = m.validate(**REQUIRED.get(name, {}))
    assert isinstance(opts, m.options)
    assert m.validate(opts) == opts  # an options value passes as it is
    with pytest.raises(InvalidInputError, match=rf"method '{name}' takes no option bogus"):
        m.validate(bogus=1, **REQUIRED.get(name, {}))
    for key in REQUIRED.get(name, {}):  # a missing required option names its flag
        rest = {k: v for k, v in REQUIRED[name].items() if k != key}
        with pytest.raises(InvalidInputError, match=rf"needs {key} \(--{key}\)"):
            m.validate(**rest)
    if m.classes is not None:  # class tables come from the data catalog
        assert m.class_table() == load_card(m.classes).class_infos()


def test_invalid_option_values_are_refused():
    with pytest.raises(InvalidInputError, match=r"sigma \(--sigma\).*greater than 0"):
        get_method("canny").validate(sigma=0)
    with pytest.raises(InvalidInputError, match=r"seed"):
        get_method("region-grow").validate(seed=[1.0], tolerance=1)
    # None means "not given": the default applies
    assert get_method("kmeans").validate(classes=None).classes == 3


def test_unknown_method_lists_the_known_ones(capsys, tmp_path):
    img = Image.from_array(
        np.zeros((1, 4, 4), np.float32), GeoGrid(None, Affine.identity(), (4, 4))
    )
    with pytest.raises(GeomedSegError) as err:
        run_classical("ndwj", img)
    msg = str(err.value)
    assert "unknown method 'ndwj'" in msg and "did you mean 'ndwi'" in msg
    assert all(name in msg for name in SHIPPED)


def test_cli_refuses_an_option_the_method_does_not_take(tmp_path, capsys):
    src = _raster(tmp_path, np.arange(100, dtype=np.float32).reshape(10, 10))
    out = tmp_path / "k.tif"
    assert main(["classical", "kmeans", str(src), "-o", str(out), "--sigma", "2"]) == 2
    err = capsys.readouterr().err
    assert "takes no option sigma (--sigma)" in err and "classes (--classes, default 3)" in err
    assert not out.exists()


def test_broken_plugin_is_skipped_with_a_warning(monkeypatch, caplog):
    class EP:
        def __init__(self, name, value, load):
            self.name, self.value, self.load = name, value, load

    def boom():
        raise ImportError("no module named fancy_dep")

    extra = ClassicalMethod("plugin-ok", lambda img, o: None, MethodOptions)
    eps = [EP("broken", "bad_pkg:METHOD", boom), EP("plugin-ok", "ok_pkg:METHOD", lambda: extra)]
    monkeypatch.setattr("importlib.metadata.entry_points", lambda group: eps)
    monkeypatch.setattr(registry, "_REGISTRY", {})
    monkeypatch.setattr(registry, "_LOADED", [])
    monkeypatch.delitem(sys.modules, "geomed_seg.classical.builtin")
    with caplog.at_level(logging.WARNING, logger="geomed_seg.classical.registry"):
        known = methods()
    assert "plugin-ok" in known and SHIPPED <= set(known)
    assert "'broken'" in caplog.text and "bad_pkg:METHOD" in caplog.text
    assert "fancy_dep" in caplog.text


def _raster(tmp_path, arr, name="a.tif"):
    arr = np.asarray(arr)
    arr = arr[None] if arr.ndim == 2 else arr
    path = tmp_path / name
    with rasterio.open(path, "w", driver="GTiff", width=arr.shape[2], height=arr.shape[1],
                       count=arr.shape[0], dtype=arr.dtype.name, crs=CRS.from_epsg(32633),
                       transform=Affine(10, 0, 500000, 0, -10, 4000000)) as ds:  # fmt: skip
        ds.write(arr)
    return path


def test_water_runs_share_one_class_table(tmp_path, landsat_path):
    """CLI ndwi, pipeline ndwi_otsu / sar_threshold and a model run under the flood pipelines'
    dataset card all name and colour the water classes alike (class 0 "land")."""
    from geomed_seg.pipelines import load_config
    from geomed_seg.pipelines.methods import ModelOutput, run_model
    from geomed_seg.pipelines.runner import _classes

    table = load_card("water_mask").class_infos()
    assert [(c.index, c.name) for c in table] == [(0, "land"), (1, "water")]
    out = tmp_path / "w.tif"
    names = "blue,green,red,nir,swir1,swir2"
    assert main(["classical", "ndwi", str(landsat_path), "-o", str(out), "--band-names", names,
                 "--otsu"]) == 0  # fmt: skip
    with rasterio.open(out) as ds:  # the written colour table, read by rasterio
        cmap = ds.colormap(1)
    assert [tuple(cmap[c.index][:3]) for c in table] == [c.color for c in table]
    img = Image.from_array(np.ones((6, 8, 8), np.float32), GeoGrid(None, Affine.identity(), (8, 8)),
                           attrs={"band_names": names.split(",")})  # fmt: skip
    cfg = load_config("flood", [f"input.path={landsat_path}", "model.method=ndwi_otsu",
                                "model.threshold=0.1"])  # fmt: skip
    assert run_model(img, cfg).classes == table
    sar = load_config("flood-sar", ["model.threshold=-18"])
    vv = Image.from_array(np.full((2, 8, 8), 0.01, np.float32), GeoGrid(None, Affine.identity(), (8, 8)),
                          attrs={"band_names": ["vv", "vh"]})  # fmt: skip
    assert run_model(vv, sar).classes == table
    model_run = ModelOutput(vv, [], "checkpoint:x")  # a model's classes come from the card
    assert _classes(model_run, load_card(cfg.dataset)) == table
    assert _classes(model_run, load_card(sar.dataset)) == table


def test_sar_entry_matches_numpy_db_and_skimage_otsu(tmp_path):
    rng = np.random.default_rng(3)
    db = np.concatenate([rng.normal(-22, 1.5, 1800), rng.normal(-8, 2.0, 2200)])
    lin = (10 ** (db / 10)).reshape(40, 100).astype(np.float32)
    img = Image.from_array(
        lin[None], GeoGrid(None, Affine.identity(), lin.shape), chunks=(1, 16, 32)
    )
    res = run_classical("sar-threshold", img)
    ref_db = 10 * np.log10(lin.astype(np.float64))
    t_ref = threshold_otsu(ref_db, nbins=1024)
    assert res.facts["threshold_db"] == pytest.approx(t_ref, abs=2 * np.ptp(ref_db) / 1024)
    agree = (res.image.compute()[0] == (ref_db < t_ref)).mean()
    assert agree > 0.999
    assert res.thresholding["scope"] == "scene" and res.thresholding["bimodal"]
    fixed = run_classical("sar-threshold", img, threshold=-15.0)
    assert np.array_equal(fixed.image.compute()[0], (ref_db < -15).astype(np.uint8))


def test_training_does_not_import_the_demo():
    code = ("import sys, numpy as np; from affine import Affine; "
            "from geomed_seg.core import GeoGrid, Image; "
            "from geomed_seg.train.data import weak_water_labels; "
            "a = np.stack([np.full((8, 8), 10.0), np.r_[np.full((4, 8), 80.0), np.full((4, 8), 5.0)],"
            " np.full((8, 8), 9.0), np.r_[np.full((4, 8), 5.0), np.full((4, 8), 90.0)]]); "
            "img = Image.from_array(a.astype('f4'), GeoGrid(None, Affine.identity(), (8, 8))); "
            "lab = weak_water_labels(img, {'green': 2, 'nir': 4}, min_object_px=0).compute()[0]; "
            "assert lab[:4].all() and not lab[4:].any(), lab; "
            "assert 'geomed_seg.demo' not in sys.modules")  # fmt: skip
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_cli_option_reaches_any_method_option(tmp_path, capsys):
    """``--option NAME=VALUE`` sets options without a flag of their own (Canny's hysteresis
    thresholds here, against scikit-image); unknown, doubled or malformed ones are refused."""
    from skimage.feature import canny as sk_canny

    rng = np.random.default_rng(5)
    a = np.zeros((40, 50), np.float32)
    a[10:30, 12:40] = 1.0
    a += rng.normal(0, 0.05, a.shape).astype(np.float32)
    src = _raster(tmp_path, a)
    out = tmp_path / "edges.tif"
    args = ["classical", "canny", str(src), "-o", str(out), "--sigma", "1.5"]
    assert main([*args, "--option", "low=0.02", "--option", "high=0.05"]) == 0
    with rasterio.open(out) as ds:
        ours = ds.read(1).astype(bool)
    ref = sk_canny(a, 1.5, 0.02, 0.05)
    assert ref.sum() > 50 and (ours == ref).mean() > 0.999
    assert not np.array_equal(ref, sk_canny(a, 1.5))  # the thresholds matter here
    for bad, msg in (("nope=1", "takes no option nope (--option nope=)"),
                     ("sigma=2", "sigma is given twice"), ("low", "expected NAME=VALUE"),
                     ("overwrite=true", "use --overwrite")):  # fmt: skip
        assert main([*args, "--option", bad, "-o", str(tmp_path / "x.tif")]) == 2
        assert msg in capsys.readouterr().err, bad


def test_every_pipeline_method_is_a_registry_entry():
    """``model.method``/``model.fallback`` values of the YAML schema map onto registry entries."""
    from typing import get_args

    from geomed_seg.pipelines.methods import CLASSICAL, SCENE_THRESHOLDS
    from geomed_seg.pipelines.schema import ModelSpec

    methods_ = set(get_args(ModelSpec.model_fields["method"].annotation)) - {"checkpoint"}
    fallback = get_args(ModelSpec.model_fields["fallback"].annotation)[0]
    assert methods_ == set(CLASSICAL) == set(get_args(fallback)) - {"none"}
    assert all(get_method(CLASSICAL[m]).classes for m in CLASSICAL)  # tables from the catalog
    assert set(SCENE_THRESHOLDS) == {m for m in CLASSICAL if get_method(CLASSICAL[m]).scene}
