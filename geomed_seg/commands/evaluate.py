"""``geomed-seg evaluate``: thin shell over :func:`geomed_seg.metrics.evaluate.evaluate`."""

from __future__ import annotations

from pathlib import Path

import typer

from geomed_seg.cli import app
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
    pred: Path = typer.Argument(..., help="Prediction label image, or a folder of them."),
    ref: Path = typer.Argument(..., help="Reference label image, or a folder (paired by name)."),
    classes: str | None = typer.Option(None, "--classes", help="'0:background,1:water'."),
    ignore: int | None = typer.Option(None, "--ignore", help="Reference label to ignore."),
    tversky: str = typer.Option("0.5,0.5", "--tversky", help="alpha (FP),beta (FN) weights."),
    surface: bool = typer.Option(False, "--surface", help="Also HD, HD95, ASSD, NSD."),
    tolerance: float = typer.Option(1.0, "--tolerance", help="NSD tolerance (mm or m)."),
    brats: str | None = typer.Option(None, "--brats", help="BraTS regions: legacy, 2023, 2024."),
    lesion_wise: bool = typer.Option(False, "--lesion-wise", help="BraTS lesion-wise metrics."),
    protocol: str = typer.Option(
        "panoptica", "--brats-protocol", help="panoptica (brats-evaluation) or brats2023."
    ),
    empty: str = typer.Option("brats", "--empty", help="Class absent from both: brats (1) or nan."),
    fmt: str = typer.Option("table", "--format", help="table, json, csv or md."),
    output: Path | None = typer.Option(None, "-o", "--output", help="Write the report here."),
    plot: Path | None = typer.Option(None, "--plot", help="Save a confusion-matrix PNG."),
    resample_to: str | None = typer.Option(None, "--resample-to", help="'reference'."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs."),
) -> None:
    """Score a prediction against a reference (Dice, IoU, Tversky, ..., HD95, BraTS).

    With two folders, files pair by case name; -o writes the per-case report and
    <name>_summary.csv (mean, std, median per class); exit code 1 if any pair is missing.
    """
    from geomed_seg.io.atomic import atomic_output
    from geomed_seg.metrics.evaluate import evaluate as run_evaluate
    from geomed_seg.metrics.evaluate import evaluate_folder
    from geomed_seg.metrics.report import plot as save_plot
    from geomed_seg.metrics.report import render, to_csv

    kwargs = dict(
        classes=classes, ignore_index=ignore, tversky=_pair(tversky), surface=surface,
        tolerance=tolerance, brats=brats, lesion_wise=lesion_wise, resample_to=resample_to,
        empty=empty, brats_protocol=protocol,
    )  # fmt: skip
    if pred.is_dir() and ref.is_dir():
        result = evaluate_folder(pred, ref, **kwargs)
    else:
        result = run_evaluate(pred, ref, **kwargs)
    text = render(result, fmt)
    if output is not None:
        with atomic_output(output, overwrite) as tmp:
            tmp.write_text(text)
        if hasattr(result, "summary"):  # folders: the per-case file plus a summary beside it
            summary = output.with_name(f"{output.name.split('.')[0]}_summary.csv")
            with atomic_output(summary, overwrite) as tmp:
                tmp.write_text(to_csv(result.summary()))
    typer.echo(text)
    if plot is not None:
        if not hasattr(result, "overlap"):
            raise InvalidInputError("--plot needs a single prediction/reference pair")
        with atomic_output(plot, overwrite) as tmp:
            save_plot(result, tmp)
    if not getattr(result, "complete", True):
        raise typer.Exit(code=1)
