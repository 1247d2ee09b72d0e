"""What every importer takes and returns, and the small helpers they share.

An importer reads a model saved by another tool (nnU-Net, a MONAI bundle, Hugging Face,
smp, a bare state dict) and returns an :class:`ImportedModel`: a torch module built by *our*
registry with the source's weights loaded, a :class:`~geomed_seg.models.card.ModelCard`
that carries everything the engine needs to run it, and the facts for the card's
provenance. Writing the checkpoint is done once, in :func:`geomed_seg.models.importers.import_model`.

No torch import here: detection and option parsing stay cheap.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geomed_seg.batch.journal import file_sha256  # one file hash for journals and cards
from geomed_seg.errors import ModelError


@dataclass(frozen=True)
class ImportOptions:
    """User choices for an import (CLI flags of ``geomed-seg import-model``).

    Parameters
    ----------
    name : str, optional
        Card name; default: the source folder/file stem.
    arch : str, optional
        Registry architecture for a bare state dict (``--arch``).
    arch_args : dict
        Constructor keyword arguments for ``arch`` (``--arch-args JSON``).
    in_channels : int, optional
        Number of input bands/channels when the source does not say.
    classes : list of dict, optional
        ``[{"index": 0, "name": "background"}, ...]`` when the source does not say.
    roi_size : tuple of int, optional
        Window size in array order, when the source does not say (or to override it).
    trust_code : bool
        Allow sources whose loading executes code (pickled modules, TorchScript).
    folds : tuple of str, optional
        nnU-Net folds to import (``("0", "1")``, ``("0,1",)`` or ``("all",)``; default: every
        ``fold_*`` with the checkpoint).
    configuration : str, optional
        nnU-Net plans configuration (default: the results folder's own, else ``3d_fullres``).
    checkpoint_name : str
        nnU-Net checkpoint file inside each fold folder.
    card_overrides : dict
        Card fields to set after the import (validated), e.g. ``{"band_names": [...]}``.
    """

    name: str | None = None
    arch: str | None = None
    arch_args: dict[str, Any] = field(default_factory=dict)
    in_channels: int | None = None
    classes: list[dict[str, Any]] | None = None
    roi_size: tuple[int, ...] | None = None
    trust_code: bool = False
    folds: tuple[str, ...] | None = None
    configuration: str | None = None
    checkpoint_name: str = "checkpoint_final.pth"
    card_overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class ImportedModel:
    """An importer's result, before it is written as a checkpoint.

    Attributes
    ----------
    module : torch.nn.Module
        Built from ``card.architecture`` by our registry, weights loaded.
    card : ModelCard
        Without provenance (added by :func:`~geomed_seg.models.importers.import_model`).
    source_files : list of Path
        Every file that was read (hashed into the provenance).
    licence, authors, version : optional
        From the source's metadata where it has them.
    carried : list of str
        What was translated into the card (one short phrase each).
    notes : list of str
        What was knowingly not carried, and why.
    trusted_code : bool
        A file was loaded with code execution (``--trust-code``).
    """

    module: Any
    card: Any
    source_files: list[Path]
    licence: str | None = None
    authors: list[str] = field(default_factory=list)
    version: str | None = None
    carried: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    trusted_code: bool = False


@dataclass(frozen=True)
class Importer:
    """One source format: a cheap ``detect(path)`` and a lazily imported ``run``.

    ``target`` is ``"module:function"`` with ``function(src: Path, options: ImportOptions)
    -> ImportedModel``; the module is imported only when the format is used, so listing
    formats never imports torch, transformers, MONAI or nnU-Net.
    """

    name: str
    target: str
    detect: Callable[[Path], bool]
    description: str = ""


def read_json(path: Path) -> dict[str, Any]:
    """Return the JSON object in ``path``; :class:`ModelError` naming the file otherwise."""
    import json

    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ModelError(f"{path}: not found") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: not readable JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ModelError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def parse_classes(text: str | int | None) -> list[dict[str, Any]] | None:
    """Return class dicts from ``"3"``, ``"bg,water"`` or ``"0:bg,1:water"`` (CLI ``--classes``)."""
    if text is None:
        return None
    text = str(text).strip()
    if text.isdigit():
        return [{"index": i, "name": f"class_{i}"} for i in range(int(text))]
    out = []
    for i, part in enumerate(p.strip() for p in text.split(",") if p.strip()):
        index, sep, name = part.partition(":")
        if sep:
            try:
                out.append({"index": int(index), "name": name})
            except ValueError as exc:
                raise ModelError(f"--classes {text!r}: {index!r} is not an integer") from exc
        else:
            out.append({"index": i, "name": part})
    if not out:
        raise ModelError(f"--classes {text!r}: no classes")
    return out


def default_roi(spatial_dims: int, divisor: int) -> tuple[int, ...]:
    """Return a default window (256² rasters, 96³ volumes) rounded up to ``divisor``."""
    edge = 256 if spatial_dims == 2 else 96
    edge = -(-edge // divisor) * divisor
    return (edge,) * spatial_dims


def classes_from_names(names: dict[int, str] | list[str]) -> list[dict[str, Any]]:
    """Return class dicts for output channels ``0..K-1`` from a list or an ``index -> name`` map."""
    if isinstance(names, list):
        return [{"index": i, "name": str(n)} for i, n in enumerate(names)]
    keys = sorted(names)
    if keys != list(range(len(keys))):
        raise ModelError(f"class indices {keys} are not the channels 0..{len(keys) - 1}")
    return [{"index": k, "name": str(names[k])} for k in keys]


__all__ = [
    "ImportOptions",
    "ImportedModel",
    "Importer",
    "classes_from_names",
    "default_roi",
    "file_sha256",
    "parse_classes",
    "read_json",
]
