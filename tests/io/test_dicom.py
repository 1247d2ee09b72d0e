"""DICOM adapter against SimpleITK, pydicom and nibabel (geometry after LPS->RAS, pixel values)."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.data import get_testdata_file

from geomed_seg.errors import GeometryError, InvalidInputError, ReadError, UnsupportedFormatError
from geomed_seg.io.dicom import open_dicom
from geomed_seg.io.nifti import write_nifti
from tests.io.dicom_data import (
    make_series,
    oblique_orientation,
    pixel_positions,
    read_back,
    slice_positions,
)

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _sitk_affine_ras(img: sitk.Image) -> np.ndarray:
    """Independent nibabel-style affine of a SimpleITK image: RAS = diag(-1,-1,1) LPS."""
    aff = np.eye(4)
    aff[:3, :3] = np.asarray(img.GetDirection()).reshape(3, 3) @ np.diag(img.GetSpacing())
    aff[:3, 3] = img.GetOrigin()
    return LPS_TO_RAS @ aff


def _sitk_series(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm"])
def test_pydicom_single_files(name: str) -> None:
    path = get_testdata_file(name)
    ds = pydicom.dcmread(path)
    expected = ds.pixel_array * float(ds.get("RescaleSlope", 1)) + float(
        ds.get("RescaleIntercept", 0)
    )
    img = open_dicom(path)
    assert img.shape == (1, 1, ds.Rows, ds.Columns)
    np.testing.assert_array_equal(img.compute()[0, 0], expected)
    ref = sitk.ReadImage(path)
    np.testing.assert_allclose(img.grid.affine, _sitk_affine_ras(ref), atol=1e-6)
    assert img.attrs["dicom"]["sop_instance_uids"] == [ds.SOPInstanceUID]
    assert img.attrs["dicom"]["modality"] == ds.Modality


@pytest.mark.parametrize(
    "orientation", [(1.0, 0, 0, 0, 1, 0), oblique_orientation(), (0, 1.0, 0, 0, 0, -1)]
)
def test_series_matches_simpleitk(orientation: tuple, tmp_path: Path) -> None:
    files, values = make_series(tmp_path / "s", orientation=orientation, rescale=(2.0, -1024.0))
    img = open_dicom(tmp_path / "s")
    ref = _sitk_series(tmp_path / "s")
    np.testing.assert_allclose(img.grid.affine, _sitk_affine_ras(ref), atol=1e-6)
    np.testing.assert_array_equal(img.compute()[0], sitk.GetArrayFromImage(ref))
    np.testing.assert_array_equal(img.compute()[0], values * 2 - 1024)
    assert img.dtype == sitk.GetArrayFromImage(ref).dtype  # GDCM's choice for the rescaled range
    assert img.attrs["dicom"]["files"] == [str(f) for f in files]  # spatial, not name order
    assert img.grid.spacing == pytest.approx((0.8, 0.9, 2.5))
    # first voxel sits at the first slice's ImagePositionPatient (LPS -> RAS)
    ipp = np.array(pydicom.dcmread(files[0]).ImagePositionPatient, dtype=float)
    np.testing.assert_allclose(img.grid.origin, ipp * (-1, -1, 1), atol=1e-5)


def test_files_list_and_rescale_float(tmp_path: Path) -> None:
    files, values = make_series(tmp_path / "s", rescale=(0.5, 1.25))
    img = open_dicom(list(reversed(files)))
    assert img.dtype == np.float32
    np.testing.assert_allclose(img.compute()[0], values * 0.5 + 1.25)


def test_dicom_to_nifti_affine(tmp_path: Path) -> None:
    make_series(tmp_path / "s", orientation=oblique_orientation(30, -15))
    out = write_nifti(open_dicom(tmp_path / "s"), tmp_path / "s.nii.gz")
    back = nib.load(out)
    ref = _sitk_series(tmp_path / "s")
    np.testing.assert_allclose(back.affine, _sitk_affine_ras(ref), atol=1e-4)
    np.testing.assert_array_equal(
        np.asarray(back.dataobj).transpose(2, 1, 0), sitk.GetArrayFromImage(ref)
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"uneven": True}, "uneven slice spacing"),
        ({"missing": (3,)}, "missing slice"),
        ({"tilt": 12.0}, "gantry tilt"),
    ],
)
def test_irregular_series_raise(kwargs: dict, match: str, tmp_path: Path) -> None:
    make_series(tmp_path / "s", **kwargs)
    with pytest.raises(GeometryError, match=match) as err:
        open_dicom(tmp_path / "s")
    assert str(tmp_path / "s") in str(err.value) and "resample=True" in str(err.value)


@pytest.mark.parametrize(
    "kwargs", [{"uneven": True}, {"missing": (3,)}, {"tilt": 12.0}, {"tilt": -8.0, "missing": (2,)}]
)
def test_resample_gives_regular_grid(kwargs: dict, tmp_path: Path) -> None:
    """A world-linear ramp must be reproduced exactly at every resampled voxel inside the data."""
    shape, spacing = (7, 16, 10), (0.8, 0.9, 2.5)
    orientation, origin = oblique_orientation(), (-20.0, -30.0, 40.0)
    pos = slice_positions(
        shape[0],
        spacing,
        orientation,
        origin,
        **{k: v for k, v in kwargs.items() if k != "missing"},
    )
    world = pixel_positions(pos, spacing, orientation, shape[1], shape[2])
    ramp = np.rint(100 + world @ np.array([3.0, -2.0, 5.0]) * 4)
    make_series(tmp_path / "s", shape, spacing, orientation, origin, values=ramp, **kwargs)
    img = open_dicom(tmp_path / "s", resample=True)
    assert img.attrs["dicom"]["resampled"]
    assert img.grid.spacing == pytest.approx(spacing)
    got = img.compute()[0].astype(float)
    # expected value at each output voxel from its RAS position (independent of the reader)
    zz, yy, xx = np.meshgrid(*(np.arange(n) for n in img.grid.shape), indexing="ij")
    ijk = np.stack([xx, yy, zz, np.ones_like(xx)], axis=-1).astype(float)
    lps = (ijk @ img.grid.affine.T)[..., :3] * (-1, -1, 1)
    expected = 100 + lps @ np.array([3.0, -2.0, 5.0]) * 4
    # tilted slices drift up to 3.5 rows: rows near the edges are filled from outside
    inside = (slice(None), slice(5, -5), slice(None))
    np.testing.assert_allclose(got[inside], expected[inside], atol=0.6)


def test_mixed_orientation_and_sizes(tmp_path: Path) -> None:
    make_series(tmp_path / "a", series_uid="1.2.3.4")
    files, _ = make_series(tmp_path / "b", series_uid="1.2.3.4", orientation=oblique_orientation())
    shutil.copy(files[0], tmp_path / "a" / "odd.dcm")
    with pytest.raises(GeometryError, match="mixed orientations"):
        open_dicom(tmp_path / "a")
    files, _ = make_series(tmp_path / "c", shape=(2, 8, 12), series_uid="1.2.3.5")
    make_series(tmp_path / "d", series_uid="1.2.3.5")
    with pytest.raises(GeometryError, match="mixed image sizes"):
        open_dicom([*files, *(tmp_path / "d").iterdir()])


def test_two_series_need_choice(tmp_path: Path) -> None:
    make_series(tmp_path / "x" / "one", series_uid="1.2.826.0.1.1", description="T1 axial")
    make_series(
        tmp_path / "x" / "two", shape=(4, 8, 10), series_uid="1.2.826.0.1.2", description="FLAIR"
    )
    (tmp_path / "x" / "notes.txt").write_text("not dicom")
    with pytest.raises(InvalidInputError, match="2 DICOM series") as err:
        open_dicom(tmp_path / "x")
    msg = str(err.value)
    assert (
        "1.2.826.0.1.1" in msg and "1.2.826.0.1.2" in msg and "FLAIR" in msg and "--series" in msg
    )
    assert open_dicom(tmp_path / "x", series="1.2.826.0.1.2").grid.shape[0] == 4
    assert open_dicom(tmp_path / "x", series="flair").grid.shape[0] == 4
    assert open_dicom(tmp_path / "x", series=1).grid.shape[0] == 6
    with pytest.raises(InvalidInputError, match="matches none"):
        open_dicom(tmp_path / "x", series="DWI")


def test_no_dicom(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("hello")
    with pytest.raises(InvalidInputError, match="no DICOM"):
        open_dicom(tmp_path)
    with pytest.raises(ReadError, match="missing"):
        open_dicom(tmp_path / "missing")


@pytest.mark.parametrize("rescale", [(1.0, 0.0), (2.0, -1024.0)])
def test_enhanced_multiframe_matches_series(rescale: tuple, tmp_path: Path) -> None:
    """highdicom's get_volume dropped the rescale of enhanced MR frames: values differed."""
    files, values = make_series(
        tmp_path / "mr", modality="MR", orientation=oblique_orientation(), rescale=rescale
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mf = hd.legacy.LegacyConvertedEnhancedMRImage(read_back(files), hd.UID(), 2, hd.UID(), 1)
    mf.save_as(tmp_path / "mf.dcm")
    assert int(pydicom.dcmread(tmp_path / "mf.dcm").NumberOfFrames) == len(files)
    multi = open_dicom(tmp_path / "mf.dcm")
    series = open_dicom(tmp_path / "mr")
    assert multi.shape == (1, len(files), 8, 10)
    np.testing.assert_array_equal(multi.compute(), series.compute())
    np.testing.assert_allclose(multi.grid.affine, series.grid.affine, atol=1e-5)
    np.testing.assert_allclose(
        series.grid.affine, _sitk_affine_ras(_sitk_series(tmp_path / "mr")), atol=1e-6
    )


def test_legacy_multiframe_rtdose() -> None:
    path = get_testdata_file("rtdose.dcm")
    ds = pydicom.dcmread(path)
    img = open_dicom(path)
    assert img.shape == (1, int(ds.NumberOfFrames), ds.Rows, ds.Columns)
    np.testing.assert_allclose(
        img.compute()[0], ds.pixel_array * float(ds.DoseGridScaling), rtol=1e-6
    )
    offsets = np.asarray(ds.GridFrameOffsetVector, dtype=float)
    assert img.grid.spacing[2] == pytest.approx(offsets[1] - offsets[0])
    ipp = np.asarray(ds.ImagePositionPatient, dtype=float)
    np.testing.assert_allclose(img.grid.origin, ipp * (-1, -1, 1), atol=1e-4)


def test_two_frame_secondary_capture_is_unsupported() -> None:
    with pytest.raises(UnsupportedFormatError, match="SC_rgb_rle_2frame.dcm"):
        open_dicom(get_testdata_file("SC_rgb_rle_2frame.dcm"))
    with pytest.raises(UnsupportedFormatError, match="colour"):
        open_dicom(get_testdata_file("SC_rgb_rle.dcm"))


def test_truncated_slice_and_duplicates(tmp_path: Path) -> None:
    files, _ = make_series(tmp_path / "t")
    raw = files[2].read_bytes()
    files[2].write_bytes(raw[: len(raw) - 50])
    # refused when opened (was: at compute time): the header says how long PixelData is
    with pytest.raises(ReadError, match=f"{files[2].name}: file ends 50 bytes before"):
        open_dicom(tmp_path / "t")
    files, _ = make_series(tmp_path / "d")
    shutil.copy(files[1], tmp_path / "d" / "copy.dcm")
    with pytest.raises(GeometryError, match="share a slice position"):
        open_dicom(tmp_path / "d")


def test_tilt_tag_without_shear_is_regular(tmp_path: Path) -> None:
    """Scanners that already corrected the tilt keep the tag; positions decide, not the tag."""
    files, values = make_series(tmp_path / "s")
    for f in files:
        ds = pydicom.dcmread(f)
        ds.GantryDetectorTilt = 15.0
        ds.save_as(f)
    img = open_dicom(tmp_path / "s")
    np.testing.assert_array_equal(img.compute()[0], values)
    assert not img.attrs["dicom"]["resampled"]


def test_per_slice_rescale_is_not_truncated(tmp_path: Path) -> None:
    """PET-like series: each slice its own slope; compare with pydicom per file."""
    files, _ = make_series(tmp_path / "pet")
    for f, slope in zip(files, [1.0, 0.5, 2.0, 0.25, 1.5, 3.0], strict=True):
        ds = pydicom.dcmread(f)
        ds.RescaleSlope, ds.RescaleIntercept = slope, 0.5 if slope == 0.5 else 0.0
        ds.save_as(f)
    expected = []
    for f in files:
        ds = pydicom.dcmread(f)
        expected.append(ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept))
    img = open_dicom(tmp_path / "pet")
    assert img.dtype == np.float32
    np.testing.assert_allclose(img.compute()[0], np.stack(expected), rtol=1e-6)


