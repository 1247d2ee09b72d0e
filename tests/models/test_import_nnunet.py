"""nnU-Net v2 results-folder import: parity with nnunetv2's own ``nnUNetPredictor``.

The results folders are generated (``nnunet_data.py``): random-weight PlainConvUNets from
dynamic-network-architectures, plans/dataset.json/checkpoints in nnU-Net's formats. The
reference is ``nnUNetPredictor.predict_single_npy_array`` (crop, normalise, sliding window,
mirroring, fold averaging, export). nnU-Net accumulates logits and Gaussian weights in
float16; near the volume borders its Gaussian weights (< 6e-8) underflow there, so the strict
comparison runs nnU-Net with float32 accumulators (patched in the test), and a slow test
compares with stock nnU-Net too.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from nnunet_data import dataset_dict, make_results_folder, plans_dict

from geomed_seg.cli import main
from geomed_seg.core.grid import VoxelGrid
from geomed_seg.core.image import Image
from geomed_seg.errors import ModelError
from geomed_seg.inference.plan import nnunet_gaussian, nnunet_window_starts, plan_windows
from geomed_seg.inference.segment import segment
from geomed_seg.models.checkpoint import load_checkpoint
from geomed_seg.models.importers import detect_format, import_model

SPACING = [2.0, 1.0, 1.0]  # (z, y, x) mm, anisotropic
PATCH = [16, 32, 32]


def _plans(transpose=(0, 1, 2), **kw):
    return plans_dict([SPACING[t] for t in transpose], [PATCH[t] for t in transpose],
                      transpose, **kw)  # fmt: skip


def _volume(shape, seed=0, zero_border=0):
    """Return a 4-channel ``(C, z, y, x)`` float32 case: MRI-like, zeros, CT range, binary."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    blob = np.exp(-((z * 1.2) ** 2 + (y + 0.2) ** 2 + (x - 0.1) ** 2) * 3)
    c0 = 1 + 3 * blob + 0.3 * rng.random(shape)
    c1 = np.where(rng.random(shape) < 0.2, 0, rng.normal(0, 1, shape) + 2 * blob)
    c2 = -800 + 1500 * blob + 100 * rng.normal(size=shape)
    c3 = (rng.random(shape) > 0.5).astype(float)
    data = np.stack([c0, c1, c2, c3]).astype(np.float32)
    if zero_border:
        b = zero_border
        keep = np.zeros(shape, bool)
        keep[b:-b, b:-b, b:-b] = True
        data[:, ~keep] = 0
    return data


def _image(data, spacing_zyx=SPACING):
    affine = np.diag([spacing_zyx[2], spacing_zyx[1], spacing_zyx[0], 1.0])
    affine[:3, 3] = [-20.0, 14.0, 3.5]
    return Image.from_array(data, VoxelGrid(affine, data.shape[1:]))


def nnunet_reference(folder, data, spacing_zyx, folds, tta, fp32=True):
    """Return ``(labels, probabilities)`` of nnunetv2's own predictor on ``data (C, z, y, x)``."""
    pfrd = pytest.importorskip("nnunetv2.inference.predict_from_raw_data")
    patched = {}
    if fp32:  # nnU-Net's float16 accumulators and Gaussian, as float32 (module docstring)

        class _Torch:
            half = torch.float32

            def __getattr__(self, name):
                return getattr(torch, name)

        gaussian = pfrd.compute_gaussian
        patched = {"torch": _Torch(),
                   "compute_gaussian": lambda *a, **k: gaussian(*a, **{**k, "dtype": torch.float32})}  # fmt: skip
    saved = {k: getattr(pfrd, k) for k in patched}
    try:
        for k, v in patched.items():
            setattr(pfrd, k, v)
        predictor = pfrd.nnUNetPredictor(
            tile_step_size=0.5, use_gaussian=True, use_mirroring=tta,
            perform_everything_on_device=False, device=torch.device("cpu"), verbose=False,
            verbose_preprocessing=False, allow_tqdm=False,
        )  # fmt: skip
        predictor.initialize_from_trained_model_folder(str(folder), use_folds=folds)
        seg, probs = predictor.predict_single_npy_array(
            data.copy(), {"spacing": list(spacing_zyx)}, None, None, True
        )
    finally:
        for k, v in saved.items():
            setattr(pfrd, k, v)
    return seg, probs


