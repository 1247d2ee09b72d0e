"""The classical method registry: one entry per method, looked up by name.

An entry (:class:`ClassicalMethod`) carries what a caller needs to run a method without
knowing it: the ``run(image, options)`` function, its own small pydantic ``Options`` model
(validated values with their defaults; unknown or missing options are refused naming the
command-line flag), the data catalog card holding its class table (``classes``; ``None``
when the classes depend on the data, e.g. k-means, or the output is continuous) and, for
methods that threshold at a scene-wide Otsu threshold, how the thresholded values and their
histogram are made (:class:`SceneThreshold`, which a batch reuses per tile).

The built-in methods live in :mod:`geomed_seg.classical.builtin`; other packages add
methods through the ``geomed_seg.classical_methods`` entry-point group (each entry point
loads a :class:`ClassicalMethod`). A plugin that fails to load is skipped with a warning
naming it. ``geomed-seg classical``, :func:`geomed_seg.classical.api.run_classical`, the
pipelines' model step and the weak training labels all look methods up here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from geomed_seg.core.image import Image
from geomed_seg.core.labels import ClassInfo
from geomed_seg.errors import InvalidInputError, validation_problems

log = logging.getLogger(__name__)

#: Entry-point group through which other packages register classical methods.
ENTRY_POINT_GROUP = "geomed_seg.classical_methods"

#: Options ``geomed-seg classical`` has a flag of their own for (``--`` + the name with
#: dashes, or the flag given); every other option is ``--option NAME=VALUE``.
FLAGS = {"band": "--band", "bands": "--bands", "threshold": "--threshold", "otsu": "--otsu",
         "classes": "--classes", "sigma": "--sigma", "seed": "--seed", "box": "--box",
         "tolerance": "--tolerance", "radius": "--radius", "n_segments": "--n-segments",
         "db_input": "--db"}  # fmt: skip


def flag(name: str) -> str:
    """Return the command-line spelling of option ``name`` (``--seed``, ``--option halo=``)."""
    return FLAGS.get(name, f"--option {name}=")


class MethodOptions(BaseModel):
    """Base of every method's options: frozen, unknown keys refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass
class ClassicalResult:
    """What a method returns.

    Attributes
    ----------
    image : Image
        Labels (uint8/uint16, 255 = nodata for thresholded rasters) or a continuous image
        (an index), on the input grid.
    classes : list of ClassInfo or None
        The class table of ``image`` (``None`` for continuous or instance outputs).
    facts : dict
        Values worth reporting (``threshold=...``), printed by the CLI.
    threshold : float or None
        The threshold a thresholding method applied (index units, dB, intensity).
    thresholding : dict or None
        How that threshold was chosen: ``scope`` (``fixed`` | ``scene``), ``how`` and, for
        Otsu, the separability facts of :class:`~geomed_seg.classical.histogram.ThresholdDecision`.
    """

    image: Image
    classes: list[ClassInfo] | None = None
    facts: dict[str, Any] = field(default_factory=dict)
    threshold: float | None = None
    thresholding: dict[str, Any] | None = None


@dataclass(frozen=True)
class SceneThreshold:
    """How a method derives its threshold from the whole input (Otsu on a histogram).

    ``values(image, options)`` is the 1-band image it thresholds (an index, dB backscatter);
    its histogram has ``bins`` bins over ``value_range``, or over the merged min/max of a
    first pass when the values are unbounded (``None``). A batch computes these histograms
    per tile or block and merges them, so tiling never changes the threshold.
    """

    values: Callable[[Image, Any], Image]
    value_range: tuple[float, float] | None
    bins: int
    classes: int = 2


