"""The ``geomed-seg`` command line: a thin typer shell over the Python API.

Each command lives in :mod:`geomed_seg.commands` and calls one public function. This module
owns the one rule for errors: a :class:`~geomed_seg.errors.GeomedSegError` becomes exit code 2
and a single ``error: <path>: <problem>`` line on stderr (``--debug`` shows the traceback).
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import warnings
from importlib import import_module
from typing import Any

import typer
from typer.core import TyperGroup

from geomed_seg import __version__
from geomed_seg.errors import GeomedSegError, Interrupted, WriteError

#: Help panel of the flags every command takes (before or after the command name).
GLOBAL_PANEL = "Global options"
VERBOSE_HELP = "Log decisions (INFO level)."
QUIET_HELP = "No status line, progress bar or summary (errors and asked-for data still print)."
DEBUG_HELP = "Show tracebacks and debug logs."


class _Group(TyperGroup):
    """The root command group: one convention for every command.

    Every command also takes the global flags ``-v/--verbose``, ``-q/--quiet`` and
    ``--debug`` (so they work before or after the command name), and plain flags show no
    ``<bool>`` type in ``--help``. typer has no hook for options shared by all commands,
    hence this small subclass.
    """

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        cmd = super().get_command(ctx, cmd_name)
        if cmd is not None and not getattr(cmd, "_geomed_conformed", False):
            _conform(cmd, ctx)
        return cmd

    def format_help(self, ctx: Any, formatter: Any) -> None:
        _plain_flags(self, ctx)
        super().format_help(ctx, formatter)


app = typer.Typer(
    name="geomed-seg",
    help="Segment very large satellite scenes and medical volumes with one streaming engine.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    cls=_Group,
)

_STATE: dict = {"debug": False, "verbose": False, "quiet": False}


def is_quiet() -> bool:
    """True when ``-q/--quiet`` was given anywhere on the command line."""
    return bool(_STATE.get("quiet"))


def _flag_seen(ctx: Any, param: Any, value: bool) -> bool:
    """Click callback of a global flag given after the command name: switch it on."""
    if value and not ctx.resilient_parsing:
        _STATE[param.name] = True
        _configure_logging()
    return value


def _global_params() -> list:
    """Return fresh click options ``--verbose/-v``, ``--quiet/-q``, ``--debug`` (unexposed)."""
    holder = typer.Typer(add_completion=False)

    @holder.command()
    def _flags(
        verbose: bool = typer.Option(
            False, "--verbose", "-v", help=VERBOSE_HELP, rich_help_panel=GLOBAL_PANEL
        ),
        quiet: bool = typer.Option(
            False, "--quiet", "-q", help=QUIET_HELP, rich_help_panel=GLOBAL_PANEL
        ),
        debug: bool = typer.Option(False, "--debug", help=DEBUG_HELP, rich_help_panel=GLOBAL_PANEL),
    ) -> None:  # pragma: no cover - never run, only its parameters are used
        pass

    params = list(typer.main.get_command(holder).params)
    for p in params:
        p.expose_value = False
        p.callback = _flag_seen
    return params


def _conform(cmd: Any, ctx: Any) -> None:
    """Add the global flags a command lacks; hide ``<bool>`` on its plain flags."""
    taken = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)}
    for param in _global_params():
        if not taken & {*param.opts}:
            cmd.params.append(param)
    _plain_flags(cmd, ctx)
    cmd._geomed_conformed = True


def _plain_flags(cmd: Any, ctx: Any) -> None:
    """Give boolean flags (and ``--help``) an empty metavar: typer would print ``<bool>``."""
    helper = cmd.get_help_option(ctx)
    for param in [*cmd.params, *([helper] if helper is not None else [])]:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""


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
    debug: bool = typer.Option(False, "--debug", help=DEBUG_HELP),
    verbose: bool = typer.Option(False, "--verbose", "-v", help=VERBOSE_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help=QUIET_HELP),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """geomed-seg: one engine for GeoTIFF scenes and NIfTI/DICOM volumes.

    ``-v``, ``-q`` and ``--debug`` are accepted before or after the command name.
    """
    _STATE.update(debug=debug, verbose=verbose, quiet=quiet)
    _configure_logging()


def _configure_logging() -> None:
    """Set the log level from the global flags (``--debug`` > ``-v`` > warnings only)."""
    debug, verbose = bool(_STATE.get("debug")), bool(_STATE.get("verbose"))
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", force=True)
    _quiet_third_party(debug, verbose)


#: Loggers of libraries whose messages (GDAL through rasterio, decoders, DICOM parsing) are
#: noise before our one error line; shown with --debug (warnings also with -v).
THIRD_PARTY_LOGGERS = (
    "rasterio", "pyogrio", "fiona", "pydicom", "highdicom", "nibabel", "PIL", "zarr",
    "numcodecs", "matplotlib", "py.warnings", "SimpleITK", "pylibjpeg", "gdcm", "distributed",
)  # fmt: skip


class _ThirdPartyFilter(logging.Filter):
    """Drop records of :data:`THIRD_PARTY_LOGGERS` (and their children) below ``level``."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        name = record.name
        third = any(name == n or name.startswith(f"{n}.") for n in THIRD_PARTY_LOGGERS)
        return record.levelno >= self.level or not third


