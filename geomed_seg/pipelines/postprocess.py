"""Post-processing ops of a pipeline: an ordered list in YAML, one registered class per op.

A pipeline's ``postprocess`` is a list applied in order to a binary label mask::

    postprocess:
      - opening: 1                 # shorthand: {op name: its main parameter}
      - {op: min_object_size, size: 8000}
      - fill_holes                 # a flag op by its name alone

The mapping of earlier versions (``{opening, closing, fill_holes, min_object_size,
connected_components}``) still loads; it means those ops in that fixed order
(:data:`LEGACY_ORDER`), zero / ``false`` / ``null`` values left out.

Each op is a pydantic model registered in :data:`OPS` under its ``op`` name; it validates
its own parameters, says how many pixels of context it needs around a block
(:meth:`PostprocessOp.halo_px`, used by the batch's default halo) and applies itself to an
:class:`~geomed_seg.core.image.Image` with :mod:`geomed_seg.classical.postprocess` (exact
versus scikit-image/SciPy on the whole image, sizes in physical units). A new op is a new
subclass here, added to :data:`OPS` and to the :data:`PostprocessOpSpec` union.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:  # the config schema imports this module: keep it free of dask/xarray
    from geomed_seg.core.image import Image


class PostprocessOp(BaseModel):
    """One post-processing op: its name (``op``), parameters, halo and application."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Name of the parameter the shorthand ``{op: value}`` sets (None: a flag op).
    main: ClassVar[str | None] = None

    def halo_px(self) -> int:
        """Return the context (pixels) this op needs around a block to match a whole run."""
        return 0

    def apply(self, labels: Image, stats: dict[str, Any]) -> Image:
        """Return the op applied to band 1 != 0 of ``labels`` (uint8 {0, 1}, nodata kept)."""
        raise NotImplementedError

    def describe(self, unit: str) -> str:
        """One phrase for the run's notes (``unit``: the area/volume unit of the grid)."""
        return self.op.replace("_", " ")  # type: ignore[attr-defined]


class Opening(PostprocessOp):
    """Binary opening with a disk (2D) / ball (3D) of ``radius`` pixels."""

    op: Literal["opening"] = "opening"
    radius: int = Field(ge=1, description="structuring element radius, pixels")
    main: ClassVar[str | None] = "radius"

    def halo_px(self) -> int:
        return 2 * self.radius  # erosion then dilation

    def apply(self, labels: Image, stats: dict[str, Any]) -> Image:
        from geomed_seg.classical.postprocess import morphology

        return morphology(labels, self.op, self.radius)

    def describe(self, unit: str) -> str:
        return f"{self.op} {self.radius} px"


class Closing(Opening):
    """Binary closing with a disk (2D) / ball (3D) of ``radius`` pixels."""

    op: Literal["closing"] = "closing"  # type: ignore[assignment]


class FillHoles(PostprocessOp):
    """Fill background regions that do not touch the image border (global: any size)."""

    op: Literal["fill_holes"] = "fill_holes"

    def apply(self, labels: Image, stats: dict[str, Any]) -> Image:
        from geomed_seg.classical.postprocess import fill_holes

        return fill_holes(labels)


class MinObjectSize(PostprocessOp):
    """Remove objects smaller than ``size``: true ground m² (rasters) or mm³ (volumes)."""

    op: Literal["min_object_size"] = "min_object_size"
    size: float = Field(ge=0, description="m² of true ground area (rasters), mm³ (volumes)")
    main: ClassVar[str | None] = "size"

    def apply(self, labels: Image, stats: dict[str, Any]) -> Image:
        from geomed_seg.classical.postprocess import remove_small_objects

        return remove_small_objects(labels, self.size) if self.size else labels

    def describe(self, unit: str) -> str:
        return f"min object {self.size:g} {unit}"


