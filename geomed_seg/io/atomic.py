"""Atomic outputs: write to a temporary name in the target folder, rename when complete.

A failure (exception, Ctrl-C) removes the temporary file or folder, so no partial output is
ever left, and an existing output is only replaced when ``overwrite=True``. Hand-written
because none of the format libraries offers it: rasterio, nibabel and zarr all write in place.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from geomed_seg.errors import OutputExistsError, WriteError


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


def check_output(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Return ``path`` as a Path; raise :class:`OutputExistsError` if it exists and not ``overwrite``."""
    p = Path(path)
    if p.exists() and not overwrite:
        raise OutputExistsError(
            f"{p}: output exists; pass overwrite=True (--overwrite) to replace it"
        )
    if not p.parent.exists():
        raise WriteError(f"{p}: folder {p.parent} does not exist")
    return p


@contextmanager
def atomic_output(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    The temporary name keeps the final suffix(es) so format drivers that look at the suffix
    (GDAL, nibabel) behave as for the real name. Works for files and folders (Zarr stores).
    """
    final = check_output(path, overwrite)
    suffix = "".join(final.suffixes)
    stem = final.name[: len(final.name) - len(suffix)] if suffix else final.name
    tmp = final.with_name(f".{stem}.tmp-{uuid.uuid4().hex[:8]}{suffix}")
    try:
        yield tmp
        if not tmp.exists():
            raise WriteError(f"{final}: writer produced no output")
        if final.exists():
            if not overwrite:
                raise OutputExistsError(f"{final}: output appeared while writing; not replaced")
            if final.is_dir() and not final.is_symlink():
                backup = final.with_name(f".{stem}.old-{uuid.uuid4().hex[:8]}{suffix}")
                os.replace(final, backup)
                os.replace(tmp, final)
                _remove(backup)
                return
        os.replace(tmp, final)
    finally:
        _remove(tmp)
