"""The model step of a pipeline: a classical baseline or a checkpoint, and post-processing.

Classical baselines need no weights: NDWI/MNDWI + scene-wide Otsu (optical water), SAR
backscatter threshold in dB (Sentinel-1 water), and a T2-FLAIR hyperintensity baseline for
brain volumes (whole tumour only). Checkpoints go through the streaming engine
(:func:`geomed_seg.inference.segment.segment`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
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
    #: how a classical threshold was chosen: scope (fixed|scene|batch|case), separability...
    thresholding: dict[str, Any] | None = None


@dataclass(frozen=True)
class SceneThreshold:
    """How a classical method derives a threshold from the data (Otsu on a histogram).

    ``values(image, cfg)`` is the 1-band image it thresholds (an index, dB backscatter);
    its histogram has ``bins`` bins over ``value_range``, or over the merged min/max of a
    first pass when the values are unbounded (``None``). A batch computes these histograms
    per tile or block with the same functions and merges them
    (:mod:`geomed_seg.batch.thresholds`), so tiling never changes the threshold.
    """

    values: Callable[[Image, PipelineConfig], Image]
    value_range: tuple[float, float] | None
    bins: int
    classes: int = 2


def _index_values(index: str) -> Callable[[Image, PipelineConfig], Image]:
    def values(img: Image, cfg: PipelineConfig) -> Image:
        from geomed_seg.classical.indices import spectral_index

        return spectral_index(img, index)

    return values


def _sar_values(img: Image, cfg: PipelineConfig) -> Image:
    from geomed_seg.classical.indices import band_index
    from geomed_seg.classical.thresholds import sar_db

    return sar_db(img, band_index(img, cfg.model.sar_band), cfg.model.sar_linear)


def _scene_thresholds() -> dict[str, SceneThreshold]:
    from geomed_seg.classical.indices import INDEX_BINS, INDEX_RANGE

    return {
        "ndwi_otsu": SceneThreshold(_index_values("ndwi"), INDEX_RANGE, INDEX_BINS),
        "mndwi_otsu": SceneThreshold(_index_values("mndwi"), INDEX_RANGE, INDEX_BINS),
        # dB is unbounded (and a dB band may hold anything): bins over the data's min/max
        "sar_threshold": SceneThreshold(_sar_values, None, 1024),
    }


#: Methods whose threshold is derived from the whole input (see :class:`SceneThreshold`).
#: ``t2f_otsu`` is not among them: each volume is its own case (MR intensities are not
#: comparable between cases, and volumes are never split into blocks).
SCENE_THRESHOLDS: dict[str, SceneThreshold] = _scene_thresholds()


def effective_method(cfg: PipelineConfig) -> str:
    """Return the method a run will use: ``model.fallback`` for a missing checkpoint."""
    method = cfg.model.method
    if method == "checkpoint" and not cfg.resolve(cfg.model.checkpoint or "").exists():
        fb = cfg.model.fallback
        if fb and fb != "none":
            return fb
    return method


def scene_threshold(cfg: PipelineConfig) -> SceneThreshold | None:
    """Return how ``cfg``'s method derives its threshold from the data, or ``None`` when it
    does not (a checkpoint, a method without one, or a threshold given in the config)."""
    if cfg.model.threshold is not None or cfg.model.batch_threshold is not None:
        return None
    return SCENE_THRESHOLDS.get(effective_method(cfg))


def _threshold(values: Image, cfg: PipelineConfig, src: SceneThreshold) -> tuple[float, dict]:
    """Return ``(threshold, facts)``: the user's ``model.threshold``, else the batch's
    ``model.batch_threshold``, else Otsu on this scene's histogram (warns if not bimodal)."""
    from geomed_seg.classical.thresholds import otsu_decision

    if cfg.model.threshold is not None:
        return float(cfg.model.threshold), {"scope": "fixed", "how": "fixed"}
    if cfg.model.batch_threshold is not None:
        return float(cfg.model.batch_threshold), {"scope": "batch", "how": "Otsu over the batch"}
    d = otsu_decision(values, src.bins, src.value_range, src.classes)
    facts = {"scope": "scene", "how": f"Otsu, separability eta {d.eta:.3f}", **d.as_dict()}
    return d.thresholds[0], facts


def _separability_note(facts: dict, values: Image) -> list[str]:
    if facts.get("bimodal", True):
        return []
    from geomed_seg.classical.histogram import ETA_MIN

    return [
        f"{values.attrs.get('source') or 'input'}: histogram not bimodal (eta "
        f"{facts['eta']:.3f} < {ETA_MIN:.2f} or valley {facts['valley']:.2f}): check the "
        "threshold"
    ]


def _water_index(img: Image, cfg: PipelineConfig, index: str) -> ModelOutput:
    from geomed_seg.classical.thresholds import apply_thresholds

    nd = SCENE_THRESHOLDS[f"{index}_otsu"].values(img, cfg)
    t, facts = _threshold(nd, cfg, SCENE_THRESHOLDS[f"{index}_otsu"])
    labels = apply_thresholds(nd, [t])
    notes = [f"{index.upper()} > {t:.4f} ({facts['how']})", *_separability_note(facts, nd)]
    return ModelOutput(
        labels, WATER_CLASSES, f"{index}_otsu", threshold=t, notes=notes, thresholding=facts
    )


def _sar(img: Image, cfg: PipelineConfig) -> ModelOutput:
    from geomed_seg.classical.thresholds import apply_thresholds

    src = SCENE_THRESHOLDS["sar_threshold"]
    db = src.values(img, cfg)
    t, facts = _threshold(db, cfg, src)
    labels = apply_thresholds(db, [t], below_is_one=True)
    notes = [f"{cfg.model.sar_band.upper()} < {t:.2f} dB ({facts['how']})",
             *_separability_note(facts, db)]  # fmt: skip
    return ModelOutput(
        labels, WATER_CLASSES, "sar_threshold", threshold=t, notes=notes, thresholding=facts
    )


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
    scope = "fixed" if cfg.model.threshold else "case"
    return ModelOutput(labels, classes, "t2f_otsu", threshold=t, notes=[note],
                       thresholding={"scope": scope})  # fmt: skip


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
    """Return a warning when the input's sample size differs > 10 % from the card's.

    Rasters compare ground metres (degrees or Web Mercator units are not metres).
    """
    from geomed_seg.inference.respaced import spacing_differs

    if not card.spacing:
        return None
    if img.kind == "raster" and img.grid.ground.metric:  # ground metres at the scene centre
        from geomed_seg.core.ground import pixel_size_at

        dx, dy = pixel_size_at(img.grid, img.grid.height / 2, img.grid.width / 2)
        have = (dy, dx)
    elif img.kind == "raster":
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
    method = effective_method(cfg)
    if method == "checkpoint":
        return _checkpoint(img, cfg)
    out = _classical(METHODS[method], img, cfg)
    if method != cfg.model.method:
        out.notes.insert(
            0, f"checkpoint {cfg.model.checkpoint} not found: classical {method} instead"
        )
    return out


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
    unit = lab.grid.ground.area_unit if lab.kind == "raster" else "mm³"
    out.notes.append(
        f"post-processing: opening {p.opening}, closing {p.closing}, fill holes {p.fill_holes}, "
        f"min object {p.min_object_size or 0:g} {unit}"
    )
    return out
