"""``geomed-seg demo``: the main job on bundled real data (what ``make demo`` runs)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from geomed_seg.cli import app


@app.command()
def demo(
    output: Path = typer.Option(
        Path("demo-output"), "--output", "-o", help="Folder for the outputs."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing but errors."),
) -> None:
    """Run the demo on the bundled Landsat 7 scene and MNI152 template."""
    from geomed_seg.demo import run_demo

    result = run_demo(output)
    if quiet:
        return
    console = Console()
    table = Table(title=f"geomed-seg demo — {result.seconds:.1f} s", title_justify="left")
    table.add_column("what", style="bold cyan")
    table.add_column("result")
    for key, value in result.facts.items():
        table.add_row(key, value)
    for key, path in result.outputs.items():
        table.add_row(key, str(path))
    console.print(table)
