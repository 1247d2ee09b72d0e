"""Run a pipeline end to end: inputs → preprocess → model → post-process → outputs → report.

Every output is written atomically into one folder: labels (label COG with colour table and
class names, or NIfTI on the input grid), optional probabilities, polygons (GeoPackage),
a quicklook PNG, ``report.md``/``report.json``, a DICOM SEG when the input was a DICOM
series, a STAC Item ``item.json`` (:mod:`geomed_seg.pipelines.stac`) and ``run.json``
(provenance).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from geomed_seg.core.image import Image
from geomed_seg.core.labels import ClassInfo
from geomed_seg.errors import ConfigError
from geomed_seg.pipelines.schema import PipelineConfig, load_config
from geomed_seg.pipelines.steps import PipelineState, configured_steps

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    """What a run wrote (``outputs``: label → path) and measured (``report``)."""

    config: PipelineConfig
    outputs: dict[str, Path] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)
    labels: Image | None = None
    seconds: float = 0.0


def _cards(cfg: PipelineConfig):
    from geomed_seg.catalog import load_card
    from geomed_seg.pipelines.cards import load_sensor_card

    sensor = load_sensor_card(cfg.sensor) if cfg.sensor else None
    dataset = load_card(cfg.dataset) if cfg.dataset else None
    return sensor, dataset


def _classes(out, dataset) -> list[ClassInfo]:
    """The dataset card's classes for a model, a classical method's own (catalog) table."""
    from geomed_seg.pipelines.methods import CLASSICAL

    if dataset is not None and dataset.classes and out.method not in CLASSICAL:
        return dataset.class_infos()
    return out.classes


def _evaluate(
    labels: Image, cfg: PipelineConfig, classes, reference: Image | None, names_from: str
):
    from geomed_seg.metrics.evaluate import evaluate

    ref = reference
    if ref is None and cfg.evaluation.reference:
        ref = cfg.resolve(cfg.evaluation.reference)
    if ref is None:
        return None, []
    res = evaluate(
        labels,
        ref,
        classes=[c for c in classes],
        surface=cfg.evaluation.surface,
        brats=cfg.evaluation.brats,
        classes_source=names_from,
    )
    if res.ref_path is None:
        res.ref_path = f"in-memory reference ({ref.attrs.get('source') or 'no file'})"
    return res, evaluation_rows(res)


def evaluation_rows(res) -> list[dict[str, Any]]:
    """Report rows of an evaluation: one per class, then one per BraTS region, each named."""
    unit = res.distance_unit
    rows = []
    for r in res.overlap.rows():
        s = res.surface.get(r["index"])
        rows.append({
            "kind": "class", "index": r["index"], "name": r["name"],
            "what": f"class {r['index']} {r['name']}", "dice": r["dice"], "iou": r["iou"],
            "hd95": s.hd95 if s else None, "nsd": s.nsd if s else None, "distance_unit": unit,
        })  # fmt: skip
    for r in res.brats:
        rows.append({
            "kind": "region", "name": r.region, "what": f"region {r.region}",
            "labels": list(res.regions.get(r.region, [])),
            "dice": r.global_dsc, "iou": None, "hd95": r.global_hd95, "nsd": r.global_nsd,
            "distance_unit": unit,
        })  # fmt: skip
    return rows


def _evaluation_summary(res) -> dict[str, Any]:
    """What an evaluation was against and what it measured (for report.md / report.json)."""
    if res is None:
        return {}
    return {
        "reference": res.ref_path,
        "grid": res.grid,
        "classes_source": res.classes_source,
        "metric_set": res.metric_set(),
        "distance_unit": res.distance_unit,
        "spacing": list(res.spacing),
    }


def _reference_provenance(ref: str | None) -> dict[str, str] | None:
    """``{path: sha256}`` of the evaluation reference file, ``{description: ""}`` in memory."""
    from geomed_seg.pipelines import report

    if ref is None:
        return None
    return {ref: report.sha256(Path(ref)) if Path(ref).exists() else ""}


def _write_labels(labels: Image, classes, folder: Path, source: Image, overwrite: bool) -> Path:
    """Write the label map; volumes reproduce the source's NIfTI header geometry (codes too)
    whenever the labels are still on the source grid (write_nifti checks the affine)."""
    from geomed_seg.io.registry import write_image

    if labels.kind == "raster":
        return write_image(labels, folder / "labels.tif", overwrite=overwrite, classes=classes)
    return write_image(
        labels, folder / "labels.nii.gz", overwrite=overwrite, reference=source, classes=classes
    )


#: How a grid error names a built-in step.
_STEP_WORDS = {"preprocess": "preprocessing", "model": "the model"}


def _check_same_grid(state: PipelineState, step: str) -> None:
    """Refuse a step that moved the image or labels of a block off the input grid."""
    for what in (state.image, state.out.labels if state.out is not None else None):
        if what is not None and not what.grid.almost_equals(state.source.grid):
            raise ConfigError(
                f"{state.cfg.name}: {step} changed the grid of the input block "
                f"({what.grid.describe()}); blocks need a pipeline that keeps the input grid "
                "(no reprojection/respacing)"
            )


def _apply_steps(state: PipelineState, steps, core: Sequence[slice] | None) -> None:
    """Run the configured steps on ``state``; crop everything to ``core`` afterwards."""
    for step in steps:
        log.debug("%s: step %s", state.cfg.name, step.name)
        step(state)
        if core is not None:
            _check_same_grid(state, _STEP_WORDS.get(step.name, f"step {step.name!r}"))
    if core is not None:
        state.image, state.source, state.out = _crop(state.image, state.source, state.out, core)


def _crop(img: Image, source: Image, out, core: Sequence[slice]):
    """Return ``img``, ``source`` and ``out`` (labels, probabilities) cropped to ``core``."""
    out.labels = out.labels.sel_window(core)
    if out.probabilities is not None:
        out.probabilities = out.probabilities.sel_window(core)
    return img.sel_window(core), source.sel_window(core), out


def run_pipeline(
    config: str | os.PathLike | dict | PipelineConfig,
    *,
    input: str | os.PathLike | None = None,  # noqa: A002 - the CLI option's name
    output: str | os.PathLike | None = None,
    overrides: Sequence[str] = (),
    overwrite: bool = False,
    image: Image | None = None,
    reference: Image | None = None,
    core: Sequence[slice] | None = None,
) -> RunResult:
    """Run a pipeline; return what it wrote and measured.

    Parameters
    ----------
    config : name, path, mapping or PipelineConfig
        A bundled pipeline (``"flood"``), a YAML path, or an already-parsed config.
    input : path, optional
        Replaces ``input.path`` (or ``input.folder`` for sequence inputs).
    output : path, optional
        Output folder (default: the config's ``output_dir``, relative to the current
        folder); created if missing.
    overrides : sequence of str
        ``key.sub=value`` edits applied before validation.
    overwrite : bool
        Replace existing outputs (otherwise :class:`OutputExistsError`).
    image, reference : Image, optional
        In-memory input / reference labels (the demo's phantom) instead of files.
    core : sequence of slice, optional
        Spatial window (array order) of the input to keep: the model and post-processing
        run on the whole input (a batch block with its halo), then labels, probabilities
        and the images are cropped to ``core`` before anything is written or measured.
        Needs a pipeline that keeps the input grid (no reprojection/respacing). An
        ``image.attrs["block"]`` mapping (scene path, windows) is copied into the report
        and ``run.json``.
    """
    from geomed_seg.core.dtypes import check_compute_dtype
    from geomed_seg.io.transaction import OutputTransaction, check_not_input
    from geomed_seg.pipelines import inputs
    from geomed_seg.pipelines.outputs import RUN_OUTPUTS, planned_outputs

    start = time.perf_counter()
    cfg = config if isinstance(config, PipelineConfig) else load_config(config, overrides)
    cfg = inputs.effective_config(cfg, Path(input) if input else None)  # what run.json records
    folder = Path(output) if output else Path(cfg.output_dir)  # relative to the current folder
    txn = OutputTransaction(  # refuses a file as -o now
        folders=[folder], overwrite=overwrite, obsolete=[folder / n for n in RUN_OUTPUTS]
    )
    steps = configured_steps(cfg)  # unknown or misordered steps refused before any work
    sensor, dataset = _cards(cfg)
    if image is not None:
        img, files = image, []
    else:
        img, files = inputs.open_inputs(cfg)
    if (img.kind == "raster") != (cfg.kind == "raster"):
        raise ConfigError(f"{cfg.name}: pipeline kind {cfg.kind!r} but the input is a {img.kind}")
    img = check_compute_dtype(img, files[0] if files else cfg.name, cfg.input.allow_complex)
    txn.inputs = [Path(f) for f in files]
    check_not_input(folder, txn.inputs, folder=True)
    for path in planned_outputs(cfg, folder, img.kind, img):
        txn.claim(path)  # every conflict refused before any computing
    with txn:  # outputs staged, renamed into place together with run.json last
        state = PipelineState(cfg, image=img, source=img, sensor=sensor, dataset=dataset)
        _apply_steps(state, steps, core)
        result = _write(state, files, folder, overwrite, reference)
    result.seconds = time.perf_counter() - start
    log.info("%s: finished in %.1f s", cfg.name, result.seconds)
    return result


def _write(
    state: PipelineState, files: list, folder: Path, overwrite: bool, reference: Image | None
) -> RunResult:
    """Write and measure the steps' results inside the run's transaction (:func:`run_pipeline`)."""
    from geomed_seg.pipelines import report
    from geomed_seg.pipelines.outputs import write_outputs

    cfg, img, source, out, dataset = state.cfg, state.image, state.source, state.out, state.dataset
    classes = out.classes if state.relabelled else _classes(out, dataset)
    result = RunResult(cfg, labels=out.labels)
    if cfg.outputs.labels:
        result.outputs["labels"] = _write_labels(out.labels, classes, folder, source, overwrite)
    # where the names came from (a classical method's table may equal the card's)
    from_card = dataset is not None and (state.relabelled or classes is not out.classes)
    names_from = f"dataset card {dataset.name}" if from_card else f"{out.method} (its classes)"
    evaluation, metrics = _evaluate(out.labels, cfg, classes, reference, names_from)
    result.outputs.update(write_outputs(cfg, img, source, out, classes, folder, overwrite))
    rep = {
        "pipeline": cfg.name,
        "synthetic": bool(source.attrs.get("synthetic") or cfg.input.synthetic),
        "inputs": [str(f) for f in files],
        "grid": source.grid.describe(),
        "method": out.method,
        "threshold": out.threshold,
        "thresholding": out.thresholding,
        "notes": out.notes,
        "classes": report.class_measures(out.labels, classes),
        "engine": out.stats,
        "metrics": metrics,
        "evaluation": _evaluation_summary(evaluation),
        "seconds": time.perf_counter() - state.started,
        "outputs": {k: str(v) for k, v in result.outputs.items()},
    }
    if source.attrs.get("block"):
        rep["block"] = source.attrs["block"]
    if cfg.outputs.report:
        result.outputs.update(report.write_report(rep, folder, overwrite))
    if cfg.outputs.stac:
        from geomed_seg.pipelines.stac import write_run_item

        started = datetime.now(UTC) - timedelta(seconds=time.perf_counter() - state.started)
        result.outputs["STAC item"] = write_run_item(
            cfg, source, classes, result.outputs, folder, files, overwrite, started
        )
    provenance = {
        "versions": report.versions(),
        "config": cfg.model_dump(mode="json"),
        "inputs": {str(f): report.sha256(f) for f in files},
        "reference": _reference_provenance(rep["evaluation"].get("reference")),
        "model_card": out.model_card,
        "synthetic": rep["synthetic"],
    }
    if "block" in rep:
        provenance["block"] = rep["block"]
    result.outputs["provenance"] = report.write_json(provenance, folder / "run.json", overwrite)
    if cfg.outputs.report:
        result.outputs["report (HTML)"] = report.write_html(rep, provenance, folder, result.outputs,
                                                            overwrite)  # fmt: skip
    result.report, result.seconds = rep, rep["seconds"]
    return result
