"""Which classes an evaluation scores, what they are called, and labels that are none of them.

Class names live in cards and files, never in code (DESIGN "Label conventions"). The class
table of an evaluation comes from the first of:

1. ``classes`` given by the caller (``--classes 0:land,1:water``);
2. a card (``--card``): a dataset card name/YAML (``brats2023``) or a checkpoint (its model card);
3. the dataset card of the BraTS convention (``--brats 2023`` gives background/NETC/SNFH/ET);
4. the class table stored in the reference, then the prediction file (COG class names);
5. otherwise every label found, named by its value, and :attr:`ClassTable.source` says so.

A prediction label that is not a class (and not the prediction's nodata) is an error naming
the file, value and count; ``allow_unknown`` makes it a logged warning with the counts, and
those samples count as misses in the confusion matrix's last column.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from geomed_seg.core.image import Image
from geomed_seg.core.labels import ClassInfo, parse_classes
from geomed_seg.errors import InvalidInputError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClassTable:
    """Classes of an evaluation and where their names come from.

    Attributes
    ----------
    classes : list of ClassInfo
        Scored classes, sorted by index; empty means "every label found".
    source : str
        Human-readable origin, e.g. ``"dataset card brats2023"``.
    """

    classes: list[ClassInfo]
    source: str

    @property
    def names(self) -> dict[int, str]:
        """``{index: name}``."""
        return {c.index: c.name for c in self.classes}


def _from_card(card: str) -> tuple[list[ClassInfo], str]:
    path = Path(card)
    if path.exists() and path.suffix not in (".yaml", ".yml"):
        from geomed_seg.models.checkpoint import read_card  # torch-free: reads the card only

        model_card = read_card(path)
        return model_card.class_infos(), f"model card {model_card.name} ({path})"
    from geomed_seg.catalog import load_card

    dataset = load_card(card)
    if not dataset.classes:
        raise InvalidInputError(f"dataset card {dataset.name!r} defines no classes")
    return dataset.class_infos(), f"dataset card {dataset.name}"


def resolve_classes(
    classes: str | Iterable | Mapping | None,
    *,
    card: str | None = None,
    brats: str | None = None,
    reference: Image | None = None,
    prediction: Image | None = None,
) -> ClassTable:
    """Return the class table of an evaluation (see the module docstring for the order)."""
    infos = parse_classes(classes)
    if infos:
        return ClassTable(infos, "--classes" if isinstance(classes, str) else "the caller")
    if card:
        return ClassTable(*_from_card(card))
    if brats:
        from geomed_seg.catalog import load_card
        from geomed_seg.metrics.brats import CONVENTIONS

        dataset = load_card(CONVENTIONS.get(brats, brats))
        if dataset.classes:
            return ClassTable(dataset.class_infos(), f"dataset card {dataset.name}")
    for img, what in ((reference, "reference"), (prediction, "prediction")):
        stored = img.attrs.get("classes") if img is not None else None
        if stored:
            src = img.attrs.get("source") or what
            return ClassTable(parse_classes(stored), f"class table of the {what} ({src})")
    return ClassTable([], "labels found in the images (no class names given)")


def check_unknown(
    outside: Mapping[Any, int],
    table: ClassTable,
    prediction: str,
    *,
    allow_unknown: bool = False,
) -> dict[Any, int]:
    """Raise (or warn, with ``allow_unknown``) about prediction labels that are not classes.

    Parameters
    ----------
    outside : mapping
        ``{predicted label: count}`` of evaluated samples whose prediction is not a class,
        the prediction's nodata already removed.
    table : ClassTable
        The classes (empty: every label is a class, nothing is unknown).
    prediction : str
        Name of the prediction (path) for the message.

    Returns
    -------
    dict
        ``outside`` itself (what was accepted), for the report.
    """
    if not outside or not table.classes:
        return dict(outside)
    listed = ", ".join(f"{v} ({n} samples)" for v, n in sorted(outside.items(), key=_sort_key))
    known = ", ".join(f"{c.index} {c.name}" for c in table.classes)
    msg = (
        f"{prediction}: prediction label(s) not in the classes [{known}] ({table.source}): {listed}"
    )
    if not allow_unknown:
        raise InvalidInputError(
            f"{msg}; fix the classes (--classes/--card) or pass --allow-unknown to count them as misses"
        )
    logger.warning("%s; counted as misses (--allow-unknown)", msg)
    return dict(outside)


def _sort_key(item: tuple[Any, int]) -> tuple[float, str]:
    v = item[0]
    try:
        return (float(v), "")
    except (TypeError, ValueError):
        return (float("inf"), str(v))
