"""GeoTIFF/COG adapter against rasterio (reader and writer) and rio-cogeo (COG validator)."""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from xml.etree import ElementTree as ET

import dask.array as da
import numpy as np
import pytest
import rasterio
import rasterio.shutil
from affine import Affine
from rasterio.crs import CRS
from rio_cogeo.cogeo import cog_validate

from geomed_seg.core.grid import GeoGrid
from geomed_seg.core.image import Image
from geomed_seg.errors import OutputExistsError, ReadError, UnsupportedFormatError
from geomed_seg.io import geotiff
from geomed_seg.io.geotiff import GeoTIFFBlockWriter, block_chunks, open_geotiff, write_geotiff
from tests.io.conftest import NORTH_UP, UTM33, ramp

CLASSES = [
    {"index": 1, "name": "water", "color": (0, 0, 255)},
    {"index": 7, "name": "forest", "color": (0, 128, 0, 255)},
    {"index": 200, "name": "urban", "color": (200, 0, 0)},
]


def _read(path: Path) -> tuple[np.ndarray, dict]:
    with rasterio.open(path) as src:
        return src.read(), src.profile


def _files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


# -- reading ---------------------------------------------------------------------------------
def test_landsat_opens_lazily_and_matches_rasterio(landsat_path, monkeypatch):
    calls = []
    original = geotiff._WindowReader.__getitem__
    monkeypatch.setattr(
        geotiff._WindowReader, "__getitem__", lambda s, k: calls.append(k) or original(s, k)
    )
    img = open_geotiff(landsat_path)
    assert calls == [] and isinstance(img.darray, da.Array)
    with rasterio.open(landsat_path) as src:
        ref, crs, transform = src.read(), src.crs, src.transform
    assert img.grid == GeoGrid(crs, transform, ref.shape[1:])
    assert img.grid.crs == crs and img.grid.transform == transform
    np.testing.assert_array_equal(img.compute(), ref)
    assert calls, "pixels must come from windowed reads"
    assert img.attrs["band_names"] == [f"band_{i}" for i in range(1, 7)]
    assert img.channel_names == img.attrs["band_names"]


def test_chunks_are_multiples_of_tiles_and_strips(make_tif):
    data = ramp(2, 1100, 1000)
    tiled = open_geotiff(make_tif("t.tif", data, tiled=True, blockxsize=256, blockysize=256))
    assert tiled.chunks[0] == (2,)
    for axis in (1, 2):
        assert all(c % 256 == 0 for c in tiled.chunks[axis][:-1])
    strips = open_geotiff(make_tif("s.tif", data, blockysize=16))
    assert strips.chunks[2] == (1000,) and all(c % 16 == 0 for c in strips.chunks[1][:-1])
    np.testing.assert_array_equal(strips.compute(), data)
    # big files: ~64 MiB chunks of whole blocks, all bands together
    nb, ny, nx = block_chunks((4, 16384, 16384), (512, 512), 2)
    assert nb == 4 and ny % 512 == 0 and nx % 512 == 0
    assert 32 * 2**20 <= nb * ny * nx * 2 <= 64 * 2**20
    assert block_chunks((3, 100000, 20000), (1, 20000), 1) == (3, 1118, 20000)
    user = open_geotiff(make_tif("u.tif", data), chunks={"y": 300, "x": 400})
    assert user.chunks == ((2,), (300, 300, 300, 200), (400, 400, 200))
    np.testing.assert_array_equal(user.compute(), data)


def test_graph_pickles_for_distributed(tiled_tif):
    img = open_geotiff(tiled_tif)
    again = pickle.loads(pickle.dumps(img.darray))
    np.testing.assert_array_equal(again.compute(), _read(tiled_tif)[0])


def test_per_band_nodata_vrt_gives_mask(make_tif, tmp_path):
    data = (ramp(2, 64, 80) % 200 + 10).astype("uint8")
    data[0, :10] = 0  # band 1 nodata 0
    data[1, 5:20] = 9  # band 2 nodata 9 -> rows 5..9 invalid in both
    src = make_tif("src.tif", data)
    bands = "".join(
        f'<VRTRasterBand dataType="Byte" band="{b}"><NoDataValue>{nd}</NoDataValue>'
        f"<SimpleSource><SourceFilename>{src}</SourceFilename><SourceBand>{b}</SourceBand>"
        "</SimpleSource></VRTRasterBand>"
        for b, nd in ((1, 0), (2, 9))
    )
    vrt = tmp_path / "mixed.vrt"
    vrt.write_text(
        f'<VRTDataset rasterXSize="80" rasterYSize="64"><SRS>{UTM33}</SRS>'
        f"<GeoTransform>{', '.join(map(str, NORTH_UP.to_gdal()))}</GeoTransform>{bands}</VRTDataset>"
    )
    img = open_geotiff(vrt)
    assert img.attrs["band_nodata"] == [0.0, 9.0] and img.nodata == 0.0
    assert img.mask is not None
    with rasterio.open(vrt) as ds:
        ref_mask = ds.dataset_mask() > 0
    expected = (data[0] != 0) | (data[1] != 9)
    np.testing.assert_array_equal(ref_mask, expected)
    np.testing.assert_array_equal(img.valid_mask().compute(), expected)
    assert not expected[5:10].any() and expected[:5].all()


