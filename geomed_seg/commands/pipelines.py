"""``geomed-seg run`` and ``geomed-seg catalog``: thin shells over the pipelines API."""

from __future__ import annotations

from pathlib import Path

import typer

from geomed_seg.cli import app, is_quiet


@app.command()
def run(
    config: str = typer.Argument(
        ..., metavar="CONFIG", help="Pipeline YAML, or a bundled name (flood, brats...)."
    ),
    input: Path | None = typer.Option(  # noqa: A002 - the option's name
        None, "--input", "-i", help="Input file or folder (replaces input.path / input.folder)."
    ),
    output: Path | None = typer.Option(None, "--output", "-o", help="Output folder."),
    set_: list[str] = typer.Option(
        [], "--set", help="Override a config value: key.sub=value (repeatable)."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs."),
) -> None:
    """Run a pipeline: segment, post-process, write labels, polygons, quicklook and report."""
    from geomed_seg.commands.console import class_sizes, headline, status

    status(f"loading pipeline {config}")
    from geomed_seg.pipelines.runner import run_pipeline

    result = run_pipeline(config, input=input, output=output, overrides=set_, overwrite=overwrite)
    if not is_quiet():
        headline(class_sizes(result.report["classes"]))
        _print_run(result)


def _print_run(result) -> None:
    from rich.console import Console
    from rich.table import Table

    rep = result.report
    table = Table(
        title=f"{rep['pipeline']} — {rep['method']} — {result.seconds:.1f} s", title_justify="left"
    )
    table.add_column("what", style="bold cyan")
    table.add_column("result")
    for note in rep["notes"]:
        table.add_row("note", note)
    for row in rep["classes"]:
        if "area_km2" in row:
            size = f"{row['area_km2']:.3f} km²"
        elif "area_crs_units2" in row:
            size = f"{row['area_crs_units2']:.6g} CRS units²"
        else:
            size = f"{row['volume_ml']:.2f} ml"
        table.add_row(f"class {row['index']} {row['name']}", size)
    for m in rep["metrics"]:
        text = "Dice " + ("–" if m["dice"] is None else f"{m['dice']:.4f}")
        if m.get("hd95") is not None:
            text += f", HD95 {m['hd95']:.4g} {m.get('distance_unit', '')}"
        table.add_row(m["what"], text)
    if rep.get("evaluation", {}).get("reference"):
        table.add_row("evaluated against", str(rep["evaluation"]["reference"]))
    for key, path in result.outputs.items():
        table.add_row(key, str(path))
    Console().print(table)


@app.command()
def catalog(
    name: str | None = typer.Argument(
        None, metavar="NAME", help="Card to show; omit to list all cards."
    ),
) -> None:
    """List the data catalog (sensor and dataset cards) or show one card."""
    from rich.console import Console
    from rich.table import Table

    from geomed_seg.pipelines.cards import SensorCard, card_rows, list_cards, load_any_card

    console = Console()
    if name is None:
        table = Table(title="geomed-seg data catalog", title_justify="left")
        for col in ("name", "kind", "title", "licence"):
            table.add_column(col)
        for card in list_cards():
            kind = "sensor" if isinstance(card, SensorCard) else "dataset"
            table.add_row(card.name, kind, card.title, card.license)
        console.print(table)
        return
    card = load_any_card(name)
    console.print(f"[bold]{card.name}[/bold] — {card.title}")
    console.print(card.description.strip())
    console.print(f"licence: {card.license}   source: {card.url}")
    table = Table(title_justify="left")
    cols = (
        ("band", "common name", "wavelength µm", "scale", "offset")
        if isinstance(card, SensorCard)
        else ("index", "class", "colour (RGB)")
    )
    for col in cols:
        table.add_column(col)
    for row in card_rows(card):
        table.add_row(*row)
    console.print(table)
