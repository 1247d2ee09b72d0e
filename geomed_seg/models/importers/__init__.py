"""Bring your own model: turn another tool's saved model into our checkpoint.

Each source format registers an :class:`~geomed_seg.models.importers.base.Importer` here
(a cheap ``detect`` and a lazily imported ``run``); :func:`import_model` picks one (or the
one named), runs it, adds the provenance (source format, SHA-256 of every file read,
licence, authors) to the card and writes safetensors + card with
:func:`~geomed_seg.models.checkpoint.save_checkpoint`. The engine then runs the result like
any checkpoint and never imports the source tool's runtime to predict.

Formats: ``state-dict``, ``smp``, ``hf``, ``monai-bundle``, ``nnunet`` (see each module).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import zipfile
from importlib import import_module
from pathlib import Path
from typing import Any

from geomed_seg.errors import ModelError
from geomed_seg.models.importers.base import (
    ImportedModel,
    Importer,
    ImportOptions,
    file_sha256,
)

logger = logging.getLogger(__name__)

_IMPORTERS: dict[str, Importer] = {}
WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")


def register_importer(importer: Importer) -> None:
    """Add (or replace) the importer for ``importer.name``."""
    _IMPORTERS[importer.name] = importer


def available_formats() -> list[str]:
    """Return the registered format names in detection order."""
    return list(_IMPORTERS)


def get_importer(name: str) -> Importer:
    """Return the importer called ``name``; :class:`ModelError` listing the formats otherwise."""
    if name not in _IMPORTERS:
        raise ModelError(
            f"unknown model format {name!r} (choose auto or one of {', '.join(_IMPORTERS)})"
        )
    return _IMPORTERS[name]


def detect_format(src: Path) -> str:
    """Return the name of the one format that recognises ``src``.

    Raises
    ------
    ModelError
        No format or several formats recognise it (then ``--format`` decides).
    """
    if not src.exists():
        raise ModelError(f"{src}: model source not found")
    found = [imp.name for imp in _IMPORTERS.values() if imp.detect(src)]
    if not found:
        raise ModelError(
            f"{src}: not a recognised model source (an nnU-Net results folder, a MONAI bundle, "
            f"a Hugging Face or smp save_pretrained folder, or a {'/'.join(WEIGHT_SUFFIXES)} "
            "state dict); name it with --format"
        )
    if len(found) > 1:
        raise ModelError(f"{src}: looks like {' and '.join(found)}; choose one with --format")
    return found[0]


def import_model(
    src: str | os.PathLike,
    output: str | os.PathLike,
    *,
    format: str = "auto",
    overwrite: bool = False,
    options: ImportOptions | None = None,
    **option_fields: Any,
) -> Any:
    """Import the model at ``src`` and write it as our checkpoint at ``output``; return its card.

    Parameters
    ----------
    src : path-like
        The source (folder, zip or weights file).
    output : path-like
        Checkpoint folder (or ``*.safetensors`` file), written atomically.
    format : str
        ``"auto"`` (detect) or one of :func:`available_formats`.
    overwrite : bool
        Replace an existing ``output``.
    options : ImportOptions, optional
        Import choices; or pass its fields as keyword arguments.

    Returns
    -------
    ModelCard
        The written card, with ``provenance`` and ``weights_sha256``.

    Raises
    ------
    ModelError
        Unknown/ambiguous format, unsafe or unreadable files, untranslatable settings.
    """
    from geomed_seg import __version__
    from geomed_seg.io.atomic import check_output
    from geomed_seg.models.card import ModelCard, Provenance
    from geomed_seg.models.checkpoint import save_checkpoint

    source = Path(src)
    check_output(output, overwrite)  # before any expensive work
    opts = options or ImportOptions()
    if option_fields:
        opts = dataclasses.replace(opts, **option_fields)
    name = format if format != "auto" else detect_format(source)
    importer = get_importer(name)
    if not source.exists():
        raise ModelError(f"{source}: model source not found")
    module_name, _, func = importer.target.partition(":")
    result: ImportedModel = getattr(import_module(module_name), func)(source, opts)
    base = source if source.is_dir() else source.parent
    hashes = {}
    for f in result.source_files:
        rel = f.relative_to(base).as_posix() if f.is_relative_to(base) else f.name
        hashes[rel] = file_sha256(f)
    provenance = Provenance(
        source_format=name,
        source=source.name,
        source_sha256=hashes,
        licence=result.licence,
        authors=result.authors,
        version=result.version,
        carried=result.carried,
        notes=result.notes,
        trusted_code=result.trusted_code,
        importer_version=f"geomed-seg {__version__}",
    )
    data = json.loads(result.card.to_json())
    data["provenance"] = json.loads(provenance.model_dump_json())
    if result.licence and not data.get("licence"):
        data["licence"] = result.licence
    data.update(opts.card_overrides)
    card = ModelCard.from_dict(data, source=f"{source} (imported card)")
    written = save_checkpoint(result.module, card, output, overwrite=overwrite)
    logger.info("imported %s (%s) into %s", source, name, output)
    return written


# -- detection (cheap: file names and small JSON files only) --------------------------------


def _json_keys(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _is_nnunet(src: Path) -> bool:
    return src.is_dir() and (src / "plans.json").is_file() and (src / "dataset.json").is_file()


def _is_monai_bundle(src: Path) -> bool:
    if src.is_dir():
        return (src / "configs" / "metadata.json").is_file()
    if src.suffix == ".zip" and zipfile.is_zipfile(src):
        with zipfile.ZipFile(src) as z:
            return any(n.endswith("configs/metadata.json") for n in z.namelist())
    return False


def _is_hf(src: Path) -> bool:
    cfg = _json_keys(src / "config.json") if src.is_dir() else {}
    return "model_type" in cfg and "_model_class" not in cfg


def _is_smp(src: Path) -> bool:
    return src.is_dir() and "_model_class" in _json_keys(src / "config.json")


def _is_state_dict(src: Path) -> bool:
    return src.is_file() and src.suffix in WEIGHT_SUFFIXES


_PKG = "geomed_seg.models.importers"
for _imp in (
    Importer("nnunet", f"{_PKG}.nnunet:run", _is_nnunet, "nnU-Net v2 results folder"),
    Importer("monai-bundle", f"{_PKG}.monai_bundle:run", _is_monai_bundle, "MONAI bundle"),
    Importer("hf", f"{_PKG}.hf:run", _is_hf, "Hugging Face SegFormer folder"),
    Importer("smp", f"{_PKG}.smp:run", _is_smp, "segmentation-models-pytorch save_pretrained"),
    Importer("state-dict", f"{_PKG}.state_dict:run", _is_state_dict, "state dict + --arch"),
):
    register_importer(_imp)

__all__ = [
    "ImportOptions",
    "ImportedModel",
    "Importer",
    "available_formats",
    "detect_format",
    "get_importer",
    "import_model",
    "register_importer",
]
