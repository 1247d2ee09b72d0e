"""NIfTI adapter against nibabel: data, affine and header geometry after round trips."""

from __future__ import annotations

import gzip
from pathlib import Path

import dask.array as da
import nibabel as nib
import nibabel.testing
import numpy as np
import pytest

from geomed_seg.core.grid import VoxelGrid
from geomed_seg.core.image import Image
from geomed_seg.errors import (
    InvalidInputError,
    OutputExistsError,
    ReadError,
    UnsupportedFormatError,
)
from geomed_seg.io.nifti import open_nifti, write_nifti

NIB_DATA = Path(nibabel.testing.data_path)


def _as_ours(arr: np.ndarray) -> np.ndarray:
    """nibabel (i, j, k[, t]) -> our (channel, z, y, x)."""
    arr = arr if arr.ndim == 4 else arr[..., None]
    return arr.transpose(3, 2, 1, 0)


def _same_geometry(a: nib.Nifti1Image, b: nib.Nifti1Image) -> None:
    for getter in ("get_qform", "get_sform"):
        fa, ca = getattr(a.header, getter)(coded=True)
        fb, cb = getattr(b.header, getter)(coded=True)
        assert ca == cb
        if fa is None:
            assert fb is None
        else:
            np.testing.assert_array_equal(fa, fb)
    np.testing.assert_array_equal(a.header["pixdim"], b.header["pixdim"])
    assert a.header["xyzt_units"] == b.header["xyzt_units"]
    for key in ("quatern_b", "quatern_c", "quatern_d", "qoffset_x", "srow_x", "srow_y", "srow_z"):
        np.testing.assert_array_equal(a.header[key], b.header[key])


def test_mni_matches_nibabel(mni_t1_path: Path) -> None:
    img = open_nifti(mni_t1_path)
    ref = nib.load(mni_t1_path)
    assert img.data.dims == ("channel", "z", "y", "x")
    assert img.dtype == ref.get_data_dtype()
    np.testing.assert_array_equal(img.compute(), _as_ours(np.asarray(ref.dataobj)))
    np.testing.assert_array_equal(img.grid.affine, ref.affine)
    assert img.grid.shape == ref.shape[::-1]
    # a voxel's world position agrees with nibabel's affine applied to (i, j, k)
    assert img.grid.world(5, 7, 11) == pytest.approx(
        tuple(nib.affines.apply_affine(ref.affine, (11, 7, 5)))
    )


@pytest.mark.parametrize(
    "name", ["anatomical.nii", "example4d.nii.gz", "standard.nii.gz", "example_nifti2.nii.gz"]
)
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_round_trip_keeps_header_geometry(name: str, suffix: str, tmp_path: Path) -> None:
    src = nib.load(NIB_DATA / name)
    img = open_nifti(NIB_DATA / name)
    assert img.n_channels == (src.shape[3] if src.ndim == 4 else 1)
    np.testing.assert_array_equal(img.compute(), _as_ours(np.asarray(src.dataobj)))
    out = write_nifti(img, tmp_path / f"out{suffix}")
    back = nib.load(out)
    assert back.shape == src.shape
    np.testing.assert_array_equal(np.asarray(back.dataobj), np.asarray(src.dataobj))
    _same_geometry(back, src)
    np.testing.assert_array_equal(back.affine, src.affine)


def test_mni_round_trip(mni_t1_path: Path, tmp_path: Path) -> None:
    src = nib.load(mni_t1_path)
    out = write_nifti(open_nifti(mni_t1_path), tmp_path / "mni.nii.gz")
    back = nib.load(out)
    np.testing.assert_array_equal(np.asarray(back.dataobj), np.asarray(src.dataobj))
    _same_geometry(back, src)


def test_oblique_4d_is_oblique_and_channels() -> None:
    img = open_nifti(NIB_DATA / "example4d.nii.gz")
    assert img.grid.is_oblique
    assert img.n_channels == 2
    assert img.attrs["nifti"]["qform_code"] == 1 and img.attrs["nifti"]["sform_code"] == 1


def test_qform_only_survives(tmp_path: Path) -> None:
    aff = np.array([[0, 0, 2.0, -10], [-1.5, 0, 0, 20], [0, 3.0, 0, 5], [0, 0, 0, 1]])
    nimg = nib.Nifti1Image(np.arange(60, dtype=np.int16).reshape(3, 4, 5), None)
    nimg.header.set_qform(aff, code=1)
    nimg.header.set_sform(np.eye(4), code=0)
    nib.save(nimg, tmp_path / "q.nii")
    src = nib.load(tmp_path / "q.nii")
    img = open_nifti(tmp_path / "q.nii")
    np.testing.assert_allclose(img.grid.affine, aff, atol=1e-6)
    back = nib.load(write_nifti(img, tmp_path / "back.nii"))
    assert back.header.get_sform(coded=True)[1] == 0
    _same_geometry(back, src)


