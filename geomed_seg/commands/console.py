"""What commands print: status lines before long set-up and headline results.

One convention for every command: status lines go to stderr, only on a terminal and never
with ``-q``; results (the headline and the summary table) go to stdout unless ``-q``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from typing import Any

from geomed_seg.cli import is_quiet


def on_terminal() -> bool:
    """True when stderr is a terminal (status lines and progress bars are shown there)."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # closed or replaced stream
        return False


def status(text: str) -> None:
    """Print ``text…`` on stderr at once (terminal only, silent with ``-q``).

    Called first thing in a command, before imports of torch/dask and model loading that
    take seconds, so a user sees within a second what the command is doing.
    """
    if is_quiet() or not on_terminal():
        return
    try:
        print(f"{text}…", file=sys.stderr, flush=True)
    except (OSError, ValueError):  # stderr closed: nothing to tell
        pass


def class_sizes(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """Return ``"name: size unit"`` for report class rows (area in km², volume in ml).

    Rows are those of a pipeline report (``index``, ``name`` and one of ``area_km2``,
    ``area_crs_units2`` or ``volume_ml``); the background (index 0) is left out.
    """
    out = []
    for row in rows:
        if int(row.get("index", 0)) == 0:
            continue
        name = row.get("name") or f"class {row.get('index')}"
        if row.get("area_km2") is not None:
            out.append(f"{name}: {row['area_km2']:.4g} km²")
        elif row.get("area_crs_units2") is not None:
            out.append(f"{name}: {row['area_crs_units2']:.6g} CRS units²")
        elif row.get("volume_ml") is not None:
            out.append(f"{name}: {row['volume_ml']:.4g} ml")
    return out


def headline(parts: Iterable[str]) -> None:
    """Print the result's headline (``water: 123.4 km²; ...``) on stdout unless ``-q``."""
    parts = [p for p in parts if p]
    if parts and not is_quiet():
        print("; ".join(parts), flush=True)
