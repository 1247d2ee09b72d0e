"""Dataset cards: what a dataset is, its classes, label conventions and evaluation regions.

Cards are YAML files in ``data_catalog/`` (one per dataset/convention), validated with
pydantic so a typo in a card fails loudly with the file name. Code never hard-codes classes
or regions; it loads the card (``load_card("brats2023")``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from geomed_seg.core.labels import ClassInfo
from geomed_seg.errors import ConfigError, validation_problems

#: Folder holding the bundled cards (repository root / data_catalog).
CATALOG_DIR = Path(__file__).resolve().parents[1] / "data_catalog"


class ClassEntry(BaseModel):
    """One class of the label convention."""

    model_config = ConfigDict(extra="forbid")
    index: int = Field(ge=0, le=65535)
    name: str
    color: list[int] | None = None


class Region(BaseModel):
    """An evaluation region: the union of some labels (e.g. BraTS whole tumour)."""

    model_config = ConfigDict(extra="forbid")
    labels: list[int] = Field(min_length=1)
    description: str = ""


class DatasetCard(BaseModel):
    """A validated dataset card."""

    model_config = ConfigDict(extra="forbid")
    name: str
    title: str = ""
    modality: str = ""
    description: str = ""
    license: str = ""
    url: str = ""
    channels: list[str] = Field(default_factory=list)
    spacing_mm: list[float] | None = None
    classes: list[ClassEntry] = Field(default_factory=list)
    regions: dict[str, Region] = Field(default_factory=dict)
    nodata: float | None = None
    ignore_index: int | None = None
    evaluation: dict[str, Any] = Field(default_factory=dict)

    def class_infos(self) -> list[ClassInfo]:
        """Classes as :class:`~geomed_seg.core.labels.ClassInfo` values."""
        return [
            ClassInfo(c.index, c.name, tuple(c.color) if c.color else None) for c in self.classes
        ]

    def region_labels(self) -> dict[str, list[int]]:
        """``{region name: labels}`` in card order."""
        return {k: list(v.labels) for k, v in self.regions.items()}


def card_path(name_or_path: str | os.PathLike) -> Path:
    """Resolve a card name (``"brats2023"``) or a path to a YAML file."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") and p.exists():
        return p
    cand = CATALOG_DIR / f"{name_or_path}.yaml"
    if cand.exists():
        return cand
    known = sorted(f.stem for f in CATALOG_DIR.glob("*.yaml")) if CATALOG_DIR.exists() else []
    raise ConfigError(
        f"{name_or_path}: no dataset card found; known cards: {', '.join(known) or 'none'}"
    )


def load_card(name_or_path: str | os.PathLike) -> DatasetCard:
    """Load and validate a dataset card by name or path."""
    path = card_path(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({exc})") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a dataset card must be a mapping, got {type(raw).__name__}")
    try:
        return DatasetCard.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {validation_problems(exc)}") from exc
