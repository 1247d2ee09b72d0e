"""Import a local Hugging Face SegFormer folder (``config.json`` + weights [+ preprocessor]).

What is carried:

* the network: ``config.json`` becomes the ``hf.Segformer`` architecture's ``config``
  (built with ``SegformerConfig``; nothing is downloaded, no remote code);
* the classes: ``id2label`` (output channel ``k`` is class ``k``);
* the normalisation: ``preprocessor_config.json``'s ``do_rescale``/``rescale_factor`` and
  ``do_normalize``/``image_mean``/``image_std`` folded into one per-band z-score in the
  input's units: ``(x * r - m) / s == (x - m / r) / (s / r)``;
* the post-processing: logits at 1/4 resolution are upsampled bilinearly to the window
  inside the model (:mod:`geomed_seg.models.hf_segformer`), as HF's
  ``post_process_semantic_segmentation`` does;
* the default window: the processor's ``size`` (height, width).

Not carried (recorded in the provenance notes): ``do_resize`` (the engine runs windows at
the scene's native resolution instead of resizing a whole scene to ``size``) and
``do_reduce_labels`` (a training-time label shift; ``id2label`` already names the outputs).
Weights come from ``model.safetensors`` (or its sharded index), else ``pytorch_model.bin``
through the weights-only loader. Other HF model types are refused by name.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from geomed_seg.errors import ModelError
from geomed_seg.models.importers.base import (
    ImportedModel,
    ImportOptions,
    classes_from_names,
    read_json,
)
from geomed_seg.models.importers.safe_load import load_state_dict
from geomed_seg.models.importers.smp import readme_licence
from geomed_seg.models.importers.state_dict import build_with_weights

ARCH = "hf.Segformer"


def read_weights(src: Path, trust_code: bool) -> tuple[Any, list[Path], bool]:
    """Return ``(HF module, files read, trusted)`` for an HF folder (safetensors preferred).

    A ``pytorch_model.bin`` is first opened with our weights-only loader, so a file that
    needs code execution is refused before transformers sees it.
    """
    from geomed_seg.models.hf_segformer import load_local

    files: list[Path]
    single, index, binary = (
        src / "model.safetensors",
        src / "model.safetensors.index.json",
        src / "pytorch_model.bin",
    )
    trusted = False
    if single.is_file():
        files, use_st = [single], True
    elif index.is_file():
        shards = sorted(set(read_json(index).get("weight_map", {}).values()))
        files, use_st = [index, *(src / s for s in shards)], True
    elif binary.is_file():
        _, trusted = load_state_dict(binary, trust_code=trust_code)
        files, use_st = [binary], False
    else:
        raise ModelError(f"{src}: no model.safetensors or pytorch_model.bin in the folder")
    try:
        module = load_local(str(src), use_safetensors=use_st, weights_only=not trusted)
    except (ValueError, OSError, RuntimeError) as exc:
        raise ModelError(f"{src}: cannot load the SegFormer weights ({exc})") from exc
    return module, files, trusted


def normalisation(pre: dict[str, Any], channels: int, where: Path) -> dict[str, Any]:
    """Return our card's normalisation for an HF image-processor config (see module docstring)."""
    r = float(pre.get("rescale_factor", 1 / 255)) if pre.get("do_rescale", True) else 1.0
    if not r > 0:
        raise ModelError(f"{where}: rescale_factor {r} must be > 0")
    if pre.get("do_normalize", True):
        mean = [float(v) for v in pre.get("image_mean", [0.485, 0.456, 0.406])]
        std = [float(v) for v in pre.get("image_std", [0.229, 0.224, 0.225])]
    else:
        mean, std = [0.0], [1.0]
    if len(mean) not in (1, channels) or len(std) != len(mean):
        raise ModelError(
            f"{where}: image_mean/image_std have {len(mean)}/{len(std)} values for a "
            f"{channels}-channel model"
        )
    if mean == [0.0] * len(mean) and std == [1.0] * len(std) and r == 1.0:
        return {"type": "none"}
    return {"type": "meanstd", "mean": [m / r for m in mean], "std": [s / r for s in std]}


