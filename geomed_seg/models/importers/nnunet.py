"""Import an nnU-Net v2 results folder (``plans.json``, ``dataset.json``, ``fold_*/checkpoint_final.pth``).

What is carried (``--configuration``, default: the folder's own ``Trainer__Plans__config``
name, else ``3d_fullres``):

* the network: the configuration's ``architecture`` entry (``network_class_name``,
  ``arch_kwargs``, ``_kw_requires_import``), built by ``dynamic_network_architectures``
  through :mod:`geomed_seg.models.nnunet_net` (allowlisted classes only), one network per
  fold, logits averaged over folds as ``nnUNetPredictor`` does (``--fold 0,1`` or all);
* ``transpose_forward``: the network sees the axes in the plans' order (wrapped, so cards,
  spacing and roi stay in our ``(z, y, x)`` order);
* target ``spacing`` (mm), ``patch_size`` as the roi, nnU-Net's sliding window (overlap 0.5,
  its window steps and Gaussian: card mode ``nnunet``) and logits blending;
* the per-channel normalisation: ``ZScoreNormalization`` (whole box or, with
  ``use_mask_for_norm``, nnU-Net's non-zero mask), ``CTNormalization`` (the fingerprint's
  ``foreground_intensity_properties_per_channel``: 0.5/99.5 percentiles, mean, std) and
  ``NoNormalization``;
* ``inference_allowed_mirroring_axes`` of the checkpoint as the card's ``mirror_axes``
  (test-time flips with ``--tta``);
* labels from ``dataset.json``; region-based training (labels given as lists, with
  ``regions_class_order``) becomes sigmoid outputs painted in nnU-Net's order;
* ``NibabelIOWithReorient`` plans become ``axcodes: RAS``;
* nnU-Net's crop to the non-zero bounding box (card ``crop_to_nonzero``): windows are placed
  inside the box and background is written outside it.

Refused by name: cascade configurations (``previous_stage``), 2D configurations, other
normalisation schemes, other preprocessors, label managers and image readers, networks
outside the allowlist, and checkpoints whose weights do not fit the plans' network (custom
trainers that change the architecture). Checkpoints are read with
``torch.load(weights_only=True)``; the numpy scalars of nnU-Net's training log are allowed
as data. nnU-Net's ``resample_data_or_seg_to_shape`` settings become the card's
``resampling`` (:mod:`geomed_seg.inference.nnunet_resample`). Not translated (noted in the
provenance): post-processing (``postprocessing.pkl`` is a pickle and never read).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from geomed_seg.errors import ModelError
from geomed_seg.models.importers.base import ImportedModel, ImportOptions, read_json
from geomed_seg.models.importers.safe_load import load_torch_file, state_dict_of

NORMALISATIONS = {
    "ZScoreNormalization": "zscore",
    "CTNormalization": "ct",
    "NoNormalization": "none",
}
READERS = {"SimpleITKIO": None, "NibabelIO": None, "NibabelIOWithReorient": "RAS"}
DEFAULT_CONFIGURATION = "3d_fullres"


def _numpy_safe_globals() -> list[Any]:
    """Data-only numpy classes that nnU-Net's training log pickles (scalars and dtypes)."""
    import numpy as np

    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import scalar  # type: ignore[no-redef]
    out: list[Any] = [scalar, np.dtype]
    names = ("Float64DType", "Float32DType", "Int64DType", "Int32DType", "BoolDType")
    out += [getattr(np.dtypes, n) for n in names if hasattr(np, "dtypes")]
    return out


def configuration(plans: dict[str, Any], name: str, where: Path) -> dict[str, Any]:
    """Return configuration ``name`` of ``plans`` with ``inherits_from`` resolved (as PlansManager)."""
    configs = plans.get("configurations") or {}
    if name not in configs:
        raise ModelError(
            f"{where}: no configuration {name!r} in the plans (have {', '.join(configs) or 'none'}); "
            "choose one with --configuration"
        )
    conf = dict(configs[name])
    seen = {name}
    while "inherits_from" in conf:
        parent = conf.pop("inherits_from")
        if parent in seen or parent not in configs:
            raise ModelError(f"{where}: configuration {name!r} inherits from unknown {parent!r}")
        seen.add(parent)
        conf = {**configs[parent], **conf}
    return conf


def _default_configuration(src: Path) -> str:
    """Return the configuration of a ``Trainer__Plans__configuration`` folder, else 3d_fullres."""
    parts = src.resolve().name.split("__")
    return parts[2] if len(parts) == 3 and parts[2] else DEFAULT_CONFIGURATION


