"""Merged polygons across tiles equal rasterio's polygons of the whole label mosaic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyogrio.raw
import pytest
import rasterio
import shapely
from affine import Affine
from rasterio.crs import CRS
from rasterio.features import shapes
from shapely.geometry import shape

from geomed_seg.batch.journal import Journal
from geomed_seg.batch.layout import tile_layout
from geomed_seg.batch.runner import run_batch
from geomed_seg.batch.vectors import inner_sides, merge_polygons
from geomed_seg.core.labels import ClassInfo
from geomed_seg.errors import GeometryError
from geomed_seg.io.geotiff import open_geotiff
from geomed_seg.io.vector import write_polygons

NODATA = 255
CLASSES = [ClassInfo(1, "water"), ClassInfo(2, "forest"), ClassInfo(3, "urban")]
# a non-trivial pixel size and origin so CRS <-> pixel mapping is not exact in binary
TRANSFORM = Affine(28.5, 0.0, 288776.25, 0.0, -28.5, 9120760.75)


def _mosaic(seed: int) -> np.ndarray:
    """40 x 50 labels (row, col): blobs and noise of 3 classes, nodata, and fixed shapes
    crossing the tile edges at rows 13/27 and columns 17/30 (see ``_cut``)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 4, size=(8, 10), dtype=np.uint8)
    a = np.kron(coarse, np.ones((5, 5), np.uint8))
    noise = rng.random(a.shape) < 0.15
    a[noise] = rng.integers(0, 4, size=int(noise.sum()), dtype=np.uint8)
    a[0:3, 40:45] = NODATA
    a[9:18, 12:22] = 1  # one region over the 4 tiles meeting at (13, 17)
    a[19:34, 23:37] = 0  # background frame, so the ring below joins nothing else
    a[20:33, 24:36] = 2  # a ring crossing the edges at row 27 and column 30 ...
    a[23:30, 27:33] = 0  # ... around a background hole that crosses them too
    a[25:27, 29:31] = 3  # an island of class 3 inside the hole, on both edges
    a[35:38, 15:17] = 1  # diagonal neighbours across column 17: two features
    a[38:40, 17:19] = 1
    return a


def _cut(a: np.ndarray, folder: Path, rows=(0, 13, 27, 40), cols=(0, 17, 30, 50), skip=()):
    """Write the tiles (GeoTIFF + polygons GeoPackage); return (labels, gpkgs)."""
    folder.mkdir(parents=True, exist_ok=True)
    labels, gpkgs = [], []
    for i, (r0, r1) in enumerate(zip(rows[:-1], rows[1:], strict=True)):
        for j, (c0, c1) in enumerate(zip(cols[:-1], cols[1:], strict=True)):
            if (i, j) in skip:
                continue
            tif = folder / f"t{i}{j}.tif"
            with rasterio.open(tif, "w", driver="GTiff", width=c1 - c0, height=r1 - r0, count=1,
                               dtype="uint8", nodata=NODATA, crs=CRS.from_epsg(31985),
                               transform=TRANSFORM @ Affine.translation(c0, r0)) as dst:  # fmt: skip
                dst.write(a[r0:r1, c0:c1], 1)
            gpkg = folder / f"t{i}{j}.gpkg"
            write_polygons(open_geotiff(tif), gpkg, classes=CLASSES)
            labels.append(tif)
            gpkgs.append(gpkg)
    return labels, gpkgs


def _reference(a: np.ndarray, transform: Affine) -> list[tuple[object, int]]:
    """Polygons of the whole mosaic by rasterio (4-connectivity, as write_polygons)."""
    keep = (a != 0) & (a != NODATA)
    return [
        (shape(g), int(v)) for g, v in shapes(a, mask=keep, connectivity=4, transform=transform)
    ]


def _read(path: Path):
    meta, _, wkb, fields = pyogrio.raw.read(path)
    assert list(meta["fields"]) == ["class", "name", "area_m2"]
    return shapely.from_wkb(wkb), fields


