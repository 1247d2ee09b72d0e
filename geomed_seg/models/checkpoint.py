"""Safe checkpoints: safetensors weights plus a model card; never unpickle untrusted files.

A checkpoint is either

* a folder holding ``model.safetensors`` and ``card.json``, or
* one ``.safetensors`` file whose string metadata holds the card JSON under
  :data:`CARD_KEY` (safetensors supports a ``str -> str`` metadata header).

Plain PyTorch state dicts (``.pt``/``.pth``) are accepted only through
``torch.load(weights_only=True)`` and only with a card JSON beside them (or passed in);
anything that needs real unpickling (a pickled full model) is refused.

``weights_sha256`` in the card is the SHA-256 of the tensors (names, dtypes, shapes, bytes,
in sorted name order), so the same weights hash the same in every container format.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from geomed_seg.errors import ModelError
from geomed_seg.io.atomic import atomic_output
from geomed_seg.models.card import ModelCard
from geomed_seg.models.registry import build_model, model_spatial_dims

logger = logging.getLogger(__name__)

#: Metadata key of the card JSON inside a single-file ``.safetensors`` checkpoint.
CARD_KEY = "geomed_seg.card"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "card.json"
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


@dataclass
class LoadedModel:
    """A built model in eval mode with its card.

    Attributes
    ----------
    module : torch.nn.Module
        Eval mode, on ``device``; input ``(N, C, *spatial)`` float32, output logits
        ``(N, num_classes, *spatial)``.
    card : ModelCard
    path : Path
        Where it was loaded from.
    device : str
    """

    module: Any
    card: ModelCard
    path: Path
    device: str = "cpu"

    @property
    def total_parameters(self) -> int:
        """Number of parameters (for ``mlm:total_parameters``)."""
        return int(sum(p.numel() for p in self.module.parameters()))


def tensors_sha256(tensors: dict[str, Any]) -> str:
    """Return the SHA-256 (hex) of a ``name -> torch.Tensor`` mapping, independent of container."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(_uint8()).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _uint8() -> Any:
    import torch

    return torch.uint8


def _state_tensors(module: Any) -> dict[str, Any]:
    # clone: breaks storage sharing (safetensors refuses shared tensors) and detaches from device
    return {k: v.detach().cpu().clone().contiguous() for k, v in module.state_dict().items()}


def save_checkpoint(
    module: Any, card: ModelCard, path: str | os.PathLike, *, overwrite: bool = False
) -> ModelCard:
    """Write ``module``'s weights and ``card`` to ``path``; return the card with its sha256.

    Parameters
    ----------
    module : torch.nn.Module
        Must be the architecture the card names (checked by building it and loading strictly).
    card : ModelCard
    path : path-like
        ``*.safetensors`` -> single file (card in metadata); anything else -> folder with
        ``model.safetensors`` and ``card.json``. Written atomically.
    overwrite : bool
        Replace an existing checkpoint.
    """
    from safetensors.torch import save_file

    tensors = _state_tensors(module)
    card = card.model_copy(update={"weights_sha256": tensors_sha256(tensors)})
    _check_fits(card, tensors, Path(path))
    target = Path(path)
    with atomic_output(target, overwrite) as tmp:
        if target.suffix == ".safetensors":
            save_file(
                tensors, str(tmp), metadata={CARD_KEY: card.to_json(indent=None), "format": "pt"}
            )
        else:
            tmp.mkdir()
            save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
            (tmp / CARD_NAME).write_text(card.to_json() + "\n")
    logger.info("saved checkpoint %s (%d tensors)", target, len(tensors))
    return card


