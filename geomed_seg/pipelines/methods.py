"""The model step of a pipeline: a classical baseline or a checkpoint, and post-processing.

Classical baselines need no weights: NDWI/MNDWI + scene-wide Otsu (optical water), SAR
backscatter threshold in dB (Sentinel-1 water), and a T2-FLAIR hyperintensity baseline for
brain volumes (whole tumour only). Checkpoints go through the streaming engine
(:func:`geomed_seg.inference.segment.segment`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any

import dask.array as da
import numpy as np

from geomed_seg.core.image import Image
from geomed_seg.core.labels import ClassInfo
from geomed_seg.errors import ConfigError, ModelError
from geomed_seg.pipelines.schema import PipelineConfig

log = logging.getLogger(__name__)

WATER_CLASSES = [ClassInfo(0, "land", (200, 190, 150)), ClassInfo(1, "water", (30, 90, 220))]
TUMOUR_CLASSES = [ClassInfo(0, "background", (0, 0, 0)), ClassInfo(2, "SNFH", (0, 255, 0))]


@dataclass
class ModelOutput:
    """Labels (uint8/uint16, nodata 255 for rasters) and what the step decided."""

    labels: Image
    classes: list[ClassInfo]
    method: str
    threshold: float | None = None
    probabilities: Image | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    model_card: dict[str, Any] | None = None


def _water_index(img: Image, cfg: PipelineConfig, index: str) -> ModelOutput:
    from geomed_seg.classical.indices import spectral_index
    from geomed_seg.classical.thresholds import apply_thresholds, otsu_threshold

    nd = spectral_index(img, index)
    t = float(cfg.model.threshold) if cfg.model.threshold is not None else otsu_threshold(nd)
    labels = apply_thresholds(nd, [t])
    note = f"{index.upper()} > {t:.4f} ({'fixed' if cfg.model.threshold is not None else 'Otsu'})"
    return ModelOutput(labels, WATER_CLASSES, f"{index}_otsu", threshold=t, notes=[note])


def _sar(img: Image, cfg: PipelineConfig) -> ModelOutput:
    from geomed_seg.classical.indices import band_index
    from geomed_seg.classical.thresholds import sar_water

    band = band_index(img, cfg.model.sar_band)
    labels, t = sar_water(
        img, threshold_db=cfg.model.threshold, band=band, linear=cfg.model.sar_linear
    )
    how = "fixed" if cfg.model.threshold is not None else "Otsu"
    note = f"{cfg.model.sar_band.upper()} < {t:.2f} dB ({how})"
    return ModelOutput(labels, WATER_CLASSES, "sar_threshold", threshold=t, notes=[note])


def _t2f(img: Image, cfg: PipelineConfig) -> ModelOutput:
    """Whole-tumour baseline: the brightest multi-Otsu class of T2-FLAIR inside the head."""
    from skimage.filters import threshold_multiotsu, threshold_otsu

    names = [n.lower() for n in img.channel_names or []]
    if "t2f" not in names:
        raise ConfigError(f"model.method t2f_otsu needs a 't2f' channel; channels are {names}")
    t2f = np.asarray(img.darray[names.index("t2f")].compute(), np.float32)
    head = t2f > threshold_otsu(t2f)
    t = float(cfg.model.threshold or threshold_multiotsu(t2f[head], classes=3)[-1])
    lab = ((t2f > t) & head).astype(np.uint8) * np.uint8(cfg.model.baseline_label)
    labels = Image.from_array(lab[None], img.grid, attrs={"source": img.attrs.get("source")})
    classes = [TUMOUR_CLASSES[0], ClassInfo(cfg.model.baseline_label, "SNFH", (0, 255, 0))]
    note = f"T2-FLAIR > {t:.1f} (upper multi-Otsu class in the head): whole tumour only"
    return ModelOutput(labels, classes, "t2f_otsu", threshold=t, notes=[note])


def _select_for_card(img: Image, card) -> Image:
    if not card.band_names or not img.channel_names:
        return img
    from geomed_seg.pipelines.inputs import select_bands

    return select_bands(img, list(card.band_names))


def _checkpoint(img: Image, cfg: PipelineConfig) -> ModelOutput:
    from geomed_seg.models.checkpoint import load_checkpoint_cached

    path = cfg.resolve(cfg.model.checkpoint or "")
    if not path.exists():
        raise ModelError(f"{path}: checkpoint not found")
    loaded = load_checkpoint_cached(path)  # once per process: a batch worker runs many tiles
    card = loaded.card
    img = _select_for_card(img, card)
    if img.n_channels != card.in_channels:
        raise ModelError(
            f"{path}: model needs {card.in_channels} channels, input has {img.n_channels}"
        )
    e = cfg.engine
    notes = [f"model {card.name} ({card.architecture})"]
    grid = _model_grid(img, cfg, card)
    if grid is None:
        mismatch = _spacing_mismatch(img, card)
        if mismatch:
            notes.append(mismatch)
            log.warning("%s", mismatch)
    start = time.perf_counter()
    from geomed_seg.inference.segment import segment

    kw = dict(
        roi_size=e.roi_size,
        overlap=e.overlap if e.overlap is not None else card.overlap,
        mode=e.mode or card.mode,
        batch_size=e.batch_size,
        device=e.device,
        amp=e.amp,
        tta=e.tta,
        foreground_threshold=0.0 if cfg.preprocess.foreground == "nonzero" else None,
    )
    probs = None
    if grid is not None:
        from geomed_seg.inference.respaced import segment_resampled

        res = segment_resampled(img, loaded, grid, output="probabilities", **kw)
        probs = res.image
        labels = _argmax_labels(probs, card)
        notes.append(_resampled_note(img, grid))
        probs = probs if cfg.outputs.probabilities else None
    elif cfg.outputs.probabilities:
        res = segment(img, loaded, output="probabilities", **kw)
        probs = res.image
        labels = _argmax_labels(probs, card)
    else:
        res = segment(img, loaded, output="labels", **kw)
        labels = res.image
    stats = dict(res.stats)
    stats.setdefault("seconds", time.perf_counter() - start)
    classes = card.class_infos()
    return ModelOutput(
        labels,
        classes,
        f"checkpoint:{card.name}",
        probabilities=probs,
        stats=stats,
        model_card=card.model_dump(mode="json"),
        notes=notes,
    )


def _model_grid(img: Image, cfg: PipelineConfig, card=None):
    """Return the grid the model step runs on when it is not the input's (volumes), else None."""
    from geomed_seg.inference.respaced import model_grid

    p = cfg.preprocess
    target = tuple(p.target_spacing_mm[::-1]) if p.target_spacing_mm else None
    return model_grid(img, card, target_spacing_zyx=target, resample_to_model=p.resample_to_model)


