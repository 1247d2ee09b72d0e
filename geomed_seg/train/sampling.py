"""Random training patches from lazy image/label pairs, with foreground oversampling.

As nnU-Net does, a configurable fraction of patches (``foreground_fraction``, nnU-Net: 33 %)
is centred on a labelled (non-background) sample of a randomly chosen class present in the
case; the rest are placed uniformly. Class locations are collected chunk by chunk (at most
``max_locations`` per class and chunk, as nnU-Net keeps at most 10 000 per class), so an
image of any size is never loaded whole; a patch reads only its own window.

Patches that are mostly nodata (valid fraction < ``min_valid_fraction``) are rejected and
redrawn. Every draw is a pure function of ``(seed, epoch, index)``: the same patch comes out
whatever the number of DataLoader workers, and a resumed run continues exactly.

Windows near the border are clipped to the image and padded (image with 0 — after
normalisation that is the mean — and labels with ``ignore_index`` or background).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import dask
import numpy as np

from geomed_seg.core.image import Image
from geomed_seg.errors import GeometryError, InvalidInputError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Patch:
    """One training patch.

    Attributes
    ----------
    image : numpy.ndarray
        ``(C, *roi_size)`` float32, channel-first, spatial in array order.
    label : numpy.ndarray
        ``(*roi_size)`` int64 class labels.
    case : int
        Index of the case it was drawn from.
    start : tuple of int
        Window origin in the case (array order; may be negative at borders).
    forced_foreground : bool
        ``True`` when the centre was chosen on a labelled sample.
    """

    image: np.ndarray
    label: np.ndarray
    case: int
    start: tuple[int, ...]
    forced_foreground: bool


def check_pair(image: Image, label: Image, name: str = "") -> None:
    """Raise :class:`GeometryError` unless ``label`` lies on exactly ``image``'s grid."""
    where = f"{name}: " if name else ""
    if label.n_channels != 1:
        raise InvalidInputError(f"{where}label image has {label.n_channels} channels, expected 1")
    if type(image.grid) is not type(label.grid) or image.spatial_shape != label.spatial_shape:
        raise GeometryError(
            f"{where}label grid {label.grid.describe()} != image grid {image.grid.describe()}"
        )
    if not image.grid.almost_equals(label.grid):
        raise GeometryError(
            f"{where}label geometry differs from the image's "
            f"({label.grid.describe()} vs {image.grid.describe()})"
        )


def class_locations(
    label: Image, classes: Sequence[int], *, max_locations: int = 10000, seed: int = 0
) -> dict[int, np.ndarray]:
    """Return ``{class: (n, ndim) int array}`` of sample positions (array order), chunk by chunk.

    At most ``max_locations`` positions per class are kept from each chunk (a random subset).
    """
    arr = label.darray[0]
    offsets = [np.cumsum((0, *c[:-1])) for c in arr.chunks]

    def one(block: np.ndarray, origin: tuple[int, ...], k: int) -> dict[int, np.ndarray]:
        rng = np.random.default_rng([seed, k])
        out = {}
        for c in classes:
            pos = np.argwhere(block == c)
            if len(pos) > max_locations:
                pos = pos[np.sort(rng.choice(len(pos), max_locations, replace=False))]
            out[c] = pos + np.asarray(origin)
        return out

    blocks = arr.to_delayed().ravel()
    idx = list(np.ndindex(*arr.numblocks))
    tasks = [
        dask.delayed(one)(b, tuple(int(offsets[a][i[a]]) for a in range(arr.ndim)), k)
        for k, (b, i) in enumerate(zip(blocks, idx, strict=True))
    ]
    parts = dask.compute(*tasks)
    return {
        c: np.concatenate([p[c] for p in parts]) if parts else np.zeros((0, arr.ndim), int)
        for c in classes
    }


