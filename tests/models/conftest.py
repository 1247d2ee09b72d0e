"""Fixtures for model tests."""

from __future__ import annotations

import pytest
from model_helpers import tiny_card

from geomed_seg.models.card import ModelCard


@pytest.fixture
def card() -> ModelCard:
    return tiny_card()
