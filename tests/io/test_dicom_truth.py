"""Every image file bundled with pydicom (and with the pydicom-data wheel, a dev dependency):
values equal pydicom's, geometry equal SimpleITK's, or a clean refusal whose reason is
true (checked with pydicom, not with our code).

References: pydicom ``pixel_array`` + ``apply_modality_lut`` (+ RT ``DoseGridScaling``; the
functional groups' Pixel Value Transformation for enhanced multi-frame files) for values;
SimpleITK (GDCM) after LPS->RAS for geometry, and each frame's own position from its
header (ImagePositionPatient, GridFrameOffsetVector, Plane Position Sequence): the voxel
our affine puts at that position must hold that frame. Nothing is downloaded: the files
are inside the pydicom and pydicom-data wheels.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.pixels import apply_modality_lut
from pydicom.pixels.utils import get_expected_length

from geomed_seg.errors import GeomedSegError, GeometryError, ReadError, UnsupportedFormatError
from geomed_seg.io.registry import detect_format, open_image

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _data_store() -> Path | None:
    try:
        import data_store  # the pydicom-data wheel
    except ImportError:
        return None
    return Path(data_store.__file__).parent / "data"


def _image_files(root: Path | None) -> list[Path]:
    if root is None:
        return []
    out = []
    for p in sorted(root.rglob("*")):
        if not p.is_file() or p.suffix in (".json", ".txt", ".dump", ".icc", ".gz", ".py"):
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(p, defer_size=64)
        except Exception:  # noqa: BLE001 - not DICOM: not part of this suite
            continue
        if any(t in ds for t in (0x7FE00010, 0x7FE00008, 0x7FE00009)) or "Rows" in ds:
            out.append(p)
    return out


FILES = [(TEST_FILES, p) for p in _image_files(TEST_FILES)]
EXTRA = _data_store()
FILES += [(EXTRA, p) for p in _image_files(EXTRA)] if EXTRA is not None else []


def _floats(value) -> np.ndarray:
    return np.asarray([float(v) for v in value], dtype=float)


def _frame_groups(ds: pydicom.Dataset, k: int, name: str):
    for groups in (
        ds.get("PerFrameFunctionalGroupsSequence"),
        ds.get("SharedFunctionalGroupsSequence"),
    ):
        if groups:
            item = groups[k] if len(groups) > 1 else groups[0]
            if name in item:
                return item[name][0]
    return None


def _reference(ds: pydicom.Dataset) -> tuple[np.ndarray, np.ndarray | None]:
    """Return (values (frame, row, col), LPS position of each frame or None) from pydicom."""
    n = int(ds.get("NumberOfFrames") or 1)
    raw = ds.pixel_array.reshape(n, ds.Rows, ds.Columns)
    if "PerFrameFunctionalGroupsSequence" in ds:
        values = np.empty(raw.shape, dtype=np.float64)
        positions = np.empty((n, 3))
        for k in range(n):
            pvt = _frame_groups(ds, k, "PixelValueTransformationSequence")
            slope = float(pvt.RescaleSlope) if pvt is not None else 1.0
            inter = float(pvt.RescaleIntercept) if pvt is not None else 0.0
            values[k] = raw[k].astype(np.float64) * slope + inter
            positions[k] = _floats(
                _frame_groups(ds, k, "PlanePositionSequence").ImagePositionPatient
            )
        return values, positions
    values = apply_modality_lut(raw, ds).astype(np.float64)
    if ds.get("Modality") == "RTDOSE" and ds.get("DoseGridScaling") is not None:
        values = values * float(ds.DoseGridScaling)
    if "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds:
        return values, None
    ipp, iop = _floats(ds.ImagePositionPatient), _floats(ds.ImageOrientationPatient)
    normal = np.cross(iop[:3], iop[3:])
    offsets = _floats(ds.GridFrameOffsetVector) if n > 1 else np.zeros(1)
    return values, ipp + np.outer(offsets - offsets[0], normal)


def _sitk_affine_ras(img: sitk.Image) -> np.ndarray:
    aff = np.eye(4)
    aff[:3, :3] = np.asarray(img.GetDirection()).reshape(3, 3) @ np.diag(img.GetSpacing())
    aff[:3, 3] = img.GetOrigin()
    return LPS_TO_RAS @ aff


def _expected_refusal(path: Path) -> tuple[type, str] | None:
    """Return (error type, message pattern) when the file cannot be a volume, from pydicom."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = pydicom.dcmread(path, defer_size=64)
    if any("End of file reached" in str(w.message) for w in caught):
        return ReadError, "truncated DICOM file"
    if int(ds.get("SamplesPerPixel") or 1) != 1 or ds.get("PhotometricInterpretation") == (
        "PALETTE COLOR"
    ):
        return UnsupportedFormatError, "colou?r"
    if "Rows" not in ds or "BitsAllocated" not in ds:
        return GeomedSegError, "Rows|pixel attributes|Transfer Syntax"
    if not str(ds.get("NumberOfFrames", "1")).strip().isdigit():
        return ReadError, "invalid NumberOfFrames"
    ts = ds.file_meta.get("TransferSyntaxUID")
    if ts is None:
        return GeomedSegError, "Transfer Syntax"
    if not pydicom.uid.UID(ts).is_encapsulated and 0x7FE00010 in ds:
        length = ds.get_item(0x7FE00010, keep_deferred=True).length
        expected = get_expected_length(ds, unit="bytes")
        if length not in (expected, expected + expected % 2):
            return ReadError, f"holds {length} bytes .* needs {expected}"
    full = pydicom.dcmread(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            _ = full.pixel_array
        except (RuntimeError, ValueError, NotImplementedError, AttributeError) as exc:
            if "less than expected" in str(exc):
                return ReadError, "truncated"
            return GeomedSegError, "decode|decoder missing"
    n = int(ds.get("NumberOfFrames") or 1)
    if n > 1 and "PerFrameFunctionalGroupsSequence" not in ds:
        if "ImagePositionPatient" not in ds or "GridFrameOffsetVector" not in ds:
            return UnsupportedFormatError, f"{n} frames without"
    ps = ds.get("PixelSpacing")
    if ps is not None and min(float(v) for v in ps) <= 0:
        return GeometryError, "non-positive PixelSpacing"
    return None


@pytest.mark.parametrize(
    ("root", "path"),
    FILES,
    ids=[
        f"{'pydicom' if r == TEST_FILES else 'pydicom-data'}/{p.relative_to(r)}" for r, p in FILES
    ],
)
def test_bundled_file_matches_pydicom_and_simpleitk(root: Path, path: Path) -> None:
    refusal = _expected_refusal(path)
    if refusal is not None:
        kind, pattern = refusal
        with pytest.raises(kind, match=pattern) as info:
            open_image(path).compute()
        assert path.name in str(info.value)  # the message names the file
        return
    assert detect_format(path) == "dicom"
    img = open_image(path)
    ds = pydicom.dcmread(path)
    values, positions = _reference(ds)
    got = img.compute()[0].astype(np.float64)
    assert got.shape == values.shape
    if positions is None:  # no patient geometry: frames in file order
        np.testing.assert_allclose(got, values, rtol=1e-6, atol=1e-6)
    else:  # the voxel our affine puts at each frame's position holds that frame
        inv = np.linalg.inv(img.grid.affine)
        for k, pos in enumerate(positions):
            x, y, z = (inv @ LPS_TO_RAS @ np.r_[pos, 1.0])[:3]
            assert abs(x) < 1e-3 and abs(y) < 1e-3 and abs(z - round(z)) < 1e-3, (k, x, y, z)
            np.testing.assert_allclose(got[int(round(z))], values[k], rtol=1e-6, atol=1e-6)
    try:
        ref = sitk.ReadImage(str(path))
    except RuntimeError:
        ref = None
    if ref is not None and ref.GetSize()[2:] in ((), (1,)) and values.shape[0] == 1:
        np.testing.assert_allclose(img.grid.affine, _sitk_affine_ras(ref), atol=1e-4)


def _reference_values(ds: pydicom.Dataset) -> np.ndarray:
    return _reference(ds)[0]


def test_big_endian_rt_dose_is_in_gray() -> None:
    """The explicit-VR big-endian dose read 23...4292 Gy through GDCM; pydicom: 0.8...1.25."""
    path = TEST_FILES / "rtdose_expb.dcm"
    ds = pydicom.dcmread(path)
    img = open_image(path).compute()[0]
    ref = ds.pixel_array.astype(np.float64) * float(ds.DoseGridScaling)
    np.testing.assert_allclose(img, ref, rtol=1e-6)
    assert 0.7 < img.min() and img.max() < 1.3


def test_dual_personality_file_opens_as_dicom(tmp_path: Path) -> None:
    """A TIFF header in the 128-byte preamble must not hide `DICM` at byte 128."""
    ds = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
    tiff = b"II*\x00" + (8).to_bytes(4, "little") + b"\x01\x00" + b"\x00" * 118
    ds.preamble = tiff[:128]
    out = tmp_path / "dual.tif"  # even the suffix says TIFF
    ds.save_as(out, enforce_file_format=True)
    assert out.read_bytes()[:4] == b"II*\x00" and out.read_bytes()[128:132] == b"DICM"
    assert detect_format(out) == "dicom"
    img = open_image(out)
    ref = sitk.ReadImage(str(TEST_FILES / "CT_small.dcm"))
    assert img.kind == "volume" and img.shape == (1, 1, 128, 128)
    np.testing.assert_allclose(img.grid.affine, _sitk_affine_ras(ref), atol=1e-4)
    np.testing.assert_array_equal(img.compute()[0], _reference_values(ds))


def test_corrupt_rle_fragment_is_refused_on_verify(tmp_path: Path) -> None:
    """Encapsulated data: opening checks the header, verification decodes every frame."""
    ds = pydicom.dcmread(TEST_FILES / "MR_small_RLE.dcm")
    raw = bytearray(ds.PixelData)
    ds.PixelData = bytes(raw[: len(raw) // 2]) + b"\x00\x00"  # a fragment cut short
    ds["PixelData"].is_undefined_length = True
    bad = tmp_path / "bad_rle.dcm"
    ds.save_as(bad, enforce_file_format=True)
    with pytest.raises(GeomedSegError, match="bad_rle.dcm"):
        open_image(bad)
    lazy = open_image(bad, verify=False)  # info without --stats reads no pixels
    with pytest.raises(GeomedSegError, match="bad_rle.dcm"):
        lazy.compute()


@pytest.mark.parametrize(
    "iop",
    [(1.0, 0, 0, 0, 1, 0), (0, 1.0, 0, 0, 0, -1), (0.866025, 0.5, 0, 0, 0.0, -1.0),
     (0.5, 0.866025, 0.0, -0.866025, 0.5, 0.0)],
)  # fmt: skip
def test_single_file_geometry_any_orientation(iop: tuple, tmp_path: Path) -> None:
    ds = pydicom.dcmread(TEST_FILES / "MR_small_bigendian.dcm")
    ds.ImageOrientationPatient = list(iop)
    ds.SpacingBetweenSlices = 2.5
    out = tmp_path / "oblique.dcm"
    ds.save_as(out, enforce_file_format=True)
    img = open_image(out)
    np.testing.assert_allclose(
        img.grid.affine, _sitk_affine_ras(sitk.ReadImage(str(out))), atol=1e-4
    )
    np.testing.assert_array_equal(img.compute()[0], _reference_values(pydicom.dcmread(out)))


@pytest.mark.parametrize("offsets", ["descending", "absolute"])
def test_rt_dose_frames_sit_at_their_offsets(offsets: str, tmp_path: Path) -> None:
    """Each frame's voxels sit at ImagePositionPatient + offset along the normal (LPS)."""
    ds = pydicom.dcmread(TEST_FILES / "rtdose.dcm")
    n = int(ds.NumberOfFrames)
    ipp = np.asarray(ds.ImagePositionPatient, dtype=float)
    rel = -2.5 * np.arange(n) if offsets == "descending" else 3.0 * np.arange(n)
    ds.GridFrameOffsetVector = list(rel if offsets == "descending" else rel + ipp[2])
    out = tmp_path / "dose.dcm"
    ds.save_as(out, enforce_file_format=True)
    img = open_image(out)
    vals = img.compute()[0]
    frames = ds.pixel_array * float(ds.DoseGridScaling)
    inv = np.linalg.inv(img.grid.affine)
    for k in range(n):
        world = LPS_TO_RAS @ np.r_[ipp + rel[k] * np.array([0.0, 0.0, 1.0]), 1.0]
        x, y, z = (inv @ world)[:3]
        assert abs(x) < 1e-6 and abs(y) < 1e-6 and abs(z - round(z)) < 1e-6
        np.testing.assert_allclose(vals[int(round(z))], frames[k], rtol=1e-6)
    assert img.grid.spacing[2] == pytest.approx(abs(rel[1] - rel[0]))


def test_rt_dose_uneven_or_unplaceable_frames_are_refused(tmp_path: Path) -> None:
    ds = pydicom.dcmread(TEST_FILES / "rtdose.dcm")
    ds.GridFrameOffsetVector = [0.0, 5.0, 10.0] + [20.0 + 5 * k for k in range(12)]
    ds.save_as(tmp_path / "uneven.dcm", enforce_file_format=True)
    with pytest.raises(GeomedSegError, match="uneven.dcm: frames are not evenly spaced"):
        open_image(tmp_path / "uneven.dcm")
    del ds.GridFrameOffsetVector
    ds.save_as(tmp_path / "nowhere.dcm", enforce_file_format=True)
    with pytest.raises(UnsupportedFormatError, match="nowhere.dcm: 15 frames without"):
        open_image(tmp_path / "nowhere.dcm")


def test_decoder_noise_stays_in_debug_log(capsys: pytest.CaptureFixture[str]) -> None:
    """pydicom logs a traceback when Pillow refuses a codestream; only our line is printed."""
    from geomed_seg.cli import main

    bad = TEST_FILES / "JPEG2000-embedded-sequence-delimiter.dcm"
    assert main(["convert", str(bad), "/nonexistent-dir/x.nii.gz"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and bad.name in err[-1]
    assert all(line.startswith("WARNING geomed_seg.") for line in err[:-1]), err
