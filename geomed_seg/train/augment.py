"""Random augmentation of ``{"image", "label"}`` patches, 2D and 3D, with MONAI transforms.

Why MONAI dictionary transforms: one library for rasters and volumes (every transform has a
2D and a 3D path), the dictionary ``keys`` apply the *same* random draw to image and label so
they stay aligned, and interpolation is chosen per key (``bilinear`` for the image,
``nearest`` for the label, so labels stay integer classes). Their random state is set per
item (``Compose.set_random_state``), which makes augmentation reproducible.

Input: ``image`` float32 ``(C, *roi)`` (already normalised), ``label`` float32 ``(1, *roi)``;
spatial axes in array order. Geometric transforms (flips on every axis, 90° rotations in
the last two axes, small rotations/scaling, elastic deformation) act on both keys; intensity
transforms (scale, shift, gamma, Gaussian noise, band dropout) on the image only.

The only hand-written transform is :class:`RandChannelDropoutd` (band dropout): MONAI has
spatial dropout (``RandCoarseDropoutd``) but no whole-channel dropout.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from monai.transforms import (
    Compose,
    MapTransform,
    Rand2DElasticd,
    Rand3DElasticd,
    RandAdjustContrastd,
    RandAffined,
    RandFlipd,
    RandGaussianNoised,
    Randomizable,
    RandRotate90d,
    RandScaleIntensityd,
    RandShiftIntensityd,
)

from geomed_seg.train.config import AugmentConfig

KEYS = ("image", "label")


class RandChannelDropoutd(Randomizable, MapTransform):
    """With probability ``prob``, set one random channel (band) of ``keys`` to ``value``.

    Teaches a multispectral model not to rely on a single band. Never drops the only channel.
    """

    def __init__(self, keys: Any, prob: float = 0.1, value: float = 0.0) -> None:
        MapTransform.__init__(self, keys)
        self.prob = float(prob)
        self.value = float(value)
        self._do = False
        self._channel = 0

    def randomize(self, n_channels: int) -> None:
        self._do = self.R.random() < self.prob and n_channels > 1
        self._channel = int(self.R.randint(n_channels)) if n_channels > 0 else 0

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        first = d[self.keys[0]]
        self.randomize(int(first.shape[0]))
        if not self._do:
            return d
        for k in self.key_iterator(d):
            x = d[k].clone() if hasattr(d[k], "clone") else np.array(d[k], copy=True)
            x[self._channel] = self.value
            d[k] = x
        return d


def build_augment(cfg: AugmentConfig, spatial_dims: int, roi_size: Any = None) -> Compose:
    """Return a MONAI ``Compose`` of the enabled transforms for 2D or 3D patches.

    Parameters
    ----------
    cfg : AugmentConfig
        Probabilities and ranges; a probability of 0 leaves the transform out.
    spatial_dims : {2, 3}
    roi_size : sequence of int, optional
        Patch size (array order); output patches keep it.
    """
    nearest = ("bilinear", "nearest")
    t: list[Any] = []
    if cfg.flip_prob > 0:
        t += [RandFlipd(KEYS, prob=cfg.flip_prob, spatial_axis=a) for a in range(spatial_dims)]
    if cfg.rot90_prob > 0:
        # last two spatial axes: (y, x) for rasters, the axial plane for volumes
        axes = (spatial_dims - 2, spatial_dims - 1)
        t.append(RandRotate90d(KEYS, prob=cfg.rot90_prob, max_k=3, spatial_axes=axes))
    if cfg.affine_prob > 0 and (cfg.rotate_deg > 0 or cfg.scale_range > 0):
        rad = float(np.deg2rad(cfg.rotate_deg))
        rotate = rad if spatial_dims == 2 else (rad, rad, rad)
        t.append(
            RandAffined(
                KEYS,
                prob=cfg.affine_prob,
                rotate_range=rotate,
                scale_range=cfg.scale_range,
                mode=nearest,
                padding_mode="reflection",
            )
        )
    if cfg.elastic_prob > 0:
        if spatial_dims == 2:
            t.append(
                Rand2DElasticd(
                    KEYS,
                    spacing=(16, 16),
                    magnitude_range=(1.0, 2.0),
                    prob=cfg.elastic_prob,
                    mode=nearest,
                    padding_mode="reflection",
                )
            )
        else:
            t.append(
                Rand3DElasticd(
                    KEYS,
                    sigma_range=(5.0, 7.0),
                    magnitude_range=(50.0, 100.0),
                    prob=cfg.elastic_prob,
                    mode=nearest,
                    padding_mode="reflection",
                )
            )
    if cfg.intensity_prob > 0:
        t += [
            RandScaleIntensityd("image", factors=0.1, prob=cfg.intensity_prob),
            RandShiftIntensityd("image", offsets=0.1, prob=cfg.intensity_prob),
            RandAdjustContrastd(
                "image", prob=cfg.intensity_prob, gamma=tuple(cfg.gamma_range), retain_stats=True
            ),
        ]
    if cfg.noise_prob > 0 and cfg.noise_std > 0:
        t.append(RandGaussianNoised("image", prob=cfg.noise_prob, std=cfg.noise_std))
    if cfg.band_dropout_prob > 0:
        t.append(RandChannelDropoutd("image", prob=cfg.band_dropout_prob))
    return Compose(t)


__all__ = ["KEYS", "RandChannelDropoutd", "build_augment"]
