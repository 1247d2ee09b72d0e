"""Atomic outputs: write to a temporary name in the target folder, rename when complete.

A failure (exception, Ctrl-C, SIGTERM/SIGHUP through the CLI's handlers) removes the
temporary file or folder, so no partial output is ever left, and an existing output is only
replaced when ``overwrite=True``. Hand-written because none of the format libraries offers
it: rasterio, nibabel and zarr all write in place.

Inside an :class:`~geomed_seg.io.transaction.OutputTransaction` (one per command that writes
several outputs) :func:`atomic_output` stages the output in the transaction's stage folder
instead and leaves the final rename to the transaction's commit, so a set of outputs
appears together. OS errors raised while writing (disk full, read-only file system,
permission, a file where a folder should be) become one :class:`WriteError` naming the output.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from geomed_seg.errors import GeomedSegError, OutputExistsError, WriteError
from geomed_seg.io.faults import fault_point

#: The transaction that stages outputs in this context (set by ``OutputTransaction``).
ACTIVE_TRANSACTION: ContextVar[Any] = ContextVar("geomed_seg_transaction", default=None)

#: Signals whose delivery is deferred while outputs are renamed into place.
COMMIT_SIGNALS = tuple(
    s
    for s in (signal.SIGINT, getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None))
    if s is not None
)

#: errno values reported as "the output cannot be written" rather than as bugs.
WRITE_ERRNOS = {
    errno.ENOSPC: "no space left on device",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOTDIR: "a path component is a file, not a folder",
    errno.EEXIST: "a file of that name appeared while writing",
    errno.EFBIG: "file too large (size limit reached)",
    errno.EDQUOT: "disk quota exceeded",
    errno.EIO: "input/output error",
    errno.EISDIR: "a folder of that name exists",
    errno.ENOENT: "the target folder disappeared while writing",
}


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


def write_error(final: str | os.PathLike, exc: BaseException) -> WriteError:
    """Return a :class:`WriteError` naming ``final`` for an OS/library error while writing it."""
    code = getattr(exc, "errno", None)
    what = WRITE_ERRNOS.get(code) if isinstance(code, int) else None
    if what is None:
        what = getattr(exc, "strerror", None) or " ".join(str(exc).split()) or type(exc).__name__
    return WriteError(f"{final}: cannot write output: {what}")


def disk_problem(path: str | os.PathLike) -> str | None:
    """Return why nothing can be written under ``path``'s folder (full, read-only), or None.

    Libraries that do not report an errno (pyogrio's "no such table: gpkg_contents" on a full
    disk, PNG encoders) fail with their own words; this says what the file system says.
    """
    folder = Path(path).parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        st = os.statvfs(folder)
    except OSError:
        return None
    if st.f_flag & getattr(os, "ST_RDONLY", 1):
        return WRITE_ERRNOS[errno.EROFS]
    if st.f_bavail * st.f_frsize < 64 * 1024 or (st.f_files and st.f_favail == 0):
        return f"{WRITE_ERRNOS[errno.ENOSPC]} ({st.f_bavail * st.f_frsize} bytes free)"
    return None


def _file_ancestor(path: Path) -> Path | None:
    """Return the first ancestor of ``path`` that exists as a non-folder, if any."""
    for parent in path.parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def check_output(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Return ``path`` as a Path; raise :class:`OutputExistsError` if it exists and not ``overwrite``.

    Raises :class:`WriteError` when a folder on the way is a regular file or missing.
    """
    p = Path(path)
    if p.exists() and not overwrite:
        raise OutputExistsError(
            f"{p}: output exists; pass overwrite=True (--overwrite) to replace it"
        )
    blocker = _file_ancestor(p)
    if blocker is not None:
        raise WriteError(f"{p}: {blocker} is a file, not a folder")
    txn = ACTIVE_TRANSACTION.get()
    if not p.parent.exists() and not (txn is not None and txn.covers(p)):
        raise WriteError(f"{p}: folder {p.parent} does not exist")
    return p


@contextmanager
def deferred_signals(signals: Sequence[int] = COMMIT_SIGNALS) -> Iterator[None]:
    """Block ``signals`` in this thread for the body (a handful of renames), then deliver them.

    A SIGTERM that arrives while a set of outputs is renamed into place is handled right
    after the last rename, so a reader sees the old or the new set, never half of each.
    """
    if threading.current_thread() is not threading.main_thread() or not hasattr(
        signal, "pthread_sigmask"
    ):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, set(signals))
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def tmp_name(final: Path, tag: str = "tmp") -> str:
    """Return a hidden temporary name for ``final`` that keeps its suffix(es)."""
    suffix = "".join(final.suffixes)
    stem = final.name[: len(final.name) - len(suffix)] if suffix else final.name
    return f".{stem}.{tag}-{uuid.uuid4().hex[:8]}{suffix}"


