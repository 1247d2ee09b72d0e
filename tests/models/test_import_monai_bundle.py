"""MONAI bundle import: parity with the bundle's own inference workflow (MONAI ConfigWorkflow)."""

from __future__ import annotations

import copy
import json

import nibabel as nib
import numpy as np
import pytest
import torch

from geomed_seg.errors import ModelError
from geomed_seg.models.importers import detect_format, import_model

PIXDIM = [1.5, 1.25, 2.0]  # (x, y, z) mm, anisotropic
NET = {"_target_": "UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 3,
       "channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 1}  # fmt: skip

INFERENCE = {
    "bundle_root": ".",
    "output_dir": "$@bundle_root + '/eval'",
    "dataset_dir": "$@bundle_root",
    "datalist": "$[{'image': @dataset_dir + '/input.nii.gz'}]",
    "device": "$torch.device('cpu')",
    "network_def": NET,
    "network": "$@network_def.to(@device)",
    "preprocessing": {"_target_": "Compose", "transforms": [
        {"_target_": "LoadImaged", "keys": "image"},
        {"_target_": "EnsureChannelFirstd", "keys": "image"},
        {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
        {"_target_": "Spacingd", "keys": "image", "pixdim": PIXDIM, "mode": "bilinear"},
        {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": -57, "a_max": 164,
         "b_min": 0.0, "b_max": 1.0, "clip": True},
        {"_target_": "EnsureTyped", "keys": "image"},
    ]},
    "dataset": {"_target_": "Dataset", "data": "@datalist", "transform": "@preprocessing"},
    "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1,
                   "shuffle": False, "num_workers": 0},
    "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [32, 32, 16],
                "sw_batch_size": 2, "overlap": 0.25, "mode": "gaussian"},
    "postprocessing": {"_target_": "Compose", "transforms": [
        {"_target_": "Activationsd", "keys": "pred", "softmax": True},
        {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image",
         "nearest_interp": False, "to_tensor": True},
        {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
        {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir",
         "output_postfix": "seg", "resample": False, "separate_folder": False},
    ]},
    "handlers": [{"_target_": "CheckpointLoader", "load_path": "$@bundle_root + '/models/model.pt'",
                  "load_dict": {"model": "@network"}}],
    "evaluator": {"_target_": "SupervisedEvaluator", "device": "@device",
                  "val_data_loader": "@dataloader", "network": "@network", "inferer": "@inferer",
                  "postprocessing": "@postprocessing", "val_handlers": "@handlers"},
    "initialize": ["$monai.utils.set_determinism(seed=0)"],
    "run": ["$@evaluator.run()"],
}  # fmt: skip

META = {
    "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20220324.json",
    "version": "0.1.0", "monai_version": "1.6.1", "pytorch_version": "2.14.1", "numpy_version": "2",
    "name": "tiny_ct_bundle", "authors": ["Test Author"], "license": "Apache-2.0",
    "copyright": "Copyright (c) test", "task": "segmentation", "description": "random weights",
    "network_data_format": {
        "inputs": {"image": {"type": "image", "format": "hounsfield", "modality": "CT",
                             "num_channels": 1, "spatial_shape": [32, 32, 16], "dtype": "float32",
                             "value_range": [0, 1], "is_patch_data": True,
                             "channel_def": {"0": "image"}}},
        "outputs": {"pred": {"type": "image", "format": "segmentation", "num_channels": 3,
                             "spatial_shape": [32, 32, 16], "dtype": "float32",
                             "value_range": [0, 1], "is_patch_data": True,
                             "channel_def": {"0": "background", "1": "liver", "2": "tumour"}}},
    },
}  # fmt: skip


def _make_bundle(root, inference=INFERENCE, shape=(48, 40, 30), axcodes_affine=None):
    from monai.networks.nets import UNet
    from scipy.ndimage import gaussian_filter

    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    (root / "configs" / "inference.json").write_text(json.dumps(inference, indent=1))
    (root / "configs" / "metadata.json").write_text(json.dumps(META, indent=1))
    torch.manual_seed(0)
    net = UNet(**{k: v for k, v in NET.items() if k != "_target_"})
    torch.save(net.state_dict(), root / "models" / "model.pt")
    rng = np.random.default_rng(0)
    vol = gaussian_filter(rng.normal(size=shape), 3)
    vol = (vol - vol.mean()) / vol.std() * 120 + 40  # HU-like, around the window
    affine = np.diag([*PIXDIM, 1.0]) if axcodes_affine is None else axcodes_affine
    affine[:3, 3] = [-30.0, 12.5, 7.0]
    nib.save(nib.Nifti1Image(vol.astype(np.float32), affine), root / "input.nii.gz")
    return root


def _bundle_reference(root):
    """Run the bundle's own inference workflow; return its saved labels (x, y, z)."""
    from monai.bundle import ConfigWorkflow

    wf = ConfigWorkflow(
        config_file=str(root / "configs" / "inference.json"),
        meta_file=str(root / "configs" / "metadata.json"),
        logging_file=None, workflow_type="infer", bundle_root=str(root),
    )  # fmt: skip
    wf.initialize()
    wf.run()
    wf.finalize()
    (out,) = list((root / "eval").glob("*seg.nii.gz"))
    return np.asarray(nib.load(out).dataobj).squeeze()


def test_bundle_equals_its_own_workflow(tmp_path):
    from geomed_seg.inference.segment_file import segment_file

    root = _make_bundle(tmp_path / "bundle")
    assert detect_format(root) == "monai-bundle"
    card = import_model(root, tmp_path / "ckpt")
    assert [c.name for c in card.classes] == ["background", "liver", "tumour"]
    assert card.roi_size == [16, 32, 32] and card.overlap == 0.25 and card.mode == "gaussian"
    assert card.spacing == PIXDIM[::-1] and card.axcodes == "RAS"
    assert card.normalisation.type == "scale_range" and card.normalisation.clip
    prov = card.provenance
    assert (
        prov.authors == ["Test Author"] and prov.licence == "Apache-2.0" and prov.version == "0.1.0"
    )
    assert set(prov.source_sha256) == {
        "configs/metadata.json",
        "configs/inference.json",
        "models/model.pt",
    }
    reference = _bundle_reference(root)
    segment_file(root / "input.nii.gz", tmp_path / "ckpt", tmp_path / "ours.nii.gz")
    ours = np.asarray(nib.load(tmp_path / "ours.nii.gz").dataobj)
    assert ours.shape == reference.shape
    agree = (ours == reference).mean()
    assert agree >= 0.999, agree
    assert len(np.unique(reference)) > 1  # a test that cannot pass on a constant answer


def test_bundle_on_another_spacing_resamples_like_spacingd(tmp_path):
    """Input at 1 x 1 x 3 mm, model at 1.5 x 1.25 x 2 mm: Spacingd/Invertd vs our resampling."""
    from geomed_seg.inference.segment_file import segment_file

    root = _make_bundle(tmp_path / "bundle", shape=(60, 50, 20),
                        axcodes_affine=np.diag([1.0, 1.0, 3.0, 1.0]))  # fmt: skip
    import_model(root, tmp_path / "ckpt")
    reference = _bundle_reference(root)
    segment_file(root / "input.nii.gz", tmp_path / "ckpt", tmp_path / "ours.nii.gz")
    ours = np.asarray(nib.load(tmp_path / "ours.nii.gz").dataobj)
    assert (ours == reference).mean() >= 0.999
    assert len(np.unique(reference)) == 3


def test_bundle_zip_and_orientation_refused(tmp_path):
    import shutil

    from geomed_seg.inference.segment_file import segment_file

    lps = np.diag([-PIXDIM[0], -PIXDIM[1], PIXDIM[2], 1.0])
    root = _make_bundle(tmp_path / "b", axcodes_affine=lps)
    archive = shutil.make_archive(str(tmp_path / "bundle"), "zip", tmp_path, "b")
    assert detect_format(tmp_path / "bundle.zip") == "monai-bundle"
    card = import_model(tmp_path / "bundle.zip", tmp_path / "ckpt")
    assert list(card.provenance.source_sha256) == ["bundle.zip"]
    with pytest.raises(ModelError, match="orientation LPS.*RAS"):
        segment_file(root / "input.nii.gz", tmp_path / "ckpt", tmp_path / "x.nii.gz")
    assert archive


@pytest.mark.parametrize(
    ("where", "item", "match"),
    [
        (
            "preprocessing",
            {"_target_": "HistogramNormalized", "keys": "image"},
            "preprocessing transform HistogramNormalized",
        ),
        (
            "postprocessing",
            {"_target_": "KeepLargestConnectedComponentd", "keys": "pred"},
            "postprocessing transform KeepLargestConnectedComponent",
        ),
        (
            "preprocessing",
            {"_target_": "NormalizeIntensityd", "keys": "image"},
            "NormalizeIntensity",
        ),
    ],
)
def test_untranslatable_transform_refused_by_name(tmp_path, where, item, match):
    cfg = copy.deepcopy(INFERENCE)
    cfg[where]["transforms"].insert(2, item)
    root = _make_bundle(tmp_path / "bundle", inference=cfg)
    with pytest.raises(ModelError, match=match):
        import_model(root, tmp_path / "ckpt")
    assert not (tmp_path / "ckpt").exists()


def test_expression_in_network_def_refused(tmp_path):
    cfg = copy.deepcopy(INFERENCE)
    cfg["network_def"] = {**NET, "num_res_units": "$__import__('os').system('touch CANARY') or 1"}
    root = _make_bundle(tmp_path / "bundle", inference=cfg)
    with pytest.raises(ModelError, match="num_res_units is a Python expression.*--trust-code"):
        import_model(root, tmp_path / "ckpt")


@pytest.mark.parametrize("clip", [True, False])
def test_scale_range_equals_monai(clip):
    from monai.transforms import ScaleIntensityRange

    from geomed_seg.models.card import ModelCard

    card = ModelCard(
        name="s", architecture="monai.UNet", spatial_dims=3, in_channels=1, roi_size=[8, 8, 8],
        classes=[{"index": 0, "name": "bg"}],
        normalisation={"type": "scale_range", "a_min": -57, "a_max": 164, "b_min": 0.0,
                       "b_max": 1.0, "clip": clip},
    )  # fmt: skip
    x = np.random.default_rng(0).normal(50, 150, size=(1, 1, 8, 8, 8)).astype(np.float32)
    ref = ScaleIntensityRange(-57, 164, 0.0, 1.0, clip=clip)(x[0]).numpy()
    np.testing.assert_allclose(card.normalise(x)[0], ref, rtol=1e-6, atol=1e-6)
