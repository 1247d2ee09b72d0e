"""Fixtures for the batch tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.batch.data import FAST, cut_tiles


@pytest.fixture
def tiles(tmp_path, landsat_path) -> list[Path]:
    """Six 116 x 175 tiles of the Landsat scene in ``tmp_path/tiles``."""
    return cut_tiles(landsat_path, tmp_path / "tiles")


@pytest.fixture
def fast() -> tuple[str, ...]:
    """Config overrides that keep test runs fast."""
    return FAST
