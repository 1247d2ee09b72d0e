"""Write one script's section of ``benchmarks/RESULTS.md`` (shared by the benchmark scripts).

Each script owns the text between ``<!-- BEGIN tag -->`` and ``<!-- END tag -->``; other
sections are kept as they are. A missing section is appended.
"""

from __future__ import annotations

import re
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
HEADER = (
    "# Benchmark results\n\nEach section is written by its script in `benchmarks/`; "
    "see `benchmarks/README.md`.\n"
)


def write_section(tag: str, text: str, path: Path = RESULTS) -> None:
    """Replace (or append) the ``tag`` section of ``path`` with ``text``."""
    begin, end = f"<!-- BEGIN {tag} -->", f"<!-- END {tag} -->"
    old = path.read_text() if path.exists() else HEADER
    block = f"{begin}\n{text.strip(chr(10))}\n{end}"
    if begin in old and end in old:
        new = re.sub(re.escape(begin) + r".*?" + re.escape(end), lambda _: block, old, flags=re.S)
    else:
        new = old.rstrip() + "\n\n" + block + "\n"
    path.write_text(new)
