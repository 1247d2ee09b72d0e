"""Terminal feedback for ``geomed-seg batch``: the dashboard link and a rich progress bar."""

from __future__ import annotations

from typing import Any


class BatchProgress:
    """Context manager whose ``start``/``advance`` fit :func:`run_batch`'s callbacks.

    ``enabled=False`` (``--quiet`` or not a terminal) shows no bar; the dashboard link is
    printed unless ``quiet``.
    """

    def __init__(self, enabled: bool, quiet: bool = False):
        self.enabled, self.quiet = enabled, quiet
        self._bar: Any = None
        self._task: Any = None

    def __enter__(self) -> BatchProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def start(self, total: int, todo: int, dashboard: str | None) -> None:
        if dashboard and not self.quiet:
            print(f"dask dashboard: {dashboard}")
        if self.enabled and todo:
            from rich.progress import Progress

            self._bar = Progress()
            self._bar.start()
            self._task = self._bar.add_task("tiles", total=todo)

    def advance(self, rec: dict[str, Any]) -> None:
        if self._bar is not None:
            self._bar.update(self._task, advance=1, description=f"tiles ({rec['stem']})")
