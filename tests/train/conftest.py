"""Tiny training data: a 2-band raster whose water-like class is learnable in a few steps.

Generated here (no files in the repo): band 0 is bright on a disc and a stripe (class 1),
band 1 is noise; labels are band 0 > 0.5. Written as GeoTIFFs with rasterio.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

SIZE = 40


def make_scene(seed: int, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(image (2, y, x) float32, labels (y, x) uint8)`` of a tiny synthetic scene."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    cy, cx = rng.integers(10, size - 10, 2)
    fg = ((yy - cy) ** 2 + (xx - cx) ** 2 < rng.integers(16, 50)) | (abs(xx - yy - 5) < 2)
    band0 = np.where(fg, 0.8, 0.2) + 0.05 * rng.standard_normal((size, size))
    band1 = rng.standard_normal((size, size))
    return np.stack([band0, band1]).astype(np.float32), fg.astype(np.uint8)


def write_tif(path: Path, arr: np.ndarray, transform: Affine | None = None) -> Path:
    arr = arr if arr.ndim == 3 else arr[None]
    with rasterio.open(
        path, "w", driver="GTiff", width=arr.shape[2], height=arr.shape[1], count=arr.shape[0],
        dtype=arr.dtype, crs="EPSG:32633", transform=transform or Affine(10, 0, 500000, 0, -10, 4e6),
    ) as dst:  # fmt: skip
        dst.write(arr)
    return path


@pytest.fixture
def tiny_cases(tmp_path: Path) -> list[dict[str, str]]:
    """Three cases (image + label GeoTIFFs) in ``tmp_path``."""
    cases = []
    for i in range(3):
        img, lab = make_scene(i)
        cases.append(
            {
                "id": f"s{i}",
                "image": str(write_tif(tmp_path / f"s{i}_img.tif", img)),
                "label": str(write_tif(tmp_path / f"s{i}_lab.tif", lab)),
            }
        )
    return cases


def tiny_config(cases: list[dict[str, str]], output: Path, **over) -> dict:
    """Return a config dict training a 2-level MONAI UNet on ``cases`` in a few seconds."""
    cfg = {
        "data": {"cases": cases, "val_ids": ["s2"]},
        "model": {
            "architecture": "monai.UNet",
            "kwargs": {"spatial_dims": 2, "channels": [8, 16], "strides": [2], "num_res_units": 0},
        },
        "card": {
            "name": "tiny",
            "classes": [{"index": 0, "name": "land"}, {"index": 1, "name": "water"}],
        },
        "augment": {"affine_prob": 0, "intensity_prob": 0, "noise_prob": 0},
        "optim": {"lr": 0.01, "schedule": "constant", "grad_clip": 5.0},
        "roi_size": [16, 16],
        "batch_size": 4,
        "epochs": 2,
        "steps_per_epoch": 4,
        "seed": 3,
        "threads": 1,
        "device": "cpu",
        "output": str(output),
    }
    cfg.update(over)
    return cfg
