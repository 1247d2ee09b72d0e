"""Model cards: everything needed to run a checkpoint correctly, as validated data.

A :class:`ModelCard` travels with the weights (``card.json`` beside ``model.safetensors``, or
inside the safetensors metadata). It says which architecture to build, how many bands the
model reads and in which order, how to normalise them, which classes (names, colours) the
output channels are, what geometry (spacing) the model was trained at, and the sliding-window
defaults. Classes and label conventions live here, never in code.

Output channel ``k`` of the model is ``classes[k]`` (classes sorted by index), so a BraTS
model may write labels ``{0, 1, 2, 4}`` from four output channels.

Pure pydantic + numpy: no torch import, so cards can be read and exported fast.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from geomed_seg.core.labels import ClassInfo
from geomed_seg.errors import InvalidInputError, ModelError, validation_problems

log = logging.getLogger(__name__)

#: Schema of the STAC Machine Learning Model extension this module exports.
MLM_SCHEMA = "https://stac-extensions.github.io/mlm/v1.4.0/schema.json"
CLASSIFICATION_SCHEMA = "https://stac-extensions.github.io/classification/v2.0.0/schema.json"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Normalisation(_Strict):
    """Fields shared by every normalisation.

    ``apply_scale_offset``: the model was trained on physical values, so the engine first
    turns raw samples into ``raw * scale + offset`` per band from the input's own GDAL band
    scale/offset (e.g. 0.0001 / -0.1 reflectance), nodata to NaN; an input without them is
    used raw, with a warning. Default False (raw samples, the behaviour before the field).
    """

    apply_scale_offset: bool = False


class MeanStd(_Normalisation):
    """Per-band z-score: ``(x - mean[c]) / std[c]`` (units of the input samples)."""

    type: Literal["meanstd"] = "meanstd"
    mean: list[float]
    std: list[float]

    @model_validator(mode="after")
    def _check(self) -> MeanStd:
        if len(self.mean) != len(self.std):
            raise ValueError(f"mean has {len(self.mean)} values but std has {len(self.std)}")
        if any(not s > 0 for s in self.std):
            raise ValueError(f"std must be > 0, got {self.std}")
        return self


class Percentile(_Normalisation):
    """Per-sample, per-channel percentile clip then scale to ``[0, 1]``.

    Same as MONAI ``ScaleIntensityRangePercentiles(low, high, 0, 1, clip=True,
    channel_wise=True)``. Percentiles are computed per window, so prefer ``meanstd`` for
    tiled rasters where window-to-window consistency matters.
    """

    type: Literal["percentile"] = "percentile"
    low: float = Field(1.0, ge=0, le=100)
    high: float = Field(99.0, ge=0, le=100)

    @model_validator(mode="after")
    def _check(self) -> Percentile:
        if not self.low < self.high:
            raise ValueError(f"percentile low {self.low} must be < high {self.high}")
        return self


class NonZeroZScore(_Normalisation):
    """Per-case, per-channel z-score over the NON-ZERO samples, as BraTS pipelines and nnU-Net
    do for MRI: ``(x - mean_c) / std_c`` where ``x != 0``, zeros (outside the brain) stay 0.

    ``mean_c``/``std_c`` (population std; 1 when 0, as MONAI) are statistics of the whole
    case, not of a window: a streamed first pass computes them
    (:func:`geomed_seg.models.case_stats.nonzero_statistics`) and they are passed to
    :meth:`ModelCard.normalise` as ``stats``. Equal to MONAI
    ``NormalizeIntensity(nonzero=True, channel_wise=True)`` on the whole case, and invariant
    to a global intensity rescale of a channel.
    """

    type: Literal["nonzero_zscore"] = "nonzero_zscore"


class ScaleRange(_Normalisation):
    """Fixed intensity window: ``(x - a_min) / (a_max - a_min) * (b_max - b_min) + b_min``.

    Same as MONAI ``ScaleIntensityRange`` (e.g. a CT window ``a_min=-57, a_max=164`` to
    ``[0, 1]``); with ``clip`` the result is clipped to ``[b_min, b_max]``. Pointwise, so
    tiling never changes it.
    """

    type: Literal["scale_range"] = "scale_range"
    a_min: float
    a_max: float
    b_min: float = 0.0
    b_max: float = 1.0
    clip: bool = False

    @model_validator(mode="after")
    def _check(self) -> ScaleRange:
        if self.a_max == self.a_min:
            raise ValueError(f"a_min and a_max are both {self.a_min}")
        return self


class NnUNetChannel(_Strict):
    """How nnU-Net v2 normalises one input channel (an entry of its plans).

    ``zscore``: ``(x - mean) / max(std, 1e-8)`` with the case's own statistics; with
    ``use_mask`` over nnU-Net's non-zero mask (any channel non-zero, holes filled) and only
    inside it, otherwise over the whole non-zero bounding box of the case (nnU-Net crops to
    it first). ``ct``: clip to ``[lower, upper]`` (the dataset fingerprint's 0.5 and 99.5
    foreground percentiles), then ``(x - mean) / max(std, 1e-8)`` with the fingerprint's
    foreground mean and std (sample units). ``none``: unchanged.
    """

    scheme: Literal["zscore", "ct", "none"]
    use_mask: bool = False
    mean: float | None = None
    std: float | None = None
    lower: float | None = None
    upper: float | None = None

    @model_validator(mode="after")
    def _check(self) -> NnUNetChannel:
        fields = (self.mean, self.std, self.lower, self.upper)
        if self.scheme == "ct" and any(v is None for v in fields):
            raise ValueError("scheme 'ct' needs mean, std, lower and upper")
        return self


class NnUNetNormalisation(_Normalisation):
    """nnU-Net v2's per-channel normalisation schemes (``ZScoreNormalization``,
    ``CTNormalization``, ``NoNormalization``), one :class:`NnUNetChannel` per input channel.

    Z-score channels need statistics of the whole case: a streamed first pass computes them
    (:func:`geomed_seg.models.nnunet_norm.nnunet_statistics`), as for ``nonzero_zscore``.
    """

    type: Literal["nnunet"] = "nnunet"
    channels: list[NnUNetChannel] = Field(min_length=1)


class NoNormalisation(_Normalisation):
    """Samples are fed to the model as float32, unchanged."""

    type: Literal["none"] = "none"


Normalisation = Annotated[
    MeanStd | Percentile | NonZeroZScore | ScaleRange | NnUNetNormalisation | NoNormalisation,
    Field(discriminator="type"),
]


class NnUNetResampling(_Strict):
    """nnU-Net's ``resample_data_or_seg_to_shape`` settings of an imported model.

    ``data_*``: the image to the model's spacing (order 3, nearest along a > 3x anisotropic
    axis by default); ``prob_*``: the logits back to the input's spacing (order 1). A card
    with this field is run by :mod:`geomed_seg.inference.nnunet_resample` whenever the
    pipeline resamples.
    """

    data_order: int = Field(3, ge=0, le=5)
    data_order_z: int = Field(0, ge=0, le=5)
    data_force_separate_z: bool | None = None
    prob_order: int = Field(1, ge=0, le=5)
    prob_order_z: int = Field(0, ge=0, le=5)
    prob_force_separate_z: bool | None = None


class ClassSpec(_Strict):
    """One output class: label value, name and display colour ``(r, g, b[, a])`` 0..255."""

    index: int = Field(ge=0, le=65535)
    name: str
    color: tuple[int, ...] | None = None

    @field_validator("color")
    @classmethod
    def _rgb(cls, v: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if v is not None and (len(v) not in (3, 4) or not all(0 <= c <= 255 for c in v)):
            raise ValueError(f"colour {v} is not RGB(A) 0..255")
        return v

    def to_class_info(self) -> ClassInfo:
        return ClassInfo(self.index, self.name, self.color)


class TrainingInfo(_Strict):
    """How the weights were obtained (free text; metrics are ``name -> value``)."""

    dataset: str | None = None
    notes: str = ""
    weak_labels: str | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    pretrained: bool = False


class Provenance(_Strict):
    """Where an imported model came from (``geomed-seg import-model``).

    ``source_sha256`` maps each file that was read (path relative to the source, or its
    name for a single file) to its SHA-256, so an import can be traced to the exact files.
    ``carried`` lists what the import translated into this card; ``notes`` what it knowingly
    left out (e.g. a resize the engine does not do).
    """

    source_format: str
    source: str
    source_sha256: dict[str, str] = Field(default_factory=dict)
    licence: str | None = None
    authors: list[str] = Field(default_factory=list)
    version: str | None = None
    carried: list[str] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    trusted_code: bool = False
    importer_version: str | None = None


class ModelCard(_Strict):
    """Validated description of a segmentation model (see module docstring).

    ``spacing`` is the sample size the model was trained at, in array order ((y, x) for
    rasters, (z, y, x) for volumes) and in ``spacing_unit`` (``"m"`` for rasters, ``"mm"``
    for volumes). ``roi_size`` is the default window in array order (pixels/voxels).
    ``blend``: what overlapping windows average, ``"probabilities"`` (softmax per window) or
    ``"logits"`` (activated once after blending, as MONAI bundles and nnU-Net do).
    ``axcodes`` (volumes, nibabel codes of the index axes ``(i, j, k)``, e.g. ``"RAS"``):
    the orientation the model was trained in; an input in another orientation is refused.
    ``mode`` ``"nnunet"``: nnU-Net's window steps and Gaussian
    (:func:`geomed_seg.inference.plan.plan_windows`). ``mirror_axes``: the spatial axes (array
    order, 0 = first spatial axis) test-time augmentation may flip; None = all of them.
    ``activation``: ``"auto"`` (softmax over several channels, sigmoid for one) or
    ``"sigmoid"`` (every channel is a region with its own sigmoid; a sample gets the label of
    the *last* channel, in class order, whose probability exceeds 0.5, else 0, as nnU-Net's
    ``regions_class_order``; class indices may then be in any order).
    ``crop_to_nonzero`` (volumes): run the bounding box of the non-zero voxels only and
    write background outside it, as nnU-Net does (:mod:`geomed_seg.inference.crop`).
    ``resampling``: resample as nnU-Net does (:class:`NnUNetResampling`) instead of
    trilinearly when an input's spacing is not the card's.
    """

    format_version: Literal[1] = 1
    name: str
    description: str = ""
    architecture: str
    architecture_kwargs: dict[str, Any] = Field(default_factory=dict)
    spatial_dims: Literal[2, 3]
    in_channels: int = Field(ge=1)
    band_names: list[str] | None = None
    normalisation: Normalisation = Field(default_factory=NoNormalisation)
    spacing: list[float] | None = None
    spacing_unit: Literal["m", "mm"] | None = None
    axcodes: str | None = Field(None, pattern=r"^[RLAPSI]{3}$")
    classes: list[ClassSpec] = Field(min_length=1)
    ignore_index: int | None = None
    nodata_label: int | None = None
    roi_size: list[int]
    overlap: float = Field(0.25, ge=0, lt=1)
    mode: Literal["gaussian", "constant", "nnunet"] = "gaussian"
    blend: Literal["probabilities", "logits"] = "probabilities"
    mirror_axes: list[int] | None = None
    activation: Literal["auto", "sigmoid"] = "auto"
    crop_to_nonzero: bool = False
    resampling: NnUNetResampling | None = None
    training: TrainingInfo = Field(default_factory=TrainingInfo)
    licence: str | None = None
    provenance: Provenance | None = None
    weights_sha256: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ModelCard:
        n = self.in_channels
        if self.band_names is not None and len(self.band_names) != n:
            raise ValueError(f"band_names has {len(self.band_names)} names for in_channels={n}")
        if isinstance(self.normalisation, MeanStd) and len(self.normalisation.mean) not in (1, n):
            raise ValueError(
                f"normalisation has {len(self.normalisation.mean)} means for in_channels={n}"
            )
        for what, seq in (("roi_size", self.roi_size), ("spacing", self.spacing)):
            if seq is not None and len(seq) != self.spatial_dims:
                raise ValueError(f"{what} {seq} must have {self.spatial_dims} values (array order)")
        if any(r < 1 for r in self.roi_size):
            raise ValueError(f"roi_size {self.roi_size} must be positive")
        indices = [c.index for c in self.classes]
        if len(set(indices)) != len(indices) or (
            self.activation != "sigmoid" and indices != sorted(indices)
        ):
            raise ValueError(f"class indices must be unique and sorted, got {indices}")
        if self.activation == "sigmoid" and 0 in indices:
            raise ValueError("sigmoid (region) outputs paint labels > 0; 0 is the background")
        if self.mirror_axes is not None and not set(self.mirror_axes) <= set(
            range(self.spatial_dims)
        ):
            raise ValueError(f"mirror_axes {self.mirror_axes} are not spatial axes")
        norm = self.normalisation
        if isinstance(norm, NnUNetNormalisation) and len(norm.channels) != n:
            raise ValueError(f"normalisation has {len(norm.channels)} channels for in_channels={n}")
        if self.nodata_label is not None and self.nodata_label in indices:
            raise ValueError(f"nodata_label {self.nodata_label} is also a class index")
        return self

    # -- derived values ----------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        """Number of output channels of the model."""
        return len(self.classes)

    def class_infos(self) -> list[ClassInfo]:
        """Return the classes as :class:`~geomed_seg.core.labels.ClassInfo` (for writers)."""
        return [c.to_class_info() for c in self.classes]

    def channel_to_label(self) -> np.ndarray:
        """Return the lookup table ``label = table[argmax channel]`` (uint16)."""
        return np.array([c.index for c in self.classes], dtype=np.uint16)

    # -- normalisation -----------------------------------------------------------------
    @property
    def needs_case_statistics(self) -> bool:
        """True when :meth:`normalise` needs statistics of the whole case (``stats``)."""
        norm = self.normalisation
        if isinstance(norm, NnUNetNormalisation):
            return any(c.scheme == "zscore" for c in norm.channels)
        return isinstance(norm, NonZeroZScore)

    def normalise(self, batch: np.ndarray, stats: Any = None) -> np.ndarray:
        """Return ``batch`` normalised as the model expects, as float32.

        Parameters
        ----------
        batch : numpy.ndarray
            ``(N, C, *spatial)``: N windows, C bands/channels in card order, then (y, x) or
            (z, y, x). Any numeric dtype.
        stats : object with ``mean`` and ``std`` sequences (one value per channel), optional
            Case statistics, required by per-case normalisations (``nonzero_zscore``; see
            :attr:`needs_case_statistics`), ignored by the others.
        """
        x = np.asarray(batch, dtype=np.float32)
        if x.ndim != self.spatial_dims + 2 or x.shape[1] != self.in_channels:
            raise InvalidInputError(
                f"model {self.name!r}: batch shape {x.shape} is not (N, {self.in_channels}, "
                f"{', '.join(['...'] * self.spatial_dims)})"
            )
        norm = self.normalisation
        bshape = (1, -1) + (1,) * self.spatial_dims
        if isinstance(norm, MeanStd):
            mean = np.asarray(norm.mean, dtype=np.float32).reshape(bshape)
            std = np.asarray(norm.std, dtype=np.float32).reshape(bshape)
            return ((x - mean) / std).astype(np.float32, copy=False)
        if isinstance(norm, Percentile):
            flat = x.reshape(x.shape[0], x.shape[1], -1)
            lo, hi = np.percentile(flat, [norm.low, norm.high], axis=-1)
            lo, hi = lo[..., None], hi[..., None]
            span = hi - lo
            # constant windows: MONAI returns x - lo (zeros); avoid dividing by zero likewise
            scaled = np.where(
                span > 0, (np.clip(flat, lo, hi) - lo) / np.where(span > 0, span, 1), flat - lo
            )
            return scaled.reshape(x.shape).astype(np.float32, copy=False)
        if isinstance(norm, NonZeroZScore):
            if stats is None:
                raise ModelError(
                    f"model {self.name!r}: normalisation 'nonzero_zscore' needs the case "
                    "statistics (geomed_seg.models.case_stats.nonzero_statistics)"
                )
            mean = np.asarray(stats.mean, dtype=np.float32)
            std = np.asarray(stats.std, dtype=np.float32)
            if mean.shape != (self.in_channels,) or std.shape != (self.in_channels,):
                raise ModelError(
                    f"model {self.name!r}: case statistics for {mean.size} channels, "
                    f"the model reads {self.in_channels}"
                )
            z = (x - mean.reshape(bshape)) / std.reshape(bshape)
            return np.where(x != 0, z, np.float32(0)).astype(np.float32, copy=False)
        if isinstance(norm, NnUNetNormalisation):
            from geomed_seg.models.nnunet_norm import normalise_nnunet

            if stats is None and self.needs_case_statistics:
                raise ModelError(
                    f"model {self.name!r}: nnU-Net z-score normalisation needs the case "
                    "statistics (geomed_seg.models.nnunet_norm.nnunet_statistics)"
                )
            return normalise_nnunet(x, norm, stats)
        if isinstance(norm, ScaleRange):
            y = (x - np.float32(norm.a_min)) / np.float32(norm.a_max - norm.a_min)
            y = y * np.float32(norm.b_max - norm.b_min) + np.float32(norm.b_min)
            if norm.clip:
                y = np.clip(y, min(norm.b_min, norm.b_max), max(norm.b_min, norm.b_max))
            return y.astype(np.float32, copy=False)
        return x

    # -- compatibility -----------------------------------------------------------------
    def check_image(self, image: Any, source: str | os.PathLike | None = None) -> None:
        """Raise :class:`ModelError` unless ``image`` (an :class:`~geomed_seg.core.image.Image`) fits.

        Checks raster vs volume against ``spatial_dims`` and the band/channel count (an image
        whose named bands include all of the card's ``band_names`` fits: bands go by name).
        """
        where = f"{source}: " if source is not None else ""
        ndim = len(image.spatial_shape)
        if ndim != self.spatial_dims:
            kind = "raster" if ndim == 2 else "volume"
            raise ModelError(
                f"{where}model {self.name!r} is {self.spatial_dims}D but the input is a {ndim}D {kind}"
            )
        self.check_orientation(image, source)
        have = getattr(image, "channel_names", None)
        if self.band_names and have and set(self.band_names) <= set(have):
            return  # the engine selects and orders the card's bands by name
        if image.n_channels != self.in_channels:
            names = f" ({', '.join(self.band_names)})" if self.band_names else ""
            raise ModelError(
                f"{where}input has {image.n_channels} bands/channels but model {self.name!r} "
                f"expects {self.in_channels}{names}"
            )

    def check_orientation(self, image: Any, source: str | os.PathLike | None = None) -> None:
        """Raise :class:`ModelError` if the card has ``axcodes`` and the volume is oriented otherwise.

        A model trained on arrays reoriented to ``axcodes`` (MONAI ``Orientationd``) sees a
        flipped or permuted anatomy on an input stored in another orientation, so such an
        input is refused rather than segmented wrongly.
        """
        codes = getattr(getattr(image, "grid", None), "axcodes", None)
        if self.axcodes is None or codes is None:
            return
        have = "".join(codes)
        if have != self.axcodes:
            where = f"{source}: " if source is not None else ""
            raise ModelError(
                f"{where}input orientation {have} but model {self.name!r} expects volumes in "
                f"{self.axcodes} orientation; reorient the input to {self.axcodes} first"
            )

    # -- serialisation -----------------------------------------------------------------
    def to_json(self, indent: int | None = 2) -> str:
        """Return the card as JSON text (stable key order)."""
        return self.model_dump_json(indent=indent)

    @classmethod
    def from_dict(cls, data: Any, source: str | os.PathLike = "<card>") -> ModelCard:
        """Validate ``data``; raise :class:`ModelError` naming ``source`` and the bad fields."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            problems = validation_problems(exc, limit=5)
            raise ModelError(f"{source}: invalid model card ({problems})") from exc

    @classmethod
    def from_json(cls, text: str | bytes, source: str | os.PathLike = "<card>") -> ModelCard:
        """Parse JSON text into a card; raise :class:`ModelError` on bad JSON or fields."""
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ModelError(f"{source}: model card is not valid JSON ({exc})") from exc
        return cls.from_dict(data, source)

    @classmethod
    def load(cls, path: str | os.PathLike) -> ModelCard:
        """Read a ``card.json`` file."""
        p = Path(path)
        try:
            text = p.read_bytes()
        except OSError as exc:
            raise ModelError(f"{p}: cannot read model card ({exc.strerror or exc})") from exc
        return cls.from_json(text, p)

    def to_stac_mlm(
        self,
        item_id: str | None = None,
        bbox: list[float] | None = None,
        *,
        weights_href: str = "model.safetensors",
        total_parameters: int | None = None,
        framework_version: str | None = None,
        accelerator: str | None = None,
        batch_size: int | None = None,
        bands: Sequence[str] | None = None,
        datetime: str | None = None,
        datetime_source: str = "",
    ) -> dict[str, Any]:
        """Return a STAC Item (dict) describing this model with the MLM extension (v1.4).

        Parameters
        ----------
        item_id : str, optional
            Item id (default: the card name).
        bbox : list of float, optional
            ``[west, south, east, north]`` in WGS84 degrees where the model applies; the Item
            then gets a polygon geometry, otherwise ``geometry`` is ``null``.
        weights_href : str
            Link to the weights, for the ``weights`` asset (roles ``mlm:model``, ``mlm:weights``).
        total_parameters : int, optional
            ``mlm:total_parameters`` (e.g. from :class:`~geomed_seg.models.checkpoint.LoadedModel`).
        framework_version : str, optional
            torch version; looked up from the installed distribution when not given.
        accelerator : str, optional
            ``mlm:accelerator`` (``"cuda"``, ``"amd64"``) or ``None``: runs on any device.
        bands : sequence of str, optional
            Input band names (e.g. the input's own); default the card's ``band_names``,
            else ``[]`` (MLM's value for unnamed bands: no ``channel_i`` is invented).
        datetime, datetime_source : str, optional
            RFC 3339 time of the weights and where it comes from (``geomed_seg:datetime_source``);
            without it ``datetime`` is null and the item is not valid STAC (a warning says so).
        """
        item = _stac_item(
            self,
            item_id,
            bbox,
            weights_href,
            total_parameters,
            framework_version,
            accelerator,
            batch_size,
        )
        if bands is not None:
            if len(bands) != self.in_channels:
                raise ValueError(f"{len(bands)} band names for in_channels={self.in_channels}")
            item["properties"]["mlm:input"][0]["bands"] = list(bands)
        if datetime is not None:
            item["properties"]["datetime"] = datetime
            item["properties"]["geomed_seg:datetime_source"] = datetime_source
        else:
            log.warning("model %s: STAC item without a datetime (null, no start/end)", self.name)
        return item


def _value_scaling(card: ModelCard) -> list[dict[str, Any]] | None:
    norm = card.normalisation
    if isinstance(norm, MeanStd):
        return [
            {"type": "z-score", "mean": m, "stddev": s}
            for m, s in zip(norm.mean, norm.std, strict=True)
        ]
    if isinstance(norm, NonZeroZScore):
        return [
            {
                "type": "processing",
                "format": "python",
                "expression": "geomed_seg.models.card:ModelCard.normalise",
                "description": "per-case, per-channel z-score over the non-zero samples "
                "(zeros stay 0)",
            }
        ]
    if isinstance(norm, ScaleRange):
        return [
            {"type": "processing", "format": "python",
             "expression": "geomed_seg.models.card:ModelCard.normalise",
             "description": f"scale [{norm.a_min}, {norm.a_max}] to [{norm.b_min}, {norm.b_max}]"
             + (" and clip" if norm.clip else "")}
        ]  # fmt: skip
    if isinstance(norm, NnUNetNormalisation):
        return [
            {"type": "processing", "format": "python",
             "expression": "geomed_seg.models.card:ModelCard.normalise",
             "description": f"nnU-Net v2 channel {i}: {c.scheme}"
             + (" over the non-zero mask" if c.use_mask else "")}
            for i, c in enumerate(norm.channels)
        ]  # fmt: skip
    if isinstance(norm, Percentile):
        # data-dependent (per-window percentiles): not a fixed MLM scaling, so a processing ref
        return [
            {
                "type": "processing",
                "format": "python",
                "expression": "geomed_seg.models.card:ModelCard.normalise",
                "description": f"per-channel clip to percentiles {norm.low}-{norm.high}, scale to [0, 1]",
            }
        ]
    return None


def _stac_item(
    card: ModelCard,
    item_id: str | None,
    bbox: list[float] | None,
    href: str,
    total_parameters: int | None,
    framework_version: str | None,
    accelerator: str | None,
    batch_size: int | None,
) -> dict[str, Any]:
    if framework_version is None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            framework_version = version("torch")
        except PackageNotFoundError:
            framework_version = None
    spatial = ["height", "width"] if card.spatial_dims == 2 else ["depth", "height", "width"]
    bands = list(card.band_names or [])  # MLM: [] when the bands are not named
    from geomed_seg.core.labels import stac_class

    # classification v2: machine-readable name, the card's name as title when it differs
    classes = [stac_class(c) for c in card.class_infos()]
    props: dict[str, Any] = {
        "datetime": None,
        "description": card.description,
        "mlm:name": card.name,
        "mlm:architecture": card.architecture,
        "mlm:tasks": ["semantic-segmentation"],
        "mlm:framework": "pytorch",
        "mlm:framework_version": framework_version,
        "mlm:accelerator": accelerator,
        "mlm:accelerator_constrained": False,
        "mlm:pretrained": card.training.pretrained,
        "mlm:input": [
            {
                "name": "image",
                "bands": bands,
                "input": {
                    "shape": [-1, card.in_channels, *card.roi_size],
                    "dim_order": ["batch", "channel", *spatial],
                    "data_type": "float32",
                },
                "value_scaling": _value_scaling(card),
                "resize_type": None,
                "pre_processing_function": None,
            }
        ],
        "mlm:output": [
            {
                "name": "logits",
                "tasks": ["semantic-segmentation"],
                "result": {
                    "shape": [-1, card.num_classes, *card.roi_size],
                    "dim_order": ["batch", "class", *spatial],
                    "data_type": "float32",
                },
                "classification:classes": classes,
                "post_processing_function": None,
            }
        ],
        "mlm:hyperparameters": {
            "roi_size": card.roi_size,
            "overlap": card.overlap,
            "mode": card.mode,
            **({"nodata_label": card.nodata_label} if card.nodata_label is not None else {}),
            **({"ignore_index": card.ignore_index} if card.ignore_index is not None else {}),
        },
    }
    if total_parameters is not None:
        props["mlm:total_parameters"] = int(total_parameters)
    if batch_size is not None:
        props["mlm:batch_size_suggestion"] = int(batch_size)
    if card.licence:
        props["license"] = card.licence
    geometry = None
    if bbox is not None:
        w, s, e, n = (float(v) for v in bbox)
        geometry = {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]}
    asset: dict[str, Any] = {
        "href": href,
        "type": "application/octet-stream; framework=pytorch; application=safetensors",
        "title": f"{card.name} weights (safetensors)",
        "roles": ["mlm:model", "mlm:weights", "weights", "data"],
        "mlm:artifact_type": "safetensors",
    }
    item: dict[str, Any] = {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": [MLM_SCHEMA, CLASSIFICATION_SCHEMA],
        "id": item_id or card.name,
        "geometry": geometry,
        "properties": props,
        "links": [],
        "assets": {"weights": asset},
    }
    if bbox is not None:
        item["bbox"] = [float(v) for v in bbox]
    return item


__all__ = [
    "ClassSpec",
    "MLM_SCHEMA",
    "MeanStd",
    "ModelCard",
    "NoNormalisation",
    "NnUNetChannel",
    "NnUNetNormalisation",
    "NnUNetResampling",
    "NonZeroZScore",
    "Normalisation",
    "Percentile",
    "Provenance",
    "ScaleRange",
    "TrainingInfo",
]
