"""Metadata that carries meaning survives ``convert`` (GeoTIFF -> COG, via Zarr too): palette
and category names, per-band scale/offset, units, descriptions; derived label rasters do not
inherit their input's; a card's ``apply_scale_offset`` feeds the model physical values.

Independent reference: rasterio/GDAL reading inputs and outputs (``colormap``, ``scales``,
``offsets``, ``units``, ``descriptions``; category names from the PAM sidecar GDAL finds).
"""

from __future__ import annotations

from pathlib import Path
from xml.etree import ElementTree as ET

import numpy as np
import pytest
import rasterio
import rasterio.shutil

import geomed_seg as gs
from geomed_seg.io.convert import convert_image
from tests.io.conftest import NORTH_UP, UTM33

SCALES, OFFSETS = (0.0001, 0.01, 1.0), (-0.1, 1000.0, 0.0)
UNITS, DESCRIPTIONS = ("reflectance", "K", ""), ("red", "thermal", "")


def _category_names(path: Path) -> list[str]:
    with rasterio.open(path) as ds:  # the sidecar GDAL itself found
        aux = next(f for f in ds.files if f.endswith(".aux.xml"))
    band = ET.parse(aux).getroot().find("PAMRasterBand[@band='1']")
    return [c.text or "" for c in band.find("CategoryNames").findall("Category")]


@pytest.fixture
def palette_tif(tmp_path) -> Path:
    """A uint8 land-cover raster: 256-entry colour table, 3 named categories (GDAL-written)."""
    labels = (np.indices((60, 70)).sum(0) % 9).astype(np.uint8)
    plain = tmp_path / "plain.tif"
    with rasterio.open(plain, "w", driver="GTiff", width=70, height=60, count=1, dtype="uint8",
                       crs=UTM33, transform=NORTH_UP) as ds:  # fmt: skip
        ds.write(labels, 1)
        cmap = {i: (i * 20 % 256, 255 - i * 9, (i * 77) % 256, 255) for i in range(256)}
        ds.write_colormap(1, cmap)
    rasterio.shutil.copy(plain, tmp_path / "plain.vrt", driver="VRT")
    xml = (tmp_path / "plain.vrt").read_text()
    cats = ("<CategoryNames><Category></Category><Category>water</Category>"
            "<Category>forest</Category><Category>urban</Category></CategoryNames>")  # fmt: skip
    (tmp_path / "named.vrt").write_text(xml.replace("<ColorTable>", cats + "<ColorTable>", 1))
    out = tmp_path / "landcover.tif"
    rasterio.shutil.copy(tmp_path / "named.vrt", out, driver="GTiff")  # GDAL writes .aux.xml
    return out


@pytest.mark.parametrize("via_zarr", [False, True])
def test_palette_and_category_names_survive_convert(palette_tif, tmp_path, via_zarr):
    out = tmp_path / "out.tif"
    if via_zarr:
        convert_image(palette_tif, tmp_path / "mid.zarr")
        convert_image(tmp_path / "mid.zarr", out)
    else:
        convert_image(palette_tif, out)
    with rasterio.open(palette_tif) as src, rasterio.open(out) as dst:
        assert dst.colormap(1) == src.colormap(1)  # every entry, named or not
        np.testing.assert_array_equal(dst.read(), src.read())
    assert _category_names(out) == _category_names(palette_tif) == ["", "water", "forest", "urban"]


@pytest.fixture
def scaled_tif(tmp_path) -> Path:
    """3 uint16 bands with per-band scale/offset (0.0001/-0.1 reflectance style), units, names."""
    data = (np.indices((3, 50, 64)).sum(0) * 37 % 20000 + 1).astype(np.uint16)
    path = tmp_path / "scaled.tif"
    with rasterio.open(path, "w", driver="GTiff", width=64, height=50, count=3, dtype="uint16",
                       crs=UTM33, transform=NORTH_UP, nodata=0) as ds:  # fmt: skip
        ds.write(data)
        ds.scales, ds.offsets, ds.units = SCALES, OFFSETS, UNITS
        for i, d in enumerate(DESCRIPTIONS, start=1):
            if d:
                ds.set_band_description(i, d)
    return path


