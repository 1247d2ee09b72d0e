"""Corrupt payloads are refused before anything is written: gzip CRC/length of ``.nii.gz``,
DICOM Pixel Data length; ``convert``, ``segment`` and ``run`` exit 2 with one line.

Independent references: Python's :mod:`zlib` (raw deflate, no CRC check) shows that the
flipped byte decodes silently to different voxels, nibabel reads the corrupt file without a
word, and pydicom's ``get_expected_length`` gives the Pixel Data length a header promises.
"""

from __future__ import annotations

import gzip
import shutil
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from geomed_seg.cli import main
from geomed_seg.errors import ReadError
from geomed_seg.io import nifti as nifti_module
from geomed_seg.io.nifti import open_nifti, verify_nifti
from geomed_seg.io.registry import open_image
from tests.io.dicom_data import make_series

torch = pytest.importorskip("torch")

SHAPE = (66, 63, 78)  # 324,324 voxels, the size of the case in issue 14


def _volume() -> np.ndarray:
    rng = np.random.default_rng(3)
    smooth = np.cumsum(rng.integers(-2, 3, size=SHAPE), axis=0)
    return (smooth + 500).astype(np.int16)


def _nifti_gz(path: Path) -> Path:
    nib.save(nib.Nifti1Image(_volume(), np.diag([1.2, 1.0, 2.5, 1.0])), path)
    return path


def _flip_silently(good: Path, bad: Path) -> int:
    """Write ``good`` with one byte of its deflate stream flipped such that the stream still
    inflates (only the CRC-32 can tell); return how many voxels nibabel then reads wrong."""
    _flip_silently_any(good, bad)
    data = np.asarray(nib.load(bad).dataobj)  # nibabel: no complaint
    return int(np.count_nonzero(data != _volume()))


def test_flipped_byte_is_refused(tmp_path: Path) -> None:
    good = _nifti_gz(tmp_path / "good.nii.gz")
    bad = tmp_path / "bad.nii.gz"
    assert _flip_silently(good, bad) > 0  # the corruption is real and silent elsewhere
    verify_nifti(good)
    with pytest.raises(ReadError, match=r"bad.nii.gz: truncated or corrupt gzip stream .*CRC"):
        open_image(bad)
    open_image(bad, verify=False)  # header-only opening (info) stays lazy


def test_truncated_and_multimember_gzip(tmp_path: Path, monkeypatch) -> None:
    good = _nifti_gz(tmp_path / "good.nii.gz")
    raw = good.read_bytes()
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(raw[:-1000])
    with pytest.raises(ReadError, match="cut.nii.gz"):
        open_image(cut)
    # a legitimate multi-member gzip (e.g. written by pigz/bgzip) opens and verifies
    plain = gzip.decompress(raw)
    multi = tmp_path / "multi.nii.gz"
    multi.write_bytes(gzip.compress(plain[:200_000]) + gzip.compress(plain[200_000:]))
    img = open_image(multi)
    np.testing.assert_array_equal(img.compute()[0], _volume().transpose(2, 1, 0))
    # ... and its stream is decompressed once by open + verify, not twice
    reads: list[str] = []
    real = nifti_module._gunzipped_size
    monkeypatch.setattr(nifti_module, "_gunzipped_size", lambda p: reads.append(p) or real(p))
    open_image(multi)
    assert len(reads) == 1
    # a corrupt member of a multi-member file is still refused when opened
    bad = bytearray(multi.read_bytes())
    bad[len(gzip.compress(plain[:200_000])) - 6] ^= 0xFF  # first member's CRC-32
    badmulti = tmp_path / "badmulti.nii.gz"
    badmulti.write_bytes(bytes(bad))
    with pytest.raises(ReadError, match="badmulti.nii.gz"):
        open_image(badmulti)
    # trailing garbage after the last member is refused
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(raw + b"garbage!")
    with pytest.raises(ReadError, match="junk.nii.gz"):
        open_image(junk)


def _short_pixel_data(folder: Path) -> Path:
    files, _ = make_series(folder, shape=(6, 8, 10), rescale=(1.0, -1024.0))
    ds = pydicom.dcmread(files[2])
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    ds.save_as(files[2])
    return files[2]


def test_short_pixel_data_is_refused(tmp_path: Path) -> None:
    bad = _short_pixel_data(tmp_path / "s")
    ds = pydicom.dcmread(bad)
    need = pydicom.pixels.utils.get_expected_length(ds, unit="bytes")
    assert len(ds.PixelData) == need // 2
    with pytest.raises(ReadError, match=f"{bad.name}: PixelData holds {need // 2} bytes .* {need}"):
        open_image(tmp_path / "s", verify=False)  # header check: even a lazy open refuses


