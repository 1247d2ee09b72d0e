"""The model step of a pipeline: a classical baseline or a checkpoint.

Classical baselines need no weights: NDWI/MNDWI + scene-wide Otsu (optical water), SAR
backscatter threshold in dB (Sentinel-1 water), and a T2-FLAIR hyperintensity baseline for
brain volumes (whole tumour only). They are entries of the classical method registry
(:data:`CLASSICAL` maps ``model.method`` to them), whose class tables come from the data
catalog. Checkpoints go through the streaming engine
(:func:`geomed_seg.inference.segment.segment`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

from geomed_seg.classical.registry import MethodOptions, SceneThreshold, get_method
from geomed_seg.core.image import Image
from geomed_seg.core.labels import ClassInfo
from geomed_seg.errors import ModelError
from geomed_seg.inference.options import worker_device
from geomed_seg.pipelines.schema import PipelineConfig

log = logging.getLogger(__name__)

#: Pipeline ``model.method`` -> the registered classical method it runs
#: (:mod:`geomed_seg.classical.registry`; options from :func:`classical_options`).
CLASSICAL = {"ndwi_otsu": "ndwi", "mndwi_otsu": "mndwi", "sar_threshold": "sar-threshold",
             "t2f_otsu": "t2f-otsu"}  # fmt: skip


@dataclass
class ModelOutput:
    """Labels (uint8/uint16; rasters: nodata 255, or a checkpoint card's ``nodata_label``) and
    what the step decided."""

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


def classical_options(method: str, cfg: PipelineConfig) -> MethodOptions:
    """Return the registry options of pipeline method ``method`` (a key of :data:`CLASSICAL`).

    The threshold is the user's ``model.threshold``, else the batch's
    ``model.batch_threshold``, else (``None``) Otsu on this scene's histogram.
    """
    m = cfg.model
    given = m.threshold if m.threshold is not None else m.batch_threshold
    if method == "sar_threshold":
        kw = {"band": m.sar_band, "db_input": not m.sar_linear, "threshold": given}
    elif method == "t2f_otsu":  # each volume is its own case: no batch threshold
        kw = {"threshold": m.threshold, "label": m.baseline_label}
    else:
        kw = {"otsu": True, "threshold": given}
    return get_method(CLASSICAL[method]).validate(**kw)


def _pipeline_scene(method: str) -> SceneThreshold | None:
    """The registry entry's :class:`SceneThreshold` with ``values(image, cfg)``."""
    src = get_method(CLASSICAL[method]).scene
    if src is None:
        return None

    def values(img: Image, cfg: PipelineConfig) -> Image:
        return src.values(img, classical_options(method, cfg))

    return SceneThreshold(values, src.value_range, src.bins, src.classes)


#: Methods whose threshold is derived from the whole input (see :class:`SceneThreshold`;
#: ``values(image, cfg)``). ``t2f_otsu`` is not among them: each volume is its own case (MR
#: intensities are not comparable between cases, and volumes are never split into blocks).
SCENE_THRESHOLDS: dict[str, SceneThreshold] = {
    m: s for m in CLASSICAL if (s := _pipeline_scene(m)) is not None
}


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


def _separability_note(facts: dict, img: Image) -> list[str]:
    if facts.get("bimodal", True):
        return []
    from geomed_seg.classical.histogram import ETA_MIN

    return [
        f"{img.attrs.get('source') or 'input'}: histogram not bimodal (eta "
        f"{facts['eta']:.3f} < {ETA_MIN:.2f} or valley {facts['valley']:.2f}): check the "
        "threshold"
    ]


def _threshold_note(method: str, cfg: PipelineConfig, t: float, how: str) -> str:
    if method == "sar_threshold":
        return f"{cfg.model.sar_band.upper()} < {t:.2f} dB ({how})"
    if method == "t2f_otsu":
        return f"T2-FLAIR > {t:.1f} (upper multi-Otsu class in the head): whole tumour only"
    return f"{CLASSICAL[method].upper()} > {t:.4f} ({how})"


def _run_classical(method: str, img: Image, cfg: PipelineConfig) -> ModelOutput:
    """Run pipeline method ``method`` through its classical registry entry."""
    entry = get_method(CLASSICAL[method])
    res = entry.run(img, classical_options(method, cfg))
    facts = dict(res.thresholding or {})
    if (
        entry.scene is not None
        and cfg.model.threshold is None
        and (cfg.model.batch_threshold is not None)
    ):
        facts = {"scope": "batch", "how": "Otsu over the batch"}
    notes = [_threshold_note(method, cfg, res.threshold, facts.get("how", "")),
             *_separability_note(facts, img)]  # fmt: skip
    return ModelOutput(res.image, res.classes or [], method, threshold=res.threshold,
                       notes=notes, thresholding=facts)  # fmt: skip


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

    foreground = 0.0 if cfg.preprocess.foreground == "nonzero" else None
    opts = e.to_options(foreground_threshold=foreground)
    pinned = worker_device()  # batch --devices: this worker's own device
    if pinned is not None and pinned != opts.device:
        opts = replace(opts, device=pinned)
    probs = None
    from geomed_seg.inference.respaced import label_image

    def labels_of(probs: Image) -> Image:
        lut = card.channel_to_label()
        return label_image(
            probs, lut, card.nodata_label, threshold=opts.threshold, activation=card.activation
        )

    if grid is not None:
        from geomed_seg.inference.respaced import segment_resampled

        res = segment_resampled(img, loaded, grid, opts, output="probabilities")
        probs = res.image
        labels = labels_of(probs)
        notes.append(_resampled_note(img, grid))
        probs = probs if cfg.outputs.probabilities else None
    elif cfg.outputs.probabilities:
        res = segment(img, loaded, opts, output="probabilities")
        probs = res.image
        labels = labels_of(probs)
    else:
        res = segment(img, loaded, opts, output="labels")
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
    from geomed_seg.core.resample_grid import spacing_differs

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


METHODS = {
    **{m: partial(_run_classical, m) for m in CLASSICAL},
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


#: Labels up to this many bytes are computed once, into memory, after post-processing
#: (:class:`geomed_seg.pipelines.steps.PostprocessStep`).
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