def test_scaled_data_are_float_as_nibabel() -> None:
    src = nib.load(NIB_DATA / "functional.nii")
    img = open_nifti(NIB_DATA / "functional.nii")
    np.testing.assert_allclose(img.compute(), _as_ours(src.get_fdata()), rtol=1e-6)


def test_five_d_vector_gives_channels(tmp_path: Path) -> None:
    data = np.random.default_rng(0).random((4, 5, 6, 1, 3)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 2, 2, 1])), tmp_path / "v.nii.gz")
    img = open_nifti(tmp_path / "v.nii.gz")
    assert img.shape == (3, 6, 5, 4)
    np.testing.assert_array_equal(img.compute(), data[:, :, :, 0].transpose(3, 2, 1, 0))
    back = nib.load(write_nifti(img, tmp_path / "w.nii.gz"))
    assert back.shape == data.shape
    np.testing.assert_array_equal(back.get_fdata(dtype=np.float32), data)


def test_labels_new_grid_and_chunks(tmp_path: Path) -> None:
    img = open_nifti(NIB_DATA / "anatomical.nii", chunks=(1, 10, 20, 20))
    assert img.chunks[1] == (10, 10, 5) and img.chunks[3] == (20, 13)
    assert open_nifti(NIB_DATA / "anatomical.nii", chunks={"z": 5}).chunks[1:] == (
        (5,) * 5,
        (41,),
        (33,),
    )
    labels = (img.darray > 100).astype("int64")
    aff = np.array(img.grid.affine)
    aff[:3, 3] += (1.5, -2.0, 3.0)
    out_img = Image.from_array(labels, VoxelGrid(aff, img.grid.shape), attrs=img.attrs)
    back = nib.load(write_nifti(out_img, tmp_path / "lab.nii.gz", dtype="uint8"))
    assert back.get_data_dtype() == np.uint8
    assert back.header["cal_min"] == 0 and back.header["cal_max"] == 1
    slope, inter = back.header["scl_slope"], back.header["scl_inter"]
    assert (np.isnan(slope) or slope == 1) and (np.isnan(inter) or inter == 0)
    np.testing.assert_allclose(back.affine, aff, atol=1e-5)
    assert back.header.get_sform(coded=True)[1] == 2  # code kept from the source, new matrix
    np.testing.assert_array_equal(np.asarray(back.dataobj), labels.compute()[0].transpose(2, 1, 0))


def test_write_errors(mni_t1_path: Path, tmp_path: Path) -> None:
    img = open_nifti(mni_t1_path).sel_window((slice(60, 64), slice(110, 114), slice(60, 64)))
    write_nifti(img, tmp_path / "a.nii")
    with pytest.raises(OutputExistsError):
        write_nifti(img, tmp_path / "a.nii")
    big = img.with_data(img.darray.astype("int32") + 1000)
    probs = img.with_data(da.where(img.darray > 180, np.nan, img.darray / 10.0))
    out = nib.load(write_nifti(probs, tmp_path / "p.nii", dtype="int16"))
    expected = np.where(img.compute()[0] > 180, 0, np.rint(img.compute()[0] / 10.0))
    np.testing.assert_array_equal(np.asarray(out.dataobj), expected.transpose(2, 1, 0))
    assert out.header["cal_max"] == expected.max() and 0 < (expected == 0).sum() < expected.size
    labels = img.with_data(img.darray.astype("int64") - 200)
    assert nib.load(write_nifti(labels, tmp_path / "l.nii")).get_data_dtype() == np.int16
    with pytest.raises(InvalidInputError, match="do not fit"):
        write_nifti(big, tmp_path / "b.nii", dtype="uint8")
    assert not (tmp_path / "b.nii").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.nii", "l.nii", "p.nii"]


def test_truncated_gz(mni_t1_path: Path, tmp_path: Path) -> None:
    raw = mni_t1_path.read_bytes()
    bad = tmp_path / "cut.nii.gz"
    bad.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ReadError, match="cut.nii.gz"):
        open_nifti(bad).compute()


def test_truncated_gz_data_region(tmp_path: Path) -> None:
    """A gz stream that ends cleanly but holds too few bytes is caught too."""
    raw = (NIB_DATA / "anatomical.nii").read_bytes()
    bad = tmp_path / "short.nii.gz"
    bad.write_bytes(gzip.compress(raw[: len(raw) - 100]))
    with pytest.raises(ReadError, match="short.nii.gz.*truncated"):
        open_nifti(bad)


def test_truncated_nii(tmp_path: Path) -> None:
    raw = (NIB_DATA / "anatomical.nii").read_bytes()
    bad = tmp_path / "cut.nii"
    bad.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ReadError, match="cut.nii: truncated"):
        open_nifti(bad)


