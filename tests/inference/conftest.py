"""Fixtures of the inference tests: tiny deterministic nets and images with geometry."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from affine import Affine
from rasterio.crs import CRS

from geomed_seg.core.grid import GeoGrid, VoxelGrid
from geomed_seg.core.image import Image


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def tiny_net(ndim: int, cin: int, cout: int, seed: int = 0) -> torch.nn.Module:
    """A 2-layer conv net with fixed weights (eval mode)."""
    torch.manual_seed(seed)
    conv = torch.nn.Conv2d if ndim == 2 else torch.nn.Conv3d
    return torch.nn.Sequential(conv(cin, 4, 3, padding=1), torch.nn.Tanh(), conv(4, cout, 1)).eval()


def raster(shape=(3, 70, 93), chunks=(3, 32, 40), seed=0, nodata=None) -> Image:
    """Random float32 raster on a UTM grid, several dask chunks."""
    x = np.random.default_rng(seed).random(shape, dtype=np.float32)
    grid = GeoGrid(CRS.from_epsg(32633), Affine(10, 0, 500000, 0, -10, 4600000), shape[1:])
    return Image.from_array(x, grid, nodata=nodata, chunks=chunks)


def volume(shape=(2, 13, 21, 18), chunks=(2, 5, 8, 8), seed=0) -> Image:
    """Random float32 volume, 1.5 x 1 x 2 mm voxels, oblique-free RAS affine."""
    x = np.random.default_rng(seed).random(shape, dtype=np.float32)
    aff = np.diag([2.0, 1.0, 1.5, 1.0])
    aff[:3, 3] = (-20, 10, 5)
    return Image.from_array(x, VoxelGrid(aff, shape[1:]), chunks=chunks)
