"""Training data: cases, splits, weak water labels, phantoms and the torch ``Dataset``.

Splits are always by case (scene, patient, phantom seed) so that no case gives patches to
both training and validation; the one exception is :func:`spatial_split`, which cuts ONE
scene into two disjoint parts along an axis (with an optional gap) — used by the water demo
because only one Landsat scene is bundled. Validation always runs on whole images (or whole
parts), never on patches.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np

from geomed_seg.core.image import Image
from geomed_seg.errors import ConfigError, InvalidInputError
from geomed_seg.train.config import (
    CaseSpec,
    DataConfig,
    PhantomSpec,
    SpatialSplit,
    TrainConfig,
    WeakWater,
)
from geomed_seg.train.sampling import PatchSampler, check_pair

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Case:
    """One image/label pair with a name (file stem, phantom seed, scene part)."""

    name: str
    image: Image
    label: Image


@dataclass(frozen=True)
class Split:
    """Training and validation cases; no case is in both."""

    train: list[Case]
    val: list[Case]


# -- splits -------------------------------------------------------------------------------
def read_split_file(path: str | Path) -> tuple[list[str], list[str]]:
    """Return ``(train_ids, val_ids)`` from a JSON/YAML ``{"train": [...], "val": [...]}`` or
    a text file of ``train ID`` / ``val ID`` lines."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read split file ({exc.strerror or exc})") from exc
    if p.suffix.lower() in (".json", ".yaml", ".yml"):
        import yaml

        data = json.loads(text) if p.suffix.lower() == ".json" else yaml.safe_load(text)
        if not isinstance(data, dict) or not {"train", "val"} <= set(data):
            raise ConfigError(f"{p}: split file needs 'train' and 'val' lists")
        train, val = [str(v) for v in data["train"]], [str(v) for v in data["val"]]
    else:
        train, val = [], []
        for n, line in enumerate(text.splitlines(), 1):
            parts = line.split("#")[0].split()
            if not parts:
                continue
            if len(parts) != 2 or parts[0] not in ("train", "val"):
                raise ConfigError(f"{p}:{n}: expected 'train ID' or 'val ID', got {line.strip()!r}")
            (train if parts[0] == "train" else val).append(parts[1])
    both = set(train) & set(val)
    if both:
        raise ConfigError(f"{p}: cases {sorted(both)} are in both train and val")
    return train, val


def split_ids(
    ids: Sequence[str], val_fraction: float, seed: int = 0
) -> tuple[list[str], list[str]]:
    """Return a seeded random ``(train, val)`` split of case ids (at least one val case)."""
    ids = list(ids)
    if len(set(ids)) != len(ids):
        raise ConfigError(f"duplicate case ids in {ids}")
    order = np.random.default_rng(seed).permutation(len(ids))
    n_val = max(1, int(round(len(ids) * val_fraction))) if len(ids) > 1 else 0
    val = sorted(ids[i] for i in order[:n_val])
    return [i for i in ids if i not in val], val


def spatial_split(image: Image, label: Image, split: SpatialSplit) -> tuple[Case, Case]:
    """Return ``(train, val)`` parts of ONE scene cut along ``split.axis`` (see SpatialSplit)."""
    axis = image.spatial_dims.index(split.axis)
    n = image.spatial_shape[axis]
    cut = int(round(n * split.fraction))
    lo, hi = max(cut - split.gap // 2, 1), min(cut + (split.gap - split.gap // 2), n - 1)
    first = [slice(None)] * len(image.spatial_shape)
    last = list(first)
    first[axis], last[axis] = slice(0, lo), slice(hi, n)
    a = Case(f"{split.axis}<{lo}", image.sel_window(first), label.sel_window(first))
    b = Case(f"{split.axis}>={hi}", image.sel_window(last), label.sel_window(last))
    return (a, b) if split.train == "first" else (b, a)


# -- sources ------------------------------------------------------------------------------
def weak_water_labels(
    image: Image, bands: dict[str, int | str], *, min_object_px: int = 16, opening_radius: int = 1
) -> Image:
    """Return weak water labels ``{0 land, 1 water}`` (uint8, 255 = nodata) of a scene.

    NDWI (green, nir) thresholded by Otsu over the whole scene (the classical ``ndwi``
    method of the registry with ``otsu=True``, as the flood pipeline's ``ndwi_otsu``),
    then cleaned with scikit-image: binary opening
    with a disk of ``opening_radius`` px and removal of water and land objects smaller than
    ``min_object_px`` px. These are WEAK labels: a model trained on them learns NDWI + Otsu,
    not the truth.
    """
    from skimage import morphology

    from geomed_seg.classical.registry import get_method

    raw = get_method("ndwi")(image, bands=dict(bands), otsu=True).image
    arr = raw.compute()[0]
    nodata = arr == 255
    water = arr == 1
    if opening_radius > 0:
        water = morphology.opening(water, morphology.disk(opening_radius)).astype(bool)
    if min_object_px > 0:
        water = morphology.remove_small_objects(water, max_size=min_object_px - 1)
        water = ~morphology.remove_small_objects(~water, max_size=min_object_px - 1)
    out = np.where(nodata, 255, water).astype(np.uint8)
    return Image.from_array(out[None], image.grid, nodata=255, attrs={"weak_labels": "ndwi+otsu"})


def _weak_water(spec: WeakWater) -> Split:
    from geomed_seg.io.registry import open_image

    image = open_image(spec.scene)
    label = weak_water_labels(
        image, spec.bands, min_object_px=spec.min_object_px, opening_radius=spec.opening_radius
    )
    train, val = spatial_split(image, label, spec.split)
    return Split([train], [val])


def _phantoms(spec: PhantomSpec) -> Split:
    from geomed_seg.io.registry import open_image
    from geomed_seg.synthetic.phantom import make_phantom

    t1 = open_image(spec.t1)
    t1 = t1.with_data(t1.compute()) if t1.darray.npartitions > 1 else t1

    def cases(seeds: list[int]) -> list[Case]:
        out = []
        for s in seeds:
            ph = make_phantom(t1, s, zoom=spec.zoom)
            out.append(Case(f"phantom{s}", ph.image, ph.labels))
        return out

    return Split(cases(spec.train_seeds), cases(spec.val_seeds))


def _files(cfg: DataConfig, seed: int) -> Split:
    from geomed_seg.io.registry import open_image

    specs: list[CaseSpec] = list(cfg.cases or [])
    ids = [c.id or Path(c.image).name.split(".")[0] for c in specs]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"duplicate case ids {ids}; give each case an 'id'")
    if cfg.split_file is not None:
        train_ids, val_ids = read_split_file(cfg.split_file)
        unknown = sorted(set(train_ids + val_ids) - set(ids))
        if unknown:
            raise ConfigError(f"{cfg.split_file}: unknown case ids {unknown} (known: {ids})")
    elif cfg.val_ids is not None:
        val_ids = list(cfg.val_ids)
        train_ids = [i for i in ids if i not in val_ids]
    else:
        train_ids, val_ids = split_ids(ids, cfg.val_fraction, seed)
    by_id = dict(zip(ids, specs, strict=True))

    def load(i: str) -> Case:
        s = by_id[i]
        img, lab = open_image(s.image), open_image(s.label)
        check_pair(img, lab, str(s.label))
        return Case(i, img, lab)

    return Split([load(i) for i in train_ids], [load(i) for i in val_ids])


