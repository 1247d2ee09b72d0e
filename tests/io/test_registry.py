"""Format registry: magic bytes before suffix, clear errors, dispatch, entry-point plug-ins."""

from __future__ import annotations

import gzip
import re
import shutil
import subprocess
import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import rasterio
from rio_cogeo.cogeo import cog_validate

from geomed_seg.core.grid import VoxelGrid
from geomed_seg.core.image import Image
from geomed_seg.errors import InvalidInputError, ReadError, UnsupportedFormatError
from geomed_seg.io import registry
from geomed_seg.io.registry import Adapter, detect_format, open_image, write_image

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def nifti_path(tmp_path) -> Path:
    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)  # nibabel (i, j, k)
    path = tmp_path / "vol.nii"
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 3.0, 4.0, 1.0])), path)
    return path


def _dicom_file(path: Path) -> Path:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.PatientName = "Test"
    ds.save_as(path, enforce_file_format=True)
    return path


# -- detection -------------------------------------------------------------------------------
def test_magic_bytes_beat_suffix(tmp_path, landsat_path, nifti_path):
    tif = shutil.copy(landsat_path, tmp_path / "scene.dat")
    nii = shutil.copy(nifti_path, tmp_path / "volume.bin")
    gz = tmp_path / "volume.gz"
    gz.write_bytes(gzip.compress(nifti_path.read_bytes()))
    nii2 = tmp_path / "v2.img"
    nib.save(nib.Nifti2Image(np.zeros((2, 3, 4), np.float32), np.eye(4)), tmp_path / "v2.nii")
    (tmp_path / "v2.nii").rename(nii2)
    vrt = tmp_path / "mosaic.xml"
    with rasterio.open(landsat_path) as src:
        rasterio.shutil.copy(src, tmp_path / "m.vrt", driver="VRT")
    (tmp_path / "m.vrt").rename(vrt)
    dcm = _dicom_file(tmp_path / "slice.bin")
    zarr_dir = tmp_path / "store_without_suffix"
    zarr_dir.mkdir()
    (zarr_dir / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group"}')
    expected = {tif: "geotiff", nii: "nifti", gz: "nifti", nii2: "nifti", vrt: "vrt", dcm: "dicom"}
    for path, fmt in expected.items():
        assert detect_format(path) == fmt, path
    assert detect_format(zarr_dir) == "zarr"
    assert detect_format([dcm, dcm]) == "dicom"
    # a tif with a wrong suffix still opens as GeoTIFF, equal to rasterio's pixels
    with rasterio.open(landsat_path) as src:
        np.testing.assert_array_equal(open_image(tif).compute(), src.read())


def test_dicom_folder_detected_and_dispatched(tmp_path):
    dicom_data = pytest.importorskip("tests.io.dicom_data")
    folder = tmp_path / "series"
    folder.mkdir()
    dicom_data.make_series(folder)
    assert detect_format(folder) == "dicom"
    img = open_image(folder)
    assert img.kind == "volume"
    files = sorted(folder.iterdir())
    assert open_image(files).grid.almost_equals(img.grid)


def test_suffix_is_the_fallback(tmp_path):
    fake = tmp_path / "weird.tif"
    fake.write_text("plain text, not a TIFF\n")
    assert detect_format(fake) == "geotiff"  # suffix decides when no magic matches...
    with pytest.raises(UnsupportedFormatError, match=re.escape(str(fake))):
        open_image(fake)  # ...and the adapter refuses with the path


def test_unknown_missing_empty(tmp_path):
    unknown = tmp_path / "data.xyz"
    unknown.write_text("hello")
    with pytest.raises(UnsupportedFormatError, match=re.escape(str(unknown))) as err:
        open_image(unknown)
    assert ".tif" in str(err.value) and ".nii.gz" in str(err.value) and ".zarr" in str(err.value)
    missing = tmp_path / "missing.tif"
    with pytest.raises(ReadError, match=re.escape(f"{missing}: no such file or folder")):
        open_image(missing)
    empty = tmp_path / "empty.nii.gz"
    empty.touch()
    with pytest.raises(ReadError, match=re.escape(f"{empty}: file is empty (0 bytes)")):
        open_image(empty)
    with pytest.raises(ReadError, match="no such file"):
        detect_format(tmp_path / "nothing")
    plain_dir = tmp_path / "folder"
    plain_dir.mkdir()
    with pytest.raises(UnsupportedFormatError, match=re.escape(str(plain_dir))):
        open_image(plain_dir)


def test_series_only_for_dicom(landsat_path):
    with pytest.raises(InvalidInputError, match="DICOM only"):
        open_image(landsat_path, series="1.2.3")


# -- dispatch --------------------------------------------------------------------------------
def test_open_nifti_via_registry_matches_nibabel(nifti_path):
    img = open_image(nifti_path)
    ref = nib.load(nifti_path)
    assert img.kind == "volume" and np.allclose(img.grid.affine, ref.affine)
    np.testing.assert_array_equal(img.compute()[0], np.asarray(ref.dataobj).transpose(2, 1, 0))


def test_write_image_by_suffix(tmp_path, landsat_path, nifti_path):
    scene = open_image(landsat_path)
    cog = write_image(scene, tmp_path / "scene.tif")
    assert cog_validate(str(cog))[0]
    zarr_path = write_image(scene, tmp_path / "scene.zarr")
    assert detect_format(zarr_path) == "zarr"
    np.testing.assert_array_equal(open_image(zarr_path).compute(), scene.compute())
    vol = open_image(nifti_path)
    out = write_image(vol, tmp_path / "vol_copy.nii.gz")
    assert np.allclose(nib.load(out).affine, nib.load(nifti_path).affine)
    np.testing.assert_array_equal(nib.load(out).get_fdata(), nib.load(nifti_path).get_fdata())
    with pytest.raises(UnsupportedFormatError, match=re.escape(str(tmp_path / "x.png"))):
        write_image(scene, tmp_path / "x.png")
    with pytest.raises(InvalidInputError):
        write_image(vol, tmp_path / "vol.tif")  # a volume has no GeoTIFF form


# -- plug-ins --------------------------------------------------------------------------------
def _fake_open(path, chunks=None):
    arr = np.frombuffer(Path(path).read_bytes()[4:], dtype=np.uint8).reshape(1, 1, 1, -1)
    return Image.from_array(arr, VoxelGrid(np.eye(4), arr.shape[1:]))


def _fake_write(image, path, *, overwrite=False):
    Path(path).write_bytes(b"FAKE" + image.compute().astype(np.uint8).tobytes())
    return Path(path)


FAKE_ADAPTER = Adapter(
    "fake", _fake_open, _fake_write, (".fake",), lambda path, head: head[:4] == b"FAKE"
)


def test_entry_point_adapter(tmp_path, monkeypatch):
    ep = EntryPoint("fake", "tests.io.test_registry:FAKE_ADAPTER", registry.ENTRY_POINT_GROUP)
    monkeypatch.setattr(registry, "_entry_points", lambda: (ep,))
    registry._plugins.cache_clear()
    try:
        blob = tmp_path / "blob.bin"  # found by the plug-in's magic, not by suffix
        blob.write_bytes(b"FAKE\x01\x02\x03")
        assert detect_format(blob) == "fake"
        img = open_image(blob)
        np.testing.assert_array_equal(img.compute().ravel(), [1, 2, 3])
        out = write_image(img, tmp_path / "copy.fake")
        assert out.read_bytes() == b"FAKE\x01\x02\x03"
    finally:
        registry._plugins.cache_clear()


def test_opening_a_geotiff_imports_no_medical_or_torch_stack(landsat_path):
    code = (
        "import sys; from geomed_seg.io.registry import open_image; "
        f"open_image({str(landsat_path)!r}).compute(); "
        "print(sorted(m for m in ('torch', 'nibabel', 'pydicom', 'SimpleITK') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def _series_open(path, chunks=None, series=None):
    img = _fake_open(path, chunks)
    return Image.from_array(img.darray + int(series or 0), img.grid)


SERIES_ADAPTER = Adapter(
    "fake-series", _series_open, None, (".fks",), lambda path, head: head[:4] == b"FKS1",
    open_options=("series",),
)  # fmt: skip


def test_broken_plugin_is_skipped_and_a_plugin_takes_series(tmp_path, monkeypatch, caplog):
    """A plug-in whose import fails is skipped with a warning naming it (the registry and
    the other plug-ins keep working); ``series=`` reaches any adapter that declares it."""
    broken = EntryPoint("broken", "no_such_module_xyz:ADAPTER", registry.ENTRY_POINT_GROUP)
    good = EntryPoint("fks", "tests.io.test_registry:SERIES_ADAPTER", registry.ENTRY_POINT_GROUP)
    monkeypatch.setattr(registry, "_entry_points", lambda: (broken, good))
    registry._plugins.cache_clear()
    try:
        blob = tmp_path / "scan.bin"
        blob.write_bytes(b"FKS1\x01\x02\x03")
        with caplog.at_level("WARNING", logger="geomed_seg.io.registry"):
            assert detect_format(blob) == "fake-series"
        assert "'broken'" in caplog.text and "no_such_module_xyz" in caplog.text
        np.testing.assert_array_equal(open_image(blob, series="10").compute().ravel(), [11, 12, 13])
        with pytest.raises(InvalidInputError, match="applies to DICOM and FAKE-SERIES only"):
            open_image(_tiny_tif(tmp_path), series="1")
    finally:
        registry._plugins.cache_clear()


def _tiny_tif(tmp_path):
    path = tmp_path / "tiny.tif"
    with rasterio.open(path, "w", driver="GTiff", width=4, height=3, count=1, dtype="uint8") as ds:
        ds.write(np.zeros((1, 3, 4), np.uint8))
    return path


def test_sinks_and_case_names_come_from_the_registry(tmp_path):
    from geomed_seg.inference.sinks import GeoTIFFSink, NiftiSink, ZarrSink, sink_for
    from geomed_seg.io import geotiff
    from geomed_seg.metrics.evaluate import _case_name

    assert isinstance(sink_for(tmp_path / "a.TIF"), GeoTIFFSink)
    assert isinstance(sink_for(tmp_path / "a.zarr"), ZarrSink)
    assert isinstance(sink_for(tmp_path / "a.nii.gz"), NiftiSink)
    with pytest.raises(UnsupportedFormatError, match=r"x\.vrt.*\.nii\.gz.*\.tif.*\.zarr"):
        sink_for(tmp_path / "x.vrt")  # readable, but no streaming writer
    assert _case_name(Path("BraTS-001.nii.gz")) == "BraTS-001"
    assert _case_name(Path("tile_3.vrt")) == "tile_3"
    assert geotiff.is_gdal_path is registry.is_gdal_path  # one definition
    assert registry.is_gdal_path("/vsicurl/https://x/y.tif") and not registry.is_gdal_path(tmp_path)
