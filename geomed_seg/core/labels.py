"""Class tables for label images: index, name, colour.

Classes live in model and dataset cards, never in code; this small value type is what cards
hand to writers (COG colour tables and category names, DICOM SEG segment descriptions).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from geomed_seg.errors import InvalidInputError


@dataclass(frozen=True)
class ClassInfo:
    """One class of a label image.

    Parameters
    ----------
    index : int
        Value stored in the label raster/volume (0..65535).
    name : str
        Human-readable class name.
    color : tuple of int or None
        ``(r, g, b)`` or ``(r, g, b, a)`` 0..255, shown by QGIS / ITK-SNAP.
    """

    index: int
    name: str
    color: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if not 0 <= int(self.index) <= 65535:
            raise InvalidInputError(f"class index {self.index} outside 0..65535")
        if self.color is not None:
            c = tuple(int(v) for v in self.color)
            if len(c) not in (3, 4) or not all(0 <= v <= 255 for v in c):
                raise InvalidInputError(
                    f"class {self.name!r}: colour {self.color} is not RGB(A) 0..255"
                )
            object.__setattr__(self, "color", c)


def machine_name(c: ClassInfo) -> str:
    """Return the class's name as STAC's classification extension (v2) wants it:
    ``[0-9A-Za-z-_]+`` (other characters become ``_``; ``class_<index>`` if none is left)."""
    return re.sub(r"[^0-9A-Za-z_-]+", "_", c.name).strip("_") or f"class_{c.index}"


def stac_class(c: ClassInfo) -> dict:
    """Return a classification-extension class object: ``value``, machine ``name``, the
    human name as ``title`` when they differ, ``color_hint`` (``RRGGBB``) when coloured."""
    entry: dict = {"value": int(c.index), "name": machine_name(c)}
    if entry["name"] != c.name:
        entry["title"] = c.name
    if c.color is not None:
        entry["color_hint"] = "".join(f"{v:02X}" for v in c.color[:3])
    return entry


def parse_classes(spec: str | Iterable | Mapping | None) -> list[ClassInfo]:
    """Return a sorted class list from ``"0:background,1:water"``, a mapping or ClassInfos."""
    if spec is None:
        return []
    items: list[ClassInfo] = []
    if isinstance(spec, str):
        for part in filter(None, (p.strip() for p in spec.split(","))):
            idx, sep, name = part.partition(":")
            if not sep or not idx.strip().lstrip("-").isdigit():
                raise InvalidInputError(f"class spec {part!r} is not 'index:name' (e.g. '1:water')")
            items.append(ClassInfo(int(idx), name.strip()))
    elif isinstance(spec, Mapping):
        items = [ClassInfo(int(k), str(v)) for k, v in spec.items()]
    else:
        for c in spec:
            items.append(c if isinstance(c, ClassInfo) else ClassInfo(**dict(c)))
    indices = [c.index for c in items]
    if len(set(indices)) != len(indices):
        raise InvalidInputError(f"duplicate class indices in {indices}")
    return sorted(items, key=lambda c: c.index)
