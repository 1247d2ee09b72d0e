"""The flood pipeline on the bundled Landsat scene against independent NumPy/scikit-image,
rasterio and pyogrio computations."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pyogrio
import pytest
import rasterio
from skimage.filters import threshold_otsu

from geomed_seg.pipelines import run_pipeline

RAW = ["postprocess.min_object_size=null"]  # compare the bare baseline


@pytest.fixture(scope="module")
def flood_run(tmp_path_factory, landsat_path):
    out = tmp_path_factory.mktemp("flood")
    sets = [f"input.path={landsat_path}", "model.method=ndwi_otsu", *RAW]
    return run_pipeline("flood", output=out, overrides=sets), out


def _ndwi(path):
    with rasterio.open(path) as ds:
        green, nir = ds.read(2).astype(np.float64), ds.read(4).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (green - nir) / (green + nir)


def test_threshold_and_water_fraction_match_skimage(flood_run, landsat_path):
    run, out = flood_run
    ndwi = _ndwi(landsat_path)
    finite = np.isfinite(ndwi)
    t_ref = threshold_otsu(ndwi[finite], nbins=1024)
    span = np.nanmax(ndwi) - np.nanmin(ndwi)
    assert abs(run.report["threshold"] - t_ref) < 2 * span / 1024
    frac_ref = float((ndwi[finite] > t_ref).mean())
    rows = {r["name"]: r for r in run.report["classes"]}
    frac = rows["water"]["samples"] / (rows["water"]["samples"] + rows["land"]["samples"])
    assert abs(frac - frac_ref) < 0.002
    assert 0.05 < frac < 0.5


def test_label_cog_has_classes_and_input_grid(flood_run, landsat_path):
    run, out = flood_run
    with rasterio.open(landsat_path) as src, rasterio.open(out / "labels.tif") as lab:
        assert lab.crs == src.crs and lab.transform.almost_equals(src.transform)
        assert lab.shape == src.shape
        cmap = lab.colormap(1)
        assert cmap[1][:3] == (30, 90, 220)
        water = int((lab.read(1) == 1).sum())
    assert water == next(r for r in run.report["classes"] if r["name"] == "water")["samples"]


def test_geopackage_crs_and_areas_match_raster(flood_run):
    run, out = flood_run
    gpkg = out / "polygons.gpkg"
    info = pyogrio.read_info(gpkg)
    with rasterio.open(out / "labels.tif") as lab:
        crs = lab.crs
        px_area = abs(lab.transform.determinant)
        water_area = float((lab.read(1) == 1).sum()) * px_area
    assert rasterio.crs.CRS.from_user_input(info["crs"]) == crs
    meta, _, geoms, fields = pyogrio.raw.read(gpkg)
    names = list(meta["fields"])
    areas = fields[names.index("area_m2")]
    classes = fields[names.index("class")]
    assert set(classes.tolist()) == {1}
    assert abs(areas.sum() - water_area) / water_area < 0.01
    import shapely

    geom_area = shapely.area(shapely.from_wkb(geoms)).sum()
    assert abs(geom_area - water_area) / water_area < 0.01


def test_report_and_provenance(flood_run, landsat_path):
    run, out = flood_run
    report = json.loads((out / "report.json").read_text())
    assert report["method"] == "ndwi_otsu" and report["threshold"] == run.report["threshold"]
    water = next(r for r in report["classes"] if r["name"] == "water")
    assert water["area_km2"] == pytest.approx(water["area_m2"] / 1e6)
    assert "km²" in (out / "report.md").read_text()
    prov = json.loads((out / "run.json").read_text())
    sha = hashlib.sha256(landsat_path.read_bytes()).hexdigest()
    assert prov["inputs"][str(landsat_path)] == sha
    assert prov["config"]["model"]["method"] == "ndwi_otsu"
    assert prov["versions"]["rasterio"] == rasterio.__version__
    png = (out / "quicklook.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_min_object_size_removes_small_water_bodies(tmp_path, landsat_path, flood_run):
    run, _ = flood_run
    sets = [f"input.path={landsat_path}", "model.method=ndwi_otsu",
            "postprocess.min_object_size=50000", "outputs.polygons=false",
            "outputs.quicklook=false"]  # fmt: skip
    small = run_pipeline("flood", output=tmp_path, overrides=sets)
    from scipy import ndimage

    with rasterio.open(tmp_path / "labels.tif") as lab:
        water = lab.read(1) == 1
        px = abs(lab.transform.determinant)
    ids, n = ndimage.label(water, structure=np.ones((3, 3)))
    sizes = ndimage.sum(water, ids, range(1, n + 1)) * px
    assert n > 0 and sizes.min() >= 50000
    before = next(r for r in run.report["classes"] if r["name"] == "water")["samples"]
    after = next(r for r in small.report["classes"] if r["name"] == "water")["samples"]
    assert after < before


def test_existing_outputs_are_not_overwritten(tmp_path, landsat_path):
    from geomed_seg.errors import OutputExistsError

    sets = [f"input.path={landsat_path}", "model.method=ndwi_otsu", "outputs.polygons=false"]
    run_pipeline("flood", output=tmp_path, overrides=sets)
    with pytest.raises(OutputExistsError):
        run_pipeline("flood", output=tmp_path, overrides=sets)
    run_pipeline("flood", output=tmp_path, overrides=sets, overwrite=True)


def test_band_stack_from_single_band_files_equals_one_file(tmp_path, landsat_path, flood_run):
    run, out = flood_run
    with rasterio.open(landsat_path) as src:
        profile = {**src.profile, "count": 1}
        files = {}
        for i, name in enumerate(["blue", "green", "red", "nir"], start=1):
            files[name] = tmp_path / f"{name}.tif"
            with rasterio.open(files[name], "w", **profile) as dst:
                dst.write(src.read(i), 1)
    cfg = {
        "name": "stack",
        "kind": "raster",
        "input": {"bands": {k: str(v) for k, v in files.items()}},
        "model": {"method": "ndwi_otsu"},
        "outputs": {"polygons": False, "quicklook": False},
    }
    stacked = run_pipeline(cfg, output=tmp_path / "out")
    assert stacked.report["threshold"] == pytest.approx(run.report["threshold"], abs=1e-9)
    with (
        rasterio.open(tmp_path / "out" / "labels.tif") as a,
        rasterio.open(out / "labels.tif") as b,
    ):
        np.testing.assert_array_equal(a.read(1), b.read(1))
