"""Core types: grids (geometry) and the lazy ``Image``."""

from geomed_seg.core.grid import GeoGrid, Grid, VoxelGrid, check_same_grid, grid_from_attrs
from geomed_seg.core.image import RASTER_DIMS, VOLUME_DIMS, Image

__all__ = [
    "RASTER_DIMS",
    "VOLUME_DIMS",
    "GeoGrid",
    "Grid",
    "Image",
    "VoxelGrid",
    "check_same_grid",
    "grid_from_attrs",
]
