"""Panoptic outputs: ``class * 1000 + instance`` rasters and COCO-panoptic PNG + JSON.

Two encodings, both documented here once:

* **Raster/volume encoding** (Cityscapes style): ``panoptic = class * divisor + k`` with
  ``divisor = 1000`` by default, ``k`` = 1-based instance number *within its class* for
  "thing" classes and 0 for "stuff" classes (one segment per class). uint32.
* **COCO panoptic** (2D only): a PNG whose RGB encodes the segment id
  ``id = R + 256 * G + 256**2 * B`` (0 = unlabelled/void) plus a JSON with one
  ``segments_info`` entry per segment: ``id``, ``category_id``, ``area`` (pixels),
  ``bbox`` ``[x, y, width, height]`` in pixels, ``iscrowd``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import dask.array as da
import numpy as np
import pandas as pd

from geomed_seg.core.image import Image
from geomed_seg.core.labels import ClassInfo
from geomed_seg.errors import InvalidInputError
from geomed_seg.io.atomic import atomic_output


def panoptic_ids(
    semantic: Image,
    instances: Image,
    table: pd.DataFrame,
    *,
    things: Sequence[int],
    divisor: int = 1000,
    void: Sequence[int] = (),
) -> Image:
    """Return the uint32 panoptic image ``class * divisor + k`` (see module docstring).

    ``table`` is :func:`~geomed_seg.instances.instances.instance_table`'s output for
    ``instances``; instance numbers within a class follow increasing instance id.
    ``void`` classes and nodata become 0.
    """
    things = set(int(t) for t in things)
    t = table[table["class"].isin(things)].sort_values("id")
    k = t.groupby("class").cumcount().to_numpy() + 1
    if len(k) and int(k.max()) >= divisor:
        raise InvalidInputError(f"{int(k.max())} instances in one class exceed divisor {divisor}")
    nmax = int(table["id"].max()) if len(table) else 0
    lut = np.zeros(nmax + 1, dtype=np.uint64)
    lut[t["id"].to_numpy()] = t["class"].to_numpy().astype(np.uint64) * divisor + k
    sem = semantic.darray[0].astype(np.int64)
    ids = instances.darray[0].rechunk(sem.chunks)
    thing_mask = da.isin(sem, np.asarray(sorted(things), dtype=np.int64))
    stuff = sem.astype(np.uint64) * np.uint64(divisor)
    pan = da.where(thing_mask, ids.map_blocks(lambda b: lut[b], dtype=np.uint64), stuff)
    bad = da.isin(sem, np.asarray(list(void), dtype=np.int64)) | ~semantic.valid_mask()
    pan = da.where(bad, 0, pan)
    if int(da.max(pan).compute()) >= 2**32:
        raise InvalidInputError("panoptic ids exceed uint32; use a smaller divisor")
    return Image.from_array(
        pan.astype(np.uint32)[None], semantic.grid, nodata=None, attrs={"panoptic_divisor": divisor}
    )


def id_to_rgb(ids: np.ndarray) -> np.ndarray:
    """Return ``(..., 3)`` uint8 RGB of segment ids: ``id = R + 256 G + 256**2 B``."""
    ids = np.asarray(ids, dtype=np.uint64)
    return np.stack([(ids >> (8 * k)) & 255 for k in range(3)], axis=-1).astype(np.uint8)


def write_coco_panoptic(
    panoptic: Image,
    png_path: str | os.PathLike,
    json_path: str | os.PathLike,
    *,
    classes: Sequence[ClassInfo] = (),
    things: Sequence[int] = (),
    divisor: int = 1000,
    image_id: int | str = 0,
    overwrite: bool = False,
) -> tuple[Path, Path]:
    """Write a 2D panoptic image as COCO-panoptic PNG + JSON; return both paths.

    Segment ids are the panoptic values themselves (``class * divisor + k``), so the PNG
    and the raster encoding agree; ``category_id`` is ``id // divisor``.
    """
    from PIL import Image as PILImage

    if panoptic.grid.ndim != 2:
        raise InvalidInputError("COCO panoptic PNGs are 2D; write volumes as rasters")
    pan = panoptic.compute()[0].astype(np.uint64)
    if pan.max() >= 2**24:
        raise InvalidInputError("segment ids exceed 24 bits of RGB")
    segs = []
    for sid in np.unique(pan[pan > 0]):
        rows, cols = np.nonzero(pan == sid)
        segs.append(
            {
                "id": int(sid),
                "category_id": int(sid // divisor),
                "area": int(len(rows)),
                "bbox": [
                    int(cols.min()),
                    int(rows.min()),
                    int(np.ptp(cols) + 1),
                    int(np.ptp(rows) + 1),
                ],
                "iscrowd": 0,
            }
        )
    png_path, json_path = Path(png_path), Path(json_path)
    things = set(int(t) for t in things)
    doc = {
        "annotations": [{"image_id": image_id, "file_name": png_path.name, "segments_info": segs}],
        "categories": [
            {"id": c.index, "name": c.name, "isthing": int(c.index in things)} for c in classes
        ],
    }
    with atomic_output(png_path, overwrite) as tmp:
        PILImage.fromarray(id_to_rgb(pan), mode="RGB").save(tmp, format="PNG")
    with atomic_output(json_path, overwrite) as tmp:
        Path(tmp).write_text(json.dumps(doc, indent=1))
    return png_path, json_path
