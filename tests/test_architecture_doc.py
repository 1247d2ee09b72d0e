"""docs/architecture.md cannot rot: every file and ``geomed_seg.`` name it gives must exist.

Checked: backticked paths (``geomed_seg/io/registry.py``, ``tests/io/conformance.py``,
``data_catalog/``; a ``<format>`` placeholder checks the folder above it), backticked dotted
names (``geomed_seg.io.registry.Adapter``: the longest importable module, then attributes)
(or an entry-point group the registries declare) and the ``.py`` files of the data-flow
diagram (relative to ``geomed_seg/``). The reference
is the file system and ``importlib``, not the document.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "architecture.md"

_TICKED = re.compile(r"`([^`\n]+)`")
_DOTTED = re.compile(r"^geomed_seg(\.[A-Za-z_]\w*)+$")
_PATH = re.compile(r"^[\w.<>-]+(/[\w.<>-]*)+$")
_DIAGRAM_PY = re.compile(r"[\w/<>]+\.py\b")


def references(text: str) -> tuple[list[str], list[str]]:
    """Return ``(paths, dotted names)`` named in ``text`` (paths relative to the repo root)."""
    paths: list[str] = []
    names: list[str] = []
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    for token in _TICKED.findall(prose):
        if _DOTTED.match(token):
            names.append(token)
        elif _PATH.match(token):
            paths.append(token)
    for block in re.findall(r"```(.*?)```", text, flags=re.S):
        paths += [f"geomed_seg/{p}" for p in _DIAGRAM_PY.findall(block)]
    return paths, names


def path_problem(path: str, root: Path = ROOT) -> str | None:
    """Return why ``path`` does not name a file or folder of the repo, or None."""
    if "<" in path:  # a placeholder: the folder it sits in must exist
        path = path[: path.index("<")].rsplit("/", 1)[0] + "/"
    target = root / path.rstrip("/")
    if path.endswith("/"):
        return None if target.is_dir() else f"{path}: no such folder"
    return None if target.exists() else f"{path}: no such file"


def entry_point_groups() -> set[str]:
    """The entry-point groups through which plug-ins register (named by the doc too)."""
    from geomed_seg.classical import registry as methods
    from geomed_seg.io import registry as formats

    return {formats.ENTRY_POINT_GROUP, methods.ENTRY_POINT_GROUP}


def name_problem(name: str) -> str | None:
    """Return why ``name`` (``package.module.attr[.attr]``) does not resolve, or None.

    An entry-point group's name (``geomed_seg.adapters``) counts as resolving.
    """
    if name in entry_point_groups():
        return None
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for i, attr in enumerate(parts[cut:], cut):
            if not hasattr(obj, attr):
                return f"{name}: {'.'.join(parts[:i])} has no {attr!r}"
            obj = getattr(obj, attr)
        return None
    return f"{name}: no such module"


def test_doc_names_only_what_exists():
    paths, names = references(DOC.read_text(encoding="utf-8"))
    assert len(paths) > 40 and len(names) > 40, "the checker found too few references"
    problems = [p for p in map(path_problem, paths) if p]
    problems += [p for p in map(name_problem, names) if p]
    assert not problems, "docs/architecture.md names what does not exist:\n" + "\n".join(problems)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("`geomed_seg/io/no_such.py`", "geomed_seg/io/no_such.py: no such file"),
        ("`data_catalog_missing/`", "data_catalog_missing/: no such folder"),
        ("`geomed_seg.io.registry.no_such`", "geomed_seg.io.registry has no 'no_such'"),
        ("`geomed_seg.no_such_module.x`", "geomed_seg has no 'no_such_module'"),
        ("```\nplan    inference/no_such.py\n```", "geomed_seg/inference/no_such.py: no such file"),
    ],
)
def test_checker_refuses_what_does_not_exist(text, expected):
    paths, names = references(text)
    problems = [p for p in map(path_problem, paths) if p]
    problems += [p for p in map(name_problem, names) if p]
    assert len(problems) == 1 and expected in problems[0]


def test_doc_is_linked_from_readme_and_docs():
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        if page != DOC:
            text = page.read_text(encoding="utf-8")
            assert "architecture.md" in text, f"{page.name} does not link docs/architecture.md"
