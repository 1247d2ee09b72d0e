"""``geomed-seg demo``: the main job on bundled real data (what ``make demo`` runs)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from geomed_seg.cli import app, is_quiet


@app.command()
def demo(
    output: Path = typer.Option(
        Path("demo-output"), "--output", "-o", help="Folder for the outputs."
    ),
    brats: bool = typer.Option(True, "--brats/--no-brats", help="Also run the BraTS phantom."),
) -> None:
    """Run the flood pipeline on the bundled Landsat scene and BraTS on a SYNTHETIC phantom."""
    from geomed_seg.commands.console import status

    status(f"loading the bundled data and models; outputs in {output}")
    from geomed_seg.demo import run_demo

    result = run_demo(output, brats=brats)
    if is_quiet():
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
    if brats:
        console.print(
            "[yellow]The BraTS case is SYNTHETIC (phantom tumour and sequences on the real "
            "MNI152 template): its scores say nothing about clinical performance.[/yellow]"
        )