@pytest.mark.parametrize("via_zarr", [False, True])
def test_scale_offset_units_descriptions_survive_convert(scaled_tif, tmp_path, via_zarr):
    out = tmp_path / "out.tif"
    if via_zarr:
        convert_image(scaled_tif, tmp_path / "mid.zarr")
        convert_image(tmp_path / "mid.zarr", out)
    else:
        convert_image(scaled_tif, out)
    with rasterio.open(scaled_tif) as src, rasterio.open(out) as dst:
        assert dst.scales == src.scales == SCALES
        assert dst.offsets == src.offsets == OFFSETS
        assert dst.units == src.units
        assert dst.descriptions == src.descriptions
        assert dst.nodata == src.nodata == 0
        np.testing.assert_array_equal(dst.read(), src.read())  # raw pixels kept
        # so the physical values GDAL users compute are unchanged
        phys = lambda ds: ds.read(1).astype(float) * ds.scales[0] + ds.offsets[0]  # noqa: E731
        np.testing.assert_allclose(phys(dst), phys(src))


def test_window_and_band_subset_keep_their_own_metadata(scaled_tif, tmp_path):
    img = gs.open_image(scaled_tif)
    sub = img.sel_window((slice(5, 40), slice(10, 50)))
    sub = type(img)(sub.data.isel(band=[2, 0]), sub.grid, sub.nodata, sub.mask, sub.attrs)
    gs.write_image(sub, tmp_path / "sub.tif")
    with rasterio.open(tmp_path / "sub.tif") as ds:
        assert ds.scales == (SCALES[2], SCALES[0]) and ds.offsets == (OFFSETS[2], OFFSETS[0])
        assert ds.units == ("", "reflectance") or ds.units == (None, "reflectance")


def test_labels_of_a_scaled_palette_input_do_not_inherit(landsat_path, tmp_path):
    from geomed_seg.pipelines.runner import run_pipeline

    src = tmp_path / "scaled_landsat.tif"
    with rasterio.open(landsat_path) as ds:
        prof, data = ds.profile.copy(), ds.read()
    with rasterio.open(src, "w", **prof) as ds:
        ds.write(data)
        ds.scales, ds.offsets = (0.0001,) * 6, (-0.1,) * 6
        ds.units = ("reflectance",) * 6
    run_pipeline("flood", input=src, output=tmp_path / "out",
                 overrides=["outputs.quicklook=false", "outputs.polygons=false"])  # fmt: skip
    with rasterio.open(tmp_path / "out" / "labels.tif") as lab:
        assert lab.scales == (1.0,) and lab.offsets == (0.0,)
        assert lab.units in ((None,), ("",))
        assert lab.colormap(1)[1] == (30, 90, 220, 255)  # the card's water colour


def _model(tmp_path, apply: bool):
    torch = pytest.importorskip("torch")
    from geomed_seg.models import ModelCard, build_model, save_checkpoint

    card = ModelCard(
        name="tiny", architecture="smp.Unet", spatial_dims=2, in_channels=3,
        architecture_kwargs={"encoder_name": "resnet18", "encoder_depth": 3,
                             "decoder_channels": [16, 8, 8]},
        normalisation={"type": "meanstd", "mean": [0.1, 1100.0, 50.0], "std": [0.05, 30.0, 20.0],
                       "apply_scale_offset": apply},
        classes=[{"index": 0, "name": "a"}, {"index": 1, "name": "b"}],
        roi_size=[32, 32],
    )  # fmt: skip
    torch.manual_seed(0)
    model = build_model(card.architecture, 3, 2, **card.architecture_kwargs)
    path = tmp_path / f"m{int(apply)}.safetensors"
    save_checkpoint(model.eval(), card, path, overwrite=True)
    return path