def _one_error_line(capsys: pytest.CaptureFixture[str], name: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: ") and name in err[0], err
    return err[0]


@pytest.fixture(scope="module")
def checkpoint_3d(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from geomed_seg.models import ModelCard, build_model, save_checkpoint

    kwargs = {"spatial_dims": 3, "channels": [4, 8], "strides": [2], "num_res_units": 0}
    card = ModelCard(
        name="tiny3d", architecture="monai.UNet", architecture_kwargs=kwargs, spatial_dims=3,
        in_channels=1, roi_size=[16, 16, 16],
        classes=[{"index": 0, "name": "bg"}, {"index": 1, "name": "fg"}],
    )  # fmt: skip
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("ckpt") / "tiny3d"
    save_checkpoint(build_model("monai.UNet", 1, 2, **kwargs), card, out)
    return out


def _corrupt_inputs(tmp_path: Path) -> dict[str, tuple[Path, Path, str]]:
    """{kind: (input for convert/segment, BraTS case folder for run, bad file name)}."""
    good = _nifti_gz(tmp_path / "good.nii.gz")
    gz = tmp_path / "flip.nii.gz"
    _flip_silently(good, gz)
    case = tmp_path / "case_gz"
    case.mkdir()
    for seq in ("t1n", "t1c", "t2w"):
        shutil.copy(good, case / f"c-{seq}.nii.gz")
    shutil.copy(gz, case / "c-t2f.nii.gz")
    bad_slice = _short_pixel_data(tmp_path / "dcm")
    dcase = tmp_path / "case_dcm"
    for seq in ("t1n", "t1c", "t2w", "t2f"):
        shutil.copytree(tmp_path / "dcm", dcase / seq)
    return {
        "nifti": (gz, case, "flip.nii.gz"),
        "nifti-in-case": (gz, case, "c-t2f.nii.gz"),
        "dicom": (tmp_path / "dcm", dcase, bad_slice.name),
    }


def test_commands_exit_2_on_corrupt_input(
    tmp_path: Path, checkpoint_3d: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for kind, (src, case, name) in _corrupt_inputs(tmp_path).items():
        out = tmp_path / f"out-{kind}"
        out.mkdir()
        if kind != "nifti-in-case":
            assert main(["convert", str(src), str(out / "c.nii.gz")]) == 2
            _one_error_line(capsys, name if kind == "dicom" else src.name)
            assert main(["segment", str(src), "-m", str(checkpoint_3d), "-o",
                         str(out / "s.nii.gz"), "--quiet"]) == 2  # fmt: skip
            _one_error_line(capsys, name if kind == "dicom" else src.name)
            assert main(["info", str(src)]) == (2 if kind == "dicom" else 0)
            capsys.readouterr()
        if kind != "nifti":
            rc = main(["run", "brats", "--input", str(case), "-o", str(out / "run"), "--quiet",
                       "--set", "engine.device=cpu", "--set", "outputs.quicklook=false"])  # fmt: skip
            assert rc == 2
            _one_error_line(capsys, name)
            assert not (out / "run").exists() or not any((out / "run").iterdir())
        assert not (out / "c.nii.gz").exists() and not (out / "s.nii.gz").exists()


def test_info_stats_verifies(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = _nifti_gz(tmp_path / "good.nii.gz")
    bad = tmp_path / "bad.nii.gz"
    _flip_silently(good, bad)
    assert main(["info", str(bad), "--stats"]) == 2
    _one_error_line(capsys, "bad.nii.gz")
    assert open_nifti(bad).shape == (1, *SHAPE[::-1])


def test_evaluate_refuses_corrupt_prediction(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    labels = (_volume() % 3).astype(np.uint8)
    nib.save(nib.Nifti1Image(labels, np.eye(4)), tmp_path / "ref.nii.gz")
    nib.save(nib.Nifti1Image(labels, np.eye(4)), tmp_path / "good.nii.gz")
    _flip_silently_any(tmp_path / "good.nii.gz", tmp_path / "pred.nii.gz")
    rc = main(["evaluate", str(tmp_path / "pred.nii.gz"), str(tmp_path / "ref.nii.gz")])
    assert rc == 2
    assert "CRC check failed" in _one_error_line(capsys, "pred.nii.gz")


def _flip_silently_any(good: Path, bad: Path) -> None:
    """Flip one deflate byte of ``good`` so that only the gzip CRC-32 can tell."""
    raw = good.read_bytes()
    assert raw[3] == 0  # no FNAME/FEXTRA: nibabel writes a fixed 10-byte gzip header
    expected = zlib.decompress(raw[10:-8], -15)
    for pos in range(len(raw) // 2, len(raw) - 64):
        cand = bytearray(raw)
        cand[pos] ^= 0x10
        try:
            got = zlib.decompress(bytes(cand[10:-8]), -15)
        except zlib.error:
            continue
        if len(got) == len(expected) and got != expected:
            bad.write_bytes(bytes(cand))
            return
    raise AssertionError("no silent flip position found")