def test_internal_mask_read_and_written(tmp_path):
    data = ramp(2, 600, 700, "uint8")
    mask = np.ones((600, 700), bool)
    mask[100:300, 50:400] = False
    src = tmp_path / "masked.tif"
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        with rasterio.open(
            src, "w", driver="GTiff", width=700, height=600, count=2, dtype="uint8",
            crs=UTM33, transform=NORTH_UP, tiled=True,
        ) as dst:  # fmt: skip
            dst.write(data)
            dst.write_mask(mask.astype("uint8") * 255)
    assert _files(tmp_path) == {"masked.tif"}  # internal, not a .msk sidecar
    img = open_geotiff(src)
    assert img.nodata is None and img.mask is not None
    np.testing.assert_array_equal(img.valid_mask().compute(), mask)
    out = write_geotiff(img, tmp_path / "out.tif")
    with rasterio.open(out) as ds:
        assert [MaskFlags for MaskFlags in ds.mask_flag_enums[0]][0].name == "per_dataset"
        np.testing.assert_array_equal(ds.dataset_mask() > 0, mask)
        np.testing.assert_array_equal(ds.read(), data)


# -- COG writing -----------------------------------------------------------------------------
def test_cog_roundtrip_keeps_pixels_geometry_nodata(tiled_tif, tmp_path):
    img = open_geotiff(tiled_tif)
    out = write_geotiff(img, tmp_path / "cog.tif")
    valid, errors, _ = cog_validate(str(out))
    assert valid, errors
    ref, prof = _read(tiled_tif)
    got, oprof = _read(out)
    np.testing.assert_array_equal(got, ref)
    assert oprof["crs"] == prof["crs"] and oprof["transform"] == prof["transform"]
    assert oprof["nodata"] == 0 and oprof["blockxsize"] == 512 and oprof["compress"] == "deflate"
    with rasterio.open(out) as ds:
        assert ds.overviews(1)[:1] == [2]
        assert ds.tags(ns="IMAGE_STRUCTURE").get("PREDICTOR") == "2"
        assert ds.descriptions == (None, None, None)  # none in the input: none invented (#17)


@pytest.mark.parametrize(
    ("crs", "transform"),
    [
        pytest.param(UTM33, Affine.translation(5e5, 4e6) @ Affine.rotation(17) @ Affine.scale(10, -10), id="rotated"),
        pytest.param(
            CRS.from_proj4("+proj=tmerc +lat_0=1 +lon_0=13.25 +k=0.9993 +x_0=412345 +y_0=7 +ellps=GRS80 +units=m").to_wkt(),
            NORTH_UP,
            id="custom-wkt",
        ),
        pytest.param(None, Affine(0.5, 0, 0, 0, -0.5, 0), id="no-crs"),
        pytest.param(UTM33, Affine(10, 0, 5e5, 0, 10, 3.99e6), id="south-up"),
    ],
)  # fmt: skip
def test_geometry_roundtrip(make_tif, tmp_path, crs, transform):
    data = ramp(1, 300, 200, "int16")
    src = make_tif("src.tif", data, crs=crs, transform=transform)
    img = open_geotiff(src)
    with rasterio.open(src) as ds:
        assert img.grid.transform == ds.transform and img.grid.crs == ds.crs
    out = write_geotiff(img, tmp_path / "out.tif")
    with rasterio.open(out) as ds, rasterio.open(src) as ref:
        assert ds.transform == ref.transform == transform
        assert (ds.crs is None) == (crs is None)
        if crs is not None:
            assert ds.crs == ref.crs == CRS.from_user_input(crs)
        np.testing.assert_array_equal(ds.read(), data)
    assert cog_validate(str(out))[0]


