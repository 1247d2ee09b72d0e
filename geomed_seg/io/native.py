"""Messages that native libraries print straight to file descriptor 2, sent to the debug log.

libtiff, libjpeg and other C libraries under GDAL or the DICOM decoders sometimes print
("_tiffWriteProc: File too large.") directly on the process's stderr, bypassing Python's
logging and warnings, so they would appear before our one ``error:`` line. Inside
:func:`native_stderr_to_log` fd 2 points at a temporary file; what was printed goes to the
debug log (``--debug`` shows it). Hand-written: no library offers an fd-level capture.

The redirection is process-wide, so it is reference-counted under a lock: nested and
concurrent users (engine threads writing windows) share one capture and the original fd 2
comes back when the last one leaves.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

_LOCK = threading.Lock()
_STATE: dict = {"depth": 0, "saved": None, "file": None}


def _flush() -> None:
    for stream in (sys.stderr, sys.__stderr__):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass


class Captured:
    """What native code printed (``text``), filled when the outermost capture ends."""

    text: str = ""


@contextmanager
def native_stderr_to_log(what: str) -> Iterator[Captured]:
    """Capture what native code prints on fd 2 in the body; log it at DEBUG naming ``what``.

    Yields a :class:`Captured` whose ``text`` is set on exit (for the outermost capture).
    """
    cap = Captured()
    with _LOCK:
        if _STATE["depth"] == 0:
            try:
                _flush()
                tmp = tempfile.TemporaryFile()
                saved = os.dup(2)
                os.dup2(tmp.fileno(), 2)
            except OSError:  # no fd 2 (daemon) or no temp space: leave stderr alone
                yield cap
                return
            _STATE.update(saved=saved, file=tmp)
        _STATE["depth"] += 1
    try:
        yield cap
    finally:
        with _LOCK:
            _STATE["depth"] -= 1
            if _STATE["depth"] == 0:
                tmp, saved = _STATE["file"], _STATE["saved"]
                try:
                    os.dup2(saved, 2)
                finally:
                    os.close(saved)
                    tmp.seek(0)
                    text = tmp.read().decode("utf-8", "replace").strip()
                    tmp.close()
                    _STATE.update(saved=None, file=None)
                cap.text = text
                if text:
                    log.debug(
                        "%s: native library messages: %s", what, " | ".join(text.splitlines())
                    )


__all__ = ["native_stderr_to_log"]
