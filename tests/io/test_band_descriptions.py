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
