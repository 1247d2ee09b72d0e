"""STAC Items of run outputs, read back with pystac: every href resolves (also after the
folder moves), the projection fields equal what rasterio reads from the input, the
footprint equals pyproj's transform of the input's corners, and the datetime is the
input's acquisition time (product id, GDAL metadata, DICOM dates) or null with start/end."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
from pyproj import Transformer

from geomed_seg.core.grid import VoxelGrid
from geomed_seg.core.image import Image
from geomed_seg.pipelines import run_pipeline
from geomed_seg.pipelines.stac import acquisition_datetime

ROOT = Path(__file__).resolve().parents[2]
LANDSAT = ROOT / "tests" / "data" / "landsat7_olinda_L7_ETMs.tif"
#: A Landsat 7 Collection 2 product id: acquisition date 2001-10-18 (not the sample's own).
PRODUCT = "LE07_L2SP_214066_20011018_20200917_02_T1_SR.tif"


@pytest.fixture(scope="module")
def flood_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("stac")
    scene = root / "inputs" / PRODUCT
    scene.parent.mkdir()
    shutil.copy(LANDSAT, scene)
    run = run_pipeline("flood", input=scene, output=root / "out",
                       overrides=["model.method=ndwi_otsu"])  # fmt: skip
    return run, scene


def _resolves(item: pystac.Item) -> list[Path]:
    paths = [Path(a.get_absolute_href()) for a in item.assets.values()]
    paths += [Path(link.get_absolute_href()) for link in item.links if link.rel != "self"]
    missing = [p for p in paths if not p.exists()]
    assert not missing, missing
    return paths


def test_run_item_reads_back_and_every_href_resolves(flood_run, tmp_path):
    run, scene = flood_run
    path = run.outputs["STAC item"]
    raw = json.loads(path.read_text())
    assert all(a["href"].startswith("./") for a in raw["assets"].values())  # relative
    item = pystac.Item.from_file(str(path))
    resolved = _resolves(item)
    assert scene.resolve() in [p.resolve() for p in resolved]  # derived_from: the input
    assert {"labels", "polygons", "quicklook", "provenance", "qgis_style"} <= set(item.assets)
    assert set(item.assets) >= {k for k in ("report_json", "report_markdown")}
    labels = item.assets["labels"].extra_fields["classification:classes"]
    assert [(c["value"], c["name"]) for c in labels] == [(0, "land"), (1, "water")]
    moved = tmp_path / "moved"
    shutil.copytree(path.parent, moved)  # the outputs travel together: hrefs still resolve
    again = pystac.Item.from_file(str(moved / "item.json"))
    for asset in again.assets.values():
        assert Path(asset.get_absolute_href()).exists()


def test_run_item_projection_and_footprint_match_the_input(flood_run):
    run, scene = flood_run
    item = pystac.Item.from_file(str(run.outputs["STAC item"]))
    with rasterio.open(scene) as src:  # the independent reader of the input
        crs, transform, shape, bounds = src.crs, src.transform, src.shape, src.bounds
    p = item.properties
    assert p["proj:code"] == f"EPSG:{crs.to_epsg()}"
    assert p["proj:shape"] == list(shape)
    assert p["proj:transform"] == pytest.approx(list(transform)[:6])
    assert p["proj:bbox"] == pytest.approx(list(bounds))
    to_ll = Transformer.from_crs(crs.to_wkt(), "EPSG:4326", always_xy=True)
    ring = np.asarray(item.geometry["coordinates"][0])
    corners = [(bounds.left, bounds.top), (bounds.right, bounds.top),
               (bounds.right, bounds.bottom), (bounds.left, bounds.bottom)]  # fmt: skip
    for x, y in corners:
        lon, lat = to_ll.transform(x, y)
        assert np.min(np.hypot(ring[:, 0] - lon, ring[:, 1] - lat)) < 1e-9
    assert item.bbox == pytest.approx([ring[:, 0].min(), ring[:, 1].min(),
                                       ring[:, 0].max(), ring[:, 1].max()])  # fmt: skip
    assert ring[0].tolist() == ring[-1].tolist()


def test_run_item_datetime_is_the_acquisition_date(flood_run):
    item = pystac.Item.from_file(str(flood_run[0].outputs["STAC item"]))
    assert item.datetime == dt.datetime(2001, 10, 18, tzinfo=dt.UTC)
    assert "Landsat product id" in item.properties["geomed_seg:datetime_source"]


SCHEMAS = ROOT / "tests" / "data" / "stac_schemas"
PROJECTION = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"


def validate_offline(data: dict) -> None:
    """Validate an item against STAC's item schema (bundled with pystac) and the projection
    extension v2.0.0 (vendored, tests/data/stac_schemas), and its classification:classes
    against the classification extension's class object (main branch = the v2 rules: a
    machine-readable ``name``). pystac's own ``validate()`` fetches extension schemas over
    the network, which tests do not have."""
    import jsonschema
    from pystac import STACObjectType
    from pystac.validation.stac_validator import JsonSchemaSTACValidator

    validator = JsonSchemaSTACValidator()
    validator.schema_cache[PROJECTION] = json.loads(
        (SCHEMAS / "projection-v2.0.0.json").read_text()
    )
    version = data["stac_version"]
    validator.validate_core(data, STACObjectType.ITEM, version)
    if PROJECTION in data["stac_extensions"]:
        validator.validate_extension(data, STACObjectType.ITEM, version, PROJECTION)
    cls_schema = json.loads((SCHEMAS / "classification-main-a1e7139.json").read_text())
    class_object = {**cls_schema["definitions"]["class_object"], "definitions": {}}
    for asset in data["assets"].values():
        for entry in asset.get("classification:classes", []):
            jsonschema.validate(entry, class_object)


def test_run_item_validates_against_the_schemas(flood_run):
    validate_offline(json.loads(flood_run[0].outputs["STAC item"].read_text()))


def test_schema_check_fails_on_a_broken_item(flood_run):
    import jsonschema

    data = json.loads(flood_run[0].outputs["STAC item"].read_text())
    bad = {**data, "properties": {**data["properties"], "proj:shape": [352]}}
    with pytest.raises(pystac.errors.STACValidationError):
        validate_offline(bad)
    classes = [{"value": 0, "name": "open water"}]  # v2: names are machine-readable
    bad = {**data, "assets": {"labels": {**data["assets"]["labels"],
                                         "classification:classes": classes}}}  # fmt: skip
    with pytest.raises(jsonschema.ValidationError):
        validate_offline(bad)


def test_class_names_are_machine_readable_with_the_title_kept():
    from geomed_seg.core.labels import ClassInfo, stac_class

    assert stac_class(ClassInfo(3, "flooded vegetation", (1, 2, 3))) == {
        "value": 3, "name": "flooded_vegetation", "title": "flooded vegetation",
        "color_hint": "010203",
    }  # fmt: skip
    assert stac_class(ClassInfo(5, "é")) == {"value": 5, "name": "class_5", "title": "é"}


def _raster(tags: dict[str, str], name: str = "scene.tif") -> Image:
    from affine import Affine
    from rasterio.crs import CRS

    from geomed_seg.core.grid import GeoGrid

    grid = GeoGrid(CRS.from_epsg(32633), Affine(10, 0, 5e5, 0, -10, 4e6), (4, 4))
    return Image.from_array(np.zeros((1, 4, 4)), grid, attrs={"tags": tags, "source": name})


@pytest.mark.parametrize(
    ("tags", "name", "expected", "source"),
    [
        ({"DATE_ACQUIRED": "2020-05-03", "SCENE_CENTER_TIME": '"13:01:26.1234567Z"'}, "x.tif",
         dt.datetime(2020, 5, 3, 13, 1, 26, 123456, tzinfo=dt.UTC), "DATE_ACQUIRED"),
        ({"PRODUCT_START_TIME": "2021-07-01T10:30:31.024Z"}, "x.tif",
         dt.datetime(2021, 7, 1, 10, 30, 31, 24000, tzinfo=dt.UTC), "PRODUCT_START_TIME"),
        ({}, "S2B_MSIL2A_20220612T101559_N0400_R065_T32TQM_20220612T133433.tif",
         dt.datetime(2022, 6, 12, 10, 15, 59, tzinfo=dt.UTC), "Sentinel-2 product name"),
        ({"TIFFTAG_DATETIME": "2019:02:03 04:05:06"}, "x.tif",
         dt.datetime(2019, 2, 3, 4, 5, 6, tzinfo=dt.UTC), "creation time"),
        ({}, "x.tif", None, "no acquisition time"),
    ],
)  # fmt: skip
def test_acquisition_datetime_sources(tags, name, expected, source):
    when, said = acquisition_datetime(_raster(tags, name))
    assert when == expected and source in said


def test_dicom_dates_with_and_without_timezone():
    grid = VoxelGrid(np.eye(4), (2, 2, 2))
    meta = {"study_date": "20240101", "study_time": "120000", "series_date": "20240101",
            "series_time": "121530.25", "timezone_offset": "-0500"}  # fmt: skip
    img = Image.from_array(np.zeros((1, 2, 2, 2)), grid, attrs={"dicom": meta})
    when, said = acquisition_datetime(img)
    assert when == dt.datetime(2024, 1, 1, 17, 15, 30, tzinfo=dt.UTC)
    assert "SeriesDate" in said and "-0500" in said
    del meta["timezone_offset"], meta["series_date"]
    when, said = acquisition_datetime(Image.from_array(np.zeros((1, 2, 2, 2)), grid,
                                                       attrs={"dicom": meta}))  # fmt: skip
    assert when == dt.datetime(2024, 1, 1, 12, tzinfo=dt.UTC) and "written as UTC" in said


def test_volume_run_item_from_dicom_series(tmp_path):
    from tests.pipelines.test_brats_case import _dicom_case, dicom_case_config

    folder, _ = _dicom_case(tmp_path / "case")
    run = run_pipeline(dicom_case_config(folder), output=tmp_path / "out")
    item = pystac.Item.from_file(str(run.outputs["STAC item"]))
    _resolves(item)
    assert item.geometry is None and item.bbox is None  # patient space is not on the Earth
    assert not any(k.startswith("proj:") for k in item.properties)
    assert {"itk_snap_labels", "slicer_colour_table", "dicom_seg"} <= set(item.assets)
    # make_series writes StudyDate 20240101 / StudyTime 120000, no timezone offset
    assert item.datetime == dt.datetime(2024, 1, 1, 12, tzinfo=dt.UTC)
