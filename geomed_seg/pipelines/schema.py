"""The pipeline config: a pydantic schema for ``pipelines/*.yaml``.

Every section forbids unknown keys, so a typo fails with the key and the file named
(:class:`~geomed_seg.errors.ConfigError`, exit 2 on the CLI). Paths in a config are
relative to the config file's folder unless absolute. ``--set key.sub=value`` overrides are
applied to the raw mapping before validation, each value parsed as YAML.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from geomed_seg.errors import ConfigError, validation_problems
from geomed_seg.pipelines.postprocess import (
    PostprocessOp,
    PostprocessOpSpec,
    ops_from_yaml,
    override_ops,
)

#: Folder of the bundled pipelines (repository root / pipelines).
PIPELINES_DIR = Path(__file__).resolve().parents[2] / "pipelines"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InputSpec(_Strict):
    """Where the image comes from: exactly one of ``path``, ``bands`` or ``folder``.

    ``path``: one file (GeoTIFF, NIfTI, Zarr, DICOM folder); ``band_names`` names its bands in
    file order (common names of the sensor card, e.g. ``[blue, green, red, nir]``).
    ``bands``: ``{band name: single-band file}``, stacked in the given order (grids must match).
    ``folder`` + ``sequences``: ``{channel: glob pattern}`` searched in the folder (the four
    BraTS sequences ``t1n, t1c, t2w, t2f``), each a NIfTI file or a DICOM series folder.
    """

    path: str | None = None
    band_names: list[str] | None = None
    bands: dict[str, str] | None = None
    folder: str | None = None
    sequences: dict[str, str] | None = None
    synthetic: bool = Field(False, description="the input is synthetic: reports say so")
    allow_complex: Literal["magnitude"] | None = Field(
        None, description="complex samples (SAR SLC): use their magnitude; refused otherwise"
    )

    @model_validator(mode="after")
    def _one_source(self) -> InputSpec:
        given = [k for k in ("path", "bands", "folder") if getattr(self, k)]
        if len(given) > 1:
            raise ValueError(f"give one of path, bands or folder, not {' and '.join(given)}")
        if self.folder and not self.sequences:
            raise ValueError("folder needs sequences: {channel: glob pattern}")
        return self


class PreprocessSpec(_Strict):
    """Preprocessing before the model (all optional)."""

    select_bands: list[str] | None = None
    rescale_from_card: bool = False
    target_crs: str | None = None
    target_resolution: float | None = Field(None, gt=0)
    resampling: Literal["nearest", "bilinear", "cubic", "average"] = "bilinear"
    target_spacing_mm: list[float] | None = Field(
        None,
        min_length=3,
        max_length=3,
        description="voxel spacing (x, y, z) mm the model step runs at; results come back "
        "onto the input grid",
    )
    resample_to_model: bool = Field(
        True,
        description="volumes: run a checkpoint at its card's spacing when the input's differs "
        "> 10 % (results back on the input grid); false: run as is, with a warning",
    )
    clip: tuple[float, float] | None = None
    foreground: Literal["none", "nonzero"] = "none"


class ModelSpec(_Strict):
    """A classical baseline (no weights) or a checkpoint.

    ``ndwi_otsu``/``mndwi_otsu``: water where the index exceeds the scene-wide Otsu threshold
    (or ``threshold``). ``sar_threshold``: water where backscatter (dB) is below Otsu's
    threshold of band ``sar_band`` (or ``threshold`` dB). Otsu thresholds come from the
    histogram of the whole input; a batch sets ``batch_threshold``, the Otsu threshold of all
    its tiles or blocks (see docs/batch.md). ``t2f_otsu``: whole-tumour baseline
    (T2-FLAIR hyperintensity above Otsu inside the brain; labelled ``baseline_label``).
    ``checkpoint``: a checkpoint folder or file with its model card.
    """

    method: Literal["ndwi_otsu", "mndwi_otsu", "sar_threshold", "t2f_otsu", "checkpoint"]
    checkpoint: str | None = None
    threshold: float | None = None
    batch_threshold: float | None = Field(
        None,
        description="the Otsu threshold of a whole batch, set by `geomed-seg batch` "
        "(--threshold-scope batch) for its tasks; a user's `threshold` wins",
    )
    sar_band: str = "vv"
    sar_linear: bool = True
    baseline_label: int = 2
    fallback: Literal["ndwi_otsu", "mndwi_otsu", "sar_threshold", "t2f_otsu", "none"] | None = None

    @model_validator(mode="after")
    def _needs_checkpoint(self) -> ModelSpec:
        if self.method == "checkpoint" and not self.checkpoint:
            raise ValueError("method 'checkpoint' needs checkpoint: <path>")
        return self


class EngineSpec(_Strict):
    """Sliding-window engine settings (``None`` = the model card's value)."""

    roi_size: list[Annotated[int, Field(ge=1)]] | None = Field(None, min_length=1, max_length=3)
    overlap: float | None = Field(None, ge=0, lt=1)
    mode: Literal["gaussian", "constant"] | None = None
    batch_size: Annotated[int, Field(ge=1)] | Literal["auto"] = 4
    device: str = "auto"
    amp: bool | Literal["auto", "fp16", "bf16", "off"] = True
    tta: bool = False
    channels_last: bool | Literal["auto"] = "auto"
    compile: bool = False
    device_blend: bool | Literal["auto"] = "auto"

    def to_options(self, **extra: Any) -> Any:
        """Return these settings as an :class:`~geomed_seg.inference.options.EngineOptions`
        (``None`` fields stay None: the engine resolves them against the card); ``extra``
        sets the other options (output, quiet, foreground_threshold, ...)."""
        from geomed_seg.inference.options import EngineOptions

        roi = tuple(self.roi_size) if self.roi_size is not None else None
        batch = None if self.batch_size == "auto" else self.batch_size
        return EngineOptions(
            roi_size=roi, overlap=self.overlap, mode=self.mode, batch_size=batch,
            device=self.device, amp=self.amp, tta=self.tta, channels_last=self.channels_last,
            compile=self.compile, device_blend=self.device_blend, **extra,
        )  # fmt: skip


#: CLI option of each engine setting, for errors about command-line values.
ENGINE_OPTIONS = {"roi_size": "--roi", "overlap": "--overlap", "mode": "--mode",
                  "batch_size": "--batch-size", "device": "--device", "amp": "--amp"}  # fmt: skip


def engine_spec(**values: Any) -> EngineSpec:
    """Return the :class:`EngineSpec` of command-line engine values (``None`` = card default).

    The one rule set for engine settings: ``segment --roi 0,0`` and ``run --set
    engine.roi_size=[0,0]`` fail with the same rule (roi > 0, overlap in [0, 1), batch >= 1).
    """
    given = {k: v for k, v in values.items() if v is not None}
    if isinstance(given.get("roi_size"), tuple):
        given["roi_size"] = list(given["roi_size"])
    try:
        return EngineSpec(**given)
    except ValidationError as exc:
        problems = []
        for e in exc.errors():
            key = str(e["loc"][0]) if e["loc"] else ""
            problems.append(f"{ENGINE_OPTIONS.get(key, key)} {given.get(key)!r}: {e['msg']}")
        raise ConfigError("; ".join(problems)) from exc


class PostprocessSpec(_Strict):
    """Post-processing of binary masks: ops applied in list order, sizes in physical units.

    In YAML a list (``- opening: 1``, ``- {op: min_object_size, size: 8000}``,
    ``- fill_holes``) or the old mapping ``{opening, closing, fill_holes, min_object_size,
    connected_components}`` (applied in that order); see
    :mod:`geomed_seg.pipelines.postprocess`.
    """

    ops: list[PostprocessOpSpec] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _from_yaml(cls, raw: Any) -> Any:
        return ops_from_yaml(raw)

    def op(self, name: str) -> PostprocessOp | None:
        """Return the first op called ``name`` (None when the list has none)."""
        return next((o for o in self.ops if o.op == name), None)


class OutputSpec(_Strict):
    """What a run writes into its output folder."""

    labels: bool = True
    probabilities: Literal["zarr", "cog"] | None = None
    polygons: bool = True
    polygon_tile: int = Field(1024, ge=16)
    quicklook: bool = True
    quicklook_convention: Literal["radiological", "neurological"] = Field(
        "radiological",
        description="volume quicklooks: patient's right on the image's left (radiological) "
        "or right (neurological)",
    )
    report: bool = True
    stac: bool = Field(True, description="item.json: STAC Item of the outputs (pystac)")
    dicom_seg: Literal["auto", "never"] = "auto"
    relabel_to_dataset: bool = Field(
        False,
        description="map the model's classes, in index order, onto the dataset card's "
        "(e.g. BraTS 2023 {1,2,3} -> legacy {1,2,4} with dataset: brats2021)",
    )


class EvaluationSpec(_Strict):
    """Optional evaluation against a reference label image."""

    reference: str | None = None
    surface: bool = False
    brats: str | None = None


class PipelineConfig(_Strict):
    """A validated pipeline (see ``pipelines/*.yaml``)."""

    name: str
    description: str = ""
    kind: Literal["raster", "volume"]
    input: InputSpec = Field(default_factory=InputSpec)
    sensor: str | None = None
    dataset: str | None = None
    preprocess: PreprocessSpec = Field(default_factory=PreprocessSpec)
    model: ModelSpec
    steps: list[str] | None = Field(
        None,
        description="registered pipeline steps in run order (geomed_seg.pipelines.steps); "
        "default: preprocess, model, postprocess (+ relabel with outputs.relabel_to_dataset)",
    )
    engine: EngineSpec = Field(default_factory=EngineSpec)
    postprocess: PostprocessSpec = Field(default_factory=PostprocessSpec)
    outputs: OutputSpec = Field(default_factory=OutputSpec)
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    output_dir: str = Field("output", description="relative to the current folder")
    base_dir: str = Field("", exclude=True, description="folder relative paths resolve against")

    def resolve(self, path: str | os.PathLike) -> Path:
        """Return ``path`` made absolute against ``base_dir`` (the current folder on load).

        Paths written in a config file were already anchored to that file's folder by
        :func:`load_config`; paths from ``--set`` overrides are relative to the current folder.
        """
        p = Path(os.path.expanduser(str(path)))
        return p if p.is_absolute() or not self.base_dir else Path(self.base_dir) / p


def config_path(name_or_path: str | os.PathLike) -> Path:
    """Resolve a bundled pipeline name (``"flood"``) or a path to a YAML file."""
    p = Path(name_or_path)
    if p.exists():
        return p
    cand = PIPELINES_DIR / f"{name_or_path}.yaml"
    if cand.exists():
        return cand
    known = sorted(f.stem for f in PIPELINES_DIR.glob("*.yaml")) if PIPELINES_DIR.exists() else []
    raise ConfigError(f"{name_or_path}: no such pipeline config; bundled: {', '.join(known)}")


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str], where: str) -> dict[str, Any]:
    """Return ``raw`` with ``key.sub=value`` overrides applied (values parsed as YAML)."""
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{where}: override {item!r} is not key.sub=value")
        try:
            parsed = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{where}: override {key!r}: bad value {value!r} ({exc})") from exc
        _set(raw, key.strip().split("."), parsed, f"{where}: override {key!r}")
    return raw


