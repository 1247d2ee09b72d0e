"""Instance ids across chunk borders, instance tables and panoptic encodings."""

from __future__ import annotations

import json

import dask.array as da
import numpy as np
import pandas as pd
import pytest
from affine import Affine
from PIL import Image as PILImage
from rasterio.crs import CRS
from skimage.measure import label, regionprops

from geomed_seg.core import GeoGrid, Image, VoxelGrid
from geomed_seg.core.labels import ClassInfo
from geomed_seg.instances.components import label_components
from geomed_seg.instances.instances import instance_table, semantic_to_instances, write_table
from geomed_seg.instances.panoptic import panoptic_ids, write_coco_panoptic


def same_partition(a, b) -> bool:
    if not np.array_equal(a == 0, b == 0):
        return False
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]


@pytest.mark.parametrize(
    ("shape", "chunks", "conn"),
    [
        ((64, 70), (16, 13), 1),
        ((64, 70), (16, 13), 2),
        ((18, 20, 22), (5, 7, 6), 1),
        ((18, 20, 22), (5, 7, 6), 2),
        ((18, 20, 22), (5, 7, 6), 3),
    ],
)
def test_components_equal_skimage_label_up_to_permutation(shape, chunks, conn):
    rng = np.random.default_rng(sum(shape) + conn)
    a = (rng.random(shape) < 0.4) * rng.integers(1, 3, shape)  # two classes touch
    ids, n = label_components(da.from_array(a, chunks=chunks), connectivity=conn)
    ours = ids.compute()
    ref = label(a, connectivity=conn)
    assert n == ref.max() and ours.max() == n
    assert same_partition(ours, ref)
    assert np.array_equal(np.unique(ours), np.arange(n + 1))  # consecutive


def test_object_spanning_many_chunks_gets_one_id():
    a = np.zeros((40, 40), np.uint8)
    a[5, 2:38] = 1  # a line through 5 chunks
    a[2:38, 30] = 1  # and a column, crossing
    a[20:22, 5:8] = 1  # a small separate object
    ids, n = label_components(da.from_array(a, chunks=8), connectivity=1)
    assert n == 2
    assert len(np.unique(ids.compute()[a == 1])) == 2


@pytest.fixture
def sem_image():
    sem = np.zeros((30, 40), np.uint8)
    sem[2:6, 3:9] = 1  # 24 px of class 1, crosses a chunk border
    sem[10:20, 10:12] = 2  # 20 px of class 2
    sem[10:20, 12:14] = 1  # touching class 1 object: 20 px
    sem[25:30, 35:40] = 3  # stuff class
    t = Affine(2.0, 0, 600000.0, 0, -2.0, 5000000.0)
    grid = GeoGrid(CRS.from_epsg(32632), t, sem.shape)
    return sem, Image.from_array(sem[None], grid, chunks=(1, 5, 7))


def test_instance_table_hand_computed(sem_image, tmp_path):
    sem, image = sem_image
    inst = semantic_to_instances(image)
    ids = inst.compute()[0]
    assert inst.attrs["n_instances"] == 4 and ids.dtype == np.uint32
    score = Image.from_array((sem[None] / 10.0).astype(np.float32), image.grid, chunks=(1, 9, 9))
    t = instance_table(inst, image, score)
    row = t[t["id"] == ids[3, 4]].iloc[0]
    assert row["class"] == 1 and row["n_pixels"] == 24 and row["area_m2"] == 24 * 4.0
    # centre of rows 2..5, cols 3..8 = (3.5, 5.5); pixel centre x = 600000 + 2*(5.5+0.5)
    assert row["centroid_x"] == pytest.approx(600012.0)
    assert row["centroid_y"] == pytest.approx(5000000.0 - 2 * 4.0)
    assert (row.bbox_row_min, row.bbox_row_max, row.bbox_col_min, row.bbox_col_max) == (2, 6, 3, 9)
    assert (row.left, row.top, row.right, row.bottom) == (600006.0, 4999996.0, 600018.0, 4999988.0)
    assert row["mean_score"] == pytest.approx(0.1)
    # against scikit-image regionprops on the whole image
    for p in regionprops(ids):
        r = t[t["id"] == p.label].iloc[0]
        assert r["n_pixels"] == p.area
        cy, cx = p.centroid
        assert (r.centroid_x, r.centroid_y) == pytest.approx(image.grid.xy(cy, cx))
    write_table(t, tmp_path / "t.csv")
    write_table(t, tmp_path / "t.json")
    assert len(pd.read_csv(tmp_path / "t.csv")) == 4
    assert json.loads((tmp_path / "t.json").read_text())[0]["id"] == t["id"].iloc[0]


