"""``geomed-seg classical``: outputs read back with rasterio against independent NumPy results."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS
from skimage.filters import threshold_otsu
from skimage.measure import label

from geomed_seg.cli import main
from tests.geo_truth import geodesic_pixel_areas

NAMES = "blue,green,red,nir,swir1,swir2"


def test_ndwi_otsu_water_cog(landsat_path, tmp_path, capsys):
    out = tmp_path / "water.tif"
    rc = main(
        ["classical", "ndwi", str(landsat_path), "-o", str(out), "--band-names", NAMES, "--otsu"]
    )
    assert rc == 0, capsys.readouterr().err
    with rasterio.open(landsat_path) as src, rasterio.open(out) as dst:
        arr = src.read().astype(np.float64)
        water = dst.read(1)
        assert dst.transform == src.transform and dst.crs == src.crs
    with np.errstate(invalid="ignore", divide="ignore"):
        ndwi = (arr[1] - arr[3]) / (arr[1] + arr[3])
    t = threshold_otsu(ndwi[np.isfinite(ndwi)], nbins=1024)
    ref = ndwi > t
    agree = (water[np.isfinite(ndwi)] == ref[np.isfinite(ndwi)]).mean()
    assert agree > 0.998
    assert "threshold=" in capsys.readouterr().out


def test_instances_with_table_and_errors(tmp_path, capsys):
    sem = np.zeros((40, 50), np.uint8)
    sem[5:10, 5:20] = 1
    sem[20:30, 30:45] = 2
    sem[20:30, 10:12] = 1
    src = tmp_path / "sem.tif"
    t = Affine(5.0, 0, 1000.0, 0, -5.0, 2000.0)
    with rasterio.open(
        src,
        "w",
        driver="GTiff",
        width=50,
        height=40,
        count=1,
        dtype="uint8",
        crs="EPSG:32633",
        transform=t,
    ) as ds:
        ds.write(sem, 1)
    out, tab = tmp_path / "inst.tif", tmp_path / "inst.csv"
    rc = main(["classical", "instances", str(src), "-o", str(out), "--table", str(tab)])
    assert rc == 0, capsys.readouterr().err
    with rasterio.open(out) as ds:
        ids = ds.read(1)
    ref = label(sem)
    assert ids.max() == ref.max() == 3
    table = pd.read_csv(tab)
    # x = 1000 m lies ~4.5° off the UTM central meridian: the true ground area is 0.54 %
    # below the CRS m² (UTM scale 1.0027 there), issue 13; pyproj.Geod of the same pixels
    rows, cols = np.nonzero(ids)
    truth = geodesic_pixel_areas(CRS.from_epsg(32633), t, rows, cols)
    expected = sorted(np.bincount(ids[rows, cols], weights=truth)[1:])
    assert sorted(table["area_m2"]) == pytest.approx(expected, rel=1e-5)
    assert sorted(table["area_m2"]) == pytest.approx([500.0, 1875.0, 3750.0], rel=0.006)
    pan_tif, pan_png = tmp_path / "pan.tif", tmp_path / "pan.png"
    assert (
        main(
            [
                "classical",
                "instances",
                str(src),
                "-o",
                str(tmp_path / "i2.tif"),
                "--panoptic",
                str(pan_tif),
                "--things",
                "1",
            ]
        )
        == 0
    )
    with rasterio.open(pan_tif) as ds:
        pan = ds.read(1)
    assert set(np.unique(pan)) == {0, 1001, 1002, 2000}  # class 2 is stuff here
    assert (
        main(
            [
                "classical",
                "instances",
                str(src),
                "-o",
                str(tmp_path / "i3.tif"),
                "--panoptic",
                str(pan_png),
            ]
        )
        == 0
    )
    assert (tmp_path / "pan.json").exists()
    # a second run without --overwrite refuses; unknown method and missing seed are user errors
    assert main(["classical", "instances", str(src), "-o", str(out)]) == 2
    assert main(["classical", "bogus", str(src), "-o", str(tmp_path / "b.tif")]) == 2
    assert (
        main(
            [
                "classical",
                "region-grow",
                str(src),
                "-o",
                str(tmp_path / "r.tif"),
                "--tolerance",
                "1",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "unknown method 'bogus'" in err and "--seed" in err
    assert not (tmp_path / "r.tif").exists()


def test_region_grow_and_kmeans(tmp_path, capsys):
    a = np.zeros((30, 30), np.float32)
    a[10:20, 10:20] = 5
    src = tmp_path / "a.tif"
    t = Affine(1.0, 0, 0.0, 0, -1.0, 30.0)
    with rasterio.open(
        src, "w", driver="GTiff", width=30, height=30, count=1, dtype="float32", transform=t
    ) as ds:
        ds.write(a, 1)
    out = tmp_path / "rg.tif"
    # world point of pixel (row 15, col 12) centre
    assert (
        main(
            [
                "classical",
                "region-grow",
                str(src),
                "-o",
                str(out),
                "--seed",
                "12.5,14.5",
                "--tolerance",
                "0.5",
            ]
        )
        == 0
    )
    with rasterio.open(out) as ds:
        np.testing.assert_array_equal(ds.read(1), (a == 5).astype(np.uint8))
    out2 = tmp_path / "km.tif"
    assert main(["classical", "kmeans", str(src), "-o", str(out2), "--classes", "2"]) == 0
    with rasterio.open(out2) as ds:
        np.testing.assert_array_equal(ds.read(1), (a == 5).astype(np.uint8))


def test_instances_on_nifti_volume_table_in_mm3(tmp_path, capsys):
    import nibabel as nib

    vol = np.zeros((10, 12, 8), np.uint8)  # nibabel (i, j, k)
    vol[1:4, 2:5, 1:3] = 1  # 18 voxels
    vol[6:9, 6:10, 4:7] = 2  # 36 voxels
    aff = np.diag([0.5, 1.0, 2.0, 1.0])
    src = tmp_path / "seg.nii.gz"
    nib.save(nib.Nifti1Image(vol, aff), src)
    out, tab = tmp_path / "inst.nii.gz", tmp_path / "inst.json"
    assert main(["classical", "instances", str(src), "-o", str(out), "--table", str(tab)]) == 0, (
        capsys.readouterr().err
    )
    ids = np.asarray(nib.load(out).dataobj)
    assert ids.shape == vol.shape and ids.max() == 2
    np.testing.assert_allclose(nib.load(out).affine, aff)
    table = pd.read_json(tab)
    assert sorted(table["volume_mm3"]) == [18.0, 36.0]
    row = table[table["n_pixels"] == 18].iloc[0]
    # centre (i, j, k) = (2, 3, 1.5) -> RAS = (1.0, 3.0, 3.0)
    assert (row.centroid_r, row.centroid_a, row.centroid_s) == (1.0, 3.0, 3.0)