def _roi(pre: dict[str, Any]) -> list[int] | None:
    size = pre.get("size")
    if isinstance(size, dict) and "height" in size and "width" in size:
        return [int(size["height"]), int(size["width"])]
    if isinstance(size, int):
        return [size, size]
    return None


def run(src: Path, options: ImportOptions) -> ImportedModel:
    """Import the HF SegFormer folder ``src``."""
    from geomed_seg.models.card import ModelCard
    from geomed_seg.models.hf_segformer import NON_NETWORK_KEYS

    cfg_path = src / "config.json"
    config = read_json(cfg_path)
    if config.get("model_type") != "segformer":
        raise ModelError(
            f"{cfg_path}: model_type {config.get('model_type')!r} is not supported; the "
            "Hugging Face importer reads SegFormer (model_type 'segformer') only"
        )
    id2label = config.get("id2label") or {}
    try:
        names = {int(k): str(v) for k, v in id2label.items()}
    except (TypeError, ValueError) as exc:
        raise ModelError(f"{cfg_path}: id2label keys must be integers ({exc})") from exc
    if not names:
        names = {i: f"class_{i}" for i in range(int(config.get("num_labels", 2)))}
    classes = options.classes or classes_from_names(names)
    channels = int(config.get("num_channels", 3))
    if len(classes) != len(names):
        raise ModelError(f"{src}: --classes has {len(classes)} classes; id2label has {len(names)}")
    hf_module, files, trusted = read_weights(src, options.trust_code)
    network = {k: v for k, v in config.items() if k not in NON_NETWORK_KEYS}
    kwargs = {"config": network}
    tensors = {k: v.detach().clone() for k, v in hf_module.state_dict().items()}
    module = build_with_weights(ARCH, channels, len(classes), kwargs, tensors, src)
    carried = [
        "network from config.json (SegformerConfig)",
        "classes from id2label",
        "logits upsampled to the window (bilinear, align_corners=False) as HF post-processing",
    ]
    notes: list[str] = []
    pre_path = src / "preprocessor_config.json"
    pre = read_json(pre_path) if pre_path.is_file() else {}
    if pre:
        norm = normalisation(pre, channels, pre_path)
        carried.append("normalisation from preprocessor_config.json (rescale + mean/std)")
        if pre.get("do_resize", True) and _roi(pre):
            notes.append(
                f"do_resize to {_roi(pre)} not applied: windows of that size run at the "
                "scene's native resolution"
            )
        if pre.get("do_reduce_labels") or pre.get("reduce_labels"):
            notes.append("do_reduce_labels is a training-time label shift; id2label names outputs")
        files.append(pre_path)
    else:
        norm = {"type": "none"}
        notes.append("no preprocessor_config.json: inputs are fed unnormalised")
    licence = readme_licence(src)
    if (src / "README.md").is_file():
        files.append(src / "README.md")
    card = ModelCard.from_dict(
        {
            "name": options.name or src.name,
            "description": f"imported from the Hugging Face SegFormer folder {src.name}",
            "architecture": ARCH,
            "architecture_kwargs": kwargs,
            "spatial_dims": 2,
            "in_channels": channels,
            "normalisation": norm,
            "classes": classes,
            "roi_size": list(options.roi_size or _roi(pre) or [512, 512]),
            "licence": licence,
        },
        source=cfg_path,
    )
    version = config.get("transformers_version")
    return ImportedModel(
        module,
        card,
        [cfg_path, *files],
        licence=licence,
        version=f"transformers {version}" if version else None,
        authors=_authors(src),
        carried=carried,
        notes=notes,
        trusted_code=trusted,
    )


def _authors(src: Path) -> list[str]:
    readme = src / "README.md"
    if not readme.is_file():
        return []
    found = re.search(r"^authors?:\s*(.+)$", readme.read_text(errors="replace"), re.M | re.I)
    return [a.strip() for a in found.group(1).split(",") if a.strip()] if found else []
