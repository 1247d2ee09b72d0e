"""Shared fixtures: paths of the bundled real samples (see tests/data/NOTICE.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def landsat_path() -> Path:
    """Landsat 7 ETM+ 6-band uint8 scene, EPSG:31985, 349 x 352 px."""
    return DATA / "landsat7_olinda_L7_ETMs.tif"


@pytest.fixture(scope="session")
def mni_t1_path() -> Path:
    """MNI152 2009a T1 template, 197 x 233 x 189 voxels at 1 mm, RAS, uint8."""
    return DATA / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
