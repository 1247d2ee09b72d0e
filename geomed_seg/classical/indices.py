"""Spectral indices (NDWI, MNDWI, NDVI, ...) as lazy images on the input grid."""

from __future__ import annotations

import dask.array as da
import numpy as np

from geomed_seg.core.image import Image
from geomed_seg.errors import InvalidInputError

#: Index name -> (band a, band b) for ``(a - b) / (a + b)``, bands named as in sensor cards.
INDICES = {
    "ndwi": ("green", "nir"),  # McFeeters 1996: water > 0
    "mndwi": ("green", "swir1"),  # Xu 2006
    "ndvi": ("nir", "red"),
    "ndbi": ("swir1", "nir"),
}

#: Every normalised difference of non-negative bands lies in [-1, 1]: the fixed histogram
#: range of index thresholds (so tiles and scenes share bins without a min/max pass).
INDEX_RANGE = (-1.0, 1.0)
#: Histogram bins over :data:`INDEX_RANGE`: 0.001 index units per bin.
INDEX_BINS = 2000


def band_index(image: Image, band: str | int) -> int:
    """Return the 0-based position of ``band`` (a name, or a 1-based integer as GDAL counts)."""
    if isinstance(band, int) or (isinstance(band, str) and band.isdigit()):
        i = int(band) - 1
        if not 0 <= i < image.n_channels:
            raise InvalidInputError(f"band {band} outside 1..{image.n_channels}")
        return i
    names = [n.lower() for n in (image.attrs.get("band_names") or image.channel_names or [])]
    if band.lower() not in names:
        raise InvalidInputError(
            f"{image.attrs.get('source', 'image')}: no band named {band!r}; bands are {names}"
        )
    return names.index(band.lower())


def normalized_difference(image: Image, a: str | int, b: str | int) -> Image:
    """Return ``(a - b) / (a + b)`` as a 1-band float32 image; NaN where invalid or a + b = 0."""
    arr = image.darray
    x = arr[band_index(image, a)].astype(np.float32)
    y = arr[band_index(image, b)].astype(np.float32)
    total = x + y
    nd = da.where(
        (total != 0) & image.valid_mask(), (x - y) / da.where(total == 0, 1, total), np.nan
    )
    return Image.from_array(
        nd[None], image.grid, nodata=float("nan"), attrs={"source": image.attrs.get("source")}
    )


def spectral_index(image: Image, name: str, bands: dict[str, str | int] | None = None) -> Image:
    """Return the named index (see :data:`INDICES`); ``bands`` maps roles to names/indices."""
    key = name.lower()
    if key not in INDICES:
        raise InvalidInputError(f"unknown index {name!r}; choose one of {sorted(INDICES)}")
    roles = INDICES[key]
    mapping = bands or {}
    return normalized_difference(
        image, mapping.get(roles[0], roles[0]), mapping.get(roles[1], roles[1])
    )
