"""Tiles of one rotated grid mosaic (VRT, COG, merged polygons) like north-up tiles; tiles on
really different grids get a note naming both tiles and the differing value.

Independent references: rasterio/GDAL reading the VRT/COG and the whole scene's labels, and
``rasterio.features.shapes`` of the whole label array on the rotated transform.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
from affine import Affine
from rasterio.control import GroundControlPoint
from rasterio.crs import CRS
from rasterio.windows import Window

from geomed_seg.batch.mosaic import write_cog_mosaic, write_vrt
from geomed_seg.batch.runner import run_batch
from geomed_seg.batch.vectors import merge_polygons
from geomed_seg.io.geotiff import open_geotiff
from geomed_seg.io.vector import write_polygons
from geomed_seg.pipelines.runner import run_pipeline
from tests.batch.test_vectors import CLASSES, NODATA, _assert_same, _mosaic, _reference

#: A 17-degree rotated grid with the bundled scene's pixel size and origin.
ROTATED = (
    Affine.translation(288776.25, 9120760.75) @ Affine.rotation(17.0) @ Affine.scale(28.5, -28.5)
)


def _cut(a: np.ndarray, transform: Affine, folder: Path, n: int = 3) -> tuple[list, list]:
    """Cut labels ``a`` (row, col) into n x n uneven tiles of ``transform``'s grid."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = np.linspace(0, a.shape[0], n + 1).astype(int)
    cols = np.linspace(0, a.shape[1], n + 1).astype(int)
    labels, gpkgs = [], []
    for i in range(n):
        for j in range(n):
            r0, r1, c0, c1 = rows[i], rows[i + 1], cols[j], cols[j + 1]
            tif = folder / f"t{i}{j}.tif"
            with rasterio.open(tif, "w", driver="GTiff", width=c1 - c0, height=r1 - r0, count=1,
                               dtype="uint8", nodata=NODATA, crs=CRS.from_epsg(31985),
                               transform=transform @ Affine.translation(c0, r0)) as dst:  # fmt: skip
                dst.write(a[r0:r1, c0:c1], 1)
            gpkg = folder / f"t{i}{j}.gpkg"
            write_polygons(open_geotiff(tif), gpkg, classes=CLASSES)
            labels.append(tif)
            gpkgs.append(gpkg)
    return labels, gpkgs


@pytest.mark.parametrize("angle", [17.0, -123.0])
def test_rotated_tiles_vrt_cog_and_polygons_equal_whole(tmp_path, angle):
    transform = (
        Affine.translation(288776.25, 9120760.75)
        @ Affine.rotation(angle)
        @ Affine.scale(28.5, -28.5)
    )
    a = _mosaic(0)
    labels, gpkgs = _cut(a, transform, tmp_path / "tiles")
    assert write_vrt(labels[::-1], tmp_path / "m.vrt") is None
    write_cog_mosaic(tmp_path / "m.vrt", tmp_path / "m.tif", classes_from=labels[0])
    for mosaic in ("m.vrt", "m.tif"):
        with rasterio.open(tmp_path / mosaic) as m:
            np.testing.assert_array_equal(m.read(1), a)
            assert m.transform.almost_equals(transform, precision=1e-6)
            assert m.crs == CRS.from_epsg(31985)
    merge_polygons(labels, gpkgs, tmp_path / "p.gpkg")
    _assert_same(tmp_path / "p.gpkg", _reference(a, transform), 28.5**2)


def _rotated_scene(landsat: Path, path: Path) -> Path:
    with rasterio.open(landsat) as src:
        prof, data = src.profile.copy(), src.read()
    prof.update(transform=ROTATED)
    with rasterio.open(path, "w", **prof) as dst:
        dst.write(data)
    return path


def _cut_scene(scene: Path, folder: Path, n: int = 3) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    with rasterio.open(scene) as ds:
        rows = np.linspace(0, ds.height, n + 1).astype(int)
        cols = np.linspace(0, ds.width, n + 1).astype(int)
        for i in range(n):
            for j in range(n):
                win = Window(cols[j], rows[i], cols[j + 1] - cols[j], rows[i + 1] - rows[i])
                prof = ds.profile.copy()
                prof.update(width=win.width, height=win.height,
                            transform=ds.window_transform(win))  # fmt: skip
                for key in ("blockxsize", "blockysize", "tiled"):
                    prof.pop(key, None)
                path = folder / f"tile_{i}_{j}.tif"
                with rasterio.open(path, "w", **prof) as dst:
                    dst.write(ds.read(window=win))
                out.append(path)
    return out