@dataclass(frozen=True)
class ClassicalMethod:
    """A registered classical method.

    Attributes
    ----------
    name : str
        Lower-case name used on the command line (``ndwi``, ``sar-threshold``).
    run : callable
        ``run(image, options) -> ClassicalResult``; ``options`` is an ``options`` instance.
    options : type of MethodOptions
        The pydantic model of the method's options (defaults included).
    classes : str or None
        Name of the data catalog card (``data_catalog/<name>.yaml``) whose classes are the
        method's class table; ``None`` when the method builds its classes from the data.
    summary : str
        One line for help texts.
    scene : SceneThreshold or None
        Set for methods that threshold at a scene-wide Otsu threshold.
    """

    name: str
    run: Callable[[Image, Any], ClassicalResult]
    options: type[MethodOptions]
    classes: str | None = None
    summary: str = ""
    scene: SceneThreshold | None = None

    def validate(self, options: MethodOptions | None = None, **values: Any) -> MethodOptions:
        """Return the method's options from ``options`` and/or keyword ``values``.

        ``None`` values mean "not given" (the default applies). Unknown and missing options
        raise :class:`~geomed_seg.errors.InvalidInputError` naming the option and its flag.
        """
        given = {k: v for k, v in values.items() if v is not None}
        if options is not None:
            given = {**options.model_dump(exclude_unset=True), **given}
        unknown = sorted(set(given) - set(self.options.model_fields))
        if unknown:
            raise InvalidInputError(
                f"method {self.name!r} takes no option "
                f"{', '.join(_flagged(k) for k in unknown)}; {self.describe_options()}"
            )
        try:
            return self.options(**given)
        except ValidationError as exc:
            raise InvalidInputError(f"method {self.name!r}: {_problems(exc)}") from exc

    def describe_options(self) -> str:
        """Return ``"its options: band (--band, default 1), ..."`` for errors and help."""
        parts = []
        for name, f in self.options.model_fields.items():
            default = "required" if f.is_required() else f"default {f.default!r}"
            parts.append(f"{name} ({flag(name)}, {default})")
        return f"its options: {', '.join(parts)}" if parts else "it takes no options"

    def class_table(self) -> list[ClassInfo] | None:
        """Return the class table of :attr:`classes` from the data catalog (``None`` if unset)."""
        return None if self.classes is None else list(class_table(self.classes))

    def __call__(
        self, image: Image, options: MethodOptions | None = None, **values: Any
    ) -> ClassicalResult:
        """Validate the options and run the method on ``image``."""
        return self.run(image, self.validate(options, **values))


def _flagged(name: str) -> str:
    return f"{name} ({flag(name)})"


def _problems(exc: ValidationError) -> str:
    """Name missing options with their flag (``--seed``); others as pydantic says."""
    out = []
    for e in exc.errors():
        key = str(e["loc"][0]) if e["loc"] else "options"
        out.append(
            f"needs {_flagged(key)}" if e["type"] == "missing" else f"{_flagged(key)}: {e['msg']}"
        )
    return "; ".join(out) or validation_problems(exc)


@cache
def class_table(card: str) -> tuple[ClassInfo, ...]:
    """Return the classes of data catalog card ``card`` (a name or a YAML path)."""
    from geomed_seg.catalog import load_card

    return tuple(load_card(card).class_infos())


_REGISTRY: dict[str, ClassicalMethod] = {}
_LOADED: list[bool] = []


def register(method: ClassicalMethod, *, replace: bool = False) -> ClassicalMethod:
    """Add ``method`` to the registry and return it; a taken name needs ``replace=True``."""
    key = method.name.lower()
    if key in _REGISTRY and not replace and _REGISTRY[key] is not method:
        raise InvalidInputError(f"classical method {key!r} is already registered")
    _REGISTRY[key] = method
    return method


def _load() -> None:
    """Register the built-in methods, then the entry-point plugins (once per process)."""
    if _LOADED:
        return
    _LOADED.append(True)
    from importlib.metadata import entry_points

    import geomed_seg.classical.builtin  # noqa: F401  (registers on import)

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            method = ep.load()
            if not isinstance(method, ClassicalMethod):
                raise TypeError(f"loads a {type(method).__name__}, not a ClassicalMethod")
            register(method)
        except Exception as exc:  # a broken plugin must not break every method
            log.warning("classical method plugin %r (%s) skipped: %s", ep.name, ep.value, exc)


def methods() -> dict[str, ClassicalMethod]:
    """Return every registered method by name, in registration order."""
    _load()
    return dict(_REGISTRY)


def method_names() -> list[str]:
    """Return the names of every registered method."""
    return list(methods())


def get_method(name: str) -> ClassicalMethod:
    """Return the method called ``name`` (case-insensitive).

    Raises
    ------
    InvalidInputError
        For an unknown name, listing the known methods (and the closest one).
    """
    known = methods()
    key = str(name).lower()
    if key in known:
        return known[key]
    import difflib

    close = difflib.get_close_matches(key, list(known), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise InvalidInputError(f"unknown method {name!r}{hint}; choose one of {', '.join(known)}")