def _check_supported(plans: dict, conf: dict, name: str, where: Path) -> str | None:
    """Refuse what is not translated; return the card's axcodes (None: any orientation)."""
    if conf.get("previous_stage"):
        raise ModelError(
            f"{where}: configuration {name!r} is a cascade stage (previous_stage "
            f"{conf['previous_stage']!r}): it reads the previous stage's segmentation as extra "
            "input, which is not supported; import a single-stage configuration"
        )
    if len(conf.get("patch_size", [])) != 3:
        raise ModelError(
            f"{where}: configuration {name!r} is {len(conf.get('patch_size', []))}D; only 3D "
            "configurations are imported (2D nnU-Net predicts slice by slice)"
        )
    pre = conf.get("preprocessor_name", "DefaultPreprocessor")
    if pre != "DefaultPreprocessor":
        raise ModelError(
            f"{where}: preprocessor {pre!r} is not supported (DefaultPreprocessor only)"
        )
    manager = plans.get("label_manager", "LabelManager")
    if manager != "LabelManager":
        raise ModelError(f"{where}: label manager {manager!r} is not supported (LabelManager only)")
    reader = plans.get("image_reader_writer", "SimpleITKIO")
    if reader not in READERS:
        raise ModelError(
            f"{where}: image reader {reader!r} is not supported ({', '.join(READERS)}); its array "
            "order may not be ours"
        )
    return READERS[reader]


def _normalisation(conf: dict, plans: dict, n_in: int, where: Path) -> dict[str, Any]:
    schemes = list(conf.get("normalization_schemes") or [])
    masks = list(conf.get("use_mask_for_norm") or [False] * len(schemes))
    if len(schemes) != n_in or len(masks) != n_in:
        raise ModelError(
            f"{where}: {len(schemes)} normalisation schemes and {len(masks)} use_mask_for_norm "
            f"entries for {n_in} input channels"
        )
    props = plans.get("foreground_intensity_properties_per_channel") or {}
    channels = []
    for c, (scheme, use_mask) in enumerate(zip(schemes, masks, strict=True)):
        if scheme not in NORMALISATIONS:
            raise ModelError(
                f"{where}: channel {c} uses normalisation {scheme!r}, which is not translated "
                f"(supported: {', '.join(NORMALISATIONS)})"
            )
        entry: dict[str, Any] = {"scheme": NORMALISATIONS[scheme], "use_mask": bool(use_mask)}
        if scheme == "CTNormalization":
            p = props.get(str(c)) or props.get(c)
            need = ("mean", "std", "percentile_00_5", "percentile_99_5")
            if not isinstance(p, dict) or any(k not in p for k in need):
                raise ModelError(
                    f"{where}: CTNormalization of channel {c} needs "
                    f"foreground_intensity_properties_per_channel[{c}] with {', '.join(need)}"
                )
            entry.update(mean=float(p["mean"]), std=float(p["std"]),
                         lower=float(p["percentile_00_5"]), upper=float(p["percentile_99_5"]))  # fmt: skip
        channels.append(entry)
    return {"type": "nnunet", "channels": channels}


def _resampling(conf: dict) -> tuple[dict[str, Any] | None, str]:
    """Return the card's ``resampling`` (nnU-Net's default functions) and a note."""
    names = (conf.get("resampling_fn_data"), conf.get("resampling_fn_probabilities"))
    if any(n not in (None, "resample_data_or_seg_to_shape") for n in names):
        return None, (
            f"resampling functions {names} are not translated; inputs at another spacing are "
            "resampled trilinearly"
        )
    data = conf.get("resampling_fn_data_kwargs") or {}
    prob = conf.get("resampling_fn_probabilities_kwargs") or {}
    out = {
        "data_order": int(data.get("order", 3)), "data_order_z": int(data.get("order_z", 0)),
        "data_force_separate_z": data.get("force_separate_z"),
        "prob_order": int(prob.get("order", 1)), "prob_order_z": int(prob.get("order_z", 0)),
        "prob_force_separate_z": prob.get("force_separate_z"),
    }  # fmt: skip
    return out, "resample_data_or_seg_to_shape settings -> resampling (nnU-Net's recipe)"


