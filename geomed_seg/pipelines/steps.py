"""Pipeline steps: registered objects that a run applies in the configured order.

A step has a ``name`` (what ``steps:`` in a pipeline YAML lists), a ``phase`` (``"image"``:
works on the input image before the model; ``"model"``: makes the labels; ``"labels"``:
works on the labels), ``halo_px(cfg)`` (pixels of context it needs around a batch block so
that a block run equals a whole-scene run) and ``__call__(state)``, which updates the
:class:`PipelineState` in place. :func:`geomed_seg.pipelines.runner.run_pipeline` iterates
:func:`configured_steps`; the batch's default halo is :func:`pipeline_halo` (the largest
halo any configured step asks for). Writing the outputs is not a step: every output is
claimed before the steps run (one output transaction per run).

Built-in steps, in their default order: ``preprocess``, ``model``, ``postprocess`` (the
ordered ops of :mod:`geomed_seg.pipelines.postprocess`) and, with
``outputs.relabel_to_dataset``, ``relabel``. Another step is added with
:func:`register_step`.
"""

from __future__ import annotations

import difflib
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from geomed_seg.errors import ConfigError

if TYPE_CHECKING:
    from geomed_seg.core.image import Image
    from geomed_seg.pipelines.methods import ModelOutput
    from geomed_seg.pipelines.schema import PipelineConfig

log = logging.getLogger(__name__)

#: Order in which phases may follow each other.
PHASES = ("image", "model", "labels")


@dataclass
class PipelineState:
    """What the steps of one run read and write.

    ``image`` is the image the next step reads (after ``preprocess``: the model's input);
    ``source`` the input as opened (its grid is the output grid). ``out`` holds the
    labels, classes and notes once the ``model`` step has run; ``relabelled`` says that the
    labels follow the dataset card's convention.
    """

    cfg: PipelineConfig
    image: Image
    source: Image
    sensor: Any = None
    dataset: Any = None
    out: ModelOutput | None = None
    relabelled: bool = False
    #: ``time.perf_counter()`` when the steps started (the report's ``seconds``).
    started: float = field(default_factory=time.perf_counter)


class Step(Protocol):
    """A pipeline step (see the module docstring)."""

    name: str
    phase: Literal["image", "model", "labels"]

    def halo_px(self, cfg: PipelineConfig) -> int: ...

    def __call__(self, state: PipelineState) -> None: ...


#: Registered steps by name.
STEPS: dict[str, Step] = {}


def register_step(step: Step) -> Step:
    """Register ``step`` under ``step.name`` (replacing a step of that name); return it."""
    if step.phase not in PHASES:
        raise ValueError(f"step {step.name!r}: phase {step.phase!r} is not one of {PHASES}")
    STEPS[step.name] = step
    return step


def get_step(name: str) -> Step:
    """Return the registered step ``name``; :class:`ConfigError` (with a suggestion) if none."""
    try:
        return STEPS[name]
    except KeyError:
        close = difflib.get_close_matches(name, STEPS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"steps: unknown step {name!r} (known: {', '.join(STEPS)}){hint}"
        ) from None


def default_steps(cfg: PipelineConfig) -> tuple[str, ...]:
    """Return the step names a config without ``steps:`` runs."""
    names = ("preprocess", "model", "postprocess")
    return (*names, "relabel") if cfg.outputs.relabel_to_dataset else names


def configured_steps(cfg: PipelineConfig) -> list[Step]:
    """Return the steps of ``cfg`` in run order, checked.

    Raises
    ------
    ConfigError
        For an unknown step, a list without exactly one ``model``-phase step, a step whose
        phase comes before the previous step's (``postprocess`` before ``model``...), or
        ``outputs.relabel_to_dataset`` with a ``steps:`` list that has no ``relabel``.
    """
    names = list(cfg.steps) if cfg.steps is not None else list(default_steps(cfg))
    steps = [get_step(n) for n in names]
    where = f"{cfg.name}: steps {names}"
    if sum(s.phase == "model" for s in steps) != 1:
        raise ConfigError(f"{where}: need exactly one step that makes the labels (model)")
    for a, b in zip(steps, steps[1:], strict=False):
        if PHASES.index(b.phase) < PHASES.index(a.phase):
            raise ConfigError(
                f"{where}: {b.name!r} ({b.phase} step) cannot follow {a.name!r} ({a.phase} step)"
            )
    if cfg.outputs.relabel_to_dataset and "relabel" not in names:
        raise ConfigError(f"{where}: outputs.relabel_to_dataset needs the step 'relabel'")
    return steps


def pipeline_halo(cfg: PipelineConfig) -> int:
    """Return the context (pixels) a batch block needs: the largest halo of the steps."""
    return max((s.halo_px(cfg) for s in configured_steps(cfg)), default=0)


@dataclass(frozen=True)
class PreprocessStep:
    """``cfg.preprocess`` on the input image (select, rescale, warp, clip)."""

    name: str = "preprocess"
    phase: Literal["image", "model", "labels"] = "image"

    def halo_px(self, cfg: PipelineConfig) -> int:
        return 0  # pointwise; reprojection is refused for blocks (the grid must stay)

    def __call__(self, state: PipelineState) -> None:
        from geomed_seg.pipelines.inputs import preprocess

        state.image = preprocess(state.image, state.cfg, state.sensor)