def test_rotated_landsat_batch_equals_whole_scene(tmp_path, landsat_path):
    """3 x 3 tiles of the rotated Landsat scene: VRT, COG and polygons equal the whole run."""
    scene = _rotated_scene(landsat_path, tmp_path / "rotated.tif")
    tiles = _cut_scene(scene, tmp_path / "tiles")
    # pointwise labels (fixed NDWI threshold, no object filter) so tiling cannot change them
    ovr = ("outputs.quicklook=false", "outputs.polygons=true", "model.threshold=0.0",
           "postprocess.min_object_size=0")  # fmt: skip
    whole = tmp_path / "whole"
    run_pipeline("flood", input=scene, output=whole, overrides=ovr)
    res = run_batch("flood", tiles, tmp_path / "out", overrides=ovr, processes=False, cog=True)
    assert not res.failed and {"mosaic", "cog", "polygons"} <= set(res.outputs)
    with rasterio.open(whole / "labels.tif") as ref:
        ref_labels, ref_t, ref_crs = ref.read(1), ref.transform, ref.crs
        ref_cmap, ref_tags = ref.colormap(1), ref.tags()
    assert ref_t == ROTATED
    for key in ("mosaic", "cog"):
        with rasterio.open(res.outputs[key]) as m:
            np.testing.assert_array_equal(m.read(1), ref_labels)
            assert m.transform.almost_equals(ref_t, precision=1e-6) and m.crs == ref_crs
            # the class table travels into the mosaics (colour table and class names)
            assert m.colormap(1) == ref_cmap
            assert m.tags()["GEOMED_CLASSES"] == ref_tags["GEOMED_CLASSES"]
    assert (ref_labels == 1).sum() > 1000
    _, _, wkb, _ = pyogrio.raw.read(whole / "polygons.gpkg")
    _, _, wkb_m, _ = pyogrio.raw.read(res.outputs["polygons"])
    a, b = shapely.union_all(shapely.from_wkb(wkb)), shapely.union_all(shapely.from_wkb(wkb_m))
    assert shapely.symmetric_difference(a, b).area < 1e-6 * 28.5**2
    assert len(wkb_m) == len(wkb)  # regions cut by tile edges were joined


def _tile(path: Path, transform: Affine, crs: int = 31985, shape=(6, 5), **kw) -> Path:
    with rasterio.open(path, "w", driver="GTiff", width=shape[1], height=shape[0], count=1,
                       dtype=kw.pop("dtype", "uint8"), crs=CRS.from_epsg(crs),
                       transform=transform, **kw) as dst:  # fmt: skip
        dst.write(np.ones(shape, dst.dtypes[0]), 1)
    return path


@pytest.mark.parametrize(
    ("other", "expected"),
    [
        (
            dict(transform=ROTATED @ Affine.scale(2.0)),
            "pixel size differs ((57, 57) vs (28.5, 28.5)",
        ),
        (dict(transform=ROTATED @ Affine.rotation(5.0)), "rotation differs"),
        (dict(transform=ROTATED @ Affine.translation(5.25, 0)), "sub-pixel offset (0.25, 0) px"),
        (dict(transform=ROTATED, crs=32725), "CRS differs"),
        (dict(transform=ROTATED, dtype="uint16"), "data type differs"),
    ],
)
def test_really_different_grids_note_both_tiles_and_value(tmp_path, other, expected):
    a = _tile(tmp_path / "a.tif", ROTATED)
    b = _tile(tmp_path / "b.tif", **other)
    note = write_vrt([a, b], tmp_path / "m.vrt")
    assert note is not None and expected in note, note
    assert "a.tif" in note and "b.tif" in note and not (tmp_path / "m.vrt").exists()


def test_rotated_neighbours_are_not_reported_as_differing(tmp_path):
    a = _tile(tmp_path / "a.tif", ROTATED)
    b = _tile(tmp_path / "b.tif", ROTATED @ Affine.translation(5, 0))
    assert write_vrt([a, b], tmp_path / "m.vrt") is None


def test_gcp_tiles_get_a_note_not_a_stacked_mosaic(tmp_path):
    paths = []
    for k in range(2):
        gcps = [GroundControlPoint(r, c, 1000.0 + 10 * (c + 5 * k), 2000.0 - 10 * r)
                for r, c in ((0, 0), (0, 5), (6, 0), (6, 5))]  # fmt: skip
        p = tmp_path / f"g{k}.tif"
        with rasterio.open(p, "w", driver="GTiff", width=5, height=6, count=1, dtype="uint8",
                           gcps=gcps, crs=CRS.from_epsg(31985)) as dst:  # fmt: skip
            dst.write(np.ones((6, 5), np.uint8), 1)
        paths.append(p)
    note = write_vrt(paths, tmp_path / "m.vrt")
    assert note is not None and "GCPs" in note and "g0.tif" in note
