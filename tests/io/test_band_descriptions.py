"""Band descriptions come from the input or a sensor card, never invented (``band_1..N``).

Read back with rasterio (GDAL's band descriptions), the independent reader.
"""

from __future__ import annotations

import numpy as np
import pytest
import rasterio

from geomed_seg.errors import ConfigError
from geomed_seg.io.convert import convert_image
from geomed_seg.io.geotiff import open_geotiff, write_geotiff
from geomed_seg.pipelines.cards import with_sensor_bands
from tests.io.conftest import ramp


def _descriptions(path) -> tuple:
    with rasterio.open(path) as src:
        return src.descriptions


def test_convert_invents_no_band_names(make_tif, tmp_path) -> None:
    src = make_tif("six.tif", ramp(6, 20, 30))
    out = convert_image(src, tmp_path / "six_cog.tif")
    assert _descriptions(out) == (None,) * 6


def test_convert_keeps_the_input_descriptions(make_tif, tmp_path) -> None:
    src = make_tif("named.tif", ramp(3, 20, 30))
    with rasterio.open(src, "r+") as dst:
        dst.set_band_description(1, "VV")
        dst.set_band_description(3, "band_1")  # a real description, even if it looks invented
    out = convert_image(src, tmp_path / "named_cog.tif")
    assert _descriptions(out) == ("VV", None, "band_1")


def test_sensor_card_names_the_bands(make_tif, tmp_path) -> None:
    img = open_geotiff(make_tif("etm.tif", ramp(6, 20, 30)))
    named = with_sensor_bands(img, "landsat7_etm", ["B1", "green", "red", "nir", "swir1", "B7"])
    out = write_geotiff(named, tmp_path / "etm_cog.tif")
    assert _descriptions(out) == ("blue", "green", "red", "nir", "swir1", "swir2")
    back = open_geotiff(out)
    assert list(back.channel_names) == ["blue", "green", "red", "nir", "swir1", "swir2"]
    np.testing.assert_array_equal(np.asarray(back.darray), np.asarray(img.darray))
    with pytest.raises(ConfigError, match="no band 'thermal'"):
        with_sensor_bands(img, "landsat7_etm", ["blue"] * 5 + ["thermal"])
    with pytest.raises(ConfigError, match="5 band names for 6 bands"):
        with_sensor_bands(img, "landsat7_etm", ["blue"] * 5)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("LC08_L2SP_217065_20200101_20200113_02_T1_SR_B5.TIF", "nir"),  # OLI B5
        ("LC09_L1TP_217065_20220101_20220102_02_T1_B10.TIF", "lwir11"),
        ("LE07_L2SP_214066_20011018_20200917_02_T1_SR_B4.TIF", "nir"),  # ETM+ B4
        ("LE07_L1TP_214066_20011018_20200917_02_T1_B6_VCID_1.TIF", "lwir"),
        ("T32TQM_20220612T101559_B8A_20m.tif", "nir08"),
        ("T32TQM_20220612T101559_B04_10m.tif", "red"),
        ("S2B_MSIL2A_20220612T101559_N0400_R065_T32TQM_B11.tif", "swir1"),
        ("LT05_L2SP_214066_19950101_20200917_02_T1_SR_B4.TIF", None),  # no TM card
        ("T32TQM_20220612T101559_B10.tif", None),  # L1C naming: not the L2A card
        ("T32TQM_20220612T101559_SCL_20m.tif", None),
        ("my_scene_B4.tif", None),
    ],
)  # fmt: skip
def test_convert_names_a_band_file_from_its_sensor_card(make_tif, tmp_path, name, expected):
    src = make_tif(name, ramp(1, 20, 30))
    out = convert_image(src, tmp_path / "out.tif")
    assert _descriptions(out) == (expected,)


def test_a_stack_with_a_product_name_is_not_guessed(make_tif, tmp_path):
    src = make_tif("LC08_L2SP_217065_20200101_20200113_02_T1_SR_B5.TIF", ramp(2, 20, 30))
    assert _descriptions(convert_image(src, tmp_path / "out.tif")) == (None, None)
