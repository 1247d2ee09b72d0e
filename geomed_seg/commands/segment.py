"""``geomed-seg segment`` and ``geomed-seg model-card``: thin shells over the Python API.

``segment`` builds the engine options from its flags
(:func:`geomed_seg.pipelines.schema.engine_spec`, the rule set shared with ``run --set
engine.*``) and calls :func:`geomed_seg.inference.segment_file.segment_file`, the library
function that tests and scripts call directly (re-exported here for older imports).
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer

from geomed_seg.cli import app, is_quiet
from geomed_seg.errors import InvalidInputError
from geomed_seg.inference.segment_file import open_input, segment_file  # noqa: F401 - re-export


def parse_roi(text: str | None) -> tuple[int, ...] | None:
    """Return ``"256,256"`` as ``(256, 256)`` (array order); ``None`` stays ``None``."""
    if text is None:
        return None
    try:
        roi = tuple(int(v) for v in text.replace("x", ",").split(",") if v.strip())
    except ValueError as exc:
        raise InvalidInputError(f"--roi {text!r}: expected integers such as 256,256") from exc
    if not roi or any(r < 1 for r in roi):
        raise InvalidInputError(f"--roi {text!r}: expected positive integers such as 256,256")
    return roi


@app.command("segment")
def segment_command(
    input_path: Path = typer.Argument(
        ...,
        metavar="INPUT",
        help="GeoTIFF, NIfTI, DICOM folder, Zarr, or a case folder (one file per card band).",
    ),  # fmt: skip
    model: Path = typer.Option(..., "-m", "--model", help="Checkpoint (.safetensors or folder)."),
    output: Path = typer.Option(..., "-o", "--output", help="Output; format from the suffix."),
    roi: str | None = typer.Option(None, "--roi", help="Window size, array order: 256,256."),
    overlap: float | None = typer.Option(
        None, "--overlap", help="Window overlap 0..1 (card default)."
    ),
    mode: str | None = typer.Option(None, "--mode", help="Blending: gaussian or constant."),
    batch_size: str = typer.Option(
        "4", "--batch-size", help="Windows per forward pass, or 'auto' (from free GPU memory)."
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    devices: str | None = typer.Option(
        None,
        "--devices",
        help="Several devices for one scene: cuda:0,cuda:1, all (GPUs) or cpu,cpu "
        "(one dask worker each; same labels as one device).",
    ),  # fmt: skip
    tta: bool = typer.Option(False, "--tta", help="Test-time augmentation (flips)."),
    amp: str = typer.Option(
        "auto", "--amp", help="Autocast: auto (bf16/fp16 on CUDA), fp16, bf16, off."
    ),
    compile_model: bool = typer.Option(False, "--compile", help="torch.compile the model first."),
    probabilities: bool = typer.Option(False, "--probabilities", help="Write class probabilities."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output."),
    series: str | None = typer.Option(
        None, "--series", help="DICOM series: index in `info`'s list, UID or description."
    ),
    card: Path | None = typer.Option(None, "--card", help="Card JSON for a bare .pt state dict."),
    resample: bool = typer.Option(
        True,
        "--resample/--no-resample",
        help="Volumes: run at the card's spacing, results back on the input grid.",
    ),  # fmt: skip
    allow_complex: str | None = typer.Option(
        None, "--allow-complex", help="Complex input (SAR SLC): 'magnitude' segments |z|."
    ),
) -> None:
    """Segment a scene or volume with a checkpoint, writing labels on the input's grid."""
    from geomed_seg.commands.console import status

    status(f"loading model {model} and opening {input_path}")
    if mode is not None and mode not in ("gaussian", "constant"):
        raise InvalidInputError(f"--mode {mode!r}: choose 'gaussian' or 'constant'")
    from geomed_seg.pipelines.schema import engine_spec

    batch = batch_size.strip().lower()
    spec = engine_spec(roi_size=parse_roi(roi), overlap=overlap, mode=mode,
                       batch_size=batch, device=device, tta=tta,
                       amp=amp, compile=compile_model)  # fmt: skip
    output_kind = "probabilities" if probabilities else "labels"
    options = spec.to_options(
        output=output_kind, overwrite=overwrite, quiet=is_quiet(), devices=devices
    )
    result = segment_file(input_path, model, output, options, series=series, card=card,
                          resample=resample, allow_complex=allow_complex)  # fmt: skip
    if not is_quiet():
        if not probabilities:
            _headline(Path(getattr(result, "path", None) or output), card or model)
        _summary(result, output)


def _headline(labels_path: Path, card_source: Path) -> None:
    """Print the area (km²) or volume (ml) of each class of the written labels."""
    from geomed_seg.commands.console import class_sizes, headline
    from geomed_seg.io.registry import open_image
    from geomed_seg.models.card import ModelCard
    from geomed_seg.models.checkpoint import read_card
    from geomed_seg.pipelines.report import class_measures

    is_card = card_source.suffix == ".json" and card_source.is_file()
    card = ModelCard.load(card_source) if is_card else read_card(card_source)
    headline(class_sizes(class_measures(open_image(labels_path), card.class_infos())))


def _summary(result: Any, output: Path) -> None:
    from rich.console import Console
    from rich.markup import escape

    stats = getattr(result, "stats", None) or {}
    get = stats.get if isinstance(stats, dict) else lambda k, d=None: getattr(stats, k, d)
    seconds = get("seconds")
    rows = {
        "output": str(getattr(result, "path", None) or output),
        "windows": f"{get('windows_run')} run, {get('windows_skipped')} skipped of {get('windows_total')}",
        "time": f"{seconds:.1f} s" if isinstance(seconds, int | float) else str(seconds),
        "device": str(get("device")),
    }
    console = Console()
    for key, value in rows.items():  # one line each, never wrapped (paths stay copyable)
        console.print(f"[bold cyan]{key:>8}[/] {escape(value)}", soft_wrap=True)


@app.command("model-card")
def model_card_command(
    checkpoint: Path = typer.Argument(
        ..., metavar="MODEL", help="Checkpoint folder, .safetensors or card.json."
    ),
    stac: Path | None = typer.Option(None, "--stac", help="Write a STAC MLM Item JSON here."),
    item_id: str | None = typer.Option(None, "--id", help="STAC Item id (default: card name)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --stac file."),
) -> None:
    """Print a checkpoint's model card, or export it as a STAC MLM Item (--stac)."""
    from geomed_seg.io.atomic import atomic_output
    from geomed_seg.models.checkpoint import read_card, weights_file

    card = read_card(checkpoint)
    if stac is None:
        typer.echo(card.to_json())
        return
    weights = weights_file(checkpoint)
    # relative to the item's own folder, so the link resolves wherever the item is written
    href = os.path.relpath(weights.resolve(), stac.resolve().parent)
    when = datetime.fromtimestamp(weights.stat().st_mtime, UTC)
    item = card.to_stac_mlm(
        item_id=item_id, weights_href=href,
        datetime=when.isoformat().replace("+00:00", "Z"),
        datetime_source=f"modification time of {weights.name} (the card records no date)",
    )  # fmt: skip
    with atomic_output(stac, overwrite) as tmp:
        tmp.write_text(json.dumps(item, indent=2) + "\n")
    typer.echo(str(stac))
