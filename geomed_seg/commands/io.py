"""``geomed-seg info`` and ``geomed-seg convert``: thin shells over ``open_image``/``write_image``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from geomed_seg.cli import app, is_quiet


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.12g}"
    if isinstance(value, list) and value and isinstance(value[0], list):
        return "\n".join("[" + ", ".join(_fmt(v) for v in row) + "]" for row in value)
    if isinstance(value, list):
        return "(" + ", ".join(_fmt(v) for v in value) + ")"
    return str(value)


def _render(summary: dict[str, Any], path: str) -> Table:
    table = Table(title=path, show_header=False, title_justify="left")
    table.add_column("field", style="bold cyan")
    table.add_column("value")
    for key, value in summary.items():
        if key == "crs" and value is not None:
            ident = f"EPSG:{value['epsg']}" if value["epsg"] else "custom"
            table.add_row("crs", f"{ident} — {value['name']} (units: {value['linear_units']})")
        elif key == "stats":
            for i, s in enumerate(value):
                table.add_row(
                    f"stats[{i}]",
                    f"min {_fmt(s['min'])}  max {_fmt(s['max'])}  mean {_fmt(s['mean'])}  valid {s['valid']}",
                )
        else:
            table.add_row(key, _fmt(value))
    return table


@app.command()
def info(
    path: Path = typer.Argument(
        ..., metavar="INPUT", help="GeoTIFF/COG/VRT, NIfTI, DICOM folder or file, or Zarr store."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    stats: bool = typer.Option(
        False, "--stats", help="Also compute per-channel min/max/mean (streamed)."
    ),
    series: str | None = typer.Option(
        None, "--series", help="DICOM series UID, index or description."
    ),
    resample: bool = typer.Option(
        False, "--resample", help="DICOM: resample uneven/tilted series onto a regular grid."
    ),
) -> None:
    """Describe an image: format, dims, shape, dtype, chunks, nodata and geometry.

    A DICOM folder with several series lists them (index, series number, UID, modality,
    description, slices) in the order ``--series N`` counts: series number, then UID.
    """
    from geomed_seg.core.describe import describe
    from geomed_seg.io.convert import open_input
    from geomed_seg.io.registry import detect_format

    if series is None and detect_format(path) == "dicom":
        from geomed_seg.io.dicom import list_series

        listing = list_series(path)
        if len(listing) > 1:
            _print_series(listing, str(path), as_json)
            return
    # without --stats no pixel is read, so the payload check (a full read) is skipped
    image = open_input(path, series=series, resample=resample, verify=stats)
    summary = {"format": detect_format(path), **describe(image, stats=stats)}
    if as_json:
        typer.echo(json.dumps(summary, indent=2, default=str))
    else:
        Console().print(_render(summary, str(path)))


def _print_series(listing: list, path: str, as_json: bool) -> None:
    """Print a folder's DICOM series (a table, or JSON ``{"format", "series": [...]}``)."""
    if as_json:
        rows = [s.as_dict() for s in listing]
        typer.echo(json.dumps({"format": "dicom", "series": rows}, indent=2))
        return
    console = Console(width=max(Console().width, 160))
    console.print(
        f"{escape(path)}: {len(listing)} DICOM series (by series number, then UID)",
        soft_wrap=True,
    )
    table = Table()
    for col in ("index", "number", "modality", "slices", "description", "SeriesInstanceUID"):
        table.add_column(col, no_wrap=col == "SeriesInstanceUID")
    for s in listing:
        number = "-" if s.number is None else str(s.number)
        table.add_row(str(s.index), number, s.modality, str(s.slices), escape(s.description), s.uid)
    console.print(table)
    console.print("choose one with --series INDEX, --series UID or --series DESCRIPTION")


@app.command()
def convert(
    src: Path = typer.Argument(..., metavar="INPUT", help="Input image."),
    dst: Path = typer.Argument(
        ..., metavar="OUTPUT", help="Output: .tif (COG), .nii/.nii.gz or .zarr."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output."),
    series: str | None = typer.Option(
        None, "--series", help="DICOM series: index in `info`'s list, UID or description."
    ),
    resample: bool = typer.Option(
        False, "--resample", help="DICOM: resample uneven/tilted series onto a regular grid."
    ),
) -> None:
    """Convert between formats keeping geometry (DICOM → NIfTI, GeoTIFF → COG/Zarr, NIfTI ↔ Zarr)."""
    from geomed_seg.io.convert import convert_image

    out = convert_image(src, dst, overwrite=overwrite, series=series, resample=resample)
    if not is_quiet():
        Console(stderr=True).print(f"wrote {out}")
