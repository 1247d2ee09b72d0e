"""The one connectivity of objects: face neighbours only (4 in 2D, 6 in 3D).

Post-processing (minimum object size, hole filling, connected components), instances and
polygonisation all use it, so an object that survives ``min_object_size`` is exactly one
polygon of ``rasterio.features.shapes(..., connectivity=4)`` and every polygon is at least
the minimum object size. Pixels touching only at a corner are separate objects (as GDAL's
default polygonisation and ``scipy.ndimage.label``'s default structure); a hole is a
background region face-connected inside an object (``scipy.ndimage.binary_fill_holes``).
"""

from __future__ import annotations

#: scikit-image / our ``label_components`` convention: 1 = faces only.
CONNECTIVITY = 1
#: The same connectivity as ``rasterio.features.shapes`` / ``gdal_polygonize`` spell it.
RASTERIO_CONNECTIVITY = 4
