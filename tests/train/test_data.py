"""Splits (by case, by file, in space) and weak water labels vs rasterio + scikit-image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from skimage.filters import threshold_otsu
from skimage.morphology import disk, opening, remove_small_objects

from geomed_seg.errors import ConfigError
from geomed_seg.io.registry import open_image
from geomed_seg.train.config import SpatialSplit, load_config
from geomed_seg.train.data import read_split_file, spatial_split, split_ids, weak_water_labels

ROOT = Path(__file__).resolve().parents[2]


def test_split_ids_is_seeded_and_disjoint():
    ids = [f"c{i}" for i in range(10)]
    tr, va = split_ids(ids, 0.3, seed=1)
    assert len(va) == 3 and not set(tr) & set(va) and sorted(tr + va) == sorted(ids)
    assert split_ids(ids, 0.3, seed=1) == (tr, va)


def test_split_file_formats_and_overlap(tmp_path):
    (tmp_path / "s.txt").write_text("train a\ntrain b  # comment\n\nval c\n")
    assert read_split_file(tmp_path / "s.txt") == (["a", "b"], ["c"])
    (tmp_path / "s.json").write_text('{"train": ["a"], "val": ["b"]}')
    assert read_split_file(tmp_path / "s.json") == (["a"], ["b"])
    (tmp_path / "bad.txt").write_text("train a\nval a\n")
    with pytest.raises(ConfigError, match="both train and val"):
        read_split_file(tmp_path / "bad.txt")


def test_spatial_split_parts_are_disjoint_with_gap(landsat_path):
    img = open_image(landsat_path)
    lab = img.sel_window([slice(None), slice(None)])
    lab = lab.with_data(lab.darray[:1])
    a, b = spatial_split(img, lab, SpatialSplit(axis="y", fraction=0.5, gap=4))
    assert a.image.spatial_shape == (174, 349) and b.image.spatial_shape == (174, 349)
    # geometry: the southern part starts 178 rows below the scene's origin
    t = img.grid.transform
    assert b.image.grid.transform.f == pytest.approx(t.f + 178 * t.e)
    c, d = spatial_split(img, lab, SpatialSplit(axis="x", fraction=0.5, train="last"))
    assert c.image.grid.transform.c > d.image.grid.transform.c  # east trains


def test_weak_water_labels_match_rasterio_skimage(landsat_path):
    with rasterio.open(landsat_path) as src:
        green, nir = src.read(2).astype(np.float64), src.read(4).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        ndwi = (green - nir) / (green + nir)
    water = ndwi > threshold_otsu(ndwi[np.isfinite(ndwi)])
    water = opening(water, disk(1)).astype(bool)
    water = remove_small_objects(water, max_size=15)
    water = ~remove_small_objects(~water, max_size=15)
    ours = weak_water_labels(open_image(landsat_path), {"green": 2, "nir": 4}).compute()[0]
    # the streamed Otsu may differ from scikit-image's by one histogram bin
    assert (ours == water).mean() > 0.999
    assert 0.1 < water.mean() < 0.3


def test_demo_configs_validate():
    for name in ("train_water.yaml", "train_brats.yaml"):
        cfg = load_config(ROOT / "configs" / name)
        assert cfg.output.is_absolute()
    water = load_config(ROOT / "configs" / "train_water.yaml").data.weak_water
    assert water.scene.is_file()
