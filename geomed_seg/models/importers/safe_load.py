"""Read weights from another tool's files without running their code.

Weights come only from safetensors or ``torch.load(weights_only=True)``, whose unpickler
accepts tensors and plain containers and refuses every other global *before* calling it
(so a ``__reduce__`` payload never runs). Two kinds of file need code execution to load:
pickled modules/objects and TorchScript archives. Both are refused unless the user passes
``trust_code=True`` (``--trust-code``), which logs a loud warning naming the file.
"""

from __future__ import annotations

import logging
import pickle
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from geomed_seg.errors import ModelError

logger = logging.getLogger(__name__)

TRUST_HINT = "pass --trust-code (trust_code=True) only if you trust where the file comes from"


def is_torchscript(path: Path) -> bool:
    """Return True if ``path`` is a TorchScript archive (a zip with ``constants.pkl``/``code/``)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in names)


def warn_trusted(path: Path, what: str) -> None:
    """Log the loud warning of a ``--trust-code`` load."""
    logger.warning(
        "%s: --trust-code: %s; this RUNS CODE from the file with your permissions. "
        "Only the weights are kept in the imported checkpoint.",
        path,
        what,
    )


def load_torch_file(
    path: Path, *, trust_code: bool = False, safe_globals: Sequence[Any] = ()
) -> tuple[Any, bool]:
    """Return ``(object, trusted)`` read from a PyTorch file, refusing code execution.

    Parameters
    ----------
    path : Path
        A ``torch.save`` file (zip or legacy) or a TorchScript archive.
    trust_code : bool
        Allow a full unpickle / ``torch.jit.load`` (loud warning) when the safe load refuses.
    safe_globals : sequence
        Extra data-only classes the weights-only unpickler may build (e.g. numpy scalars in
        an nnU-Net checkpoint's training log); never callables that run user code.

    Returns
    -------
    object, bool
        The loaded object and whether code execution was used.

    Raises
    ------
    ModelError
        Refused (needs code) or unreadable.
    """
    import torch

    if not path.is_file():
        raise ModelError(f"{path}: weights file not found")
    if is_torchscript(path):
        if not trust_code:
            raise ModelError(
                f"{path}: is a TorchScript archive; loading it runs its code, so it is refused "
                f"({TRUST_HINT})"
            )
        warn_trusted(path, "loading a TorchScript archive with torch.jit.load")
        return torch.jit.load(str(path), map_location="cpu"), True
    try:
        with torch.serialization.safe_globals(list(safe_globals)):
            return torch.load(path, map_location="cpu", weights_only=True), False
    except pickle.UnpicklingError as exc:
        if not trust_code:
            reason = " ".join(str(exc).split("\n")[0].split())[:200]
            raise ModelError(
                f"{path}: refusing to unpickle: it holds more than tensors and plain data "
                f"({reason}); {TRUST_HINT}"
            ) from exc
        warn_trusted(path, "unpickling arbitrary objects with torch.load(weights_only=False)")
        return torch.load(path, map_location="cpu", weights_only=False), True
    except (RuntimeError, OSError, EOFError, ValueError, zipfile.BadZipFile) as exc:
        raise ModelError(
            f"{path}: unreadable PyTorch file ({' '.join(str(exc).split())[:200]})"
        ) from exc


def read_safetensors(path: Path) -> dict[str, Any]:
    """Return the tensors of a ``.safetensors`` file (no code can run)."""
    from geomed_seg.models.checkpoint import _read_safetensors

    return _read_safetensors(path)[0]


def state_dict_of(obj: Any, path: Path, key: str | None = None) -> dict[str, Any]:
    """Return the ``name -> tensor`` mapping inside a loaded object.

    Accepts a module (trusted loads), a state dict, a Lightning-style ``{"state_dict": ...}``,
    or, with ``key``, ``obj[key]`` (e.g. nnU-Net's ``"network_weights"``).
    """
    import torch

    if isinstance(obj, torch.nn.Module | torch.jit.ScriptModule):
        obj = obj.state_dict()
    if key is not None:
        if not isinstance(obj, dict) or key not in obj:
            raise ModelError(f"{path}: has no {key!r} entry")
        obj = obj[key]
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if (
        not isinstance(obj, dict)
        or not obj
        or not all(isinstance(v, torch.Tensor) for v in obj.values())
    ):
        raise ModelError(f"{path}: not a state dict of tensors (got {type(obj).__name__})")
    return {str(k): v for k, v in obj.items()}


def load_state_dict(path: Path, *, trust_code: bool = False) -> tuple[dict[str, Any], bool]:
    """Return ``(state dict, trusted)`` from a ``.safetensors`` or PyTorch weights file."""
    if path.suffix == ".safetensors":
        return read_safetensors(path), False
    obj, trusted = load_torch_file(path, trust_code=trust_code)
    return state_dict_of(obj, path), trusted


__all__ = [
    "is_torchscript",
    "load_state_dict",
    "load_torch_file",
    "read_safetensors",
    "state_dict_of",
]