def test_series_is_read_lazily_by_slab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from geomed_seg.io import dicom

    files, values = make_series(tmp_path / "s", shape=(6, 8, 10))
    reads: list[int] = []
    original = dicom._read_block

    def counting(paths, as_float, dtype):  # type: ignore[no-untyped-def]
        reads.append(len(paths))
        return original(paths, as_float, dtype)

    monkeypatch.setattr(dicom, "_read_block", counting)
    img = open_dicom(tmp_path / "s", chunks=(1, 2, -1, -1))
    assert reads == [] and img.chunks[1] == (2, 2, 2)
    window = img.sel_window((slice(2, 4), slice(None), slice(None))).compute()
    assert reads == [2]
    np.testing.assert_array_equal(window[0], values[2:4])


def test_malformed_geometry_names_the_file(tmp_path: Path) -> None:
    files, _ = make_series(tmp_path / "s")
    ds = pydicom.dcmread(files[3])
    ds.ImagePositionPatient = [1.0, 2.0]
    ds.save_as(files[3])
    with pytest.raises(GeometryError, match=f"{files[3].name}: malformed geometry"):
        open_dicom(tmp_path / "s")


def test_mixed_pixel_spacing_is_refused(tmp_path: Path) -> None:
    """SimpleITK takes the first slice's spacing for all; a slice at another spacing is refused."""
    files, _ = make_series(tmp_path / "s")
    ds = pydicom.dcmread(files[3])
    ds.PixelSpacing = [0.45, 0.4]
    ds.save_as(files[3])
    with pytest.raises(GeometryError, match=f"mixed PixelSpacing.*{files[3].name}"):
        open_dicom(tmp_path / "s")


