"""Per-band value metadata: scale/offset, units, descriptions and the colour table.

These describe what the *pixel values* mean (GDAL's band scale/offset, unit type,
description and palette), so they must follow the values, not the image: a window or a band
subset keeps them, a derived array (labels, an index, a rescaled band) must not inherit
them. That is exactly xarray's model, so they live on the ``DataArray``:

* per-band items are **non-index coordinates along the band dim** (``scale``, ``offset``,
  ``units``, ``description``, ``colorinterp``: GDAL's colour interpretation, which says
  which band is red/green/blue/alpha, e.g. a BGRA file): ``isel``/``sel`` on bands and windows carry them in step
  with the bands;
* the colour table (band 1's palette) is a ``DataArray`` attr (``colormap``).

Images built from a new array (:meth:`Image.from_array`, as every method producing labels
or indices does) start without them, so a label raster never receives its input's 0.0001
reflectance scale or palette. Writers read them with :func:`band_metadata`.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

#: Band-dim coordinates that carry per-band value metadata.
BAND_COORDS = ("scale", "offset", "units", "description", "colorinterp")
#: GDAL colour interpretations that say nothing (its defaults for a new band).
DEFAULT_COLORINTERP = frozenset({"gray", "undefined"})
#: ``DataArray`` attr holding band 1's colour table ``{index: (r, g, b, a)}``.
COLORMAP_ATTR = "colormap"


def placeholder_band_name(i: int) -> str:
    """Return the name a reader gives band ``i`` (0-based) that has no description: ``band_<i+1>``.

    Such names only index the band dim; writers never store them as band descriptions.
    """
    return f"band_{i + 1}"


def band_descriptions(data: Any, names: Any = None) -> list[str] | None:
    """Return the band descriptions a writer may store, or None.

    The values' own ``description`` coordinate (the input's descriptions, or names set from
    a matched sensor card) wins; else ``names`` (e.g. an image's channel names) without the
    readers' placeholders :func:`placeholder_band_name`, so no ``band_1..N`` is invented.
    """
    meta = band_metadata(data)
    if "description" in meta:
        return [str(v or "") for v in meta["description"]]
    if names is None:
        return None
    kept = ["" if str(n) == placeholder_band_name(i) else str(n) for i, n in enumerate(names)]
    return kept if any(kept) else None


def band_coords(
    n_bands: int,
    *,
    scales: Any = None,
    offsets: Any = None,
    units: Any = None,
    descriptions: Any = None,
    colorinterp: Any = None,
) -> dict[str, list]:
    """Return the per-band coordinates to attach (only those that carry information).

    Scale/offset are kept when any band differs from GDAL's defaults (1, 0); units and
    descriptions when any band has one (missing ones become ``""``); colour interpretations
    (GDAL ``ColorInterp`` names) when any band has one other than ``gray``/``undefined``.
    """
    out: dict[str, list] = {}
    if scales is not None and offsets is not None:
        sc = [1.0 if s is None else float(s) for s in scales]
        of = [0.0 if o is None else float(o) for o in offsets]
        if any(s != 1.0 for s in sc) or any(o != 0.0 for o in of):
            out["scale"], out["offset"] = sc, of
    for key, values in (("units", units), ("description", descriptions)):
        if values is not None and any(values):
            out[key] = [v or "" for v in values]
    if colorinterp is not None:
        names = [str(getattr(c, "name", c) or "undefined") for c in colorinterp]
        if any(n not in DEFAULT_COLORINTERP for n in names):
            out["colorinterp"] = names
    return {k: v for k, v in out.items() if len(v) == n_bands}


def band_metadata(data: Any) -> dict[str, Any]:
    """Return ``{scale, offset, units, description, colorinterp: list per band, colormap: dict}``.

    ``data`` is an :class:`xarray.DataArray` (channel-first); only the items it carries are
    returned.
    """
    dim = data.dims[0]
    out: dict[str, Any] = {}
    for key in BAND_COORDS:
        if key in data.coords and data.coords[key].dims == (dim,):
            out[key] = [v.item() if hasattr(v, "item") else v for v in data.coords[key].values]
    cmap = data.attrs.get(COLORMAP_ATTR)
    if cmap:
        out[COLORMAP_ATTR] = {int(k): tuple(int(c) for c in v) for k, v in cmap.items()}
    return out


def physical_values(image: Any) -> Any:
    """Return ``image`` as physical values ``raw * scale + offset`` per band (float32).

    Nodata samples become NaN (``nodata=NaN``); the mask is kept. An image without
    scale/offset is returned unchanged, with a warning naming its source, since its raw
    values are taken as physical.
    """
    import dask.array as da

    meta = band_metadata(image.data)
    if "scale" not in meta:
        log.warning(
            "%s: the model card asks for physical values (apply_scale_offset) but the input "
            "has no band scale/offset; its raw values are used",
            image.attrs.get("source", "input"),
        )
        return image
    bshape = (-1,) + (1,) * (image.darray.ndim - 1)
    scale = np.asarray(meta["scale"], np.float32).reshape(bshape)
    offset = np.asarray(meta["offset"], np.float32).reshape(bshape)
    raw = image.darray
    arr = raw.astype(np.float32) * scale + offset
    if image.nodata is not None:
        bad = da.isnan(raw) if np.isnan(image.nodata) else raw == image.nodata
        arr = da.where(bad, np.float32(np.nan), arr)
    from geomed_seg.core.image import Image

    out = Image.from_array(
        arr, image.grid, nodata=None if image.nodata is None else float("nan"),
        channel_names=image.channel_names, attrs=dict(image.attrs),
    )  # fmt: skip
    return replace(out, mask=image.mask)