def _classes(dataset: dict, where: Path) -> tuple[list[dict[str, Any]], str, list[str]]:
    """Return ``(classes per output channel, activation, carried)`` from dataset.json labels."""
    labels = dataset.get("labels")
    if not isinstance(labels, dict) or labels.get("background") != 0:
        raise ModelError(f"{where}: dataset.json labels must be a mapping with background: 0")
    entries = {k: v for k, v in labels.items() if k != "ignore"}
    regions = any(isinstance(v, list) and len(v) > 1 for v in entries.values())
    if not regions:
        by_value = sorted((int(v[0] if isinstance(v, list) else v), k) for k, v in entries.items())
        values = [v for v, _ in by_value]
        if values != list(range(len(values))):
            raise ModelError(
                f"{where}: labels {values} are not consecutive from 0 (nnU-Net needs that)"
            )
        return [{"index": v, "name": k} for v, k in by_value], "auto", ["labels from dataset.json"]
    order = dataset.get("regions_class_order")
    fg = [
        (k, v)
        for k, v in entries.items()
        if not (v == 0 or (isinstance(v, list) and set(v) == {0}))
    ]
    if not isinstance(order, list) or len(order) != len(fg):
        raise ModelError(
            f"{where}: region-based labels need regions_class_order with one entry per region "
            f"({len(fg)} regions)"
        )
    classes = [{"index": int(c), "name": k} for (k, _), c in zip(fg, order, strict=True)]
    note = f"regions {[k for k, _ in fg]} as sigmoid outputs painted in regions_class_order {order}"
    return classes, "sigmoid", [note]


def _folds(src: Path, options: ImportOptions) -> list[Path]:
    wanted = options.folds
    if wanted and any(str(f).lower() == "all" for f in wanted):
        wanted = None
    if wanted:
        names = [str(f).strip() for part in wanted for f in str(part).split(",") if f.strip()]
        folders = [src / (n if n.startswith("fold_") else f"fold_{n}") for n in names]
    else:
        folders = sorted(
            (p for p in src.glob("fold_*") if (p / options.checkpoint_name).is_file()),
            key=lambda p: (len(p.name), p.name),
        )
    files = [f / options.checkpoint_name for f in folders]
    missing = [str(f) for f in files if not f.is_file()]
    if missing or not files:
        raise ModelError(
            f"{src}: no {options.checkpoint_name} in "
            f"{', '.join(missing) if missing else 'any fold_* folder'}"
        )
    return files


def _load_fold(path: Path, options: ImportOptions, conf_name: str) -> tuple[dict, Any, bool, str]:
    obj, trusted = load_torch_file(
        path, trust_code=options.trust_code, safe_globals=_numpy_safe_globals()
    )
    tensors = state_dict_of(obj, path, key="network_weights")
    mirror = obj.get("inference_allowed_mirroring_axes") if isinstance(obj, dict) else None
    init = obj.get("init_args") if isinstance(obj, dict) else None
    trained = init.get("configuration") if isinstance(init, dict) else None
    if trained is not None and trained != conf_name:
        raise ModelError(
            f"{path}: trained with configuration {trained!r}, but {conf_name!r} was chosen; "
            f"pass --configuration {trained}"
        )
    trainer = str(obj.get("trainer_name", "unknown")) if isinstance(obj, dict) else "unknown"
    return tensors, mirror, trusted, trainer


def _axes(plans: dict, conf: dict, where: Path) -> tuple[list[int], list[float], list[int]]:
    """Return ``(transpose_forward, spacing mm, patch size)``, the last two in our (z, y, x)."""
    transpose = [int(t) for t in plans.get("transpose_forward", [0, 1, 2])]
    if sorted(transpose) != [0, 1, 2]:
        raise ModelError(f"{where}: transpose_forward {transpose} is not a permutation of 0..2")
    back = [transpose.index(i) for i in range(3)]  # plans order -> our (z, y, x) order
    spacing = [float(conf["spacing"][b]) for b in back]
    return transpose, spacing, [int(conf["patch_size"][b]) for b in back]


def _network(
    src: Path, files: list[Path], per_fold: list, kwargs: dict, n_in: int, n_out: int
) -> tuple[Any, tuple | None, list[str]]:
    """Return ``(ensemble with the folds' weights, mirroring axes, trainer names)``."""
    from geomed_seg.models.importers.state_dict import build_with_weights

    tensors = {f"folds.{i}.{k}": v for i, (sd, *_r) in enumerate(per_fold) for k, v in sd.items()}
    trainers = sorted({t for *_, t in per_fold})
    try:
        module = build_with_weights("nnunet.Network", n_in, n_out, kwargs, tensors, files[0])
    except ModelError as exc:
        raise ModelError(
            f"{exc} (trainer {', '.join(trainers)}: a custom trainer whose network differs from "
            "the plans' architecture cannot be imported)"
        ) from exc
    mirrors = {tuple(m) if m is not None else None for _, m, _, _ in per_fold}
    if len(mirrors) != 1:
        raise ModelError(f"{src}: folds disagree on inference_allowed_mirroring_axes {mirrors}")
    return module, mirrors.pop(), trainers


