"""Fault points in the write path, for the fault suite (``tests/faults``); inert by default.

``GEOMED_SEG_FAULTS`` (read once per process) holds ``;``-separated rules
``<point>:<output name>:<action>``. Points: ``commit`` (an output is complete under its
temporary name, before it is staged or renamed) and ``window`` (a GeoTIFF window was just
written). Actions: ``pause=SECONDS`` (sleep, so a test can send a signal at that moment) and
``errno=NAME`` (raise ``OSError(NAME)`` as a full disk or read-only file system would).
``<output name>`` is matched with :func:`fnmatch.fnmatch` against the final file name.

Hand-written because the alternatives (``LD_PRELOAD`` shims, FUSE, a tmpfs) are not
available on every test machine; the suite also uses a real tmpfs where it can mount one.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import time
from functools import lru_cache
from pathlib import Path

ENV = "GEOMED_SEG_FAULTS"


@lru_cache(maxsize=1)
def _rules() -> tuple[tuple[str, str, str, str], ...]:
    rules = []
    for rule in filter(None, (r.strip() for r in os.environ.get(ENV, "").split(";"))):
        point, _, rest = rule.partition(":")
        pattern, _, action = rest.rpartition(":")
        kind, _, value = action.partition("=")
        rules.append((point, pattern, kind, value))
    return tuple(rules)


def fault_point(point: str, final: str | os.PathLike) -> None:
    """Apply the configured fault for ``point`` on output ``final``, if any (else nothing)."""
    if not os.environ.get(ENV):
        return
    name = Path(final).name
    for p, pattern, kind, value in _rules():
        if p != point or not fnmatch.fnmatch(name, pattern):
            continue
        if kind == "pause":
            time.sleep(float(value))
        elif kind == "errno":
            code = getattr(errno, value)
            raise OSError(code, os.strerror(code), str(final))


__all__ = ["ENV", "fault_point"]
