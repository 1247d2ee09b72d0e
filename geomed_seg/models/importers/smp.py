"""Import a segmentation-models-pytorch ``save_pretrained`` folder.

smp writes ``config.json`` (``_model_class`` and every constructor argument),
``model.safetensors`` and a ``README.md`` whose front matter may name a licence. The model
class becomes our ``smp.<Class>`` architecture with the same arguments. Two arguments change
what ``forward`` returns and are translated, not copied:

* ``activation`` (``sigmoid``/``softmax``/``softmax2d``): dropped, because our engine
  applies the sigmoid/softmax itself to logits; any other activation is refused.
* ``aux_params`` (a classification head): dropped with its weights, since only the mask is
  used for segmentation.
"""

from __future__ import annotations

import re
from pathlib import Path

from geomed_seg.errors import ModelError
from geomed_seg.models.importers.base import (
    ImportedModel,
    ImportOptions,
    classes_from_names,
    default_roi,
    read_json,
)
from geomed_seg.models.importers.safe_load import load_state_dict
from geomed_seg.models.importers.state_dict import build_with_weights

_ENGINE_ACTIVATIONS = (None, "identity", "sigmoid", "softmax", "softmax2d")


def weights_file(folder: Path) -> Path:
    """Return the weights of a save_pretrained folder (safetensors first)."""
    for name in ("model.safetensors", "pytorch_model.bin", "pytorch_model.pt"):
        if (folder / name).is_file():
            return folder / name
    raise ModelError(f"{folder}: no model.safetensors (or pytorch_model.bin) in the folder")


def readme_licence(folder: Path) -> str | None:
    """Return ``license:`` from a Hub-style README front matter, if any."""
    readme = folder / "README.md"
    if not readme.is_file():
        return None
    text = readme.read_text(errors="replace")
    front = re.match(r"---\n(.*?)\n---", text, re.S)
    found = re.search(r"^licen[cs]e:\s*(\S+)", front.group(1), re.M) if front else None
    return found.group(1).strip("'\"") if found else None


def run(src: Path, options: ImportOptions) -> ImportedModel:
    """Import the smp folder ``src``."""
    from geomed_seg.models.card import ModelCard
    from geomed_seg.models.registry import get_spec

    config = read_json(src / "config.json")
    cls = config.get("_model_class")
    try:
        spec = get_spec(f"smp.{cls}")
    except ModelError as exc:
        raise ModelError(
            f"{src / 'config.json'}: smp model class {cls!r} is not in our registry"
        ) from exc
    kwargs = {k: v for k, v in config.items() if not k.startswith("_")}
    in_channels = int(kwargs.pop("in_channels", 3))
    n_classes = int(kwargs.pop("classes", 1))
    kwargs.pop("encoder_weights", None)
    notes: list[str] = []
    carried = [f"architecture smp.{cls} with its config.json arguments"]
    activation = kwargs.pop("activation", None)
    if activation not in _ENGINE_ACTIVATIONS:
        raise ModelError(
            f"{src / 'config.json'}: activation {activation!r} cannot be translated (the engine "
            "applies sigmoid/softmax to logits; re-save the model with activation=None)"
        )
    if activation not in (None, "identity"):
        notes.append(f"activation {activation!r} dropped: the engine applies it to the logits")
    path = weights_file(src)
    tensors, trusted = load_state_dict(path, trust_code=options.trust_code)
    if kwargs.pop("aux_params", None):
        tensors = {k: v for k, v in tensors.items() if not k.startswith("classification_head.")}
        notes.append("aux_params classification head dropped (segmentation uses the mask only)")
    module = build_with_weights(spec.name, in_channels, n_classes, kwargs, tensors, path)
    classes = options.classes or classes_from_names([f"class_{i}" for i in range(n_classes)])
    if len(classes) != n_classes:
        raise ModelError(f"{src}: --classes has {len(classes)} classes; the model has {n_classes}")
    licence = readme_licence(src)
    card = ModelCard(
        name=options.name or src.name,
        description=f"imported from the smp save_pretrained folder {src.name}",
        architecture=spec.name,
        architecture_kwargs=kwargs,
        spatial_dims=2,
        in_channels=in_channels,
        classes=classes,
        roi_size=list(options.roi_size or default_roi(2, spec.divisor)),
        licence=licence,
    )
    notes.append(
        "smp folders record no normalisation or class names: set them with --card-json / "
        "--classes if the model needs them"
    )
    return ImportedModel(
        module,
        card,
        [p for p in (src / "config.json", path, src / "README.md") if p.is_file()],
        licence=licence,
        carried=carried,
        notes=notes,
        trusted_code=trusted,
    )
