"""Data catalog cards: every bundled card validates; `geomed-seg catalog` lists and shows them."""

from __future__ import annotations

import pytest
import yaml

from geomed_seg.catalog import CATALOG_DIR, DatasetCard
from geomed_seg.cli import main
from geomed_seg.errors import ConfigError
from geomed_seg.pipelines.cards import SensorCard, list_cards, load_any_card, load_sensor_card

NEW = ["landsat7_etm", "landsat89_oli", "sentinel2_l2a", "sentinel1_grd", "sen1floods11",
       "esa_worldcover", "landcoverai", "msd_task01"]  # fmt: skip


def test_every_card_validates_and_has_a_licence():
    cards = {c.name: c for c in list_cards()}
    assert set(NEW) <= set(cards)
    for name in NEW:
        card = cards[name]
        assert card.license and card.url, name
        path = CATALOG_DIR / f"{name}.yaml"
        assert yaml.safe_load(path.read_text())["name"] == name


def test_sensor_bands_by_common_name():
    oli = load_sensor_card("landsat89_oli")
    assert oli.band("nir").name == "B5" and oli.band("B6").common_name == "swir1"
    etm = load_sensor_card("landsat7_etm")
    assert etm.band("nir").name == "B4" and etm.band("swir2").name == "B7"
    s2 = load_sensor_card("sentinel2_l2a")
    assert s2.band("nir").name == "B08" and s2.band("red").wavelength_um[0] < 0.665
    with pytest.raises(ConfigError, match="no band 'thermal'"):
        s2.band("thermal")
    for card in (oli, etm, s2):  # wavelengths are (min, max) in micrometres
        assert all(0.3 < b.wavelength_um[0] <= b.wavelength_um[1] < 15 for b in card.bands)


def test_dataset_cards_classes():
    wc = load_any_card("esa_worldcover")
    assert isinstance(wc, DatasetCard) and wc.nodata == 0
    assert [c.index for c in wc.classes] == [10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 100]
    assert len({tuple(c.color) for c in wc.classes}) == 11
    s1f = load_any_card("sen1floods11")
    # class 0 was "not water" (the dataset's own word) while every classical water mask
    # called it "land": one water table now (issue 16), class 0 is "land" everywhere
    assert s1f.nodata == -1 and [c.name for c in s1f.classes] == ["land", "water"]
    assert s1f.class_infos() == load_any_card("water_mask").class_infos()
    assert isinstance(load_any_card("sentinel1_grd"), SensorCard)


def test_bad_sensor_card_names_the_key(tmp_path):
    raw = yaml.safe_load((CATALOG_DIR / "landsat7_etm.yaml").read_text())
    raw["bands"][0]["wavelenght_um"] = raw["bands"][0].pop("wavelength_um")
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"bad\.yaml: bands\.0\.wavelength_um"):
        load_sensor_card(path)


def test_cli_lists_and_shows(capsys):
    assert main(["catalog"]) == 0
    out = capsys.readouterr().out
    for name in ("landsat89_oli", "sen1floods11", "brats2023"):
        assert name in out
    assert main(["catalog", "esa_worldcover"]) == 0
    assert "Mangroves" in capsys.readouterr().out
    assert main(["catalog", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and len(err.strip().splitlines()) == 1