def _ours(folder, tmp_path, data, spacing_zyx=SPACING, tta=False, **import_kw):
    card = import_model(folder, tmp_path / "ckpt", overwrite=True, **import_kw)
    model = load_checkpoint(tmp_path / "ckpt")
    image = _image(data, spacing_zyx)
    probs = segment(image, model, output="probabilities", tta=tta, device="cpu").image
    labels = segment(image, model, output="labels", tta=tta, device="cpu").image
    return card, probs.darray.compute(), labels.darray.compute()[0]


def test_parity_with_nnunet_predictor_two_folds(tmp_path):
    pytest.importorskip("nnunetv2")
    folder = make_results_folder(tmp_path, _plans(), dataset_dict(), folds=(0, 1))
    data = _volume((24, 48, 40))
    card, probs, labels = _ours(folder, tmp_path, data)
    seg, ref = nnunet_reference(folder, data, SPACING, (0, 1), tta=False)
    assert probs.shape == ref.shape
    diff = np.abs(probs - ref).max()
    assert diff < 1e-3, diff  # measured 1.4e-6
    assert np.mean(labels == seg) >= 0.999
    assert len(np.unique(seg)) == 3  # the comparison covers every class
    assert card.mode == "nnunet" and card.overlap == 0.5 and card.blend == "logits"


def test_parity_with_a_zero_background_cropped_like_nnunet(tmp_path):
    """BraTS-like zeros around the case: nnU-Net runs the non-zero box, background outside."""
    pytest.importorskip("nnunetv2")
    folder = make_results_folder(tmp_path, _plans(), dataset_dict(), folds=(0,))
    data = _volume((26, 50, 44), seed=1, zero_border=3)
    data[0, :, :4, :] = 0  # asymmetric box
    _, probs, labels = _ours(folder, tmp_path, data)
    seg, ref = nnunet_reference(folder, data, SPACING, (0,), tta=False)
    assert np.abs(probs - ref).max() < 1e-3
    assert np.mean(labels == seg) >= 0.999
    outside = ~(data != 0).any(axis=0)
    assert (labels[:3] == 0).all() and outside[:3].all()
    assert np.all(probs[0][:3] == 1.0)


@pytest.mark.slow
def test_parity_regions_transposed_mirrored(tmp_path):
    """Region outputs (sigmoid, regions_class_order), transpose_forward and mirror axes."""
    pytest.importorskip("nnunetv2")
    transpose = (2, 0, 1)
    folder = make_results_folder(tmp_path, _plans(transpose), dataset_dict(regions=True),
                                 folds=(0,), mirror_axes=(0, 2))  # fmt: skip
    data = _volume((20, 40, 36), seed=3)
    card, probs, labels = _ours(folder, tmp_path, data, tta=True)
    assert card.activation == "sigmoid" and [c.index for c in card.classes] == [1, 2, 3]
    assert card.mirror_axes == [1, 2]  # network axes (0, 2) are our (x, y) = axes 2, 1
    seg, ref = nnunet_reference(folder, data, SPACING, (0,), tta=True)
    assert np.abs(probs - ref).max() < 1e-3
    assert np.mean(labels == seg) >= 0.999
    assert len(np.unique(seg)) == 4


