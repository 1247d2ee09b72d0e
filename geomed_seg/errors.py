"""The one exception hierarchy for user-facing errors.

Every child also inherits the matching built-in (as ``rasterio.errors`` does), so a caller
can catch ``GeomedSegError`` or ``ValueError``/``OSError`` alike. Library code raises these
with the offending path and the concrete problem; only :mod:`geomed_seg.cli` turns them into
an exit code and one line on stderr.
"""

from __future__ import annotations


class GeomedSegError(Exception):
    """Base class of every error geomed-seg raises on purpose."""


class InvalidInputError(GeomedSegError, ValueError):
    """An input file, argument or array is not what the operation needs."""


class ReadError(GeomedSegError, OSError):
    """A file exists but cannot be read (missing, empty, truncated, corrupt)."""


class UnsupportedFormatError(InvalidInputError):
    """No adapter recognises the file by magic bytes or suffix."""


class GeometryError(GeomedSegError, ValueError):
    """Grids disagree, or a geometry is invalid (uneven slices, tilt, mismatched CRS...)."""


class OutputExistsError(GeomedSegError, FileExistsError):
    """An output already exists and ``overwrite`` was not asked for."""


class WriteError(GeomedSegError, OSError):
    """An output could not be written; nothing partial is left behind."""


class ModelError(GeomedSegError, ValueError):
    """A checkpoint or model card is unreadable, unsafe or does not fit the input."""


class ConfigError(InvalidInputError):
    """A configuration file or option is invalid (unknown key, wrong type)."""


class Interrupted(BaseException):  # noqa: N818 - reads as the event, like KeyboardInterrupt
    """A termination signal (SIGINT, SIGTERM, SIGHUP) arrived; outputs are being rolled back.

    A ``BaseException`` (as ``KeyboardInterrupt``) so that no ``except Exception`` swallows
    it; the CLI exits with ``128 + signum`` (130, 143, 129).
    """

    def __init__(self, signum: int) -> None:
        import signal

        self.signum = int(signum)
        try:
            name = signal.Signals(self.signum).name
        except ValueError:
            name = f"signal {self.signum}"
        super().__init__(f"interrupted by {name}; unfinished outputs removed")


__all__ = [
    "Interrupted",
    "ConfigError",
    "GeomedSegError",
    "GeometryError",
    "InvalidInputError",
    "ModelError",
    "OutputExistsError",
    "ReadError",
    "UnsupportedFormatError",
    "WriteError",
]


def validation_problems(exc: Exception, limit: int | None = None) -> str:
    """Return ``"key.sub: problem; ..."`` from a pydantic ``ValidationError`` (one line).

    Unknown keys read "unknown key" rather than pydantic's "Extra inputs are not permitted".
    ``limit`` keeps only the first problems of a long list.
    """
    out = []
    for e in exc.errors()[:limit]:  # type: ignore[attr-defined]
        key = ".".join(str(x) for x in e["loc"]) or "(top level)"
        out.append(f"{key}: {'unknown key' if e['type'] == 'extra_forbidden' else e['msg']}")
    return "; ".join(out)
