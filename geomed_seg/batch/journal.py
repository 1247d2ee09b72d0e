"""The batch journal: ``OUT/journal.jsonl``, one JSON object per line, appended and fsynced.

Line 1 is a header ``{"type": "header", "config_hash": ..., "version": ...}``; every other
line is a tile record ``{"type": "tile", "stem", "input", "input_size", "input_mtime_ns",
"status": "done"|"failed", "outputs": {name: {"path", "sha256"}}, "seconds", "attempts",
"error", "finished", "batch_threshold"}``. The last record of a stem wins.
With ``--threshold-scope batch`` pass 1 adds ``{"type": "stats", "stem", "step": "range"|"hist",
"key", "status", "result", ...identity}`` per tile or block and step (its min/max or its
histogram, :mod:`geomed_seg.batch.thresholds`) and one ``{"type": "threshold", ...}`` per
decision; a tile record is done only for the batch threshold it was made with. Inputs are identified by size and
modification time (not their SHA-256: hashing every input of a large batch costs a full read);
outputs by SHA-256, checked again before a tile is skipped. A torn last line (a killed run)
is ignored. Only the driver process writes the journal, so there is a single writer.

Hand-written rather than SQLite: append-only JSON lines survive ``kill -9`` without a
database lock and can be read with ``jq``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from geomed_seg import __version__
from geomed_seg.errors import ConfigError, InvalidInputError
from geomed_seg.pipelines.schema import PipelineConfig

JOURNAL = "journal.jsonl"
#: Batch-level outputs beside the journal (removed with it by ``--restart``).
MOSAIC_OUTPUTS = ("mosaic.vrt", "mosaic.qml", "mosaic.tif", "mosaic.tif.aux.xml",
                  "polygons.gpkg", "summary.json", "summary.md", "item.json")  # fmt: skip


def config_hash(cfg: PipelineConfig) -> str:
    """SHA-256 of the validated config (overrides applied; per-tile input/output removed).

    Also covers the package version and, for a checkpoint model, its weights
    (:func:`~geomed_seg.models.checkpoint.checkpoint_identity`): retrained weights at the
    same path make another config.
    """
    data = cfg.model_dump(mode="json")
    for key in ("path", "folder"):
        data.get("input", {}).pop(key, None)
    data.pop("output_dir", None)
    weights = None
    if cfg.model.method == "checkpoint" and cfg.model.checkpoint:
        from geomed_seg.models.checkpoint import checkpoint_identity

        weights = checkpoint_identity(cfg.resolve(cfg.model.checkpoint))
    text = json.dumps({"config": data, "version": __version__, "weights": weights},
                      sort_keys=True)  # fmt: skip
    return hashlib.sha256(text.encode()).hexdigest()


def file_sha256(path: Path) -> str:
    """SHA-256 of one file (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def input_identity(path: Path) -> dict[str, Any]:
    """Size (bytes) and modification time (ns) of an input: its identity for resuming.

    A ``.vrt`` (a scene split into blocks) also gets ``input_sources``: a SHA-256 of its
    source files' paths, sizes and mtimes, so a replaced source makes its blocks run again.
    """
    st = path.stat()
    ident: dict[str, Any] = {"input_size": st.st_size, "input_mtime_ns": st.st_mtime_ns}
    if path.suffix.lower() == ".vrt":
        from geomed_seg.batch.manifest import from_vrt

        sources = []
        for src in from_vrt(path):
            s = src.stat()
            sources.append((str(src), s.st_size, s.st_mtime_ns))
        ident["input_sources"] = hashlib.sha256(json.dumps(sources).encode()).hexdigest()
    return ident


class Journal:
    """Read and append the journal of one batch output folder ``out``."""

    def __init__(self, out: Path):
        self.out = Path(out)
        self.path = self.out / JOURNAL
        self.header: dict[str, Any] | None = None
        self.records: dict[str, dict[str, Any]] = {}
        self.stats: dict[tuple[str, str], dict[str, Any]] = {}  # (stem, step) -> pass-1 record
        self.threshold: dict[str, Any] | None = None  # the last batch threshold decision
        self._identities: dict[Path, dict[str, Any]] = {}  # input_identity per input path
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        raw = self.path.read_bytes()
        if raw and not raw.endswith(b"\n"):  # torn last line of a killed run: drop it
            raw = raw[: raw.rfind(b"\n") + 1]
            with open(self.path, "r+b") as fh:
                fh.truncate(len(raw))
        for line in raw.decode("utf-8", errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a damaged line: ignored
            if rec.get("type") == "header":
                self.header = rec
            elif rec.get("type") == "tile" and "stem" in rec:
                self.records[rec["stem"]] = rec
            elif rec.get("type") == "stats" and "stem" in rec and "step" in rec:
                self.stats[(rec["stem"], rec["step"])] = rec
            elif rec.get("type") == "threshold":
                self.threshold = rec

    def open(self, chash: str, restart: bool) -> None:
        """Start or continue the journal for ``chash``; a different hash needs ``restart``.

        ``restart`` deletes the journal, every tile output under ``out/tiles`` and the
        batch-level outputs (:data:`MOSAIC_OUTPUTS`).
        """
        if self.header is not None and self.header.get("config_hash") != chash:
            if not restart:
                raise ConfigError(
                    f"{self.path}: this output folder was made with another config or version "
                    f"(hash {self.header.get('config_hash', '?')[:12]} != {chash[:12]}); "
                    "use --restart to discard it, or another output folder"
                )
        if restart:
            shutil.rmtree(self.out / "tiles", ignore_errors=True)
            for name in MOSAIC_OUTPUTS:  # nothing of the discarded config is left beside
                (self.out / name).unlink(missing_ok=True)
            self.path.unlink(missing_ok=True)
            self.header, self.records, self.stats, self.threshold = None, {}, {}, None
        self.out.mkdir(parents=True, exist_ok=True)
        if self.header is None:
            self.header = {"type": "header", "config_hash": chash, "version": __version__,
                           "created": time.time()}  # fmt: skip
            self._append(self.header)

    def _append(self, rec: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(rec, sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def record(self, rec: dict[str, Any]) -> None:
        """Append one tile record (``type`` and ``finished`` are filled in)."""
        rec = {**rec, "type": "tile", "finished": time.time()}
        self.records[rec["stem"]] = rec
        self._append(rec)

    def record_stats(self, rec: dict[str, Any]) -> None:
        """Append one pass-1 record (``stem``, ``step``, ``key``, identity, ``result``)."""
        rec = {**rec, "type": "stats", "finished": time.time()}
        self.stats[(rec["stem"], rec["step"])] = rec
        self._append(rec)

    def record_threshold(self, rec: dict[str, Any]) -> None:
        """Append a batch threshold decision."""
        rec = {**rec, "type": "threshold", "finished": time.time()}
        self.threshold = rec
        self._append(rec)

    def stats_for(self, stem: str, step: str, key: str, path: Path) -> dict[str, Any] | None:
        """The pass-1 record of ``stem`` and ``step`` made with ``key`` for this same input."""
        rec = self.stats.get((stem, step))
        if rec is None or rec.get("status") != "done" or rec.get("key") != key:
            return None
        if rec.get("input") != str(path):
            return None
        ident = self._identity(path)
        return rec if all(rec.get(k) == v for k, v in ident.items()) else None

    def _identity(self, path: Path) -> dict[str, Any]:
        """``input_identity(path)``, once per path: the blocks of one scene share it, and a
        VRT's identity stats every source file."""
        if path not in self._identities:
            try:
                self._identities[path] = input_identity(path)
            except OSError as exc:
                raise InvalidInputError(f"{path}: cannot stat input ({exc.strerror})") from exc
        return self._identities[path]

    def is_done(self, stem: str, path: Path, batch_threshold: Any = "journal") -> bool:
        """True when ``stem`` is recorded done for this same input, with this same batch
        threshold, and its outputs still match.

        ``batch_threshold``: the threshold pass 2 uses (``None``: none); by default the
        journal's last recorded batch threshold decision (none without one).
        """
        rec = self.records.get(stem)
        if rec is None or rec.get("status") != "done" or rec.get("input") != str(path):
            return False
        if batch_threshold == "journal":
            batch_threshold = self.threshold["thresholds"][0] if self.threshold else None
        if rec.get("batch_threshold") != batch_threshold:
            return False
        ident = self._identity(path)
        if any(rec.get(k) != v for k, v in ident.items()):
            return False
        for out in rec.get("outputs", {}).values():
            f = self.out / out["path"]
            if not f.is_file() or file_sha256(f) != out["sha256"]:
                return False
        return True
