"""Sensor cards and the catalog listing (dataset cards live in :mod:`geomed_seg.catalog`).

A sensor card (``kind: sensor`` in ``data_catalog/<name>.yaml``) lists a sensor's bands with
their USGS/ESA names, common names (``blue``, ``nir``, ``vv`` ... as in STAC's ``eo``
extension), wavelengths in micrometres and the DN -> physical-value ``scale``/``offset``.
Pipelines use it to pick bands by name and to rescale digital numbers.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from geomed_seg.catalog import CATALOG_DIR, DatasetCard, card_path, load_card
from geomed_seg.errors import ConfigError, validation_problems


class Band(BaseModel):
    """One band of a sensor."""

    model_config = ConfigDict(extra="forbid")
    name: str
    common_name: str
    wavelength_um: list[float] = Field(min_length=2, max_length=2)
    resolution_m: float | None = None
    scale: float | None = None
    offset: float | None = None
    description: str = ""


class SensorCard(BaseModel):
    """A validated sensor card."""

    model_config = ConfigDict(extra="forbid")
    name: str
    kind: str = "sensor"
    title: str = ""
    platform: str = ""
    resolution_m: float | None = None
    description: str = ""
    license: str
    url: str = ""
    units: str = ""
    nodata: float | None = None
    bands: list[Band] = Field(min_length=1)

    def band(self, name: str) -> Band:
        """Return the band whose ``name`` or ``common_name`` is ``name`` (case-insensitive)."""
        key = name.lower()
        for b in self.bands:
            if key in (b.name.lower(), b.common_name.lower()):
                return b
        known = ", ".join(f"{b.name}/{b.common_name}" for b in self.bands)
        raise ConfigError(f"sensor card {self.name}: no band {name!r}; bands: {known}")


def with_sensor_bands(image: Any, card: SensorCard | str, bands: Sequence[str]) -> Any:
    """Return ``image`` whose bands are described by a sensor card: ``bands[i]`` names band i.

    ``bands`` are the card's band names or common names in file order (what the input's
    provenance says, e.g. a notice "ETM+ bands 1,2,3,4,5,7"); each becomes the band's
    common name (``blue``, ``nir``...) as its ``description`` coordinate, so writers store
    it and pipelines find the band by name. Raises :class:`ConfigError` for a band the card
    lacks or a count that differs from the image's bands.
    """
    from dataclasses import replace

    sensor = card if isinstance(card, SensorCard) else load_sensor_card(card)
    if len(bands) != image.n_channels:
        raise ConfigError(f"{image.attrs.get('source', 'input')}: {len(bands)} band names for "
                          f"{image.n_channels} bands (sensor card {sensor.name})")  # fmt: skip
    names = [sensor.band(b).common_name for b in bands]
    data = image.data.assign_coords(
        {image.channel_dim: names, "description": (image.channel_dim, names)}
    )
    return replace(image, data=data,
                   attrs={**image.attrs, "band_names": names, "sensor": sensor.name})  # fmt: skip


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({exc})") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a card must be a mapping, got {type(raw).__name__}")
    return raw


def load_sensor_card(name_or_path: str | os.PathLike) -> SensorCard:
    """Load and validate a sensor card by name (``"landsat7_etm"``) or path."""
    path = card_path(name_or_path)
    raw = _read_yaml(path)
    if raw.get("kind") != "sensor":
        raise ConfigError(f"{path}: not a sensor card (no 'kind: sensor')")
    try:
        return SensorCard.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {validation_problems(exc)}") from exc


def load_any_card(name_or_path: str | os.PathLike) -> SensorCard | DatasetCard:
    """Load a sensor or dataset card, whichever the YAML is."""
    path = card_path(name_or_path)
    if _read_yaml(path).get("kind") == "sensor":
        return load_sensor_card(path)
    return load_card(path)


def list_cards() -> list[SensorCard | DatasetCard]:
    """Return every bundled card in ``data_catalog/``, sorted by name."""
    return [load_any_card(p) for p in sorted(CATALOG_DIR.glob("*.yaml"))]


def card_rows(card: SensorCard | DatasetCard) -> list[tuple[str, ...]]:
    """Return the table rows that show a card: bands for sensors, classes for datasets."""
    if isinstance(card, SensorCard):
        return [
            (
                b.name,
                b.common_name,
                f"{b.wavelength_um[0]:g}-{b.wavelength_um[1]:g}",
                "" if b.scale is None else f"{b.scale:g}",
                "" if b.offset is None else f"{b.offset:g}",
            )
            for b in card.bands
        ]
    return [
        (str(c.index), c.name, "" if c.color is None else ",".join(map(str, c.color)))
        for c in card.classes
    ]