def load_split(cfg: TrainConfig) -> Split:
    """Return the training/validation cases the config describes, checked against its classes.

    Raises
    ------
    GeometryError
        A label file does not lie on its image's grid.
    ConfigError
        A label file holds values outside the card's classes (the file is named).
    """
    d = cfg.data
    if d.weak_water is not None:
        split = _weak_water(d.weak_water)
    elif d.phantoms is not None:
        split = _phantoms(d.phantoms)
    else:
        split = _files(d, cfg.seed)
    allowed = {c.index for c in cfg.card.classes}
    if cfg.loss.ignore_index is not None:
        allowed.add(cfg.loss.ignore_index)
    for case in split.train + split.val:
        check_label_values(case, allowed)
    return split


def check_label_values(case: Case, allowed: set[int]) -> None:
    """Raise :class:`ConfigError` if ``case.label`` holds values outside ``allowed`` (+ nodata)."""
    arr = case.label.darray
    if case.label.nodata is not None and np.isfinite(case.label.nodata):
        arr = da.where(arr == case.label.nodata, min(allowed), arr)
    values = set(np.unique(arr.compute()).tolist())
    bad = sorted(values - allowed)
    if bad:
        src = case.label.attrs.get("source") or case.name
        raise ConfigError(
            f"{src}: label values {bad[:10]} are not classes of the model card {sorted(allowed)}"
        )


def mean_std(cases: Sequence[Case]) -> tuple[list[float], list[float]]:
    """Return per-channel mean and std (sample units) over the valid samples of ``cases``."""
    sums, sq, n = None, None, 0
    for c in cases:
        x = c.image.darray.astype(np.float64)
        valid = c.image.valid_mask()
        xv = da.where(valid[None], x, 0)
        s, q, k = da.compute(
            xv.sum(axis=tuple(range(1, x.ndim))),
            (xv**2).sum(axis=tuple(range(1, x.ndim))),
            valid.sum(),
        )
        sums = s if sums is None else sums + s
        sq = q if sq is None else sq + q
        n += int(k)
    if not n:
        raise InvalidInputError("no valid samples to compute normalisation statistics")
    mean = sums / n
    std = np.sqrt(np.maximum(sq / n - mean**2, 1e-12))
    return [float(v) for v in mean], [float(v) for v in std]


# -- torch dataset ------------------------------------------------------------------------
class PatchDataset:
    """Map-style torch dataset of ``steps_per_epoch * batch_size`` patches per epoch.

    Item ``i`` of epoch ``e`` is ``sampler.draw(e, i)`` then ``augment`` seeded by
    ``(seed, e, i)``, so the stream is identical for any number of workers. Returns
    ``{"image": float32 (C, *roi), "label": int64 (*roi)}`` torch tensors.
    """

    def __init__(self, sampler: PatchSampler, length: int, augment: Any = None) -> None:
        self.sampler = sampler
        self.length = int(length)
        self.augment = augment
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        import torch

        p = self.sampler.draw(self.epoch, index)
        item = {"image": p.image, "label": p.label[None].astype(np.float32)}
        if self.augment is not None:
            seed = int(
                np.random.default_rng([self.sampler.seed, self.epoch, index, 7]).integers(2**31)
            )
            self.augment.set_random_state(seed=seed)
            item = self.augment(item)
        image = torch.as_tensor(np.asarray(item["image"]), dtype=torch.float32)
        label = torch.as_tensor(np.asarray(item["label"])[0]).round().long()
        return {"image": image.contiguous(), "label": label.contiguous()}


def make_loader(dataset: PatchDataset, batch_size: int, num_workers: int = 0) -> Any:
    """Return a torch ``DataLoader`` over ``dataset`` in index order (randomness is per item)."""
    from torch.utils.data import DataLoader

    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        drop_last=True,
        persistent_workers=False,
    )


__all__ = [
    "Case",
    "PatchDataset",
    "Split",
    "check_label_values",
    "load_split",
    "make_loader",
    "mean_std",
    "read_split_file",
    "spatial_split",
    "split_ids",
    "weak_water_labels",
]