def _resampled_note(img: Image, grid) -> str:
    have = ", ".join(f"{s:g}" for s in img.grid.spacing_zyx)
    want = ", ".join(f"{s:g}" for s in grid.spacing_zyx)
    return (
        f"resampled ({have}) mm -> ({want}) mm (z, y, x) for the model; results resampled "
        "back to the input grid (probabilities linear, then argmax)"
    )


def _spacing_mismatch(img: Image, card) -> str | None:
    """Return a warning when the input's sample size differs > 10 % from the card's."""
    from geomed_seg.inference.respaced import spacing_differs

    if not card.spacing:
        return None
    if img.kind == "raster":
        have = (img.grid.res[1], img.grid.res[0])
    else:
        have = tuple(img.grid.spacing_zyx)
    want = tuple(card.spacing)
    if not spacing_differs(have, want):
        return None
    if img.kind == "raster":
        fix = "consider preprocess.target_resolution"
    else:
        fix = "results may be wrong (preprocess.resample_to_model is off)"
    return (
        f"input spacing {tuple(round(h, 3) for h in have)} differs from the model's "
        f"{want} (array order); {fix}"
    )


def _argmax_labels(probs: Image, card) -> Image:
    """Return card class indices of the most probable channel; nodata 255 where NaN (rasters)."""
    from geomed_seg.inference.respaced import labels_from_probabilities

    return labels_from_probabilities(probs, card.channel_to_label())


METHODS = {
    "ndwi_otsu": lambda img, cfg: _water_index(img, cfg, "ndwi"),
    "mndwi_otsu": lambda img, cfg: _water_index(img, cfg, "mndwi"),
    "sar_threshold": _sar,
    "t2f_otsu": _t2f,
    "checkpoint": _checkpoint,
}