def _set(raw: dict[str, Any], parts: list[str], value: Any, where: str) -> None:
    """Set ``raw[parts[0]][parts[1]]... = value``, creating sections; ops lists by op name."""
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if isinstance(child, list) and part == "postprocess":
            node[part] = override_ops(child, parts[i + 1 :], value)
            return
        if not isinstance(child, dict):
            raise ConfigError(f"{where}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


def validate_config(raw: Any, where: str, base_dir: str | os.PathLike = "") -> PipelineConfig:
    """Validate a raw mapping; :class:`ConfigError` names the key and ``where`` on failure."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: a pipeline config must be a mapping, got {type(raw).__name__}")
    raw = dict(raw)
    raw.pop("base_dir", None)
    try:
        cfg = PipelineConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{where}: {validation_problems(exc)}") from exc
    return cfg.model_copy(update={"base_dir": str(base_dir)})


#: Path fields of a config: ``(section, key)``; a mapping value (``input.bands``) is anchored per entry.
PATH_FIELDS = (("input", "path"), ("input", "folder"), ("input", "bands"), ("model", "checkpoint"),
               ("evaluation", "reference"))  # fmt: skip


def _anchor(value: Any, base: Path) -> Any:
    if isinstance(value, dict):
        return {k: _anchor(v, base) for k, v in value.items()}
    if isinstance(value, str) and value and not Path(os.path.expanduser(value)).is_absolute():
        return str(base / value)
    return value


def anchor_paths(raw: dict[str, Any], base: Path) -> dict[str, Any]:
    """Return ``raw`` with the relative path fields of a config file anchored to ``base``."""
    for section, key in PATH_FIELDS:
        node = raw.get(section)
        if isinstance(node, dict) and node.get(key) is not None:
            node[key] = _anchor(node[key], base)
    return raw


def load_config(
    name_or_path: str | os.PathLike | dict, overrides: Sequence[str] = ()
) -> PipelineConfig:
    """Load, override and validate a pipeline config (a bundled name, a path or a mapping)."""
    if isinstance(name_or_path, dict):
        raw = apply_overrides(dict(name_or_path), overrides, "config")
        return validate_config(raw, "config", Path.cwd())
    path = config_path(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not a text YAML file (byte {exc.start} is not UTF-8; binary file?)"
        ) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({exc})") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from exc
    if isinstance(raw, dict):
        # the file's own relative paths mean "beside this file"; --set values mean "from here"
        raw = apply_overrides(anchor_paths(raw, path.resolve().parent), overrides, str(path))
    return validate_config(raw, str(path), Path.cwd())