def test_nan_nodata_float_roundtrip(make_tif, tmp_path):
    data = ramp(2, 100, 120, "float32") / 7
    data[:, 10:20, 30:50] = np.nan
    img = open_geotiff(make_tif("f.tif", data, nodata=np.nan))
    assert np.isnan(img.nodata) and img.mask is None
    np.testing.assert_array_equal(img.valid_mask().compute(), ~np.isnan(data).any(0))
    out = write_geotiff(img, tmp_path / "out.tif")
    got, prof = _read(out)
    assert np.isnan(prof["nodata"])
    np.testing.assert_array_equal(got, data)  # NaNs in the same places
    with rasterio.open(out) as ds:
        assert ds.tags(ns="IMAGE_STRUCTURE").get("PREDICTOR") == "3"


def test_label_cog_colormap_categories_mode_overviews(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.choice(np.array([1, 7, 200], np.uint8), size=(1100, 1000))
    grid = GeoGrid(CRS.from_user_input(UTM33), NORTH_UP, labels.shape)
    img = Image.from_array(labels, grid, nodata=0, chunks=(1, 400, 300))
    out = write_geotiff(img, tmp_path / "labels.tif", classes=CLASSES)
    assert cog_validate(str(out))[0]
    with rasterio.open(out) as ds:
        cmap = ds.colormap(1)
        assert cmap[1] == (0, 0, 255, 255) and cmap[7] == (0, 128, 0, 255)
        assert cmap[200] == (200, 0, 0, 255)
        assert ds.overviews(1)[:1] == [2]
        np.testing.assert_array_equal(ds.read(1), labels)
    with rasterio.open(out, overview_level=0) as ovr:
        assert set(np.unique(ovr.read(1))) <= {1, 7, 200}  # mode/nearest, never averages
    # GDAL itself (not our reader) sees the category names: export to VRT and look
    rasterio.shutil.copy(out, tmp_path / "probe.vrt", driver="VRT")
    cats = ET.parse(tmp_path / "probe.vrt").getroot().find(".//CategoryNames")
    names = [c.text or "" for c in cats.findall("Category")]
    assert names[1] == "water" and names[7] == "forest" and names[200] == "urban"
    back = open_geotiff(out)
    assert [(c["index"], c["name"]) for c in back.attrs["classes"]] == [
        (1, "water"), (7, "forest"), (200, "urban")
    ]  # fmt: skip
    # write_geotiff picks classes up from attrs: a label COG copies with its classes
    again = write_geotiff(back, tmp_path / "copy.tif")
    assert open_geotiff(again).attrs["classes"] == back.attrs["classes"]


def test_block_writer_windows(tmp_path):
    grid = GeoGrid(CRS.from_user_input(UTM33), NORTH_UP, (700, 900))
    full = ramp(2, 700, 900, "float32")
    with GeoTIFFBlockWriter(tmp_path / "w.tif", grid, 2, "float32", nodata=-1.0) as w:
        for r in range(0, 700, 512):
            for c in range(0, 900, 512):
                w.write(full[:, r : r + 512, c : c + 512], (slice(r, r + 512), slice(c, c + 512)))
    got, prof = _read(tmp_path / "w.tif")
    np.testing.assert_array_equal(got, full)
    assert prof["nodata"] == -1.0
    assert _files(tmp_path) == {"w.tif"}


# -- atomicity -------------------------------------------------------------------------------
def test_existing_output_not_overwritten(tiled_tif, tmp_path):
    out = tmp_path / "out.tif"
    out.write_bytes(b"keep me")
    with pytest.raises(OutputExistsError, match=re.escape(str(out))):
        write_geotiff(open_geotiff(tiled_tif), out)
    assert out.read_bytes() == b"keep me"
    write_geotiff(open_geotiff(tiled_tif), out, overwrite=True)
    np.testing.assert_array_equal(_read(out)[0], _read(tiled_tif)[0])


def test_failure_mid_write_leaves_nothing(tiled_tif, tmp_path):
    img = open_geotiff(tiled_tif)

    def boom(block, block_id=None):
        if block_id[1:] == (1, 1):
            raise RuntimeError("chunk failed")
        return block

    bad = Image.from_array(
        img.darray.rechunk((3, 512, 512)).map_blocks(boom, dtype=img.dtype), img.grid
    )
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(RuntimeError, match="chunk failed"):
        write_geotiff(bad, out_dir / "x.tif")
    assert _files(out_dir) == set()
    (out_dir / "x.tif").write_bytes(b"old")
    with pytest.raises(RuntimeError):
        write_geotiff(bad, out_dir / "x.tif", overwrite=True)
    assert _files(out_dir) == {"x.tif"} and (out_dir / "x.tif").read_bytes() == b"old"


# -- bad inputs ------------------------------------------------------------------------------
def test_missing_and_empty(tmp_path):
    with pytest.raises(ReadError, match="no such file"):
        open_geotiff(tmp_path / "nope.tif")
    empty = tmp_path / "empty.tif"
    empty.touch()
    with pytest.raises(ReadError, match=re.escape(f"{empty}: file is empty")):
        open_geotiff(empty)


def test_text_file_named_tif(tmp_path):
    txt = tmp_path / "notes.tif"
    txt.write_text("this is not a raster\n" * 10)
    with pytest.raises(UnsupportedFormatError, match=re.escape(str(txt))):
        open_geotiff(txt)


@pytest.mark.parametrize("kind", ["gtiff", "cog"])
def test_truncated_file_raises_read_error(tiled_tif, tmp_path, kind):
    src = (
        tiled_tif if kind == "gtiff" else write_geotiff(open_geotiff(tiled_tif), tmp_path / "c.tif")
    )
    cut = tmp_path / f"cut-{kind}.tif"
    raw = src.read_bytes()
    cut.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ReadError, match=re.escape(str(cut))):
        open_geotiff(cut).compute()  # at open (IFD or block offsets) or at the latest on read