def _assert_same(merged: Path, ref: list[tuple[object, int]], pixel_area: float) -> None:
    geoms, (cls, names, area) = _read(merged)
    tol = 1e-6 * pixel_area
    for v in sorted({v for _, v in ref} | set(cls.tolist())):
        mine = geoms[cls == v]
        theirs = [g for g, w in ref if w == v]
        assert len(mine) == len(theirs), f"class {v}: {len(mine)} != {len(theirs)} features"
        diff = shapely.symmetric_difference(shapely.union_all(mine), shapely.union_all(theirs))
        assert diff.area < tol
    tree = shapely.STRtree(geoms)
    for g, v in ref:  # each reference polygon is exactly one merged feature
        hits = [i for i in tree.query(g.representative_point(), "intersects") if cls[i] == v]
        assert len(hits) == 1
        assert shapely.symmetric_difference(geoms[hits[0]], g).area < tol
        assert len(geoms[hits[0]].interiors) == len(g.interiors)
        assert area[hits[0]] == pytest.approx(g.area, rel=1e-9)
    assert {c.index: c.name for c in CLASSES}.items() >= dict(zip(cls, names, strict=True)).items()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_merged_equals_whole_mosaic(tmp_path, seed):
    a = _mosaic(seed)
    labels, gpkgs = _cut(a, tmp_path / "tiles")
    summary = merge_polygons(labels, gpkgs, tmp_path / "polygons.gpkg")
    ref = _reference(a, TRANSFORM)
    _assert_same(tmp_path / "polygons.gpkg", ref, 28.5**2)
    assert summary.n_features == len(ref)
    geoms, (cls, *_) = _read(tmp_path / "polygons.gpkg")
    cross = [g for g, c in zip(geoms, cls, strict=True) if c == 1 and g.contains(
        shapely.Point(TRANSFORM @ (17, 13)))]  # fmt: skip
    assert len(cross) == 1  # the region over 4 tiles is one feature
    ring = [g for g, c in zip(geoms, cls, strict=True) if c == 2 and len(g.interiors) == 1]
    assert any(g.area == pytest.approx(13 * 12 * 28.5**2 - 7 * 6 * 28.5**2) for g in ring)
    # pieces of tiles at the mosaic's outer edge are copied, not merged: only the
    # 9 tiles' inner sides count
    assert inner_sides(tile_layout(labels)).sum() == 24


def test_missing_tile_and_tile_order(tmp_path):
    a = _mosaic(3)
    labels, gpkgs = _cut(a, tmp_path / "tiles", skip={(1, 1)})
    merge_polygons(labels[::-1], gpkgs[::-1], tmp_path / "polygons.gpkg", batch=5)  # chunked
    holed = a.copy()
    holed[13:27, 17:30] = NODATA
    _assert_same(tmp_path / "polygons.gpkg", _reference(holed, TRANSFORM), 28.5**2)


def test_refuses_overlap_offgrid_and_keeps_nothing(tmp_path):
    a = _mosaic(4)
    labels, gpkgs = _cut(a, tmp_path / "a")
    more, more_g = _cut(a, tmp_path / "b", rows=(0, 20), cols=(0, 20))
    with pytest.raises(GeometryError, match="overlaps"):
        merge_polygons([*labels, *more], [*gpkgs, *more_g], tmp_path / "p.gpkg")
    # a polygon on an inner edge 0.3 px off the pixel corners is not from these labels
    off = shapely.affinity.translate(shapely.box(*(TRANSFORM @ (15, 2)), *(TRANSFORM @ (17, 5))),
                                     xoff=0.3 * 28.5)  # fmt: skip
    pyogrio.raw.write(gpkgs[0], shapely.to_wkb(np.array([off])), field_data=[
        np.array([1], np.int32), np.array(["water"], object), np.array([off.area])],
        fields=["class", "name", "area_m2"], layer="labels", driver="GPKG",
        geometry_type="Polygon", crs="EPSG:31985", append=True)  # fmt: skip
    with pytest.raises(GeometryError, match="off the pixel corners"):
        merge_polygons(labels, gpkgs, tmp_path / "p.gpkg")
    assert not (tmp_path / "p.gpkg").exists()
    assert not list(tmp_path.glob(".p*"))  # no temporary file left


def test_batch_polygons_equal_scene_polygons(tiles, tmp_path):
    """Flood batch with a fixed NDWI threshold: OUT/polygons.gpkg vs the VRT's polygons."""
    out = tmp_path / "out"
    ovr = ("outputs.quicklook=false", "outputs.polygons=true", "model.threshold=0.0")
    res = run_batch("flood", tiles, out, overrides=ovr, processes=False)
    assert res.outputs["polygons"] == out / "polygons.gpkg" and not res.failed
    with rasterio.open(res.outputs["mosaic"]) as m:
        a, transform = m.read(1), m.transform
    ref = _reference(a, transform)
    # 76 features since objects are face-connected (issue 13): 8000 m² removes more of them
    assert len(ref) > 50
    _assert_same(out / "polygons.gpkg", ref, abs(transform.a * transform.e))
    tile_total = sum(pyogrio.read_info(out / "tiles" / p.stem / "polygons.gpkg")["features"]
                     for p in tiles)  # fmt: skip
    assert len(ref) < tile_total  # regions cut by tile edges were joined
    # the tiles' outputs were only read: their checksums still match the journal
    assert all(Journal(out).is_done(p.stem, p) for p in tiles)


def test_scene_blocks_polygons_equal_scene_polygons(tmp_path, landsat_path):
    """One scene run as 3 x 3 blocks (the main case): merged polygons == whole-scene ones."""
    out = tmp_path / "out"
    ovr = ("outputs.quicklook=false", "outputs.polygons=true", "model.threshold=0.0")
    res = run_batch("flood", [landsat_path], out, overrides=ovr, processes=False, block_size=128)
    assert len(res.done) == 9 and "polygons" in res.outputs
    with rasterio.open(res.outputs["mosaic"]) as m, rasterio.open(landsat_path) as scene:
        a, transform = m.read(1), m.transform
        assert m.shape == scene.shape and transform == scene.transform
    ref = _reference(a, transform)
    _assert_same(out / "polygons.gpkg", ref, abs(transform.a * transform.e))
