"""BraTS-like phantoms: synthetic tumours inserted into real anatomy (the MNI152 T1 template).

Everything here is SYNTHETIC apart from the underlying T1 template: the tumour compartments
are random smooth blobs, and the four "sequences" (t1n, t1c, t2w, t2f) are intensity
transforms of the T1 with per-compartment contrasts, a smooth bias field and Rician-like
noise. They are good enough to exercise a 3D pipeline end to end and to train a demo model;
they are not MRI physics and no clinical claim can rest on them.

Labels follow the BraTS 2023+ convention: 0 background, 1 NETC (necrosis), 2 SNFH (oedema),
3 ET (enhancing tumour). Arrays are in our volume order ``(z, y, x)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from geomed_seg.core.grid import VoxelGrid
from geomed_seg.core.image import Image

SEQUENCES = ("t1n", "t1c", "t2w", "t2f")
#: Mean intensity (relative to white matter = 1) of each compartment per sequence.
_CONTRAST = {
    #        NETC  SNFH  ET
    "t1n": (0.45, 0.75, 0.70),
    "t1c": (0.40, 0.80, 1.60),
    "t2w": (1.70, 1.40, 1.10),
    "t2f": (0.90, 1.55, 1.20),
}


@dataclass(frozen=True)
class Phantom:
    """A synthetic case: ``image`` (4 channels t1n/t1c/t2w/t2f, float32) and ``labels`` (uint8)."""

    image: Image
    labels: Image
    seed: int


def brain_mask(t1: np.ndarray) -> np.ndarray:
    """Return a boolean brain mask of a T1 template array (any axis order)."""
    from skimage.filters import threshold_otsu

    vals = t1[t1 > 0]
    mask = t1 > threshold_otsu(vals) * 0.6
    mask = ndimage.binary_opening(mask, iterations=2)
    lab, n = ndimage.label(mask)
    if n > 1:
        sizes = ndimage.sum(mask, lab, range(1, n + 1))
        mask = lab == (int(np.argmax(sizes)) + 1)
    return ndimage.binary_fill_holes(mask)


def _smooth_field(shape: tuple[int, ...], rng: np.random.Generator, sigma: float) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return field / (np.abs(field).max() + 1e-12)


def _blob(shape, centre, radii, rng, roughness: float) -> np.ndarray:
    """Boolean ellipsoid around ``centre`` (voxels) whose surface is perturbed by smooth noise."""
    grids = np.ogrid[tuple(slice(0, s) for s in shape)]
    r2 = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii, strict=True))
    noise = _smooth_field(shape, rng, sigma=max(min(radii) / 2, 1.0)) * roughness
    return (np.sqrt(r2) + noise) < 1.0


def tumour_labels(mask: np.ndarray, rng: np.random.Generator, scale: float = 1.0) -> np.ndarray:
    """Return uint8 labels {0, 1 NETC, 2 SNFH, 3 ET} of one random tumour inside ``mask``.

    ``scale`` multiplies the tumour size (1.0 ≈ a 20-30 mm core at 1 mm voxels).
    """
    shape = mask.shape
    inner = ndimage.binary_erosion(mask, iterations=max(int(12 * scale), 1))
    candidates = np.argwhere(inner if inner.any() else mask)
    centre = candidates[rng.integers(len(candidates))]
    core_r = rng.uniform(12, 20, size=3) * scale
    core = _blob(shape, centre, core_r, rng, roughness=0.25)
    necrosis = _blob(shape, centre, core_r * rng.uniform(0.35, 0.6), rng, roughness=0.2) & core
    oedema = _blob(shape, centre, core_r * rng.uniform(1.6, 2.2, size=3), rng, roughness=0.35)
    labels = np.zeros(shape, np.uint8)
    labels[oedema & mask] = 2
    labels[core & mask] = 3
    labels[necrosis & mask] = 1
    return labels


def synth_sequences(
    t1: np.ndarray, labels: np.ndarray, mask: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Return float32 ``(4, *t1.shape)`` synthetic t1n/t1c/t2w/t2f intensities (WM ≈ 1)."""
    t1f = t1.astype(np.float32)
    wm = np.percentile(t1f[mask], 90) + 1e-6
    base = t1f / wm
    # T2-like contrast: fluid bright, white matter dark, inside the brain only
    inverted = np.where(mask, np.clip(1.6 - base, 0.1, 1.6), base * 0.3)
    bases = {
        "t1n": base,
        "t1c": base * 1.02,
        "t2w": inverted,
        "t2f": np.where(base < 0.45, base * 0.6, inverted * 0.85),
    }
    out = np.empty((len(SEQUENCES), *t1.shape), np.float32)
    for i, name in enumerate(SEQUENCES):
        img = bases[name].copy()
        for label, contrast in zip((1, 2, 3), _CONTRAST[name], strict=True):
            region = labels == label
            img[region] = contrast * (1 + 0.05 * rng.standard_normal(int(region.sum())))
        img = ndimage.gaussian_filter(img, 0.6)
        bias = 1 + 0.08 * _smooth_field(t1.shape, rng, sigma=max(t1.shape) / 6)
        noise = 0.03 * np.abs(rng.standard_normal(t1.shape) + 1j * rng.standard_normal(t1.shape))
        out[i] = (img * bias + noise).astype(np.float32) * 400
    return out


def make_phantom(t1: Image, seed: int, *, zoom: int = 1, scale: float | None = None) -> Phantom:
    """Return a synthetic BraTS-like case built on the T1 template ``t1`` (one channel).

    Parameters
    ----------
    t1 : Image
        A real T1 volume (e.g. the bundled MNI152 template), dims ``(channel, z, y, x)``.
    seed : int
        Seed of every random choice: same seed, same case.
    zoom : int
        Integer downsampling factor applied first (2 halves each axis; spacing doubles).
    scale : float, optional
        Tumour size factor in voxels; defaults to ``1 / zoom`` so tumours keep their size in mm.
    """
    rng = np.random.default_rng(seed)
    arr = np.asarray(t1.darray[0].compute(), dtype=np.float32)
    grid = t1.grid
    if zoom > 1:
        arr = arr[::zoom, ::zoom, ::zoom]
        grid = VoxelGrid(grid.affine @ np.diag([zoom, zoom, zoom, 1.0]), arr.shape)
    mask = brain_mask(arr)
    labels = tumour_labels(mask, rng, scale=1.0 / zoom if scale is None else scale)
    seqs = synth_sequences(arr, labels, mask, rng)
    attrs = {"synthetic": True, "seed": seed, "source": t1.attrs.get("source")}
    image = Image.from_array(seqs, grid, channel_names=list(SEQUENCES), attrs=dict(attrs))
    lab = Image.from_array(labels[None], grid, attrs={**attrs, "label_convention": "brats2023"})
    return Phantom(image, lab, seed)