def _notes(dataset: dict) -> list[str]:
    notes = [
        "inputs are resampled only when their spacing differs from the model's by > 10 % "
        "(nnU-Net resamples whenever the shape changes)",
        "postprocessing (postprocessing.pkl, a pickle) is not read or applied",
        "a trainer that changes the network's forward pass without changing its weights "
        "cannot be detected; the weights fit the plans' network strictly",
    ]
    if "ignore" in (dataset.get("labels") or {}):
        notes.append(f"ignore label {dataset['labels']['ignore']} is training-only; not output")
    return notes


def run(src: Path, options: ImportOptions) -> ImportedModel:
    """Import the nnU-Net v2 results folder ``src`` (see module docstring)."""
    from geomed_seg.models.card import ModelCard

    plans_path, dataset_path = src / "plans.json", src / "dataset.json"
    plans, dataset = read_json(plans_path), read_json(dataset_path)
    conf_name = options.configuration or _default_configuration(src)
    conf = configuration(plans, conf_name, plans_path)
    axcodes = _check_supported(plans, conf, conf_name, plans_path)
    channels = dataset.get("channel_names") or dataset.get("modality")
    if not isinstance(channels, dict) or not channels:
        raise ModelError(f"{dataset_path}: no channel_names")
    band_names = [str(channels[k]) for k in sorted(channels, key=int)]
    classes, activation, carried = _classes(dataset, dataset_path)
    classes = options.classes or classes
    arch = conf.get("architecture") or {}
    if "network_class_name" not in arch:
        raise ModelError(f"{plans_path}: configuration {conf_name!r} has no architecture entry")
    transpose, spacing, roi = _axes(plans, conf, plans_path)
    files = _folds(src, options)
    per_fold = [_load_fold(f, options, conf_name) for f in files]
    kwargs = {
        "network_class_name": str(arch["network_class_name"]),
        "arch_kwargs": arch.get("arch_kwargs", {}),
        "kw_requires_import": list(arch.get("_kw_requires_import", [])),
        "n_folds": len(files),
        "transpose_forward": transpose,
    }
    module, mirror, trainers = _network(src, files, per_fold, kwargs, len(band_names), len(classes))
    mirror_axes = sorted(transpose[int(a)] for a in mirror) if mirror else []
    resampling, resampling_note = _resampling(conf)
    licence = dataset.get("licence") or dataset.get("license")
    card = ModelCard.from_dict(
        {
            "name": options.name or f"{plans.get('dataset_name', src.name)}_{conf_name}",
            "description": str(dataset.get("description", ""))[:2000],
            "architecture": "nnunet.Network", "architecture_kwargs": kwargs,
            "spatial_dims": 3, "in_channels": len(band_names), "band_names": band_names,
            "normalisation": _normalisation(conf, plans, len(band_names), plans_path),
            "spacing": spacing, "spacing_unit": "mm", "axcodes": axcodes, "classes": classes,
            "roi_size": list(options.roi_size) if options.roi_size else roi,
            "overlap": 0.5, "mode": "nnunet", "blend": "logits", "mirror_axes": mirror_axes,
            "activation": activation, "crop_to_nonzero": True, "resampling": resampling,
            "licence": licence,
        },
        source=plans_path,
    )  # fmt: skip
    carried = [
        f"configuration {conf_name}: {kwargs['network_class_name'].rsplit('.', 1)[-1]} "
        f"from the plans, {len(files)} fold(s) ({', '.join(f.parent.name for f in files)}), "
        "logits averaged",
        f"spacing {spacing} mm and patch size {roi} (z, y, x; transpose_forward {transpose})",
        "per-channel normalisation " + ", ".join(conf.get("normalization_schemes", [])),
        f"inference_allowed_mirroring_axes {list(mirror) if mirror else []} -> mirror_axes "
        f"{mirror_axes} (z, y, x)",
        "sliding window: overlap 0.5, nnU-Net's window steps and Gaussian, logits blended",
        "crop to the non-zero bounding box, background outside it (crop_to_nonzero)",
        resampling_note,
        *carried,
        f"trainer {', '.join(trainers)}",
    ]
    fingerprint = src / "dataset_fingerprint.json"
    extra = [fingerprint] if fingerprint.is_file() else []
    return ImportedModel(
        module, card, [plans_path, dataset_path, *extra, *files], licence=licence, authors=[],
        version=str(dataset.get("release")) if dataset.get("release") else None,
        carried=carried, notes=_notes(dataset), trusted_code=any(t for _, _, t, _ in per_fold),
    )  # fmt: skip
