"""Tiny nnU-Net v2 results folders, generated for the import tests (random weights).

``make_results_folder`` writes what ``nnUNetv2_train`` leaves behind, in nnU-Net's own formats:
``plans.json`` and ``dataset.json`` with the keys nnU-Net reads, and per fold a
``checkpoint_final.pth`` saved as ``nnUNetTrainer.save_checkpoint`` saves it (network
weights, optimiser state, a training log holding numpy scalars, init args with a
``torch.device``, trainer name, allowed mirroring axes). The network is a randomly
initialised ``dynamic_network_architectures`` PlainConvUNet built from the plans'
architecture entry. Run as a script to write one into a folder for a look.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

ARCH = {
    "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
    "arch_kwargs": {
        "n_stages": 3,
        "features_per_stage": [4, 8, 16],
        "conv_op": "torch.nn.modules.conv.Conv3d",
        "kernel_sizes": [[1, 3, 3], [3, 3, 3], [3, 3, 3]],
        "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2]],
        "n_conv_per_stage": [2, 2, 2],
        "n_conv_per_stage_decoder": [2, 2],
        "conv_bias": True,
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
        "norm_op_kwargs": {"eps": 1e-05, "affine": True},
        "dropout_op": None,
        "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True},
    },
    "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
}

SCHEMES = ["ZScoreNormalization", "ZScoreNormalization", "CTNormalization", "NoNormalization"]
FOREGROUND = {
    "0": {"max": 9.0, "mean": 1.0, "median": 1.0, "min": 0.1, "percentile_00_5": 0.2,
          "percentile_99_5": 5.0, "std": 1.0},
    "1": {"max": 9.0, "mean": 0.0, "median": 0.0, "min": -5.0, "percentile_00_5": -3.0,
          "percentile_99_5": 3.0, "std": 1.0},
    "2": {"max": 1500.0, "mean": 80.0, "median": 60.0, "min": -1024.0, "percentile_00_5": -300.0,
          "percentile_99_5": 400.0, "std": 150.0},
    "3": {"max": 1.0, "mean": 0.5, "median": 0.5, "min": 0.0, "percentile_00_5": 0.0,
          "percentile_99_5": 1.0, "std": 0.3},
}  # fmt: skip


def plans_dict(
    spacing: list[float],
    patch: list[int],
    transpose_forward: tuple[int, ...] = (0, 1, 2),
    schemes: list[str] = SCHEMES,
    use_mask: list[bool] | None = None,
    reader: str = "SimpleITKIO",
) -> dict[str, Any]:
    """Return nnU-Net v2 plans (``spacing``/``patch`` in the plans' transposed axis order)."""
    back = [list(transpose_forward).index(i) for i in range(3)]
    return {
        "dataset_name": "Dataset999_Tiny",
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": spacing,
        "original_median_shape_after_transp": patch,
        "image_reader_writer": reader,
        "transpose_forward": list(transpose_forward),
        "transpose_backward": back,
        "configurations": {
            "3d_fullres": {
                "data_identifier": "nnUNetPlans_3d_fullres",
                "preprocessor_name": "DefaultPreprocessor",
                "batch_size": 2,
                "patch_size": patch,
                "median_image_size_in_voxels": patch,
                "spacing": spacing,
                "normalization_schemes": schemes,
                "use_mask_for_norm": use_mask or [True] + [False] * (len(schemes) - 1),
                "resampling_fn_data": "resample_data_or_seg_to_shape",
                "resampling_fn_seg": "resample_data_or_seg_to_shape",
                "resampling_fn_data_kwargs": {
                    "is_seg": False,
                    "order": 3,
                    "order_z": 0,
                    "force_separate_z": None,
                },
                "resampling_fn_seg_kwargs": {
                    "is_seg": True,
                    "order": 1,
                    "order_z": 0,
                    "force_separate_z": None,
                },
                "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
                "resampling_fn_probabilities_kwargs": {
                    "is_seg": False,
                    "order": 1,
                    "order_z": 0,
                    "force_separate_z": None,
                },
                "architecture": ARCH,
                "batch_dice": False,
            },
            "3d_lowres": {
                "inherits_from": "3d_fullres",
                "data_identifier": "lowres",
                "next_stage": "3d_cascade_fullres",
            },
            "3d_cascade_fullres": {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"},
        },  # fmt: skip
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            k: v for k, v in FOREGROUND.items() if int(k) < len(schemes)
        },
    }


def dataset_dict(n_channels: int = 4, regions: bool = False) -> dict[str, Any]:
    """Return a dataset.json: three labels, or BraTS-like regions with regions_class_order."""
    names = {str(i): n for i, n in enumerate(["T1", "T2", "CT", "mask"][:n_channels])}
    if regions:
        labels: dict[str, Any] = {"background": 0, "whole tumor": [1, 2, 3],
                                  "tumor core": [2, 3], "enhancing tumor": [3]}  # fmt: skip
        extra = {"regions_class_order": [1, 2, 3]}
    else:
        labels, extra = {"background": 0, "edema": 1, "core": 2}, {}
    return {"channel_names": names, "labels": labels, "numTraining": 2,
            "file_ending": ".nii.gz", "licence": "CC-BY-4.0", "description": "tiny test", **extra}  # fmt: skip


def _network(n_in: int, n_out: int, seed: int) -> torch.nn.Module:
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    kw = dict(ARCH["arch_kwargs"])
    kw.update(conv_op=torch.nn.Conv3d, norm_op=torch.nn.InstanceNorm3d, nonlin=torch.nn.LeakyReLU)
    torch.manual_seed(seed)
    net = PlainConvUNet(input_channels=n_in, num_classes=n_out, deep_supervision=False, **kw)
    with torch.no_grad():  # spread the random logits so that labels vary
        for p in net.parameters():
            p.mul_(1.5)
    return net


def make_results_folder(
    root: Path,
    plans: dict[str, Any],
    dataset: dict[str, Any],
    folds: tuple[int, ...] = (0, 1),
    mirror_axes: tuple[int, ...] | None = (0, 1, 2),
    trainer: str = "nnUNetTrainer",
) -> Path:
    """Write an nnU-Net v2 results folder under ``root``; return its path."""
    out = root / f"{trainer}__nnUNetPlans__3d_fullres"
    out.mkdir(parents=True)
    (out / "plans.json").write_text(json.dumps(plans, indent=2))
    (out / "dataset.json").write_text(json.dumps(dataset, indent=2))
    n_in = len(dataset["channel_names"])
    labels = {k: v for k, v in dataset["labels"].items() if k != "ignore"}
    n_out = len(labels) - 1 if "regions_class_order" in dataset else len(labels)
    for fold in folds:
        net = _network(n_in, n_out, seed=fold)
        opt = torch.optim.SGD(net.parameters(), 0.01, momentum=0.99, nesterov=True)
        checkpoint = {
            "network_weights": net.state_dict(),
            "optimizer_state": opt.state_dict(),
            "grad_scaler_state": None,
            "logging": {
                "mean_fg_dice": [np.float64(0.5)],
                "ema_fg_dice": [np.float64(0.5)],
                "dice_per_class_or_region": [[np.float64(0.4), np.float64(0.6)]],
                "train_losses": [np.float64(-0.3)],
                "val_losses": [np.float32(-0.2)],
                "lrs": [0.01],
                "epoch_start_timestamps": [1.0],
                "epoch_end_timestamps": [2.0],
            },  # fmt: skip
            "_best_ema": np.float64(0.5),
            "current_epoch": 1,
            "init_args": {
                "plans": plans,
                "configuration": "3d_fullres",
                "fold": fold,
                "dataset_json": dataset,
                "device": torch.device("cpu"),
            },  # fmt: skip
            "trainer_name": trainer,
            "inference_allowed_mirroring_axes": mirror_axes,
        }
        (out / f"fold_{fold}").mkdir()
        torch.save(checkpoint, out / f"fold_{fold}" / "checkpoint_final.pth")
    return out


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "nnunet_tiny")
    folder = make_results_folder(target, plans_dict([2.0, 1.0, 1.0], [16, 32, 32]), dataset_dict())
    print(folder)
