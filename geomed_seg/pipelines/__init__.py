"""Pipelines: a validated YAML config (``pipelines/*.yaml``) run end to end.

``run_pipeline(config)`` opens the inputs, preprocesses them, segments (classical baseline
or checkpoint), post-processes, and writes labels, polygons, a quicklook, a report and a
provenance record atomically into one output folder.
"""

from __future__ import annotations

from typing import Any

__all__ = ["PipelineConfig", "RunResult", "load_config", "run_pipeline"]


def __getattr__(name: str) -> Any:  # lazy: `geomed-seg catalog` must not import the runner
    if name in ("RunResult", "run_pipeline"):
        from geomed_seg.pipelines import runner

        return getattr(runner, name)
    if name in ("PipelineConfig", "load_config"):
        from geomed_seg.pipelines import schema

        return getattr(schema, name)
    raise AttributeError(name)