@dataclass(frozen=True)
class ModelStep:
    """``cfg.model``: a classical method or a checkpoint through the engine; makes labels."""

    name: str = "model"
    phase: Literal["image", "model", "labels"] = "model"

    def halo_px(self, cfg: PipelineConfig) -> int:
        """The largest engine window side: ``engine.roi_size``, else the checkpoint card's.

        A block's read window then holds every engine window that touches its core in a
        whole-scene run, so gaussian blending near a block edge sees the same context.
        """
        if cfg.engine.roi_size:
            return max(int(r) for r in cfg.engine.roi_size)
        if cfg.model.method == "checkpoint" and cfg.model.checkpoint:
            from geomed_seg.errors import ModelError
            from geomed_seg.models.checkpoint import read_card

            path = cfg.resolve(cfg.model.checkpoint)
            try:  # the card's roi, as the engine resolves it (EngineOptions.resolve)
                return max(
                    int(r) for r in cfg.engine.to_options().resolve(read_card(path)).roi_size
                )
            except ModelError as exc:
                log.warning("%s: no card roi_size for the default halo (%s)", path, exc)
        return 0

    def __call__(self, state: PipelineState) -> None:
        from geomed_seg.pipelines.methods import run_model

        state.out = run_model(state.image, state.cfg)


@dataclass(frozen=True)
class PostprocessStep:
    """``cfg.postprocess``: its ops in order on a binary mask, then labels into memory."""

    name: str = "postprocess"
    phase: Literal["image", "model", "labels"] = "labels"

    def halo_px(self, cfg: PipelineConfig) -> int:
        """``sum of the ops' halos + 1`` (2 x radius per opening/closing), 0 without any."""
        morph = sum(op.halo_px() for op in cfg.postprocess.ops)
        return morph + 1 if morph else 0

    def __call__(self, state: PipelineState) -> None:
        from geomed_seg.pipelines.methods import materialise

        out = _labels(state, self.name)
        apply_ops(out, state.cfg)
        out.labels = materialise(out.labels)


def apply_ops(out: ModelOutput, cfg: PipelineConfig) -> None:
    """Apply ``cfg.postprocess.ops`` in order to binary labels (multi-class: a note, as is).

    The ops see band 1 != 0; the foreground keeps its class value afterwards.
    """
    import dask.array as da
    import numpy as np

    from geomed_seg.core.image import Image

    ops = cfg.postprocess.ops
    if not ops:
        return
    fg_values = [c.index for c in out.classes if c.index != 0]
    if len(fg_values) != 1:
        out.notes.append("post-processing skipped: it applies to binary masks only")
        return
    lab = out.labels
    for op in ops:
        lab = op.apply(lab, out.stats)
    if fg_values[0] != 1:
        arr = lab.darray
        arr = da.where(arr == 1, np.uint8(fg_values[0]), arr).astype(arr.dtype)
        lab = Image.from_array(arr, lab.grid, nodata=lab.nodata, attrs=dict(lab.attrs))
    out.labels = lab
    unit = lab.grid.ground.area_unit if lab.kind == "raster" else "mm³"
    out.notes.append(f"post-processing: {', '.join(op.describe(unit) for op in ops)}")


@dataclass(frozen=True)
class RelabelStep:
    """Map the model's classes (index order) onto the dataset card's label convention."""

    name: str = "relabel"
    phase: Literal["image", "model", "labels"] = "labels"

    def halo_px(self, cfg: PipelineConfig) -> int:
        return 0  # a lookup table per pixel

    def __call__(self, state: PipelineState) -> None:
        import dask.array as da
        import numpy as np

        from geomed_seg.core.image import Image

        out, dataset, cfg = _labels(state, self.name), state.dataset, state.cfg
        if dataset is None:
            raise ConfigError(f"{cfg.name}: outputs.relabel_to_dataset needs a dataset card")
        src = sorted(out.classes, key=lambda c: c.index)
        dst = sorted(dataset.class_infos(), key=lambda c: c.index)
        if len(src) != len(dst):
            raise ConfigError(
                f"{cfg.name}: outputs.relabel_to_dataset: the model has {len(src)} classes, "
                f"dataset card {dataset.name} has {len(dst)}"
            )
        lut = np.arange(max(256, max(c.index for c in src) + 1), dtype=np.uint16)
        for a, b in zip(src, dst, strict=True):
            lut[a.index] = b.index
        lab = out.labels
        dtype = np.uint8 if max(c.index for c in dst) < 255 else np.uint16
        arr = lab.darray.map_blocks(lambda x: lut[x].astype(dtype), dtype=dtype)
        if lab.nodata is not None:
            arr = da.where(lab.darray == lab.nodata, dtype(lab.nodata), arr)
        out.labels = Image.from_array(arr, lab.grid, nodata=lab.nodata, attrs=dict(lab.attrs))
        out.classes = dst
        pairs = ", ".join(f"{a.index}->{b.index}" for a, b in zip(src, dst, strict=True))
        out.notes.append(f"labels mapped to the {dataset.name} convention ({pairs})")
        state.relabelled = True


def _labels(state: PipelineState, step: str) -> ModelOutput:
    if state.out is None:  # configured_steps puts label steps after the model
        raise ConfigError(f"{state.cfg.name}: step {step!r} needs labels (run 'model' first)")
    return state.out


for _step in (PreprocessStep(), ModelStep(), PostprocessStep(), RelabelStep()):
    register_step(_step)