def scratch_path(final: str | os.PathLike, tag: str = "part") -> Path:
    """Return a temporary path for an intermediate file of ``final`` (the stage in a transaction)."""
    final = Path(final)
    txn = ACTIVE_TRANSACTION.get()
    if txn is not None and txn.covers(final):
        return txn.stage_dir(final) / tmp_name(final, tag)
    return final.with_name(tmp_name(final, tag))


def readable(final: str | os.PathLike) -> Path:
    """Where ``final``'s content can be read now: its staged file inside an active
    transaction (not yet renamed into place), else ``final`` itself."""
    tx = ACTIVE_TRANSACTION.get()
    staged = tx.staged(final) if tx is not None else None
    return Path(staged) if staged is not None else Path(final)


def data_stem(name: str) -> str:
    """Return ``name`` without its format suffix (``.nii.gz`` counts as one suffix)."""
    if name.lower().endswith(".nii.gz"):
        return name[: -len(".nii.gz")]
    suffix = os.path.splitext(name)[1]
    return name[: -len(suffix)] if suffix else name


def companion_path(path: str | os.PathLike, companion: str) -> Path:
    """Return the sidecar ``companion`` of ``path``.

    ``companion`` is a suffix appended to the whole name (GDAL PAM: ``".aux.xml"`` →
    ``labels.tif.aux.xml``) or a template with ``{stem}``, the name without its format
    suffix (``"{stem}.qml"`` → ``labels.qml``, as QGIS looks for a layer's style;
    ``labels.nii.gz`` has the stem ``labels``).
    """
    p = Path(path)
    if "{" not in companion:
        return Path(f"{p}{companion}")
    return p.with_name(companion.format(stem=data_stem(p.name), name=p.name))


def replace_into_place(tmp: Path, final: Path, companions: Sequence[str] = ()) -> None:
    """Rename ``tmp`` (file or folder) onto ``final``, with its ``companions`` sidecars.

    ``companions`` are sidecar suffixes or templates (:func:`companion_path`: ``".aux.xml"``,
    ``"{stem}.qml"``): the sidecar of ``tmp`` replaces the one of ``final``, and a stale
    sidecar of ``final`` is removed when the new output has none. A folder replaces a folder
    through a backup name (``os.replace`` cannot replace a non-empty folder). Call under
    :func:`deferred_signals`.
    """
    for suffix in companions:
        side_tmp, side_final = companion_path(tmp, suffix), companion_path(final, suffix)
        if side_tmp.exists():
            os.replace(side_tmp, side_final)
        elif side_final.exists():
            side_final.unlink()
    if final.is_dir() and not final.is_symlink():
        backup = final.with_name(tmp_name(final, "old"))
        os.replace(final, backup)
        os.replace(tmp, final)
        _remove(backup)
        return
    os.replace(tmp, final)


@contextmanager
def atomic_output(
    path: str | os.PathLike, overwrite: bool = False, companions: Sequence[str] = ()
) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    The temporary name keeps the final suffix(es) so format drivers that look at the suffix
    (GDAL, nibabel) behave as for the real name. Works for files and folders (Zarr stores).
    ``companions`` are sidecars (:func:`companion_path`: ``".aux.xml"``, ``"{stem}.qml"``)
    committed together with the output. In an active transaction the output is staged and renamed by the transaction's commit.
    """
    final = check_output(path, overwrite)
    txn = ACTIVE_TRANSACTION.get()
    staged = txn is not None and txn.covers(final)
    tmp = txn.stage_dir(final) / tmp_name(final) if staged else final.with_name(tmp_name(final))
    try:
        try:
            yield tmp
            fault_point("commit", final)
        except GeomedSegError as exc:
            problem = disk_problem(tmp) if isinstance(exc, WriteError) else None
            if problem is not None and problem not in str(exc):  # the root cause, not GDAL's
                raise WriteError(f"{final}: cannot write output: {problem}") from exc
            raise
        except OSError as exc:
            raise write_error(final, exc) from exc
        except Exception as exc:  # a library's own error (pyogrio, PNG): is the disk full?
            problem = disk_problem(tmp)
            if problem is None:
                raise
            raise WriteError(f"{final}: cannot write output: {problem}") from exc
        if not tmp.exists():
            raise WriteError(f"{final}: writer produced no output")
        if staged:
            txn.add(tmp, final, companions)
            return
        with deferred_signals():
            if final.exists() and not overwrite:
                raise OutputExistsError(f"{final}: output appeared while writing; not replaced")
            try:
                replace_into_place(tmp, final, companions)
            except OSError as exc:
                raise write_error(final, exc) from exc
    except BaseException:
        _remove(tmp)
        for suffix in companions:
            _remove(companion_path(tmp, suffix))
        raise
    finally:
        if not staged:
            _remove(tmp)