def test_corrupt_tile_raises_read_error_on_compute(tiled_tif, tmp_path):
    with rasterio.open(tiled_tif) as src:
        off = int(src.get_tag_item("BLOCK_OFFSET_1_1", "TIFF", bidx=1))
        size = int(src.get_tag_item("BLOCK_SIZE_1_1", "TIFF", bidx=1))
    raw = bytearray(tiled_tif.read_bytes())
    raw[off : off + size] = b"\xff" * size
    bad = tmp_path / "bad.tif"
    bad.write_bytes(bytes(raw))
    img = open_geotiff(bad)  # header and first/last blocks are intact
    with pytest.raises(ReadError, match=re.escape(str(bad)) + ".*TIFFReadEncodedTile"):
        img.compute()


def test_classes_from_gdal_category_names(make_tif, tmp_path):
    """A label GeoTIFF made by GDAL (no GEOMED tag) reads back its category names and colours."""
    src = make_tif("plain.tif", (np.indices((1, 40, 50)).sum(0) % 3).astype("uint8"))
    with rasterio.open(src, "r+") as ds:
        ds.write_colormap(1, {0: (0, 0, 0), 1: (0, 0, 255), 2: (10, 200, 10)})
    rasterio.shutil.copy(src, tmp_path / "plain.vrt", driver="VRT")
    xml = (tmp_path / "plain.vrt").read_text()
    cats = "<CategoryNames><Category></Category><Category>water</Category><Category>grass</Category></CategoryNames>"
    (tmp_path / "named.vrt").write_text(xml.replace("<ColorTable>", cats + "<ColorTable>", 1))
    out = tmp_path / "gdal_labels.tif"
    rasterio.shutil.copy(tmp_path / "named.vrt", out, driver="GTiff")  # GDAL writes the .aux.xml
    assert (tmp_path / "gdal_labels.tif.aux.xml").exists()
    classes = open_geotiff(out).attrs["classes"]
    assert classes == [
        {"index": 1, "name": "water", "color": [0, 0, 255, 255]},
        {"index": 2, "name": "grass", "color": [10, 200, 10, 255]},
    ]


def test_plain_tiled_geotiff_with_classes(tmp_path):
    labels = (np.indices((600, 700)).sum(0) % 3).astype(np.uint8)
    grid = GeoGrid(CRS.from_user_input(UTM33), NORTH_UP, labels.shape)
    out = write_geotiff(
        Image.from_array(labels, grid), tmp_path / "plain.tif", cog=False, classes="0:a,1:b,2:c"
    )
    assert _files(tmp_path) == {"plain.tif", "plain.tif.aux.xml", "plain.qml"}  # + QGIS style
    with rasterio.open(out) as ds:
        assert ds.profile["tiled"] and ds.profile["blockxsize"] == 512
        assert ds.overviews(1) == [] and ds.compression.name == "deflate"
        np.testing.assert_array_equal(ds.read(1), labels)
    assert [c["name"] for c in open_geotiff(out).attrs["classes"]] == ["a", "b", "c"]


def test_gdal_virtual_path_opens_without_local_checks(tiled_tif):
    from rasterio.io import MemoryFile

    from geomed_seg.io.registry import detect_format, open_image

    with MemoryFile(tiled_tif.read_bytes(), ext=".tif") as mem:
        assert mem.name.startswith("/vsimem/") and detect_format(mem.name) == "geotiff"
        img = open_image(mem.name)
        np.testing.assert_array_equal(img.compute(), _read(tiled_tif)[0])
