"""Peak memory of the streaming engine does not grow with the image size."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _peak(size: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "tests.inference.memory_probe", str(size)],
        cwd=ROOT, capture_output=True, text=True, check=True, timeout=1800,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_peak_rss_independent_of_image_size():
    small, large = _peak(4096), _peak(16384)
    # 16x more pixels; the working set is windows in flight + about one row of output chunks
    assert large["peak_rss_mib"] <= 1.3 * small["peak_rss_mib"], (small, large)