def _quiet_third_party(debug: bool, verbose: bool) -> None:
    """Send library warnings (``warnings`` and library loggers) to the debug log only."""
    if "levels" not in _STATE:  # the levels before our first change, restored by main()
        _STATE["levels"] = {n: logging.getLogger(n).level for n in THIRD_PARTY_LOGGERS}
    logging.captureWarnings(True)
    if debug:
        warnings.simplefilter("default")
    level = logging.DEBUG if debug else logging.WARNING if verbose else logging.CRITICAL
    for name in THIRD_PARTY_LOGGERS:
        logging.getLogger(name).setLevel(level)
    # libraries may reset their loggers' levels on import (distributed does): filter at
    # the handler too, so their records below ``level`` never reach stderr
    for handler in logging.getLogger().handlers:
        handler.addFilter(_ThirdPartyFilter(level))
    try:  # ITK prints its warnings straight to stderr unless told not to
        sitk = sys.modules.get("SimpleITK")
        if sitk is not None and not debug:
            sitk.ProcessObject.SetGlobalWarningDisplay(False)
    except AttributeError:
        pass


def _register() -> None:
    for name in COMMAND_MODULES:
        try:
            import_module(f"geomed_seg.commands.{name}")
        except ModuleNotFoundError as exc:  # a command module not written yet
            if exc.name != f"geomed_seg.commands.{name}":
                raise


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


#: Signals that stop a command like Ctrl-C: unfinished outputs are removed, exit 128 + signum.
STOP_SIGNALS = tuple(
    s
    for s in (signal.SIGINT, getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None))
    if s is not None
)


def _raise_interrupted(signum: int, frame: object) -> None:
    raise Interrupted(signum)


def install_signal_handlers() -> dict[int, object]:
    """Make SIGINT, SIGTERM and SIGHUP raise :class:`Interrupted` (main thread only).

    The exception unwinds every ``with`` block, so atomic writers and output transactions
    remove their temporary files and stages. Returns the previous handlers.
    """
    if threading.current_thread() is not threading.main_thread():
        return {}
    old = {}
    for sig in STOP_SIGNALS:
        if signal.getsignal(sig) is signal.SIG_IGN:  # nohup: the user asked to ignore it
            continue
        old[sig] = signal.signal(sig, _raise_interrupted)
    return old


def _restore(handlers: dict[int, object]) -> None:
    for sig, handler in handlers.items():
        signal.signal(sig, handler)  # type: ignore[arg-type]


def _error_line(text: str) -> None:
    try:
        print(f"error: {text}", file=sys.stderr, flush=True)
    except (OSError, ValueError):  # stderr closed (SIGHUP of a terminal): nothing to say it to
        pass


def _io_error(exc: OSError) -> WriteError | None:
    """A bare OS error from a writer (disk full, read-only...) as one WriteError, else None."""
    from geomed_seg.io.atomic import WRITE_ERRNOS, write_error

    if getattr(exc, "errno", None) not in WRITE_ERRNOS:
        return None
    if getattr(exc, "filename", None):
        return write_error(exc.filename, exc)
    return WriteError(f"cannot write an output: {WRITE_ERRNOS[exc.errno]}")


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the exit code (2 for user errors and usage errors, 1 for bugs).

    typer runs in standalone mode so it reports its own usage errors (exit 2); our
    :class:`GeomedSegError` becomes one line and exit 2; SIGINT, SIGTERM and SIGHUP remove
    unfinished outputs and exit 130, 143 and 129 with one line.
    """
    handlers = install_signal_handlers()
    try:
        _register()
        app(args=argv, prog_name="geomed-seg", standalone_mode=True)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except GeomedSegError as exc:
        if _STATE["debug"]:
            raise
        _error_line(_one_line(exc))
        return 2
    except Interrupted as exc:
        if _STATE["debug"]:
            logging.getLogger(__name__).debug("interrupted", exc_info=True)
        _error_line(str(exc))
        return 128 + exc.signum
    except KeyboardInterrupt:
        _error_line("interrupted; unfinished outputs removed")
        return 130
    except OSError as exc:
        wrapped = _io_error(exc)
        if wrapped is None or _STATE["debug"]:
            raise
        _error_line(_one_line(wrapped))
        return 2
    finally:
        _restore(handlers)
        for name, lvl in _STATE.pop("levels", {}).items():  # in-process callers (tests)
            logging.getLogger(name).setLevel(lvl)
        logging.captureWarnings(False)
    return 0


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":  # ``python -m geomed_seg.cli``: use the package module's app
    from geomed_seg.cli import run as _run

    _run()
