"""What every batch task does around its own work: the worker's config and the retry loop.

Tile runs (:mod:`geomed_seg.batch.runner`) and pass-1 statistics
(:mod:`geomed_seg.batch.thresholds`) are both journalled tasks that load the batch config
once per worker, record the input's identity, and turn an input's failure into a failed
record after ``retries`` more attempts. This module holds that shared part, so neither
task module imports the other.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from geomed_seg.batch.journal import config_hash, input_identity
from geomed_seg.pipelines.schema import PipelineConfig, load_config

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=8)
def worker_config(config_ref: str, overrides: tuple[str, ...], chash: str) -> PipelineConfig:
    """Load the config once per worker process (keyed by the config hash)."""
    cfg = load_config(config_ref, overrides)
    if config_hash(cfg) != chash:  # the file changed under a running batch
        raise RuntimeError(f"{config_ref}: config changed since the batch started")
    return cfg


def run_attempts(
    rec: dict[str, Any], src: Path, retries: int, body: Callable[[], None], what: str = "attempt"
) -> None:
    """Run ``body`` up to ``retries + 1`` times, filling the journal record ``rec`` in place.

    Each attempt records the input's identity first; success sets ``status`` "done".
    An exception is the input's failure, not a crash: its type and message go into
    ``rec["error"]`` and a warning names ``src``. ``rec["attempts"]`` and
    ``rec["seconds"]`` (wall time of all attempts) are always set.
    """
    start = time.perf_counter()
    for attempt in range(1, retries + 2):
        rec["attempts"] = attempt
        try:
            rec.update(input_identity(src))
            body()
            rec["status"], rec["error"] = "done", None
            break
        except Exception as exc:  # noqa: BLE001 - an input's failure is data, not a crash
            rec["error"] = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
            log.warning("%s: %s %d failed: %s", src, what, attempt, rec["error"])
    rec["seconds"] = time.perf_counter() - start