@pytest.mark.slow
def test_agreement_with_stock_nnunet_float16(tmp_path):
    """Stock nnU-Net (float16 accumulation): equal within its own precision in the interior."""
    pytest.importorskip("nnunetv2")
    folder = make_results_folder(tmp_path, _plans(), dataset_dict(), folds=(0, 1))
    data = _volume((24, 48, 40))
    _, probs, labels = _ours(folder, tmp_path, data)
    seg, ref = nnunet_reference(folder, data, SPACING, (0, 1), tta=False, fp32=False)
    inner = (slice(None), slice(4, -4), slice(6, -6), slice(6, -6))
    assert np.abs(probs - ref)[inner].max() < 1e-2
    assert np.mean(labels == seg) >= 0.995


def test_card_carries_plans_dataset_and_checkpoint(tmp_path):
    folder = make_results_folder(tmp_path, _plans((2, 0, 1)), dataset_dict(), folds=(0, 1, 2),
                                 mirror_axes=(0, 1))  # fmt: skip
    assert detect_format(folder) == "nnunet"
    card = import_model(folder, tmp_path / "ckpt", folds=("0,2",))
    assert card.spacing == SPACING and card.roi_size == PATCH and card.spacing_unit == "mm"
    assert card.architecture_kwargs["n_folds"] == 2
    assert card.architecture_kwargs["transpose_forward"] == [2, 0, 1]
    assert card.mirror_axes == [0, 2]  # network axes (0, 1) are our axes 2 and 0
    assert card.band_names == ["T1", "T2", "CT", "mask"]
    assert [(c.index, c.name) for c in card.classes] == [
        (0, "background"),
        (1, "edema"),
        (2, "core"),
    ]
    chans = card.normalisation.channels
    assert [c.scheme for c in chans] == ["zscore", "zscore", "ct", "none"]
    assert chans[0].use_mask and not chans[1].use_mask
    assert (chans[2].lower, chans[2].upper, chans[2].mean, chans[2].std) == (-300, 400, 80, 150)
    prov = card.provenance
    assert set(prov.source_sha256) == {"plans.json", "dataset.json", "fold_0/checkpoint_final.pth",
                                       "fold_2/checkpoint_final.pth"}  # fmt: skip
    assert prov.licence == "CC-BY-4.0" and any("10 %" in n for n in prov.notes)
    assert card.crop_to_nonzero and card.resampling.data_order == 3
    import hashlib

    want = hashlib.sha256((folder / "plans.json").read_bytes()).hexdigest()
    assert prov.source_sha256["plans.json"] == want


def test_weights_only_load_of_an_nnunet_checkpoint():
    """nnU-Net's checkpoint (numpy scalars in its log, a torch.device) loads weights-only."""
    import pickle

    from geomed_seg.models.importers.nnunet import _numpy_safe_globals

    obj = {"log": [np.float64(0.5), np.float32(1.0)], "device": torch.device("cpu")}
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(buf, weights_only=True)
    buf.seek(0)
    with torch.serialization.safe_globals(_numpy_safe_globals()):
        back = torch.load(buf, weights_only=True)
    assert back["log"][0] == 0.5 and back["device"] == torch.device("cpu")


