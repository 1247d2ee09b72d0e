"""Helpers for model tests: a tiny card (imported by the test files of this folder)."""

from __future__ import annotations

from geomed_seg.models.card import ModelCard


def tiny_card(**overrides) -> ModelCard:
    """A 2-class smp Unet(resnet18) card for ``in_channels`` bands (default 4)."""
    fields = dict(
        name="tiny-unet",
        description="random-init test model",
        architecture="smp.Unet",
        architecture_kwargs={
            "encoder_name": "resnet18",
            "encoder_depth": 3,
            "decoder_channels": [32, 16, 8],
        },
        spatial_dims=2,
        in_channels=4,
        band_names=["blue", "green", "red", "nir"],
        normalisation={
            "type": "meanstd",
            "mean": [1.0, 2.0, 3.0, 4.0],
            "std": [2.0, 4.0, 8.0, 16.0],
        },
        spacing=[10.0, 10.0],
        spacing_unit="m",
        classes=[
            {"index": 0, "name": "background", "color": [0, 0, 0]},
            {"index": 1, "name": "water", "color": [0, 0, 255]},
        ],
        nodata_label=255,
        roi_size=[64, 64],
        licence="CC-BY-4.0",
    )
    fields.update(overrides)
    return ModelCard(**fields)
