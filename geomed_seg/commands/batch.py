"""``geomed-seg batch``: run a pipeline over many tiles on dask.distributed, resumably."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer

from geomed_seg.cli import app, is_quiet


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


@app.command()
def batch(
    config: str = typer.Argument(
        ..., metavar="CONFIG", help="Pipeline YAML, or a bundled name (flood...)."
    ),
    output: Path = typer.Option(..., "--output", "-o", help="Batch output folder."),
    inputs: str | None = typer.Option(
        None, "--inputs", "-i", help="Glob of input tiles (quote it)."
    ),
    list_file: Path | None = typer.Option(None, "--list", help="Text file: one input per line."),
    vrt: Path | None = typer.Option(
        None, "--vrt", help="A VRT: its source files are the tiles (with --block-size: one scene)."
    ),
    stac: Path | None = typer.Option(None, "--stac", help="STAC ItemCollection / item JSON."),
    workers: int | None = typer.Option(
        None, "--workers", help="Worker processes (jobs with --jobqueue); default: CPUs / threads."
    ),
    threads: int | None = typer.Option(
        None, "--threads", help="Threads per worker (default 1, or jobqueue.yaml's cores)."
    ),
    memory_limit: str | None = typer.Option(
        None, "--memory-limit", help="Memory per worker, e.g. 4GB (default: 90% RAM / workers)."
    ),
    scheduler: str | None = typer.Option(
        None, "--scheduler", help="Existing dask scheduler address (tcp://host:port)."
    ),
    jobqueue: str | None = typer.Option(
        None, "--jobqueue", help="Start workers as slurm or pbs jobs (dask-jobqueue config)."
    ),
    devices: str | None = typer.Option(
        None,
        "--devices",
        help="GPU workers: one local worker per device (cuda:0,cuda:1 or all); each runs "
        "its tiles' models on its own device.",
    ),
    retries: int = typer.Option(1, "--retries", help="Extra attempts for a failing tile."),
    restart: bool = typer.Option(False, "--restart", help="Discard journal and tile outputs."),
    set_: list[str] = typer.Option(
        [], "--set", help="Override a config value: key.sub=value (repeatable)."
    ),
    block_size: int | None = typer.Option(
        None, "--block-size", help="Split rasters larger than N px into N x N px blocks."
    ),
    halo: int | None = typer.Option(
        None, "--halo", help="Context px read around each block (default: max engine roi)."
    ),
    cog_mosaic: bool = typer.Option(
        False, "--cog-mosaic", help="Also write mosaic.tif, one COG of all label tiles."
    ),
    threshold_scope: str = typer.Option(
        "batch",
        "--threshold-scope",
        help="Otsu thresholds: 'batch' = one from all tiles/blocks (pass 1), 'tile' = each "
        "its own. A model.threshold in the config always wins.",
    ),
) -> None:
    """Run a pipeline on every tile; skip tiles already done; exit 1 if some tiles failed."""
    from geomed_seg.commands.console import status

    quiet = is_quiet()
    status("starting the batch")
    from geomed_seg.batch.manifest import build_manifest
    from geomed_seg.batch.options import BatchOptions, ClusterOptions
    from geomed_seg.batch.runner import run_batch

    paths = build_manifest(
        inputs=inputs, list_file=list_file, vrt=vrt, stac=stac, vrt_as_scene=block_size is not None
    )
    status(f"opening {len(paths)} input(s) and starting dask workers")
    show = not quiet and sys.stdout.isatty()
    cluster = ClusterOptions(
        workers=workers, threads=threads, memory_limit=memory_limit, scheduler=scheduler,
        jobqueue=jobqueue, devices=tuple(d.strip() for d in devices.split(",")) if devices else None,
    )  # fmt: skip
    with BatchProgress(enabled=show, quiet=quiet) as prog:
        options = BatchOptions(
            overrides=tuple(set_ or ()), retries=retries, restart=restart,
            block_size=block_size, halo=halo, cog=cog_mosaic, threshold_scope=threshold_scope,
            cluster=cluster, on_start=prog.start, on_tile=prog.advance,
        )  # fmt: skip
        result = run_batch(config, paths, output, options)
    if not quiet:
        total = len(result.done) + len(result.skipped) + len(result.failed)
        print(
            f"{total} tiles: {len(result.done)} done, {len(result.skipped)} skipped, "
            f"{len(result.failed)} failed in {result.seconds:.1f} s -> {result.out}"
        )
        for stem, err in result.failed.items():
            print(f"failed: {stem}: {err}")
        th = result.thresholds
        if th and th.get("thresholds"):
            print(
                f"threshold ({th['method']}, scope {th['scope']}): {th['thresholds'][0]:.4f}"
                + (f", separability eta {th['eta']:.3f}" if th.get("eta") is not None else "")
            )
        for note in result.notes:
            print(f"note: {note}")
    if result.failed:
        raise typer.Exit(1)