def load_checkpoint(
    path: str | os.PathLike,
    device: str = "cpu",
    *,
    card: ModelCard | str | os.PathLike | None = None,
) -> LoadedModel:
    """Build the card's architecture and load the checkpoint's weights strictly.

    Parameters
    ----------
    path : path-like
        A checkpoint folder, a ``.safetensors`` file, or a ``.pt``/``.pth`` state dict.
    device : str
        torch device for the module (``"cpu"``, ``"cuda"``, ``"cuda:1"``).
    card : ModelCard or path, optional
        Card to use instead of the one stored with the weights; required for ``.pt`` files
        without a ``<name>.json`` / ``card.json`` beside them.

    Raises
    ------
    ModelError
        Missing/corrupt files, unsafe pickles, hash or architecture mismatch.
    """
    p = Path(path)
    if not p.exists():
        raise ModelError(f"{p}: checkpoint not found")
    given = ModelCard.load(card) if isinstance(card, str | os.PathLike) else card
    if p.is_dir():
        weights = p / WEIGHTS_NAME
        if not weights.is_file():
            raise ModelError(f"{p}: checkpoint folder has no {WEIGHTS_NAME}")
        tensors, _ = _read_safetensors(weights)
        card_obj = given or _card_beside(p, required=True)
    elif p.suffix == ".safetensors":
        tensors, meta = _read_safetensors(p)
        if given is not None:
            card_obj = given
        elif CARD_KEY in meta:
            card_obj = ModelCard.from_json(meta[CARD_KEY], source=f"{p} (metadata)")
        else:
            card_obj = _card_beside(p, required=True)
    elif p.suffix in TORCH_SUFFIXES:
        card_obj = given or _card_beside(p, required=True)
        tensors = _read_torch_state_dict(p)
    else:
        raise ModelError(
            f"{p}: not a checkpoint (expected a folder, .safetensors or {'/'.join(TORCH_SUFFIXES)})"
        )
    assert card_obj is not None
    if card_obj.weights_sha256 and tensors_sha256(tensors) != card_obj.weights_sha256:
        raise ModelError(
            f"{p}: weights do not match the card's sha256 (corrupt or replaced weights)"
        )
    module = _check_fits(card_obj, tensors, p)
    return LoadedModel(module.to(device).eval(), card_obj, p, device)


def _files_signature(p: Path) -> tuple[tuple[str, int, int], ...]:
    """``(name, size, mtime_ns)`` of a checkpoint's files (folder, or file + JSON beside it)."""
    files = sorted(p.iterdir()) if p.is_dir() else [p, *sorted(p.parent.glob("*.json"))]
    out = []
    for f in files:
        st = f.stat()
        out.append((f.name, st.st_size, st.st_mtime_ns))
    return tuple(out)


@functools.lru_cache(maxsize=4)
def _load_cached(path: str, device: str, signature: tuple) -> LoadedModel:
    logger.info("%s: loading the checkpoint in process %d", path, os.getpid())
    return load_checkpoint(path, device)


def load_checkpoint_cached(path: str | os.PathLike, device: str = "cpu") -> LoadedModel:
    """:func:`load_checkpoint`, memoised per process on the files' path, size and mtime.

    A batch worker runs the same model on many tiles; reading, hashing and building it once
    per worker process instead of once per tile saves that time and keeps one copy of the
    weights in memory. The returned module is shared: callers must not change its weights.
    A changed or replaced file (new size or mtime) is loaded again; at most 4 models are kept.
    """
    p = Path(path)
    if not p.exists():
        raise ModelError(f"{p}: checkpoint not found")
    p = p.resolve()
    return _load_cached(str(p), device, _files_signature(p))


def _check_fits(card: ModelCard, tensors: dict[str, Any], path: Path) -> Any:
    """Build the card's model and load ``tensors`` strictly; return the module."""
    dims = model_spatial_dims(card.architecture, card.architecture_kwargs)
    if dims != card.spatial_dims:
        raise ModelError(
            f"{path}: card says spatial_dims={card.spatial_dims} but {card.architecture} is {dims}D"
        )
    module = build_model(
        card.architecture, card.in_channels, card.num_classes, **card.architecture_kwargs
    )
    tensors = match_state_keys(tensors, module.state_dict().keys(), str(path))
    try:
        module.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        first = " ".join(str(exc).split())[:300]
        raise ModelError(
            f"{path}: weights do not fit {card.architecture} as the card describes it ({first})"
        ) from exc
    return module


def _read_safetensors(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ModelError(
            f"{path}: unreadable safetensors file ({' '.join(str(exc).split())[:200]})"
        ) from exc
    return tensors, meta


def _read_torch_state_dict(path: Path) -> dict[str, Any]:
    import torch

    hint = (
        f"refusing to unpickle {path}: it holds more than plain tensors (e.g. a pickled full model). "
        "If you trust it, load it yourself with torch.load(weights_only=False) and convert it with "
        "geomed_seg.models.save_checkpoint(model, card, 'model.safetensors')"
    )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ModelError(hint) from exc
    except (RuntimeError, OSError, EOFError, ValueError, zipfile.BadZipFile) as exc:
        raise ModelError(
            f"{path}: unreadable PyTorch file ({' '.join(str(exc).split())[:200]})"
        ) from exc
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]  # Lightning-style {"state_dict": ..., "epoch": ...}
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(f"{path}: not a state dict of tensors (got {type(obj).__name__})")
    return dict(obj)


#: Prefixes that training wrappers put before every key: DataParallel/DDP (``module.``),
#: Lightning modules (``model.``, ``net.``, ``network.``) and ``torch.compile`` (``_orig_mod.``).
WRAPPER_PREFIXES = ("module.", "model.", "net.", "network.", "_orig_mod.")


