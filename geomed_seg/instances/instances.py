"""Semantic labels -> instance labels, and the per-instance table (area, centroid, bbox, score).

Instances are connected regions of one class (:func:`label_components`, ids consistent
across chunks), or, with ``split="watershed"``, touching objects are separated by a
watershed of the distance transform inside each class region (markers = distance maxima,
as in scikit-image's "Separating touching objects" example). Instance images are uint32
with 0 = background, on the semantic image's grid.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pandas as pd

from geomed_seg.core.connectivity import CONNECTIVITY
from geomed_seg.core.grid import GeoGrid
from geomed_seg.core.ground import label_areas
from geomed_seg.core.image import Image
from geomed_seg.errors import InvalidInputError
from geomed_seg.instances.components import label_components, relabel_sequential
from geomed_seg.io.atomic import atomic_output


def semantic_to_instances(
    semantic: Image,
    *,
    background: Sequence[int] = (0,),
    connectivity: int = CONNECTIVITY,
    split: str = "components",
    min_distance: int = 3,
    halo: int = 32,
) -> Image:
    """Return instance ids (uint32, 0 = background/nodata) of a 1-band semantic label image.

    Parameters
    ----------
    background : sequence of int
        Class values that are not objects (nodata is always background).
    connectivity : int or None
        scikit-image convention, 1..ndim (default faces only, the project's one
        connectivity shared with post-processing and polygons:
        :mod:`geomed_seg.core.connectivity`).
    split : {"components", "watershed"}
        ``"watershed"`` splits touching objects of a class at the distance-transform saddles
        (tile-wise with ``halo``; exact when objects are smaller than the halo).
    """
    lab = semantic.darray[0]
    fg = ~da.isin(lab, np.asarray(list(background)))
    if semantic.nodata is not None:
        fg = fg & semantic.valid_mask()
    classes = da.where(fg, lab.astype(np.int64) + 1, 0)
    if split == "components":
        ids, n = label_components(classes, background=0, connectivity=connectivity)
    elif split == "watershed":
        from geomed_seg.classical.local import watershed

        # basins of the foreground's distance transform, intersected with the same-class
        # components so that no instance mixes two classes
        vals = Image.from_array(classes[None], semantic.grid, chunks=(1, *lab.chunks))
        ws = watershed(
            vals, markers="distance", threshold=0.5, footprint=2 * min_distance + 1, halo=halo
        )
        cc, n_cc = label_components(classes, background=0, connectivity=connectivity)
        cc = cc.rechunk(ws.darray.chunks[1:])
        pair = ws.darray[0].astype(np.uint64) * np.uint64(n_cc + 1) + cc.astype(np.uint64)
        ids, n = relabel_sequential(da.where(cc > 0, pair, np.uint64(0)))
    else:
        raise InvalidInputError(f"unknown split {split!r}; choose 'components' or 'watershed'")
    out = Image.from_array(
        ids[None],
        semantic.grid,
        nodata=None,
        attrs={"source": semantic.attrs.get("source"), "n_instances": n},
    )
    return out


def _block_stats(
    ids: np.ndarray, cls: np.ndarray, score: np.ndarray | None, offset
) -> pd.DataFrame:
    sel = ids > 0
    coords = np.nonzero(sel)
    df = pd.DataFrame({"id": ids[sel].astype(np.int64), "class": cls[sel].astype(np.int64)})
    for ax, c in enumerate(coords):
        df[f"i{ax}"] = c + offset[ax]
    if score is not None:
        df["score"] = score[sel].astype(np.float64)
    g = df.groupby("id")
    agg = {"class": "first"}
    for ax in range(len(coords)):
        agg[f"i{ax}"] = ["sum", "min", "max"]
    if score is not None:
        agg["score"] = "sum"
    out = g.agg(agg)
    out.columns = ["_".join(c) if c[1] != "first" else c[0] for c in out.columns]
    out["n"] = g.size()
    return out


def instance_table(instances: Image, semantic: Image, scores: Image | None = None) -> pd.DataFrame:
    """Return one row per instance: id, class, n_pixels, area_m2 / volume_mm3, centroid, bbox.

    ``area_m2`` is the true ground area (sum of the pixels' ground areas,
    :mod:`geomed_seg.core.ground`); a grid without a ground (no CRS, local CRS) gives
    ``area_crs_units2`` instead.

    ``centroid_x, centroid_y`` (CRS units) for rasters or ``centroid_r, _a, _s`` (RAS mm) for
    volumes are the world position of the mean pixel-centre index (exact for an affine grid).
    ``bbox_*`` are array indices (inclusive min, exclusive max, array order); rasters also
    get the world envelope ``left, bottom, right, top``. ``mean_score`` is the mean of
    ``scores`` (1 band, e.g. the probability of the predicted class) over the instance.
    Computed chunk by chunk; only the per-instance sums travel.
    """
    ids = instances.darray[0]
    cls = semantic.darray[0].rechunk(ids.chunks)
    sc = None if scores is None else scores.darray[0].rechunk(ids.chunks)
    parts = []
    starts = [np.concatenate([[0], np.cumsum(c)[:-1]]) for c in ids.chunks]
    for loc in np.ndindex(*ids.numblocks):
        b_ids = ids.blocks[loc]
        b_cls = cls.blocks[loc]
        b_sc = None if sc is None else sc.blocks[loc]
        off = tuple(int(s[i]) for s, i in zip(starts, loc, strict=True))
        parts.append(dask.delayed(_block_stats)(b_ids, b_cls, b_sc, off))
    frames = [f for f in dask.compute(*parts) if len(f)]
    nd = ids.ndim
    if not frames:
        return pd.DataFrame(columns=["id", "class", "n_pixels"])
    df = pd.concat(frames)
    agg = {"class": "first", "n": "sum"}
    for ax in range(nd):
        agg.update({f"i{ax}_sum": "sum", f"i{ax}_min": "min", f"i{ax}_max": "max"})
    if sc is not None:
        agg["score_sum"] = "sum"
    t = df.groupby(level=0).agg(agg).sort_index()
    grid = instances.grid
    mean_idx = [t[f"i{ax}_sum"].to_numpy() / t["n"].to_numpy() for ax in range(nd)]
    out = pd.DataFrame(
        {"id": t.index.to_numpy(), "class": t["class"].to_numpy(), "n_pixels": t["n"].to_numpy()}
    )
    if isinstance(grid, GeoGrid):
        areas = label_areas(grid, ids)  # true ground m² per id (CRS units² without a ground)
        ids_np = out["id"].to_numpy().astype(np.int64)
        areas = np.pad(areas, (0, max(0, int(ids_np.max(initial=0)) + 1 - len(areas))))
        out[f"area_{grid.ground.area_key}"] = areas[ids_np]
        xy = [grid.xy(r, c) for r, c in zip(*mean_idx, strict=True)]
        out["centroid_x"] = [p[0] for p in xy]
        out["centroid_y"] = [p[1] for p in xy]
    else:
        out["volume_mm3"] = out["n_pixels"] * grid.voxel_volume
        ras = [grid.world(z, y, x) for z, y, x in zip(*mean_idx, strict=True)]
        for k, name in enumerate("ras"):
            out[f"centroid_{name}"] = [p[k] for p in ras]
    names = ("row", "col") if nd == 2 else ("z", "y", "x")
    for ax, name in enumerate(names):
        out[f"bbox_{name}_min"] = t[f"i{ax}_min"].to_numpy()
        out[f"bbox_{name}_max"] = t[f"i{ax}_max"].to_numpy() + 1
    if isinstance(grid, GeoGrid):
        env = [
            grid.window((slice(r0, r1), slice(c0, c1))).bounds
            for r0, r1, c0, c1 in zip(
                out.bbox_row_min, out.bbox_row_max, out.bbox_col_min, out.bbox_col_max, strict=True
            )
        ]
        for k, name in enumerate(("left", "bottom", "right", "top")):
            out[name] = [e[k] for e in env]
    if sc is not None:
        out["mean_score"] = t["score_sum"].to_numpy() / t["n"].to_numpy()
    return out.reset_index(drop=True)


def write_table(table: pd.DataFrame, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write the instance table as CSV or JSON (records) by suffix, atomically; return the path."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in (".csv", ".json"):
        raise InvalidInputError(f"{p}: instance tables are written as .csv or .json")
    with atomic_output(p, overwrite) as tmp:
        if suffix == ".csv":
            table.to_csv(tmp, index=False)
        else:
            Path(tmp).write_text(json.dumps(json.loads(table.to_json(orient="records")), indent=1))
    return p
