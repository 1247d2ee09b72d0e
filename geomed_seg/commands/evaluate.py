"""``geomed-seg evaluate``: thin shell over :func:`geomed_seg.metrics.evaluate.evaluate`."""

from __future__ import annotations

from pathlib import Path

import typer

from geomed_seg.cli import app, is_quiet
from geomed_seg.errors import InvalidInputError


def _pair(text: str) -> tuple[float, float]:
    parts = [p for p in text.replace(" ", "").split(",") if p]
    if len(parts) != 2:
        raise InvalidInputError(f"--tversky {text!r}: expected 'alpha,beta', e.g. 0.3,0.7")
    try:
        return float(parts[0]), float(parts[1])
    except ValueError as exc:
        raise InvalidInputError(f"--tversky {text!r}: not two numbers") from exc


@app.command()
def evaluate(
    pred: Path = typer.Argument(
        ..., metavar="PRED", help="Prediction label image, or a folder of them."
    ),
    ref: Path = typer.Argument(
        ..., metavar="REF", help="Reference label image, or a folder (paired by name)."
    ),
    classes: str | None = typer.Option(
        None, "--classes", help="'0:background,1:water' (default: --card, --brats card, file)."
    ),
    card: str | None = typer.Option(
        None, "--card", help="Class names from a dataset card (brats2023) or a checkpoint."
    ),
    allow_unknown: bool = typer.Option(
        False, "--allow-unknown", help="Warn (not fail) on prediction labels outside the classes."
    ),
    ignore: int | None = typer.Option(None, "--ignore", help="Reference label to ignore."),
    tversky: str = typer.Option("0.5,0.5", "--tversky", help="alpha (FP),beta (FN) weights."),
    surface: bool = typer.Option(False, "--surface", help="Also HD, HD95, ASSD, NSD."),
    tolerance: float = typer.Option(
        1.0,
        "--tolerance",
        help="--surface NSD tolerance in mm (volumes) or ground metres (rasters); in CRS "
        "units, with a warning, where a raster has no ground metres (no CRS, local CRS, or "
        "pixel size varying > 0.1 %).",
    ),
    brats: str | None = typer.Option(None, "--brats", help="BraTS regions: legacy, 2023, 2024."),
    lesion_wise: bool = typer.Option(False, "--lesion-wise", help="BraTS lesion-wise metrics."),
    protocol: str = typer.Option(
        "panoptica", "--brats-protocol", help="panoptica (brats-evaluation) or brats2023."
    ),
    empty: str = typer.Option("brats", "--empty", help="Class absent from both: brats (1) or nan."),
    fmt: str | None = typer.Option(
        None, "--format", help="table, json, csv or md (default: table; -o: from its suffix)."
    ),
    output: Path | None = typer.Option(
        None, "-o", "--output", help="Write the report here: .csv, .json, .md or .txt."
    ),
    plot: Path | None = typer.Option(None, "--plot", help="Save a confusion-matrix PNG."),
    resample_to: str | None = typer.Option(None, "--resample-to", help="'reference'."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs."),
) -> None:
    """Score a prediction against a reference (Dice, IoU, Tversky, ..., HD95, BraTS).

    Distances (HD95, NSD tolerance) are in mm for volumes, whatever their spacing. A
    prediction label that is not a class is an error (exit 2) unless --allow-unknown.
    With two folders, files pair by case name; -o writes one row per case plus the mean
    (.csv also writes <name>_summary.csv: mean, std, median per class; .json holds the
    summary); exit code 1 if any pair is missing.
    """
    from geomed_seg.io.atomic import atomic_output
    from geomed_seg.io.transaction import OutputTransaction
    from geomed_seg.metrics.evaluate import evaluate as run_evaluate
    from geomed_seg.metrics.evaluate import evaluate_folder
    from geomed_seg.metrics.report import format_for, render, to_csv
    from geomed_seg.metrics.report import plot as save_plot

    file_fmt = format_for(output, fmt) if output is not None else None  # before any work
    folders = pred.is_dir() and ref.is_dir()
    summary = None
    if output is not None and folders and file_fmt == "csv":
        summary = output.with_name(f"{output.name[:-4]}_summary.csv")
    if plot is not None and folders:
        raise InvalidInputError("--plot needs a single prediction/reference pair")
    # every output checked before scoring (exists, blocked folder, = an input), and the
    # report, its summary and the plot appear together or not at all
    txn = OutputTransaction(
        [p for p in (output, summary, plot) if p is not None], overwrite=overwrite,
        inputs=[pred, ref],
    )  # fmt: skip
    kwargs = dict(
        classes=classes, ignore_index=ignore, tversky=_pair(tversky), surface=surface,
        tolerance=tolerance, brats=brats, lesion_wise=lesion_wise, resample_to=resample_to,
        empty=empty, brats_protocol=protocol, card=card, allow_unknown=allow_unknown,
    )  # fmt: skip
    if folders:
        result = evaluate_folder(pred, ref, **kwargs)
    else:
        result = run_evaluate(pred, ref, **kwargs)
    text = render(result, fmt or "table")
    with txn:
        if output is not None:
            with atomic_output(output, overwrite) as tmp:
                tmp.write_text(text if file_fmt == (fmt or "table") else render(result, file_fmt))
            if summary is not None:  # folders as CSV: the per-case file plus a summary beside it
                with atomic_output(summary, overwrite) as tmp:
                    tmp.write_text(to_csv(result.summary()))
        if plot is not None:
            with atomic_output(plot, overwrite) as tmp:
                save_plot(result, tmp)
    if not is_quiet():
        typer.echo(text)
    if not getattr(result, "complete", True):
        raise typer.Exit(code=1)
