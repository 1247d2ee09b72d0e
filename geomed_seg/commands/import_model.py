"""``geomed-seg import-model``: a thin shell over :func:`geomed_seg.models.importers.import_model`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from geomed_seg.cli import app, is_quiet
from geomed_seg.errors import InvalidInputError


def _json_option(flag: str, text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"{flag} {text!r}: not JSON ({exc.msg})") from exc
    if not isinstance(value, dict):
        raise InvalidInputError(f"{flag} {text!r}: expected a JSON object")
    return value


@app.command("import-model")
def import_model_command(
    src: Path = typer.Argument(
        ..., metavar="SOURCE", help="nnU-Net results folder, MONAI bundle, HF/smp folder or .pt"
    ),
    output: Path = typer.Option(..., "-o", "--output", help="Checkpoint folder to write."),
    format: str = typer.Option(
        "auto", "--format", help="auto, nnunet, monai-bundle, hf, smp or state-dict."
    ),
    arch: str | None = typer.Option(None, "--arch", help="Registry architecture (state dicts)."),
    arch_args: str | None = typer.Option(None, "--arch-args", help="Architecture kwargs, JSON."),
    in_channels: int | None = typer.Option(None, "--in-channels", help="Input bands/channels."),
    classes: str | None = typer.Option(
        None, "--classes", help="Class names: 3, 'bg,water' or '0:bg,1:water'."
    ),
    roi: str | None = typer.Option(None, "--roi", help="Default window, array order: 256,256."),
    name: str | None = typer.Option(None, "--name", help="Card name (default: source name)."),
    fold: list[str] | None = typer.Option(
        None, "--fold", help="nnU-Net fold(s): 0, '0,1,2' or all (default: all)."
    ),
    configuration: str | None = typer.Option(
        None, "--configuration", help="nnU-Net configuration (default: the folder's, 3d_fullres)."
    ),
    checkpoint_name: str = typer.Option(
        "checkpoint_final.pth", "--checkpoint-name", help="nnU-Net checkpoint file per fold."
    ),
    card_json: str | None = typer.Option(
        None, "--card-json", help="Card fields to set, JSON (e.g. normalisation, band_names)."
    ),
    trust_code: bool = typer.Option(
        False, "--trust-code", help="DANGER: allow pickled modules/TorchScript (runs their code)."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output."),
) -> None:
    """Import another tool's model as a geomed-seg checkpoint (safetensors + card)."""
    from geomed_seg.commands.segment import parse_roi
    from geomed_seg.models.importers import import_model
    from geomed_seg.models.importers.base import parse_classes

    if trust_code:
        typer.secho(
            "WARNING: --trust-code lets the source's files run code on this machine while "
            "they load. Use it only for files from a source you trust.",
            fg=typer.colors.RED,
            err=True,
        )
    card = import_model(
        src, output, format=format, overwrite=overwrite, name=name, arch=arch,
        arch_args=_json_option("--arch-args", arch_args), in_channels=in_channels,
        classes=parse_classes(classes), roi_size=parse_roi(roi), trust_code=trust_code,
        folds=tuple(fold) if fold else None, checkpoint_name=checkpoint_name,
        configuration=configuration,
        card_overrides=_json_option("--card-json", card_json),
    )  # fmt: skip
    if is_quiet():
        return
    prov = card.provenance
    typer.echo(
        f"{output}: {card.architecture}, {card.in_channels} channels, {card.num_classes} classes "
        f"(from {prov.source_format if prov else format})"
    )