def test_enhanced_multiframe_uneven_frames(tmp_path: Path) -> None:
    """Frames are checked like slices: uneven steps refused, or resampled on request."""
    files, _ = make_series(tmp_path / "mr", modality="MR", shape=(8, 8, 10), uneven=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mf = hd.legacy.LegacyConvertedEnhancedMRImage(read_back(files), hd.UID(), 2, hd.UID(), 1)
    mf.save_as(tmp_path / "mf.dcm")
    with pytest.raises(GeometryError, match="mf.dcm: uneven slice spacing"):
        open_dicom(tmp_path / "mf.dcm")
    multi = open_dicom(tmp_path / "mf.dcm", resample=True)
    series = open_dicom(tmp_path / "mr", resample=True)
    np.testing.assert_allclose(multi.grid.affine, series.grid.affine, atol=1e-5)
    np.testing.assert_allclose(multi.compute(), series.compute(), atol=1e-4)


def test_truncated_header_refused_only_in_the_chosen_series(tmp_path: Path) -> None:
    """A file cut between header elements (pydicom returns the partial data set silently)."""
    files, values = make_series(tmp_path / "f" / "a", series_uid="1.2.3.1", description="A")
    other, _ = make_series(tmp_path / "f" / "b", series_uid="1.2.3.2", description="B")
    raw = other[1].read_bytes()
    series_uid_at = raw.index(b"\x20\x00\x0e\x00")  # (0020,000E) SeriesInstanceUID
    rows_at = raw.index(b"\x28\x00\x10\x00", series_uid_at)  # (0028,0010) Rows
    other[1].write_bytes(raw[:rows_at])  # the series is known, the image module is gone
    np.testing.assert_array_equal(open_dicom(tmp_path / "f", series="A").compute()[0], values)
    with pytest.raises(ReadError, match=f"{other[1].name}: truncated DICOM file"):
        open_dicom(tmp_path / "f", series="B")
    other[1].write_bytes(raw[:series_uid_at])  # cannot tell its series: the folder is refused
    with pytest.raises(ReadError, match=f"{other[1].name}: truncated DICOM file"):
        open_dicom(tmp_path / "f", series="A")


def test_siemens_mosaic_is_refused_not_read_as_one_slice(tmp_path: Path) -> None:
    """A Siemens mosaic tiles many slices in one image (nibabel.nicom unpacks it; SimpleITK reads
    it as one slice with the tile's position): refused by name, in a series or as one file."""
    from geomed_seg.io.dicom_frames import open_file_volume

    files, _ = make_series(tmp_path / "s", modality="MR")
    for f in files:
        ds = pydicom.dcmread(f)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND", "MOSAIC"]
        ds.add_new((0x0019, 0x0010), "LO", "SIEMENS MR HEADER")
        ds.add_new((0x0019, 0x100A), "US", 4)
        ds.save_as(f)
    with pytest.raises(UnsupportedFormatError, match=r"\.dcm: Siemens mosaic \(4 slices"):
        open_dicom(tmp_path / "s")
    with pytest.raises(UnsupportedFormatError, match="Siemens mosaic"):
        open_file_volume(files[0], pydicom.dcmread(files[0]))