def test_card_apply_scale_offset_feeds_physical_values(scaled_tif, tmp_path):
    """Probabilities on the raw file with apply_scale_offset == on rasterio's physical values."""
    from geomed_seg.inference.segment import segment
    from geomed_seg.models.checkpoint import load_checkpoint

    with rasterio.open(scaled_tif) as ds:  # the reference physical image, by rasterio
        raw = ds.read().astype(np.float64)
        phys = raw * np.array(ds.scales)[:, None, None] + np.array(ds.offsets)[:, None, None]
        phys = np.where(raw == ds.nodata, np.nan, phys).astype(np.float32)
        prof = ds.profile | {"dtype": "float32", "nodata": float("nan")}
    with rasterio.open(tmp_path / "phys.tif", "w", **prof) as ds:
        ds.write(phys)
    applied = segment(gs.open_image(scaled_tif), load_checkpoint(_model(tmp_path, True)),
                      output="probabilities", device="cpu")  # fmt: skip
    ref = segment(gs.open_image(tmp_path / "phys.tif"), load_checkpoint(_model(tmp_path, False)),
                  output="probabilities", device="cpu")  # fmt: skip
    # float32 physical values (offset 1000) round differently from rasterio's float64 ones
    np.testing.assert_allclose(applied.image.compute(), ref.image.compute(), atol=1e-4)
    raw_run = segment(gs.open_image(scaled_tif), load_checkpoint(_model(tmp_path, False)),
                      output="probabilities", device="cpu")  # fmt: skip
    assert np.abs(raw_run.image.compute() - ref.image.compute()).max() > 1e-2  # default: raw values


@pytest.fixture
def bgra_tif(tmp_path) -> Path:
    """A uint16 BGRA raster (band order blue, green, red, alpha), like rasterio's RGBA.uint16."""
    from rasterio.enums import ColorInterp as CI

    data = (np.indices((4, 40, 50)).sum(0) * 997 % 60000).astype(np.uint16)
    data[3] = 0
    data[3, 5:30, 10:45] = 65535  # alpha: opaque inside, transparent around
    path = tmp_path / "bgra.tif"
    with rasterio.open(path, "w", driver="GTiff", width=50, height=40, count=4, dtype="uint16",
                       crs=UTM33, transform=NORTH_UP, photometric="MINISBLACK",
                       alpha="UNSPECIFIED") as ds:  # fmt: skip
        ds.write(data)
        ds.colorinterp = [CI.blue, CI.green, CI.red, CI.alpha]
    return path


@pytest.mark.parametrize("via_zarr", [False, True])
def test_colour_interpretation_and_alpha_survive_convert(bgra_tif, tmp_path, via_zarr):
    out = tmp_path / "out.tif"
    if via_zarr:
        convert_image(bgra_tif, tmp_path / "mid.zarr")
        convert_image(tmp_path / "mid.zarr", out)
    else:
        convert_image(bgra_tif, out)
    with rasterio.open(bgra_tif) as src, rasterio.open(out) as dst:
        assert [c.name for c in src.colorinterp] == ["blue", "green", "red", "alpha"]
        assert dst.colorinterp == src.colorinterp  # which band is red, which is alpha
        np.testing.assert_array_equal(dst.read(), src.read())
        np.testing.assert_array_equal(dst.dataset_mask() > 0, src.dataset_mask() > 0)
    img = gs.open_image(bgra_tif)
    sub = type(img)(img.data.isel(band=[2, 0]), img.grid, img.nodata, img.mask, img.attrs)
    gs.write_image(sub, tmp_path / "sub.tif")
    with rasterio.open(tmp_path / "sub.tif") as ds:  # band subsets keep theirs, in step
        assert [c.name for c in ds.colorinterp] == ["red", "blue"]
