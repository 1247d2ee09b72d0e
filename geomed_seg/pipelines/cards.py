"""Sensor cards and the catalog listing (dataset cards live in :mod:`geomed_seg.catalog`).

A sensor card (``kind: sensor`` in ``data_catalog/<name>.yaml``) lists a sensor's bands with
their USGS/ESA names, common names (``blue``, ``nir``, ``vv`` ... as in STAC's ``eo``
extension), wavelengths in micrometres and the DN -> physical-value ``scale``/``offset``.
Pipelines use it to pick bands by name and to rescale digital numbers.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from geomed_seg.catalog import CATALOG_DIR, DatasetCard, card_path, load_card
from geomed_seg.errors import ConfigError, validation_problems

log = logging.getLogger(__name__)


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


#: Single-band product files whose names say sensor and band: ``(pattern, {id: card})``.
#: Landsat Collection 1/2 ids (``LC08_L2SP_217065_20200101_20200113_02_T1_SR_B5.TIF``,
#: ``LE07_..._B6_VCID_1.TIF``) and Sentinel-2 L2A ``IMG_DATA`` granules
#: (``T32TQM_20220612T101559_B8A_20m.jp2``) or names carrying ``MSIL2A``.
_BAND_FILE_PATTERNS = (
    (re.compile(r"^(L[CO]0[89]|LE07)_\w+?_B(\d{1,2})(?:_VCID_\d)?\.\w+$", re.IGNORECASE),
     {"LC08": "landsat89_oli", "LO08": "landsat89_oli", "LC09": "landsat89_oli",
      "LO09": "landsat89_oli", "LE07": "landsat7_etm"}),
    (re.compile(r"^(T\d{2}[A-Z]{3})_\d{8}T\d{6}_B(\d{2}|8A)_\d{2}m\.\w+$", re.IGNORECASE),
     {"*": "sentinel2_l2a"}),
    (re.compile(r"^(S2[ABCD]_MSIL2A)_.*_B(\d{2}|8A)(?:_\d{2}m)?\.\w+$", re.IGNORECASE),
     {"*": "sentinel2_l2a"}),
)  # fmt: skip


def sensor_band_of_file(path: str | os.PathLike) -> tuple[str, str] | None:
    """Return ``(sensor card, band name)`` a single-band product file's name states, or None.

    Only the documented product naming of Landsat (Collection 1/2 product ids, bands ``B1``..
    ``B11``) and Sentinel-2 L2A granules is recognised; anything else (``my_B4.tif``) is not
    guessed at.
    """
    name = Path(path).name
    for pattern, cards in _BAND_FILE_PATTERNS:
        m = pattern.match(name)
        if m is None:
            continue
        card = cards.get(m[1][:4].upper(), cards.get("*"))
        if card is None:
            return None
        band = m[2].upper()
        if card.startswith("landsat"):
            return card, f"B{int(band)}"
        return card, "B8A" if band == "8A" else f"B{int(band):02d}"
    return None


def with_matched_sensor_bands(image: Any, path: str | os.PathLike) -> Any:
    """Return ``image`` with its band named from a sensor card when its file name says which.

    Applies to a one-band image without a description of its own whose name
    :func:`sensor_band_of_file` recognises (the description becomes the card's common name,
    e.g. ``nir`` for ``..._SR_B5.TIF`` of Landsat 8); any other image is returned unchanged.
    """
    meta = image.data.coords
    if image.n_channels != 1 or ("description" in meta and any(meta["description"].values)):
        return image
    found = sensor_band_of_file(path)
    if found is None:
        return image
    card, band = found
    try:
        return with_sensor_bands(image, card, [band])
    except ConfigError:  # e.g. B10 of a Sentinel-2 L1C name: the L2A card has no such band
        log.info("%s: band %s not in sensor card %s; left unnamed", path, band, card)
        return image


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
