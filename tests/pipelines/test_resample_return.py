"""Resample and return: a 1 mm volume and a 3 mm model give labels on the input's exact grid
(nibabel: affine, shape, qform/sform codes), probabilities brought back as SimpleITK's linear
resampling of the same arrays would, and Dice not worse than running at 3 mm and resampling
the labels nearest-neighbour (SimpleITK)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from geomed_seg.core.grid import VoxelGrid
from geomed_seg.core.resample import resample_image
from geomed_seg.core.resample_grid import grid_for_spacing
from geomed_seg.inference.respaced import segment_resampled
from geomed_seg.inference.segment import segment
from geomed_seg.models.card import ModelCard
from geomed_seg.models.checkpoint import load_checkpoint, save_checkpoint
from geomed_seg.models.registry import build_model
from geomed_seg.pipelines import run_pipeline

SEQ = ["t1n", "t1c", "t2w", "t2f"]
CARD = dict(
    name="tiny3mm",
    architecture="monai.UNet",
    architecture_kwargs={
        "spatial_dims": 3,
        "channels": [4, 8],
        "strides": [2],
        "num_res_units": 0,
    },  # fmt: skip
    spatial_dims=3,
    in_channels=4,
    band_names=SEQ,
    normalisation={"type": "nonzero_zscore"},
    spacing=[3.0, 3.0, 3.0],
    spacing_unit="mm",
    classes=[{"index": i, "name": n} for i, n in enumerate(["background", "NETC", "SNFH", "ET"])],
    roi_size=[16, 16, 16],
)


def _affine():
    """LPS-like, slightly oblique, anisotropic 1 mm-ish grid (x 1.0, y 0.9, z 1.2 mm)."""
    c, s = np.cos(0.15), np.sin(0.15)
    rot = np.array([[-c, -s, 0], [-s, c, 0], [0, 0, 1.0]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag([1.0, 0.9, 1.2])
    aff[:3, 3] = (40.0, 25.0, -30.0)
    return aff


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(3)
    card = ModelCard(**CARD)
    module = build_model("monai.UNet", 4, 4, **CARD["architecture_kwargs"]).eval()
    path = tmp_path_factory.mktemp("ckpt") / "tiny3mm"
    save_checkpoint(module, card, path)
    return path


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """Four ~1 mm sequences (z, y, x) = (34, 40, 37) with qform code 1 and sform code 2."""
    folder = tmp_path_factory.mktemp("case") / "case"
    folder.mkdir()
    rng = np.random.default_rng(0)
    z, y, x = np.indices((34, 40, 37))
    head = ((z - 17) / 14) ** 2 + ((y - 20) / 17) ** 2 + ((x - 18) / 15) ** 2 < 1
    blob = ((z - 15) / 6) ** 2 + ((y - 22) / 7) ** 2 + ((x - 20) / 5) ** 2 < 1
    for i, name in enumerate(SEQ):
        v = (300 + 40 * i) * head + (200 - 50 * i) * blob + rng.normal(0, 10, head.shape) * head
        img = nib.Nifti1Image(v.astype(np.float32).T, _affine())
        img.set_qform(_affine(), code=1)
        img.set_sform(_affine(), code=2)
        nib.save(img, folder / f"case-{name}.nii.gz")
    return folder


def _cfg(tiny, **preprocess):
    return {
        "name": "brats-test",
        "kind": "volume",
        "input": {"folder": "unused", "sequences": {s: f"*{s}*" for s in SEQ}},
        "preprocess": {"foreground": "nonzero", **preprocess},
        "model": {"method": "checkpoint", "checkpoint": str(tiny)},
        "engine": {"batch_size": 2, "device": "cpu", "amp": False},
        "outputs": {"quicklook": False, "probabilities": "zarr"},
    }


def test_pipeline_writes_labels_on_the_input_grid(tiny, case, tmp_path):
    run = run_pipeline(_cfg(tiny), input=case, output=tmp_path / "out")
    ref = nib.load(case / "case-t1n.nii.gz")
    lab = nib.load(run.outputs["labels"])
    assert lab.shape == ref.shape
    np.testing.assert_allclose(lab.affine, ref.affine, atol=1e-6)
    assert int(lab.header["qform_code"]) == 1 and int(lab.header["sform_code"]) == 2
    np.testing.assert_allclose(lab.get_qform(), ref.get_qform(), atol=1e-6)
    np.testing.assert_allclose(lab.get_sform(), ref.get_sform(), atol=1e-6)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert any("resampled" in n and "back to the input grid" in n for n in report["notes"])
    probs = run.outputs["probabilities"]
    from geomed_seg.io.registry import open_image

    p = open_image(probs)
    assert p.grid.almost_equals(open_image(case / "case-t1n.nii.gz").grid)
    # labels are the argmax of the returned probabilities, on the input grid
    np.testing.assert_array_equal(np.asarray(lab.dataobj).T, p.compute().argmax(0))


def test_target_spacing_and_opt_out_keep_the_input_grid(tiny, case, tmp_path):
    ref = nib.load(case / "case-t1n.nii.gz")
    run = run_pipeline(_cfg(tiny, target_spacing_mm=[2.0, 2.5, 3.0]), input=case,
                       output=tmp_path / "a")  # fmt: skip
    lab = nib.load(run.outputs["labels"])
    assert lab.shape == ref.shape and np.allclose(lab.affine, ref.affine, atol=1e-6)
    assert "(3, 2.5, 2)" in " ".join(run.report["notes"])  # (z, y, x) of (x, y, z) 2, 2.5, 3
    off = run_pipeline(_cfg(tiny, resample_to_model=False), input=case, output=tmp_path / "b")
    lab = nib.load(off.outputs["labels"])
    assert lab.shape == ref.shape and np.allclose(lab.affine, ref.affine, atol=1e-6)
    assert any("differs from the model's" in n for n in off.report["notes"])
    assert off.report["engine"]["windows_total"] > run.report["engine"]["windows_total"]


def test_segment_cli_resamples_by_default_and_warns_with_no_resample(tiny, case, tmp_path, capsys):
    from geomed_seg.cli import main

    ref = nib.load(case / "case-t1n.nii.gz")
    outs = {}
    for flag in ("--resample", "--no-resample"):
        out = tmp_path / f"{flag}.nii.gz"
        capsys.readouterr()
        assert main(["segment", str(case), "-m", str(tiny), "-o", str(out), "-q",
                     "--device", "cpu", flag]) == 0  # fmt: skip
        lab = nib.load(out)
        assert lab.shape == ref.shape and np.allclose(lab.affine, ref.affine, atol=1e-6)
        assert int(lab.header["sform_code"]) == 2
        err = capsys.readouterr().err
        warned = "differs from model 'tiny3mm'" in err and str(case) in err
        assert warned == (flag == "--no-resample"), err
        outs[flag] = np.asarray(lab.dataobj)
    assert not np.array_equal(outs["--resample"], outs["--no-resample"])


def test_classical_method_under_target_spacing_returns_labels_on_input_grid(case, tmp_path):
    cfg = {
        "name": "t2f", "kind": "volume",
        "input": {"folder": "unused", "sequences": {s: f"*{s}*" for s in SEQ}},
        "preprocess": {"target_spacing_mm": [3.0, 3.0, 3.0]},
        "model": {"method": "t2f_otsu"}, "outputs": {"quicklook": False},
    }  # fmt: skip
    run = run_pipeline(cfg, input=case, output=tmp_path / "c")
    ref = nib.load(case / "case-t1n.nii.gz")
    lab = nib.load(run.outputs["labels"])
    assert lab.shape == ref.shape and np.allclose(lab.affine, ref.affine, atol=1e-6)
    assert "nearest-neighbour" in " ".join(run.report["notes"])


def _sitk_image(arr: np.ndarray, grid: VoxelGrid) -> sitk.Image:
    img = sitk.GetImageFromArray(np.ascontiguousarray(arr))
    origin, spacing, direction = grid.to_itk()
    img.SetOrigin(origin)
    img.SetSpacing(spacing)
    img.SetDirection(direction)
    return img


def _sitk_to(arr, src: VoxelGrid, dst: VoxelGrid, interp, pixel=sitk.sitkFloat32):
    origin, spacing, direction = dst.to_itk()
    out = sitk.Resample(_sitk_image(arr, src), list(dst.shape[::-1]), sitk.Transform(), interp,
                        origin, spacing, direction, 0.0, pixel)  # fmt: skip
    return sitk.GetArrayFromImage(out)


def test_probabilities_back_equal_simpleitk_linear(tiny, case):
    from geomed_seg.pipelines.inputs import open_case_folder

    img, _ = open_case_folder(case, {s: f"*{s}*" for s in SEQ})
    model = load_checkpoint(tiny)
    grid = grid_for_spacing(img.grid, (3.0, 3.0, 3.0))
    kw = dict(device="cpu", amp=False, foreground_threshold=0.0)
    back = segment_resampled(img, model, grid, output="probabilities", **kw).image.compute()
    # the same arrays by hand: the model's probabilities on the 3 mm grid, resampled by ITK
    small = segment(resample_image(img, grid), model, output="probabilities", **kw).image
    p_small = small.compute()
    ref = np.stack([_sitk_to(p_small[c], grid, img.grid, sitk.sitkLinear) for c in range(4)])
    # ITK gives 0 outside the 3 mm field of view (the input's last voxels); we take the edge
    inside = ref.sum(axis=0) > 0.5
    assert inside.mean() > 0.8
    np.testing.assert_allclose(back[:, inside], ref[:, inside], atol=1e-5)
    np.testing.assert_allclose(back.sum(axis=0), 1.0, atol=1e-4)
    assert back.shape[1:] == img.spatial_shape


def test_1mm_input_3mm_model_dice_not_worse_than_nearest_labels():
    from geomed_seg.demo import CHECKPOINTS, MNI_T1, SAMPLES
    from geomed_seg.io.registry import open_image
    from geomed_seg.synthetic.phantom import make_phantom

    torch.set_num_threads(1)
    t1 = open_image(SAMPLES / MNI_T1).sel_window((slice(45, 150), slice(55, 185), slice(35, 150)))
    t1 = t1.with_data(t1.compute())
    ph = make_phantom(t1, 5, zoom=1)
    truth = ph.labels.compute()[0]
    model = load_checkpoint(CHECKPOINTS / "brats_unet")
    grid = grid_for_spacing(ph.image.grid, model.card.spacing)
    kw = dict(device="cpu", amp=False, foreground_threshold=0.0)
    ours = segment_resampled(ph.image, model, grid, **kw).image.compute()[0]
    at3 = segment(resample_image(ph.image, grid), model, **kw).image.compute()[0]
    nearest = _sitk_to(at3.astype(np.uint8), grid, ph.image.grid, sitk.sitkNearestNeighbor,
                       sitk.sitkUInt8)  # fmt: skip

    def dice(pred, labels):
        p, t = np.isin(pred, labels), np.isin(truth, labels)
        return 2 * (p & t).sum() / (p.sum() + t.sum())

    regions = {"WT": [1, 2, 3], "TC": [1, 3], "ET": [3]}
    a = {k: dice(ours, v) for k, v in regions.items()}
    b = {k: dice(nearest, v) for k, v in regions.items()}
    assert ours.shape == truth.shape
    assert np.mean(list(a.values())) >= np.mean(list(b.values())) - 1e-3, (a, b)
    assert min(a.values()) > 0.8, a