def test_zero_text_missing(tmp_path: Path) -> None:
    (tmp_path / "zero.nii").write_bytes(b"")
    with pytest.raises(ReadError, match="zero.nii: empty"):
        open_nifti(tmp_path / "zero.nii")
    (tmp_path / "text.nii").write_text("not an image\n" * 40)
    with pytest.raises(UnsupportedFormatError, match="text.nii"):
        open_nifti(tmp_path / "text.nii")
    with pytest.raises(ReadError, match="nope.nii: file not found"):
        open_nifti(tmp_path / "nope.nii")


def test_different_qform_and_sform_both_kept(tmp_path: Path) -> None:
    qaff = np.diag([2.0, 2.0, 3.0, 1.0])
    qaff[:3, 3] = (-10, -20, -30)
    saff = nib.affines.from_matvec(
        nib.eulerangles.euler2mat(0.3, -0.2, 0.1) @ np.diag([2.0, 2.0, 3.0]), (5.0, -7.0, 9.0)
    )
    nimg = nib.Nifti1Image(np.arange(60, dtype=np.float32).reshape(3, 4, 5), None)
    nimg.header.set_qform(qaff, code=1)
    nimg.header.set_sform(saff, code=4)
    nib.save(nimg, tmp_path / "qs.nii")
    src = nib.load(tmp_path / "qs.nii")
    img = open_nifti(tmp_path / "qs.nii")
    np.testing.assert_array_equal(img.grid.affine, src.affine)  # sform wins, as in nibabel
    assert img.grid.is_oblique
    back = nib.load(write_nifti(img, tmp_path / "back.nii.gz"))
    _same_geometry(back, src)


def test_open_is_lazy_and_reads_only_needed_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    from geomed_seg.io import nifti

    reads: list = []
    original = nifti._ProxyReader.__getitem__

    def counting(self, index):  # type: ignore[no-untyped-def]
        reads.append(index)
        return original(self, index)

    monkeypatch.setattr(nifti._ProxyReader, "__getitem__", counting)
    img = open_nifti(NIB_DATA / "anatomical.nii", chunks=(1, 5, -1, -1))
    assert reads == []  # opening reads the header only
    window = img.sel_window((slice(5, 10), slice(None), slice(None))).compute()
    assert len(reads) == 1
    ref = np.asarray(nib.load(NIB_DATA / "anatomical.nii").dataobj)[:, :, 5:10]
    np.testing.assert_array_equal(window[0], ref.transpose(2, 1, 0))


@pytest.mark.parametrize(("unit", "mm_per_unit"), [("meter", 1000.0), ("micron", 1e-3)])
def test_spatial_units_are_converted_to_mm_as_simpleitk(
    unit: str, mm_per_unit: float, tmp_path: Path
) -> None:
    """A header in metres or microns gives a grid in mm, equal to SimpleITK's (LPS -> RAS)."""
    sitk = pytest.importorskip("SimpleITK")
    rot = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([0.9, 1.1, 3.0]) / mm_per_unit
    affine[:3, 3] = np.array([-40.0, 12.5, 7.0]) / mm_per_unit
    data = np.arange(6 * 5 * 4, dtype=np.int16).reshape(6, 5, 4)
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units(unit, "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=2)
    src = tmp_path / f"{unit}.nii.gz"
    nib.save(img, src)

    ref = sitk.ReadImage(str(src))
    lps_to_ras = np.diag([-1.0, -1.0, 1.0])
    direction = np.asarray(ref.GetDirection()).reshape(3, 3)
    expected = np.eye(4)
    expected[:3, :3] = lps_to_ras @ direction @ np.diag(ref.GetSpacing())
    expected[:3, 3] = lps_to_ras @ np.asarray(ref.GetOrigin())

    ours = open_nifti(src)
    np.testing.assert_allclose(ours.grid.affine, expected, atol=1e-4)
    np.testing.assert_array_equal(ours.darray.compute(), _as_ours(data))

    out = write_nifti(ours, tmp_path / "out.nii.gz")
    back = nib.load(out)
    assert back.header.get_xyzt_units()[0] == unit
    _same_geometry(img, back)
    np.testing.assert_allclose(open_nifti(out).grid.affine, expected, atol=1e-4)


def test_nifti_pair_refused_with_the_reason(tmp_path: Path) -> None:
    """A .hdr/.img pair is NIfTI: the message says a pair is unsupported, not 'not NIfTI'."""
    from geomed_seg.io.registry import open_image

    pair = nib.Nifti1Pair(np.zeros((4, 3, 2), np.int16), np.diag([2.0, 2.0, 3.0, 1.0]))
    nib.save(pair, tmp_path / "vol.img")
    with pytest.raises(UnsupportedFormatError, match=r"vol\.hdr: NIfTI pair \(\.hdr \+ \.img\)"):
        open_nifti(tmp_path / "vol.hdr")
    with pytest.raises(UnsupportedFormatError, match="NIfTI pair"):
        open_image(tmp_path / "vol.hdr")