def _edit(folder, name, change):
    path = folder / name
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("name", "change", "match"),
    [
        ("plans.json", lambda p: p["configurations"]["3d_fullres"].update(
            normalization_schemes=["RescaleTo01Normalization"] * 4),
         "channel 0 uses normalisation 'RescaleTo01Normalization'"),
        ("plans.json", lambda p: p["configurations"]["3d_fullres"]["architecture"].update(
            network_class_name="os.system"), "network class 'os.system' is not one we build"),
        ("plans.json", lambda p: p["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"].update(
            nonlin="builtins.eval"), "only classes under torch.nn."),
        ("plans.json", lambda p: p.update(image_reader_writer="Tiff3DIO"), "image reader 'Tiff3DIO'"),
        ("plans.json", lambda p: p["configurations"]["3d_fullres"].update(
            preprocessor_name="MyPreprocessor"), "preprocessor 'MyPreprocessor'"),
        ("plans.json", lambda p: p["configurations"]["3d_fullres"].update(patch_size=[32, 32]),
         "only 3D configurations"),
        ("dataset.json", lambda d: d.update(labels={"background": 0, "a": [1, 2], "b": 2}),
         "regions_class_order"),
    ],
)  # fmt: skip
def test_untranslatable_plans_are_refused_by_name(tmp_path, name, change, match):
    folder = make_results_folder(tmp_path, _plans(), dataset_dict(), folds=(0,))
    _edit(folder, name, change)
    with pytest.raises(ModelError, match=match):
        import_model(folder, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cascade_and_wrong_configuration_refused(tmp_path):
    folder = make_results_folder(tmp_path, _plans(), dataset_dict(), folds=(0,))
    with pytest.raises(ModelError, match="cascade stage"):
        import_model(folder, tmp_path / "o1", configuration="3d_cascade_fullres")
    with pytest.raises(ModelError, match="trained with configuration '3d_fullres'"):
        import_model(folder, tmp_path / "o2", configuration="3d_lowres")
    with pytest.raises(ModelError, match="no configuration '2d'"):
        import_model(folder, tmp_path / "o3", configuration="2d")


def test_custom_trainer_with_another_network_refused(tmp_path):
    folder = make_results_folder(tmp_path, _plans(), dataset_dict(), folds=(0,),
                                 trainer="nnUNetTrainerBigger")  # fmt: skip
    _edit(folder, "plans.json", lambda p: p["configurations"]["3d_fullres"]["architecture"][
        "arch_kwargs"].update(features_per_stage=[8, 16, 32]))  # fmt: skip
    with pytest.raises(ModelError, match="do not fit.*trainer nnUNetTrainerBigger"):
        import_model(folder, tmp_path / "out")


def test_cli_import_with_fold_and_configuration(tmp_path, capsys):
    folder = make_results_folder(tmp_path, _plans(), dataset_dict(), folds=(0, 1))
    out = tmp_path / "ckpt"
    args = ["import-model", str(folder), "-o", str(out), "--fold", "1",
            "--configuration", "3d_fullres"]  # fmt: skip
    assert main(args) == 0
    card = json.loads((out / "card.json").read_text())
    assert card["architecture"] == "nnunet.Network" and card["architecture_kwargs"]["n_folds"] == 1
    assert list(card["provenance"]["source_sha256"]) == ["plans.json", "dataset.json",
                                                         "fold_1/checkpoint_final.pth"]  # fmt: skip


# -- the pieces, against independent references --------------------------------------------


@pytest.mark.parametrize("roi", [(16, 32, 32), (5, 7, 12), (1, 9, 2)])
def test_gaussian_equals_scipy_filtered_impulse(roi):
    """nnU-Net's compute_gaussian: scipy.ndimage.gaussian_filter of an impulse at roi // 2."""
    from scipy.ndimage import gaussian_filter

    tmp = np.zeros(roi)
    tmp[tuple(r // 2 for r in roi)] = 1
    ref = gaussian_filter(tmp, [r / 8 for r in roi], 0, mode="constant", cval=0)
    ref /= ref.max()
    ref[ref == 0] = ref[ref > 0].min()
    np.testing.assert_allclose(nnunet_gaussian(roi), ref, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(("size", "roi"), [(110, 64), (64, 64), (24, 16), (57, 16), (300, 96)])
def test_window_starts_equal_nnunet(size, roi):
    sw = pytest.importorskip("nnunetv2.inference.sliding_window_prediction")
    want = sw.compute_steps_for_sliding_window((size,), (roi,), 0.5)[0]
    assert list(nnunet_window_starts(size, roi, 0.5)) == want
    plan = plan_windows((size, 8), (roi, 8), 0.5, steps="nnunet")
    assert sorted({w[0].start for w in plan.windows}) == want


def test_normalisation_equals_nnunet_schemes_with_crop(tmp_path, caplog):
    """Statistics over nnU-Net's crop and mask; a hole in the mask is counted and warned."""
    norm_mod = pytest.importorskip(
        "nnunetv2.preprocessing.normalization.default_normalization_schemes"
    )
    from nnunetv2.preprocessing.cropping.cropping import crop_to_nonzero

    from geomed_seg.models.card import NnUNetNormalisation
    from geomed_seg.models.nnunet_norm import nnunet_statistics, normalise_nnunet

    data = _volume((20, 24, 22), zero_border=3)
    data[:, 10, 12, 11] = 0  # an enclosed hole: every channel 0 inside the brain
    norm = NnUNetNormalisation.model_validate({"channels": [
        {"scheme": "zscore", "use_mask": True}, {"scheme": "zscore"},
        {"scheme": "ct", "mean": 80, "std": 150, "lower": -300, "upper": 400}, {"scheme": "none"}]})  # fmt: skip
    with caplog.at_level(logging.WARNING):
        stats = nnunet_statistics(_image(data), norm)
    assert stats.holes == 1 and any("enclosed holes" in r.getMessage() for r in caplog.records)
    cropped, seg, bbox = crop_to_nonzero(data.copy(), None)
    assert [slice(a, b) for a, b in bbox] == list(stats.bbox)
    props = {"mean": 80, "std": 150, "percentile_00_5": -300, "percentile_99_5": 400}
    classes = [(norm_mod.ZScoreNormalization, True), (norm_mod.ZScoreNormalization, False),
               (norm_mod.CTNormalization, False), (norm_mod.NoNormalization, False)]  # fmt: skip
    ref = np.stack([cls(use_mask_for_norm=m, intensityproperties=props).run(cropped[c].copy(), seg[0])
                    for c, (cls, m) in enumerate(classes)])  # fmt: skip
    ours = normalise_nnunet(data[(slice(None), *stats.bbox)][None], norm, stats)[0]
    hole = np.zeros(ours.shape[1:], bool)
    hole[tuple(i - s.start for i, s in zip((10, 12, 11), stats.bbox, strict=True))] = True
    np.testing.assert_allclose(ours[:, ~hole], ref[:, ~hole], rtol=1e-4, atol=1e-4)
    assert ours[0][hole] == 0 and ref[0][hole] != 0  # the warned difference


@pytest.mark.slow
def test_cli_segment_of_nifti_case_folder_equals_nnunet(tmp_path):
    """import-model then segment on a NIfTI case folder (one file per channel, by name)."""
    nib = pytest.importorskip("nibabel")
    pytest.importorskip("nnunetv2")
    folder = make_results_folder(tmp_path, _plans(), dataset_dict(), folds=(0,))
    data = _volume((24, 48, 40), seed=1, zero_border=2)
    case = tmp_path / "case"
    case.mkdir()
    affine = np.diag([SPACING[2], SPACING[1], SPACING[0], 1.0])
    for c, name in enumerate(["T1", "T2", "CT", "mask"]):  # NIfTI (i, j, k) = our (x, y, z)
        nib.save(nib.Nifti1Image(data[c].transpose(2, 1, 0), affine), case / f"X-{name}.nii.gz")
    assert main(["import-model", str(folder), "-o", str(tmp_path / "ck")]) == 0
    out = tmp_path / "labels.nii.gz"
    assert main(["segment", str(case), "-m", str(tmp_path / "ck"), "-o", str(out)]) == 0
    labels = np.asarray(nib.load(out).dataobj).transpose(2, 1, 0)
    seg, _ = nnunet_reference(folder, data, SPACING, (0,), tta=False)
    assert np.mean(labels == seg) >= 0.999


def test_residual_encoder_unet_from_plans_fits_dynamic_network_architectures():
    """A ResEnc plans entry builds the same network as dynamic-network-architectures does."""
    from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet

    from geomed_seg.models.nnunet_net import build_nnunet

    kw = {"n_stages": 3, "features_per_stage": [4, 8, 16],
          "conv_op": "torch.nn.modules.conv.Conv3d", "kernel_sizes": [[3, 3, 3]] * 3,
          "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]], "n_blocks_per_stage": [1, 2, 2],
          "n_conv_per_stage_decoder": [1, 1], "conv_bias": True,
          "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
          "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None,
          "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
          "nonlin_kwargs": {"inplace": True}}  # fmt: skip
    name = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
    ours = build_nnunet(2, 3, name, kw, ["conv_op", "norm_op", "dropout_op", "nonlin"])
    direct = dict(kw, conv_op=torch.nn.Conv3d, norm_op=torch.nn.InstanceNorm3d,
                  nonlin=torch.nn.LeakyReLU)  # fmt: skip
    ref = ResidualEncoderUNet(input_channels=2, num_classes=3, deep_supervision=False, **direct)
    ours.folds[0].load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(1, 2, 16, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), ref.eval()(x))


@pytest.mark.parametrize(
    ("shape", "current", "new", "force"),
    [((6, 20, 18), (3.5, 0.8, 0.9), (2.0, 1.0, 1.0), None),  # separate z (current anisotropic)
     ((12, 14, 10), (1.6, 1.2, 0.9), (2.0, 1.0, 1.0), None),  # 3D order 3
     ((9, 12, 11), (1.0, 1.0, 1.0), (0.8, 0.8, 4.0), None),  # separate axis from the new spacing
     ((8, 10, 12), (2.0, 1.0, 1.0), (1.0, 1.3, 0.7), True)],
)  # fmt: skip
def test_resample_to_shape_equals_nnunet(shape, current, new, force):
    res = pytest.importorskip("nnunetv2.preprocessing.resampling.default_resampling")
    from geomed_seg.inference.nnunet_resample import new_shape_for, resample_to_shape

    data = np.random.default_rng(0).normal(size=(2, *shape)).astype(np.float32)
    target = new_shape_for(shape, current, new)
    assert list(target) == list(res.compute_new_shape(shape, current, new))
    for order, order_z in ((3, 0), (1, 0)):
        want = res.resample_data_or_seg_to_shape(data, target, current, new, False, order,
                                                 order_z, force)  # fmt: skip
        got = resample_to_shape(data, target, current, new, order=order, order_z=order_z,
                                force_separate_z=force)  # fmt: skip
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("spacing", "zero_border"), [([2.8, 0.75, 0.8], 0), ([1.7, 1.25, 0.85], 2)]
)
def test_parity_at_another_spacing_with_nnunet_resampling(tmp_path, spacing, zero_border):
    """segment_resampled with an imported card resamples as nnU-Net (crop, splines, logits)."""
    pytest.importorskip("nnunetv2")
    from geomed_seg.inference.respaced import model_grid, segment_resampled

    folder = make_results_folder(tmp_path, _plans(), dataset_dict(), folds=(0,))
    data = _volume((18, 40, 36), seed=2, zero_border=zero_border)
    import_model(folder, tmp_path / "ckpt")
    model = load_checkpoint(tmp_path / "ckpt")
    image = _image(data, spacing)
    grid = model_grid(image, model.card)
    assert grid is not None  # > 10 % off the model's 2 x 1 x 1 mm
    res = segment_resampled(image, model, grid, output="probabilities", device="cpu")
    probs = np.asarray(res.image.darray.compute())
    labels = np.asarray(segment_resampled(image, model, grid, device="cpu").image.darray)[0]
    seg, ref = nnunet_reference(folder, data, spacing, (0,), tta=False)
    assert np.abs(probs - ref).max() < 1e-3  # measured 1.5e-6 (trilinear path: 71.7 % labels)
    assert np.mean(labels == seg) >= 0.999
    assert res.image.grid == image.grid