class PatchSampler:
    """Draw random ``roi_size`` patches from image/label pairs (see module docstring).

    Parameters
    ----------
    pairs : sequence of (Image, Image)
        Image (``C`` channels) and label (1 channel, integer classes) on the same grid.
    roi_size : sequence of int
        Patch size in array order ((y, x) or (z, y, x)).
    foreground_classes : sequence of int
        Labelled classes that oversampling may centre on (background excluded).
    foreground_fraction : float
        Probability that a draw is centred on a foreground sample (0..1).
    min_valid_fraction : float
        Minimum fraction of valid (non-nodata) image samples in a patch.
    pad_label : int
        Label of padded samples outside the image (background or an ignore index).
    seed : int
        Base seed; a draw depends only on ``(seed, epoch, index)``.
    normalise : callable or sequence of callables, optional
        Applied to the ``(1, C, *roi)`` image batch (e.g. ``ModelCard.normalise``); a
        sequence gives one per case (per-case normalisation, in ``pairs`` order).
    max_tries : int
        Draws before a mostly-nodata patch is accepted anyway.
    cache_bytes : int
        Cases are held in memory, in order, while they fit in this budget; others are read
        window by window.
    """

    def __init__(
        self,
        pairs: Sequence[tuple[Image, Image]],
        roi_size: Sequence[int],
        foreground_classes: Sequence[int],
        *,
        foreground_fraction: float = 0.33,
        min_valid_fraction: float = 0.5,
        pad_label: int = 0,
        seed: int = 0,
        normalise=None,
        max_tries: int = 20,
        cache_bytes: int = 512 * 2**20,
    ) -> None:
        if not pairs:
            raise InvalidInputError("no training cases: the sampler needs at least one pair")
        self.pairs = list(pairs)
        self.roi = tuple(int(r) for r in roi_size)
        ndim = len(self.pairs[0][0].spatial_shape)
        if len(self.roi) != ndim:
            raise InvalidInputError(f"roi_size {self.roi} has {len(self.roi)} axes, images {ndim}")
        for i, (img, lab) in enumerate(self.pairs):
            check_pair(img, lab, img.attrs.get("source") or f"case {i}")
        self.foreground_fraction = float(foreground_fraction)
        self.min_valid_fraction = float(min_valid_fraction)
        self.pad_label = int(pad_label)
        self.seed = int(seed)
        if isinstance(normalise, Sequence) and len(normalise) != len(self.pairs):
            raise InvalidInputError(
                f"{len(normalise)} normalisers for {len(self.pairs)} cases: give one per case"
            )
        self.normalise = normalise
        self.max_tries = int(max_tries)
        self.locations = [
            class_locations(lab, list(foreground_classes), seed=seed) for _, lab in self.pairs
        ]
        # small cases are read once (a dask graph per patch costs more than the patch itself)
        self._cache: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        budget = int(cache_bytes)
        for i, (img, lab) in enumerate(self.pairs):
            size = int(np.prod(img.shape)) * 4 + int(np.prod(lab.shape)) * 9
            if size <= budget:
                budget -= size
                x, y, v = dask.compute(img.darray, lab.darray[0], img.valid_mask())
                self._cache[i] = (np.asarray(x), np.asarray(y), np.asarray(v))

    def __len__(self) -> int:
        return len(self.pairs)

    def draw(self, epoch: int, index: int) -> Patch:
        """Return patch number ``index`` of ``epoch`` (deterministic)."""
        rng = np.random.default_rng([self.seed, int(epoch), int(index)])
        case = int(rng.integers(len(self.pairs)))
        force = bool(rng.random() < self.foreground_fraction)
        present = [c for c, pos in self.locations[case].items() if len(pos)]
        force = force and bool(present)
        img, lab = self.pairs[case]
        patch = None
        for _ in range(self.max_tries):
            start = self._start(rng, img.spatial_shape, present if force else None, case)
            patch = self._read(img, lab, start, self._cache.get(case))
            if patch[2].mean() >= self.min_valid_fraction or force:
                break
        assert patch is not None
        x, y, valid = patch
        norm = self.normalise
        if isinstance(norm, Sequence):
            norm = norm[case]
        if norm is not None:
            x = norm(x[None])[0]
        x[:, ~valid] = 0  # padding and nodata: 0 after normalisation (the mean)
        return Patch(x.astype(np.float32, copy=False), y, case, start, force)

    def _start(self, rng, shape, present, case) -> tuple[int, ...]:
        if present:
            c = present[int(rng.integers(len(present)))]
            pos = self.locations[case][c]
            centre = pos[int(rng.integers(len(pos)))]
            return tuple(int(p) - r // 2 for p, r in zip(centre, self.roi, strict=True))
        # uniform: the centre anywhere in the image, so the window may hang over the border
        # by up to half a roi (nnU-Net pads the same way)
        return tuple(
            int(rng.integers(0, max(s, 1))) - r // 2 for s, r in zip(shape, self.roi, strict=True)
        )

    def _read(self, img: Image, lab: Image, start: tuple[int, ...], cached=None):
        shape = img.spatial_shape
        src, dst = [], []
        for s, r, n in zip(start, self.roi, shape, strict=True):
            a, b = max(s, 0), min(s + r, n)
            src.append(slice(a, max(a, b)))
            dst.append(slice(a - s, a - s + max(b - a, 0)))
        x = np.zeros((img.n_channels, *self.roi), np.float32)
        y = np.full(self.roi, self.pad_label, np.int64)
        valid = np.zeros(self.roi, bool)
        if cached is not None:
            xs, ys, vs = (
                cached[0][(slice(None), *src)],
                cached[1][tuple(src)],
                cached[2][tuple(src)],
            )
        else:
            win = img.sel_window(src)
            xs, ys, vs = dask.compute(win.darray, lab.sel_window(src).darray[0], win.valid_mask())
        x[(slice(None), *dst)] = xs
        y[tuple(dst)] = ys
        valid[tuple(dst)] = vs
        if lab.nodata is not None and np.isfinite(lab.nodata):
            y[y == int(lab.nodata)] = self.pad_label
        if self.pad_label != 0:  # pad_label 0 leaves invalid samples' labels as read
            y[~valid] = self.pad_label
        return x, y, valid


__all__ = ["Patch", "PatchSampler", "check_pair", "class_locations"]
