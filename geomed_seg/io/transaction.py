"""One output transaction per command: all outputs appear together, or none does.

A command that writes several outputs (``run``: labels, polygons, quicklook, report,
``run.json``; ``segment`` with probabilities; ``classical instances --table``; ``demo``)
opens an :class:`OutputTransaction` naming every final path. The transaction

1. checks every final name *before anything is computed*: an existing output without
   ``overwrite``, a regular file where a folder is needed, an output that is one of the
   inputs (after resolving links) are refused at once;
2. makes every :func:`~geomed_seg.io.atomic.atomic_output` inside it write into a hidden
   stage folder beside the targets (``.geomed-stage-<id>/`` in each target folder, so the
   final renames stay on one file system);
3. on success renames every staged output into place with signals deferred, the manifest
   (``run.json``) last as the commit marker: an older manifest is removed first, so a reader
   who trusts ``run.json`` sees the old complete set or the new complete set;
4. on any failure or signal removes the stage (and the folders it created), leaving the
   targets as they were.

Hand-written: the format libraries write single files in place; none offers multi-file
commits.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from geomed_seg.errors import InvalidInputError, OutputExistsError, WriteError
from geomed_seg.io.atomic import (
    ACTIVE_TRANSACTION,
    _file_ancestor,
    _remove,
    companion_path,
    deferred_signals,
    replace_into_place,
    write_error,
)
from geomed_seg.io.sidecars import check_sidecars

log = logging.getLogger(__name__)

STAGE_PREFIX = ".geomed-stage-"
#: Sidecars that belong to an output and are committed with it (GDAL PAM: class names, RAT;
#: QGIS style, ITK-SNAP labels, Slicer colour table: :mod:`geomed_seg.io.sidecars`).
SIDECARS = (".aux.xml", "{stem}.qml", "{stem}.label.txt", "{stem}.ctbl")


def _resolved(path: str | os.PathLike) -> Path:
    return Path(os.path.realpath(os.path.abspath(os.fspath(path))))


def check_not_input(
    output: str | os.PathLike, inputs: Iterable[str | os.PathLike], *, folder: bool = False
) -> None:
    """Raise :class:`InvalidInputError` if ``output`` is one of ``inputs`` (links resolved).

    ``folder=True`` marks an output folder (``run -o``): it may hold inputs, but may not be
    an input file or an input folder itself.
    """
    out = _resolved(output)
    for src in inputs:
        if src is None:
            continue
        if out == _resolved(src):
            what = "output folder" if folder else "output"
            raise InvalidInputError(
                f"{output}: {what} is the input {src} (links resolved); choose another name"
            )


@dataclass
class _Staged:
    tmp: Path
    final: Path
    companions: tuple[str, ...]


class OutputTransaction:
    """Context manager that stages a command's outputs and commits them together.

    Parameters
    ----------
    outputs : iterable of path-like
        Final output paths (files or stores) this command will write.
    folders : iterable of path-like
        Output folders: every output written under one of them is staged too (``run -o``).
        A folder that does not exist is created, and removed again if the command fails.
    overwrite : bool
        Replace existing outputs; otherwise :class:`OutputExistsError` before any work.
    inputs : iterable of path-like
        Input paths; an output equal to one of them is refused.
    manifest : path-like, optional
        The commit marker, renamed last (default: any output named ``run.json``).
    obsolete : iterable of path-like
        Outputs an earlier run of the same command may have left (``probabilities.tif``)
        that belong to the old set only: with ``overwrite`` those the new set does not
        write are removed at commit, so the folder never mixes two runs' outputs.
    """

    def __init__(
        self,
        outputs: Iterable[str | os.PathLike] = (),
        *,
        folders: Iterable[str | os.PathLike] = (),
        overwrite: bool = False,
        inputs: Iterable[str | os.PathLike | None] = (),
        manifest: str | os.PathLike | None = None,
        obsolete: Iterable[str | os.PathLike] = (),
    ) -> None:
        self.overwrite = overwrite
        self.obsolete = [Path(p) for p in obsolete]
        self.inputs = [i for i in inputs if i is not None]
        self.outputs: list[Path] = []
        self.folders: list[Path] = []
        self.manifest = Path(manifest) if manifest is not None else None
        self._token = uuid.uuid4().hex[:8]
        self._stages: dict[Path, Path] = {}
        self._staged: list[_Staged] = []
        self._created: list[Path] = []
        self._token_ctx: Any = None
        for f in folders:
            self.claim_folder(f)
        for o in outputs:
            self.claim(o)

    # -- checks, before any work ---------------------------------------------------------
    def claim_folder(self, folder: str | os.PathLike) -> Path:
        """Check and register an output folder; return it."""
        p = Path(folder)
        if p.exists() and not p.is_dir():
            raise WriteError(f"{p}: exists and is a file; the output must be a folder")
        blocker = _file_ancestor(p)
        if blocker is not None:
            raise WriteError(f"{p}: {blocker} is a file, not a folder")
        check_not_input(p, self.inputs, folder=True)
        self.folders.append(p)
        return p

    def claim(self, path: str | os.PathLike) -> Path:
        """Check one final output name now (exists, blocked, is an input); return it."""
        p = Path(path)
        if p.exists() and not self.overwrite:
            raise OutputExistsError(
                f"{p}: output exists; pass overwrite=True (--overwrite) to replace it"
            )
        if p.is_dir() and p.suffix.lower() != ".zarr":
            raise WriteError(f"{p}: a folder of that name exists; not replaced by a file")
        blocker = _file_ancestor(p)
        if blocker is not None:
            raise WriteError(f"{p}: {blocker} is a file, not a folder")
        if not p.parent.exists() and not any(self._under(p, f) for f in self.folders):
            raise WriteError(f"{p}: folder {p.parent} does not exist")
        check_not_input(p, self.inputs)
        check_sidecars(p, self.overwrite)  # a labels.qml there is an output too
        if p not in self.outputs:
            self.outputs.append(p)
        return p

    # -- staging -------------------------------------------------------------------------
    @staticmethod
    def _under(path: Path, folder: Path) -> bool:
        a, b = _resolved(path), _resolved(folder)
        return a == b or b in a.parents

    def covers(self, path: str | os.PathLike) -> bool:
        """True if ``path`` is one of the claimed outputs or lies under a claimed folder."""
        p = Path(path)
        rp = _resolved(p)
        return any(rp == _resolved(o) for o in self.outputs) or any(
            self._under(p, f) for f in self.folders
        )

    def _makedirs(self, folder: Path) -> None:
        missing = []
        for parent in (folder, *folder.parents):
            if parent.exists():
                break
            missing.append(parent)
        for m in reversed(missing):
            try:
                m.mkdir()
            except FileExistsError:
                continue
            except OSError as exc:
                raise write_error(m, exc) from exc
            self._created.append(m)

    def stage_dir(self, final: str | os.PathLike) -> Path:
        """Return (creating it) the stage folder for outputs in ``final``'s folder."""
        parent = _resolved(Path(final).parent)
        stage = self._stages.get(parent)
        if stage is None:
            self._makedirs(Path(final).parent)
            stage = Path(final).parent / f"{STAGE_PREFIX}{self._token}"
            try:
                stage.mkdir()
            except OSError as exc:
                raise write_error(final, exc) from exc
            self._stages[parent] = stage
        return stage

    def add(self, tmp: Path, final: Path, companions: Sequence[str] = ()) -> None:
        """Register a finished staged output ``tmp`` for ``final`` (called by atomic_output)."""
        if any(s.final == final for s in self._staged):
            raise WriteError(f"{final}: written twice in one command")
        self._staged.append(_Staged(Path(tmp), Path(final), tuple(companions)))

    def staged(self, final: str | os.PathLike) -> Path | None:
        """The staged file that will become ``final`` (``None`` when none is staged)."""
        target = _resolved(final)
        return next((s.tmp for s in self._staged if _resolved(s.final) == target), None)

    # -- commit / rollback ---------------------------------------------------------------
    def _is_manifest(self, final: Path) -> bool:
        if self.manifest is not None:
            return _resolved(final) == _resolved(self.manifest)
        return final.name == "run.json"

    def commit(self) -> list[Path]:
        """Rename every staged output into place, the manifest last; return the final paths."""
        order = [s for s in self._staged if not self._is_manifest(s.final)]
        order += [s for s in self._staged if self._is_manifest(s.final)]
        with deferred_signals():
            for s in order:  # a late conflict (another process) must fail before any rename
                if s.final.exists() and not self.overwrite:
                    raise OutputExistsError(
                        f"{s.final}: output appeared while writing; not replaced"
                    )
            for s in order:
                if self._is_manifest(s.final) and s.final.exists():
                    s.final.unlink()  # the old set is no longer complete from here on
            new = {_resolved(s.final) for s in order}
            for s in order:
                if self._is_manifest(s.final):
                    self._drop_obsolete(new)  # the old set's extra outputs go before the marker
                try:
                    replace_into_place(s.tmp, s.final, s.companions)
                except OSError as exc:
                    raise write_error(s.final, exc) from exc
            if not any(self._is_manifest(s.final) for s in order):
                self._drop_obsolete(new)
            self._drop_stages()
        return [s.final for s in order]

    def _drop_obsolete(self, new: set[Path]) -> None:
        if not self.overwrite:
            return
        # labels.nii.gz's old labels.qml slot may hold the new labels.tif's style: keep those
        keep = new | {_resolved(companion_path(s.final, c)) for s in self._staged
                      for c in s.companions}  # fmt: skip
        for old in self.obsolete:
            if _resolved(old) not in new and (old.exists() or old.is_symlink()):
                log.info("%s: removed (an output of the previous run, not of this one)", old)
                _remove(old)
                for side in SIDECARS:
                    if _resolved(companion_path(old, side)) not in keep:
                        _remove(companion_path(old, side))

    def _drop_stages(self) -> None:
        for stage in self._stages.values():
            _remove(stage)
        self._stages.clear()

    def rollback(self) -> None:
        """Remove the stage and any folder this transaction created (if left empty)."""
        self._drop_stages()
        self._staged.clear()
        for folder in reversed(self._created):
            try:
                folder.rmdir()
            except OSError:
                log.debug("%s: not removed (not empty)", folder)
        self._created.clear()

    def __enter__(self) -> OutputTransaction:
        parent = ACTIVE_TRANSACTION.get()
        if parent is not None:  # a command inside a command (demo -> run): join the outer one
            self._parent = parent
            parent.outputs.extend(o for o in self.outputs if o not in parent.outputs)
            parent.folders.extend(self.folders)
            return self
        self._token_ctx = ACTIVE_TRANSACTION.set(self)
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if getattr(self, "_parent", None) is not None:
            return  # the outer transaction commits or rolls back
        try:
            if exc_type is None:
                try:
                    self.commit()
                except BaseException:
                    self.rollback()
                    raise
            else:
                self.rollback()
        finally:
            ACTIVE_TRANSACTION.reset(self._token_ctx)


def sweep_stages(folder: str | os.PathLike) -> list[Path]:
    """Remove stage folders and temporary outputs left in ``folder`` by killed processes.

    Used by ``batch`` after its workers were stopped (a SIGKILLed worker cannot clean up).
    Returns what was removed.
    """
    removed = []
    root = Path(folder)
    if not root.is_dir():
        return removed
    for p in root.rglob(".*"):
        name = p.name
        if name.startswith(STAGE_PREFIX) or any(
            f".{tag}-" in name for tag in ("tmp", "part", "old")
        ):
            if p.exists() or p.is_symlink():
                _remove(p)
                removed.append(p)
    return removed


__all__ = ["OutputTransaction", "SIDECARS", "check_not_input", "sweep_stages"]