class ConnectedComponents(PostprocessOp):
    """Count the mask's connected components (``stats["connected_components"]``); labels kept."""

    op: Literal["connected_components"] = "connected_components"

    def apply(self, labels: Image, stats: dict[str, Any]) -> Image:
        from geomed_seg.classical.postprocess import connected_components

        stats["connected_components"] = int(connected_components(labels).attrs["n_components"])
        return labels


#: Registered ops by name.
OPS: dict[str, type[PostprocessOp]] = {
    cls.model_fields["op"].default: cls
    for cls in (Opening, Closing, FillHoles, MinObjectSize, ConnectedComponents)
}
#: One op of a config: the class is chosen by its ``op`` name.
PostprocessOpSpec = Annotated[
    Opening | Closing | FillHoles | MinObjectSize | ConnectedComponents, Field(discriminator="op")
]
#: Order of the ops of the old mapping form (what the old if-chain applied).
LEGACY_ORDER = ("opening", "closing", "fill_holes", "min_object_size", "connected_components")


def _op_item(item: Any) -> Any:
    """Canonical ``{op: name, **params}`` of one list item (shorthand forms expanded).

    ``None`` for an op switched off in shorthand (``{fill_holes: false}``, ``{opening: 0}``).
    Anything unrecognised is returned as is, for pydantic to name the problem.
    """
    if isinstance(item, str):
        return {"op": item}
    if not isinstance(item, dict) or "op" in item or len(item) != 1:
        return item
    (name, value), cls = next(iter(item.items())), OPS.get(next(iter(item)))
    if cls is None:
        return {"op": name, "value": value}  # pydantic: unknown op tag, named
    if value is None or value is False or (cls.main and value == 0):
        return None
    if isinstance(value, dict):
        return {"op": name, **value}
    if cls.main is None:
        return {"op": name} if value is True else {"op": name, "value": value}
    return {"op": name, cls.main: value}


def ops_from_yaml(raw: Any) -> Any:
    """Return the ``{"ops": [...]}`` form of a config's ``postprocess`` value.

    Accepts a list of ops (canonical or shorthand items), the ``{"ops": [...]}`` form, or the
    old mapping (known keys become ops in :data:`LEGACY_ORDER`; unknown keys stay, so
    validation names them). ``None`` means no ops.
    """
    if raw is None:
        return {"ops": []}
    if isinstance(raw, list):
        return {"ops": [i for i in map(_op_item, raw) if i is not None]}
    if not isinstance(raw, dict) or "ops" in raw:
        if isinstance(raw, dict) and isinstance(raw["ops"], list):
            return {**raw, "ops": [i for i in map(_op_item, raw["ops"]) if i is not None]}
        return raw
    rest = {k: v for k, v in raw.items() if k not in LEGACY_ORDER}
    ops = [_op_item({k: raw[k]}) for k in LEGACY_ORDER if k in raw]
    return {"ops": [i for i in ops if i is not None], **rest}


def override_ops(items: list[Any], keys: list[str], value: Any) -> list[Any]:
    """Return the op list ``items`` with a ``--set postprocess.<op>[.<param>]=value`` applied.

    ``postprocess.<op>=V`` sets the op's main parameter (``true`` for a flag op) where the
    list has it, appends the op at the end where it has not, and removes it for ``false``,
    ``0`` or ``null``; ``postprocess.<op>.<param>=V`` sets one parameter (appending the op).
    The whole list is replaced with ``--set 'postprocess=[...]'``.
    """
    ops = [i for i in map(_op_item, items) if i is not None]
    name = keys[0]
    at = next((n for n, o in enumerate(ops) if isinstance(o, dict) and o.get("op") == name), None)
    if len(keys) == 1:
        new = _op_item({name: value})
    else:
        new = {**(ops[at] if at is not None else {"op": name}), ".".join(keys[1:]): value}
    if new is None:
        return [o for n, o in enumerate(ops) if n != at]
    if at is None:
        return [*ops, new]
    return [new if n == at else o for n, o in enumerate(ops)]
