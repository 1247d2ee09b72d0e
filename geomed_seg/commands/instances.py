"""``geomed-seg maskrcnn`` and ``geomed-seg sam``: thin shells over ``maskrcnn_file`` and
``sam_file`` (instance rasters and prompted masks on the input grid)."""

from __future__ import annotations

from pathlib import Path

import typer

from geomed_seg.cli import app, is_quiet
from geomed_seg.commands.classical import _floats
from geomed_seg.errors import InvalidInputError

RANDOM_WARNING = "WARNING: random weights: results are meaningless, for testing the pipeline"


def _class_names(text: str | None) -> dict[int, str] | None:
    if not text:
        return None
    out = {}
    for part in text.split(","):
        key, sep, name = part.partition(":")
        if not sep or not key.strip().isdigit() or not name.strip():
            raise InvalidInputError(
                f"--classes {text!r}: expected index:name pairs, e.g. 1:building"
            )
        out[int(key)] = name.strip()
    return out


def _bands(text: str) -> list[str | int]:
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 3 or not all(parts):
        raise InvalidInputError(
            f"--rgb {text!r}: expected three bands, e.g. 3,2,1 or red,green,blue"
        )
    return [int(p) if p.isdigit() else p for p in parts]


@app.command()
def maskrcnn(
    input_path: Path = typer.Argument(..., metavar="INPUT", help="Input raster (GeoTIFF, Zarr)."),
    output: Path = typer.Option(..., "--output", "-o", help="Instance raster (uint32, .tif)."),
    weights: Path | None = typer.Option(
        None, "--weights", help="Trained weights (.safetensors or state dict; never unpickled)."
    ),
    random_init: bool = typer.Option(
        False, "--random-init", help="Run untrained weights (pipeline tests only)."
    ),
    num_classes: int | None = typer.Option(
        None, "--num-classes", help="Classes incl. background (default: from --classes, else 2)."
    ),
    classes: str | None = typer.Option(None, "--classes", help="Names, e.g. 1:building,2:tree."),
    tile: int = typer.Option(512, "--tile", help="Tile size (pixels); also the model input."),
    overlap: int = typer.Option(64, "--overlap", help="Tile overlap (pixels) > largest object."),
    rgb: str = typer.Option("1,2,3", "--rgb", help="Bands fed as R,G,B (1-based or names)."),
    score: float = typer.Option(0.5, "--score", help="Minimum detection score."),
    table: Path | None = typer.Option(None, "--table", help="Instance table (.csv/.json)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs."),
) -> None:
    """Detect objects with Mask R-CNN tile by tile; write an instance raster on the input grid."""
    from geomed_seg.instances.maskrcnn import maskrcnn_file

    names = _class_names(classes)
    n = num_classes if num_classes is not None else (max(names) + 1 if names else 2)
    tab = maskrcnn_file(
        input_path,
        output,
        weights=weights,
        random_init=random_init,
        num_classes=n,
        class_names=names,
        tile=tile,
        overlap=overlap,
        rgb=_bands(rgb),
        score_threshold=score,
        table=table,
        overwrite=overwrite,
    )
    if weights is None:  # loud even with --quiet; after the run so errors stay one line
        typer.echo(RANDOM_WARNING, err=True)
    if not is_quiet():
        typer.echo(f"{output} ({len(tab)} instances)")


@app.command()
def sam(
    input_path: Path = typer.Argument(
        ..., metavar="INPUT", help="Input image (GeoTIFF, NIfTI, DICOM, Zarr)."
    ),
    model: Path | None = typer.Option(
        None, "--model", "-m", help="Local SAM folder (save_pretrained); nothing is downloaded."
    ),
    checkpoint: Path | None = typer.Option(None, "--checkpoint", hidden=True),  # old name
    output: Path = typer.Option(..., "--output", "-o", help="Mask image (.tif, .nii.gz)."),
    point: list[str] = typer.Option(
        [], "--point", help="World point X,Y (CRS units) or R,A,S (mm); repeatable."
    ),
    box: str | None = typer.Option(None, "--box", help="World box XMIN,YMIN,XMAX,YMAX (CRS)."),
    window: int = typer.Option(1024, "--window", help="Window read around the prompts (pixels)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output."),
) -> None:
    """Segment the object at world-coordinate prompts with SAM; write the mask on the input grid."""
    from geomed_seg.commands.console import status

    model = model or checkpoint
    if model is None:
        raise InvalidInputError(f"{input_path}: sam needs --model SAM_FOLDER")
    status(f"loading SAM from {model}")
    from geomed_seg.instances.sam import sam_file

    if not point and box is None:
        raise InvalidInputError(f"{input_path}: sam needs --point X,Y or --box XMIN,YMIN,XMAX,YMAX")
    n = sam_file(
        input_path,
        model,
        output,
        points=[_floats(p, (2, 3), "--point") for p in point] or None,
        box=_floats(box, (4,), "--box"),
        window=window,
        overwrite=overwrite,
    )
    if not is_quiet():
        typer.echo(f"{output} ({n} pixels)")
