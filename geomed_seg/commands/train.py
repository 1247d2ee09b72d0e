"""``geomed-seg train CONFIG``: a thin shell over :func:`geomed_seg.train.loop.train`."""

from __future__ import annotations

from pathlib import Path

import typer

from geomed_seg.cli import app, is_quiet


@app.command()
def train(
    config: Path = typer.Argument(
        ..., metavar="CONFIG", help="Training config (YAML), see configs/train_*.yaml."
    ),
    epochs: int | None = typer.Option(None, "--epochs", help="Override the number of epochs."),
    resume: Path | None = typer.Option(None, "--resume", help="Checkpoint folder to resume."),
    device: str | None = typer.Option(None, "--device", help="auto, cpu, cuda, cuda:1 ..."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Output folder of the run."),
) -> None:
    """Train a segmentation model from CONFIG; write last/ and best/ checkpoints and a log."""
    from geomed_seg.commands.console import status

    status(f"reading {config} and building the model")
    from geomed_seg.train.config import load_config
    from geomed_seg.train.loop import train as run_training

    cfg = load_config(config, epochs=epochs, device=device)
    if output is not None:  # a CLI path is relative to the working directory, not the config
        cfg = cfg.model_copy(update={"output": output})
    res = run_training(cfg, resume=resume, quiet=is_quiet())
    typer.echo(  # the one result line, also with -q (which only hides the progress display)
        f"best {res.best_score:.4f} at epoch {res.best_epoch}; checkpoints in {res.output} "
        f"({res.seconds:.0f} s)"
    )
