"""Scale-out: run a pipeline over many tiles on dask.distributed, resumably (issue 9)."""

from __future__ import annotations
