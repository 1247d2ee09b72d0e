"""Dataset cards load, validate and fail loudly with the file name."""

from __future__ import annotations

import pytest

from geomed_seg.catalog import CATALOG_DIR, load_card
from geomed_seg.errors import ConfigError


@pytest.mark.parametrize("name", ["brats2021", "brats2023", "brats2024"])
def test_brats_cards(name):
    card = load_card(name)
    assert card.name == name
    labels = {c.index for c in card.class_infos()}
    for region, region_labels in card.region_labels().items():
        assert set(region_labels) <= labels, region
    assert card.evaluation["hd95_penalty_mm"] == 373.0


def test_load_by_path_and_errors(tmp_path):
    assert load_card(CATALOG_DIR / "brats2023.yaml").regions["ET"].labels == [3]
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nregions: {WT: {labels: []}}\ncolour: red\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*regions\.WT\.labels"):
        load_card(bad)
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_card(tmp_path / "list.yaml")
    with pytest.raises(ConfigError, match="known cards"):
        load_card("no_such_dataset")