def match_state_keys(tensors: dict[str, Any], expected: Any, source: str = "") -> dict[str, Any]:
    """Return ``tensors`` with wrapper prefixes stripped, but only when that makes the keys fit.

    Keys that already equal ``expected`` are kept as they are: a MONAI ``UNet`` names every
    parameter ``model.*`` and must not lose that prefix. Otherwise a prefix shared by *all*
    keys (see :data:`WRAPPER_PREFIXES`) is stripped, repeatedly (``module.model.``), and the
    first variant whose keys equal ``expected`` is returned. If none fits, ``tensors`` is
    returned unchanged so that the strict load reports the keys as the file has them.
    """
    want = set(expected)
    current = dict(tensors)
    stripped: list[str] = []
    for _ in range(len(WRAPPER_PREFIXES) + 1):
        if set(current) == want:
            if stripped:
                logger.info(
                    "%s: stripped wrapper prefix %s from every key", source, "".join(stripped)
                )
            return current
        prefix = next(
            (p for p in WRAPPER_PREFIXES if current and all(k.startswith(p) for k in current)), None
        )
        if prefix is None:
            break
        current = {k[len(prefix) :]: v for k, v in current.items()}
        stripped.append(prefix)
    return dict(tensors)


def _card_beside(path: Path, required: bool) -> ModelCard | None:
    folder = path if path.is_dir() else path.parent
    candidates = (
        [folder / CARD_NAME]
        if path.is_dir()
        else [
            path.with_suffix(".json"),
            path.with_name(path.stem + ".card.json"),
            folder / CARD_NAME,
        ]
    )
    for c in candidates:
        if c.is_file():
            return ModelCard.load(c)
    if required:
        raise ModelError(
            f"{path}: no model card found (looked for {', '.join(c.name for c in candidates)}); "
            "pass card=... (--card) or save with geomed_seg.models.save_checkpoint"
        )
    return None


def weights_file(path: str | os.PathLike) -> Path:
    """Return the weights file of a checkpoint: a folder's ``model.safetensors``, the file
    itself (``.safetensors``, ``.pt``...), or the weights beside a ``card.json``.

    Raises :class:`ModelError` when there are none (a card alone links to nothing).
    """
    p = Path(path)
    if p.is_dir():
        found = [p / WEIGHTS_NAME]
    elif p.name == CARD_NAME:
        found = [p.with_name(WEIGHTS_NAME)]
    elif p.suffix == ".json":  # <stem>.json / <stem>.card.json beside <stem>.<weights>
        stem = p.name.removesuffix(".card.json").removesuffix(".json")
        found = [p.with_name(stem + s) for s in (".safetensors", *TORCH_SUFFIXES)]
    else:
        found = [p]
    for f in found:
        if f.is_file():
            return f
    raise ModelError(f"{p}: no weights file found ({', '.join(f.name for f in found)})")


def read_card(path: str | os.PathLike) -> ModelCard:
    """Return the card of a checkpoint without building the model or reading tensors."""
    p = Path(path)
    if p.suffix == ".safetensors" and p.is_file():
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(p), framework="pt") as f:
                meta = dict(f.metadata() or {})
        except (SafetensorError, OSError, ValueError) as exc:
            raise ModelError(f"{p}: unreadable safetensors file ({exc})") from exc
        if CARD_KEY in meta:
            return ModelCard.from_json(meta[CARD_KEY], source=f"{p} (metadata)")
    if p.suffix == ".json" and p.is_file():
        return ModelCard.load(p)
    if not p.exists():
        raise ModelError(f"{p}: checkpoint not found")
    card = _card_beside(p, required=True)
    assert card is not None
    return card


def checkpoint_identity(path: str | os.PathLike) -> str:
    """What identifies a checkpoint's weights, cheaply: the card's ``weights_sha256``.

    Without one (a hand-written card for a ``.pt``), the files' names, sizes and mtimes.
    ``"missing"`` when there is no checkpoint at ``path``. Used in the batch journal's
    config hash, so retrained weights at the same path are not mixed with old results.
    """
    p = Path(path)
    if not p.exists():
        return "missing"
    card = read_card(p)
    if card.weights_sha256:
        return card.weights_sha256
    return hashlib.sha256(repr(_files_signature(p.resolve())).encode()).hexdigest()


__all__ = [
    "CARD_KEY",
    "LoadedModel",
    "load_checkpoint",
    "match_state_keys",
    "read_card",
    "save_checkpoint",
    "tensors_sha256",
]
