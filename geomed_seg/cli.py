"""The ``geomed-seg`` command line: a thin typer shell over the Python API.

Each command lives in :mod:`geomed_seg.commands` and calls one public function. This module
owns the one rule for errors: a :class:`~geomed_seg.errors.GeomedSegError` becomes exit code 2
and a single ``error: <path>: <problem>`` line on stderr (``--debug`` shows the traceback).
"""

from __future__ import annotations

import logging
import sys
from importlib import import_module

import typer

from geomed_seg import __version__
from geomed_seg.errors import GeomedSegError

app = typer.Typer(
    name="geomed-seg",
    help="Segment very large satellite scenes and medical volumes with one streaming engine.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

_STATE = {"debug": False}

#: Command modules; each registers its commands on :data:`app` when imported.
COMMAND_MODULES = (
    "io",
    "segment",
    "evaluate",
    "demo",
    "classical",
    "pipelines",
    "train",
    "instances",
    "batch",
    "import_model",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"geomed-seg {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks and debug logs."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log decisions (INFO level)."),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """geomed-seg: one engine for GeoTIFF scenes and NIfTI/DICOM volumes."""
    _STATE["debug"] = debug
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", force=True)


def _register() -> None:
    for name in COMMAND_MODULES:
        try:
            import_module(f"geomed_seg.commands.{name}")
        except ModuleNotFoundError as exc:  # a command module not written yet
            if exc.name != f"geomed_seg.commands.{name}":
                raise


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the exit code (2 for user errors and usage errors, 1 for bugs).

    typer runs in standalone mode so it reports its own usage errors (exit 2); only our
    :class:`GeomedSegError` is turned into one line here.
    """
    _register()
    try:
        app(args=argv, prog_name="geomed-seg", standalone_mode=True)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except GeomedSegError as exc:
        if _STATE["debug"]:
            raise
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":  # ``python -m geomed_seg.cli``: use the package module's app
    from geomed_seg.cli import run as _run

    _run()