def run_model(img: Image, cfg: PipelineConfig) -> ModelOutput:
    """Run ``cfg.model`` on ``img``; fall back to ``model.fallback`` if the checkpoint is missing.

    The output is always on ``img``'s grid. Checkpoints resample a volume to their spacing
    themselves (probabilities back, then argmax); a classical method under
    ``preprocess.target_spacing_mm`` runs on the resampled volume and its labels come back
    nearest-neighbour (it has no probabilities).
    """
    method = cfg.model.method
    if method == "checkpoint" and not cfg.resolve(cfg.model.checkpoint or "").exists():
        fb = cfg.model.fallback
        if fb and fb != "none":
            out = _classical(METHODS[fb], img, cfg)
            out.notes.insert(
                0, f"checkpoint {cfg.model.checkpoint} not found: classical {fb} instead"
            )
            return out
    if method == "checkpoint":
        return _checkpoint(img, cfg)
    return _classical(METHODS[method], img, cfg)


def _classical(fn, img: Image, cfg: PipelineConfig) -> ModelOutput:
    """Run a classical method, on the ``target_spacing_mm`` grid if one is set (labels back)."""
    grid = _model_grid(img, cfg) if cfg.preprocess.target_spacing_mm else None
    if grid is None:
        return fn(img, cfg)
    from geomed_seg.core.resample import resample_image

    small = resample_image(img, grid, order=1, edge="constant")
    out = fn(small, cfg)
    back = resample_image(out.labels, img.grid, order=0, edge="nearest")
    out.labels = replace(back, attrs={**dict(img.attrs), **dict(out.labels.attrs)})
    out.notes.append(
        _resampled_note(img, grid).replace(
            "(probabilities linear, then argmax)", "(labels nearest-neighbour)"
        )
    )
    return out


#: Labels up to this many bytes are computed once, into memory, after post-processing.
#: Larger ones stay lazy: every output (labels file, polygons, report) then recomputes
#: them chunk by chunk, which keeps memory bounded for huge scenes but costs time.
MATERIALISE_BYTES = 512 * 2**20


def materialise(image: Image, max_bytes: int = MATERIALISE_BYTES) -> Image:
    """Return ``image`` computed into memory (with its mask) when it has ``<= max_bytes``.

    A lazy image's graph reaches back to the input file (through the model and
    post-processing for labels); left lazy, each consumer would read and recompute it.
    Larger images are returned unchanged (lazy, bounded memory).
    """
    if image.darray.nbytes > max_bytes:
        return image
    data = image.data.persist()
    mask = None if image.mask is None else image.mask.persist()
    return replace(image, data=data, mask=mask)


def postprocess(out: ModelOutput, cfg: PipelineConfig) -> ModelOutput:
    """Apply ``cfg.postprocess`` to binary labels (multi-class labels are left as they are).

    The labels are then computed once into memory when they fit :data:`MATERIALISE_BYTES`.
    """
    out = _postprocess(out, cfg)
    out.labels = materialise(out.labels)
    return out


def _postprocess(out: ModelOutput, cfg: PipelineConfig) -> ModelOutput:
    from geomed_seg.classical import postprocess as pp

    p = cfg.postprocess
    wanted = p.opening or p.closing or p.fill_holes or p.min_object_size or p.connected_components
    if not wanted:
        return out
    fg_values = [c.index for c in out.classes if c.index != 0]
    if len(fg_values) != 1:
        out.notes.append("post-processing skipped: it applies to binary masks only")
        return out
    value = fg_values[0]
    lab = out.labels
    if p.opening:
        lab = pp.morphology(lab, "opening", p.opening)
    if p.closing:
        lab = pp.morphology(lab, "closing", p.closing)
    if p.fill_holes:
        lab = pp.fill_holes(lab)
    if p.min_object_size:
        lab = pp.remove_small_objects(lab, p.min_object_size)
    if p.connected_components:
        comps = pp.connected_components(lab)
        out.stats["connected_components"] = int(comps.attrs["n_components"])
    if value != 1:
        arr = lab.darray
        arr = da.where(arr == 1, np.uint8(value), arr).astype(arr.dtype)
        lab = Image.from_array(arr, lab.grid, nodata=lab.nodata, attrs=dict(lab.attrs))
    out.labels = lab
    unit = "m²" if lab.kind == "raster" else "mm³"
    out.notes.append(
        f"post-processing: opening {p.opening}, closing {p.closing}, fill holes {p.fill_holes}, "
        f"min object {p.min_object_size or 0:g} {unit}"
    )
    return out
