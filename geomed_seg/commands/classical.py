"""``geomed-seg classical METHOD INPUT -o OUTPUT``: a thin shell over ``classical_file``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from typer.core import TyperCommand

from geomed_seg.cli import app, is_quiet
from geomed_seg.errors import InvalidInputError


def _floats(text: str | None, n: tuple[int, ...], what: str) -> list[float] | None:
    if text is None:
        return None
    try:
        vals = [float(v) for v in text.split(",")]
    except ValueError as exc:
        raise InvalidInputError(f"{what} {text!r}: expected numbers separated by commas") from exc
    if len(vals) not in n:
        raise InvalidInputError(f"{what} {text!r}: expected {' or '.join(map(str, n))} numbers")
    return vals


def _mapping(text: str | None) -> dict[str, str] | None:
    if not text:
        return None
    out = {}
    for part in text.split(","):
        key, sep, val = part.partition("=")
        if not sep:
            raise InvalidInputError(
                f"--bands {text!r}: expected role=band pairs, e.g. green=2,nir=4"
            )
        out[key.strip()] = val.strip()
    return out


class _ClassicalCommand(TyperCommand):
    """The ``classical`` command, whose help lists the registered methods when shown."""

    def format_help(self, ctx, formatter):  # noqa: ANN001 - click's signature
        from geomed_seg.classical.registry import methods

        if "Methods:" not in (self.help or ""):
            lines = [f"{m.name}: {m.summary}." for m in methods().values()]
            self.help = f"{self.help}\n\nMethods:\n\n" + "\n\n".join(lines)
        return super().format_help(ctx, formatter)


#: Parameters of ``classical_file`` itself, not options of a method.
_OWN_FLAGS = {"overwrite", "band_names", "table", "panoptic", "things"}


def _with_options(given: dict[str, Any], option: list[str] | None) -> dict[str, Any]:
    """Return the flags' values plus ``--option NAME=VALUE`` ones (YAML values: 64, 0.1, [1, 2])."""
    import yaml

    out = dict(given)
    for text in option or ():
        name, sep, value = text.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or not name.isidentifier():
            raise InvalidInputError(f"--option {text!r}: expected NAME=VALUE, e.g. halo=64")
        if name in _OWN_FLAGS:
            raise InvalidInputError(f"--option {text!r}: use --{name.replace('_', '-')}")
        if out.get(name) is not None:
            raise InvalidInputError(f"--option {text!r}: {name} is given twice")
        try:
            out[name] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise InvalidInputError(f"--option {text!r}: value is not YAML ({exc})") from exc
    return out


@app.command(cls=_ClassicalCommand)
def classical(
    method: str = typer.Argument(..., metavar="METHOD", help="A registered method (listed below)."),
    input_path: Path = typer.Argument(
        ..., metavar="INPUT", help="Input image (GeoTIFF, NIfTI, DICOM, Zarr)."
    ),
    output: Path = typer.Option(..., "--output", "-o", help="Output image (.tif, .nii.gz, .zarr)."),
    band: str | None = typer.Option(
        None, "--band", "-b", help="Band (1-based or name) for one-band methods (default 1)."
    ),
    band_names: str | None = typer.Option(
        None, "--band-names", help="Names of all bands, e.g. blue,green,red,nir,swir1,swir2."
    ),
    bands: str | None = typer.Option(None, "--bands", help="Index roles, e.g. green=2,nir=4."),
    threshold: float | None = typer.Option(
        None, "--threshold", help="Fixed threshold (index units, dB for SAR)."
    ),
    otsu: bool = typer.Option(False, "--otsu", help="Threshold an index with scene-wide Otsu."),
    classes: int | None = typer.Option(
        None, "--classes", help="Classes for multiotsu / k-means (default 3)."
    ),
    sigma: float | None = typer.Option(
        None, "--sigma", help="Canny Gaussian sigma (pixels) (default 1)."
    ),
    seed: str | None = typer.Option(None, "--seed", help="World point x,y (CRS) or R,A,S (mm)."),
    box: str | None = typer.Option(None, "--box", help="World box x0,y0,x1,y1 (CRS units)."),
    tolerance: float | None = typer.Option(None, "--tolerance", help="Region-growing tolerance."),
    radius: int | None = typer.Option(
        None, "--radius", help="Window half-size in pixels around the seed (default 128)."
    ),
    n_segments: int | None = typer.Option(
        None, "--n-segments", help="SLIC superpixels (whole image) (default 100)."
    ),
    db_input: bool = typer.Option(False, "--db", help="SAR input is already in dB."),
    table: Path | None = typer.Option(
        None, "--table", help="instances: write the table (.csv/.json)."
    ),
    panoptic: Path | None = typer.Option(
        None, "--panoptic", help="instances: class*1000+k raster, or COCO-panoptic .png (+ .json)."
    ),
    things: str | None = typer.Option(
        None, "--things", help="instances: classes with instances, e.g. 1,2 (default: all)."
    ),
    option: list[str] | None = typer.Option(
        None,
        "--option",
        help="Any other option of the method as NAME=VALUE (repeatable), "
        "e.g. halo=64, low=0.1, iterations=50, label=2; errors list each method's options.",
    ),  # fmt: skip
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs."),
) -> None:
    """Run a classical segmentation method and write a label/index image on the input grid.

    Options a method does not take are refused; unset ones take the method's default.
    """
    from geomed_seg.commands.console import status

    status(f"{method}: opening {input_path}")
    from geomed_seg.classical.api import classical_file

    given = dict(
        band=band,
        bands=_mapping(bands),
        threshold=threshold,
        otsu=otsu or None,
        classes=classes,
        sigma=sigma,
        seed=_floats(seed, (2, 3), "--seed"),
        box=_floats(box, (4,), "--box"),
        tolerance=tolerance,
        radius=radius,
        n_segments=n_segments,
        db_input=db_input or None,
    )
    result = classical_file(
        method,
        input_path,
        output,
        overwrite=overwrite,
        band_names=band_names,
        table=table,
        panoptic=panoptic,
        things=None
        if things is None
        else [int(v) for v in _floats(things, tuple(range(1, 256)), "--things")],
        **_with_options(given, option),
    )
    if is_quiet():
        return
    facts = ", ".join(f"{k}={v}" for k, v in result.facts.items())
    typer.echo(f"{output}" + (f" ({facts})" if facts else ""))