def test_volume_table_in_mm3_and_ras():
    vol = np.zeros((6, 7, 8), np.uint8)
    vol[1:3, 2:4, 4:8] = 5  # 16 voxels
    aff = np.array([[0, 0, 3.0, -10], [0, 2.0, 0, 20], [1.0, 0, 0, 30], [0, 0, 0, 1]])
    image = Image.from_array(vol[None], VoxelGrid(aff, vol.shape), chunks=(1, 3, 3, 3))
    inst = semantic_to_instances(image)
    t = instance_table(inst, image)
    r = t.iloc[0]
    assert r["volume_mm3"] == 16 * 6.0
    # mean index z=1.5, y=2.5, x=5.5 -> nibabel (i, j, k) = (5.5, 2.5, 1.5)
    np.testing.assert_allclose(
        [r.centroid_r, r.centroid_a, r.centroid_s], aff[:3] @ [5.5, 2.5, 1.5, 1]
    )


def test_panoptic_encoding_and_coco_png(sem_image, tmp_path):
    sem, image = sem_image
    inst = semantic_to_instances(image)
    t = instance_table(inst, image)
    pan = panoptic_ids(image, inst, t, things=[1, 2])
    p = pan.compute()[0]
    assert set(np.unique(p)) == {0, 1001, 1002, 2001, 3000}
    assert np.all(p[sem == 3] == 3000) and np.all(p[sem == 0] == 0)
    classes = [ClassInfo(1, "building"), ClassInfo(2, "car"), ClassInfo(3, "water")]
    png, js = write_coco_panoptic(
        pan, tmp_path / "p.png", tmp_path / "p.json", classes=classes, things=[1, 2]
    )
    rgb = np.asarray(PILImage.open(png)).astype(np.int64)
    decoded = rgb[..., 0] + 256 * rgb[..., 1] + 256**2 * rgb[..., 2]
    np.testing.assert_array_equal(decoded, p)
    doc = json.loads(js.read_text())
    segs = {s["id"]: s for s in doc["annotations"][0]["segments_info"]}
    assert segs[3000]["category_id"] == 3 and segs[3000]["area"] == 25
    assert segs[3000]["bbox"] == [35, 25, 5, 5]
    assert {c["id"]: c["isthing"] for c in doc["categories"]} == {1: 1, 2: 1, 3: 0}


def test_watershed_split_separates_touching_disks(sem_image):
    yy, xx = np.indices((40, 60))
    m = ((yy - 20) ** 2 + (xx - 18) ** 2 <= 100) | ((yy - 20) ** 2 + (xx - 36) ** 2 <= 100)
    image = Image.from_array(
        m[None].astype(np.uint8), GeoGrid(None, Affine.identity(), m.shape), chunks=(1, 20, 30)
    )
    assert semantic_to_instances(image).attrs["n_instances"] == 1
    split = semantic_to_instances(image, split="watershed", min_distance=5, halo=30)
    ids = split.compute()[0]
    assert split.attrs["n_instances"] == 2
    assert ids[20, 10] != ids[20, 44] and ids[20, 10] > 0


def test_watershed_split_never_mixes_classes():
    yy, xx = np.indices((40, 60))
    sem = np.zeros((40, 60), np.uint8)
    sem[(yy - 20) ** 2 + (xx - 18) ** 2 <= 100] = 1
    sem[((yy - 20) ** 2 + (xx - 36) ** 2 <= 100) & (sem == 0)] = 2
    image = Image.from_array(
        sem[None], GeoGrid(None, Affine.identity(), sem.shape), chunks=(1, 20, 30)
    )
    inst = semantic_to_instances(image, split="watershed", min_distance=5, halo=30)
    ids = inst.compute()[0]
    for i in np.unique(ids[ids > 0]):
        assert len(np.unique(sem[ids == i])) == 1
    assert np.array_equal(ids > 0, sem > 0)
