"""Import a MONAI bundle (a folder or ``.zip`` with ``configs/`` and ``models/``).

What is carried:

* the network: ``network_def`` of ``configs/inference.json|yaml``, resolved with
  ``monai.bundle.ConfigParser`` (``@`` references and ``%`` macros); its ``_target_`` must be
  a class of ``monai.networks.nets`` that our registry has. Expressions (``$...``) would run
  code and are refused unless ``--trust-code``. MONAI loads images as ``(x, y, z)`` arrays
  and ours are ``(z, y, x)``, so the network is wrapped in ``reversed_axes``;
* the weights: ``models/model.pt`` (weights-only) or ``models/model.safetensors``;
  ``models/model.ts`` (TorchScript) only with ``--trust-code``;
* ``metadata.json``: input channels, output channels and their names (``channel_def``),
  name, version, authors, licence/copyright;
* the inferer: ``SlidingWindowInferer``'s ``roi_size`` (reversed to array order),
  ``overlap`` and ``mode``;
* the preprocessing transforms (``*d`` dictionary forms alike): ``Orientation`` ->
  ``axcodes`` (other orientations are refused at run time), ``Spacing`` -> ``spacing``
  (the pipeline resamples), ``ScaleIntensityRange`` -> a ``scale_range`` normalisation,
  ``NormalizeIntensity(nonzero=True, channel_wise=True)`` -> ``nonzero_zscore`` where the
  card supports it; loading/typing transforms need nothing. ``CropForeground`` is noted:
  the engine runs the whole volume (skipping background windows) instead of cropping.

Any other transform (pre- or post-processing) is refused **by name** rather than dropped.
"""

from __future__ import annotations

import logging
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

from geomed_seg.errors import ModelError
from geomed_seg.models.importers.base import (
    ImportedModel,
    ImportOptions,
    classes_from_names,
    read_json,
)
from geomed_seg.models.importers.safe_load import (
    TRUST_HINT,
    load_state_dict,
    load_torch_file,
    state_dict_of,
)
from geomed_seg.models.importers.state_dict import build_with_weights

logger = logging.getLogger(__name__)

#: Transforms whose job our readers and engine already do (load, channel-first, dtype, device).
NEUTRAL = {
    "LoadImage", "EnsureChannelFirst", "AddChannel", "EnsureType", "ToTensor", "ToNumpy",
    "ToDevice", "Identity", "CastToType", "SqueezeDim", "DeleteItems", "SelectItems",
    "CopyItems", "FromMetaTensor", "ToMetaTensor",
}  # fmt: skip
#: Post-processing that our engine does itself (softmax, argmax, invert to input grid, save).
POST_NEUTRAL = NEUTRAL | {"Activations", "AsDiscrete", "Invert", "SaveImage"}


def _short(target: str) -> str:
    name = target.rsplit(".", 1)[-1]
    return name[:-1] if name.endswith("d") and name[:-1] in _KNOWN_BASES else name


_KNOWN_BASES = {
    *NEUTRAL, *POST_NEUTRAL, "Orientation", "Spacing", "ScaleIntensityRange",
    "NormalizeIntensity", "CropForeground", "KeepLargestConnectedComponent",
    "ScaleIntensity", "Resize", "SpatialPad", "CenterSpatialCrop", "RandFlip",
}  # fmt: skip


class _Resolver:
    """Resolve raw config values: ``@id`` references and ``%`` macros, never ``$`` code."""

    def __init__(self, parser: Any, where: Path, trust_code: bool) -> None:
        self.parser, self.where, self.trust = parser, where, trust_code

    def __call__(self, value: Any, path: str) -> Any:
        if isinstance(value, str) and value.startswith("$"):
            if not self.trust:
                raise ModelError(
                    f"{self.where}: {path} is a Python expression {value!r}; evaluating it runs "
                    f"code, so it is refused ({TRUST_HINT})"
                )
            return self.parser.get_parsed_content(path)
        if isinstance(value, str) and value.startswith("@"):
            ref = value[1:]
            return self(self.parser.get(ref), ref)
        if isinstance(value, dict):
            return {k: self(v, f"{path}#{k}") for k, v in value.items()}
        if isinstance(value, list):
            return [self(v, f"{path}#{i}") for i, v in enumerate(value)]
        return value


def _bundle_root(src: Path, tmp: Path) -> Path:
    """Return the bundle folder (``src`` or the safely extracted zip)."""
    if src.is_dir():
        return src
    with zipfile.ZipFile(src) as z:
        for info in z.infolist():
            parts = PurePosixPath(info.filename).parts
            if info.filename.startswith("/") or ".." in parts:
                raise ModelError(f"{src}: unsafe path {info.filename!r} in the zip")
        z.extractall(tmp)
    metas = sorted(tmp.rglob("configs/metadata.json"))
    if not metas:
        raise ModelError(f"{src}: no configs/metadata.json in the zip")
    return metas[0].parent.parent


def _inference_config(root: Path) -> Path:
    for name in ("inference.json", "inference.yaml", "inference.yml"):
        if (root / "configs" / name).is_file():
            return root / "configs" / name
    raise ModelError(f"{root}: no configs/inference.json or .yaml in the bundle")


def _network(parser: Any, resolve: _Resolver, cfg: Path) -> tuple[str, dict[str, Any]]:
    """Return ``(monai class name, constructor kwargs)`` of ``network_def``."""
    from monai.bundle.config_item import ComponentLocator

    if "network_def" not in parser:
        raise ModelError(f"{cfg}: no network_def")
    raw = resolve(parser.get("network_def"), "network_def")
    if not isinstance(raw, dict) or "_target_" not in raw:
        raise ModelError(f"{cfg}: network_def has no _target_")
    target = str(raw["_target_"])
    module = ComponentLocator().get_component_module_name(target)
    full = target if "." in target else f"{module}.{target}" if isinstance(module, str) else target
    if not full.startswith("monai.networks.nets."):
        raise ModelError(
            f"{cfg}: network_def _target_ {target!r} is not a monai.networks.nets class; only "
            "MONAI networks can be imported"
        )
    bad = [k for k in raw if k.startswith("_") and k != "_target_"]
    if bad:
        raise ModelError(f"{cfg}: network_def keys {bad} are not supported")
    return full.rsplit(".", 1)[-1], {k: v for k, v in raw.items() if k != "_target_"}


def _transforms(parser: Any, resolve: _Resolver, key: str) -> list[tuple[str, dict[str, Any]]]:
    if key not in parser:
        return []
    raw = parser.get(key)
    if isinstance(raw, str) and raw.startswith("@"):
        return _transforms(parser, resolve, raw[1:])
    items = raw.get("transforms", []) if isinstance(raw, dict) else raw
    if isinstance(items, str) and items.startswith("@"):
        items = parser.get(items[1:])
    out = []
    for i, t in enumerate(items or []):
        if isinstance(t, str) and t.startswith("@"):
            t = parser.get(t[1:])
        if not isinstance(t, dict) or "_target_" not in t:
            raise ModelError(f"{key} transform {i} is not a MONAI transform config: {t!r}")
        name = _short(str(t["_target_"]))
        args = {}
        for k, v in t.items():
            if k.startswith("_"):
                continue
            try:
                args[k] = resolve(v, f"{key}#transforms#{i}#{k}")
            except ModelError as exc:  # code we do not run: refused only if the value is used
                args[k] = _Refused(str(exc))
        out.append((name, args))
    return out


class _Refused:
    """An argument we would have to evaluate: fine if unused, an error if read."""

    def __init__(self, why: str) -> None:
        self.why = why


def _arg(args: dict[str, Any], key: str, default: Any = None) -> Any:
    value = args.get(key, default)
    if isinstance(value, _Refused):
        raise ModelError(value.why)
    return value


def _card_from_transforms(
    pre: list[tuple[str, dict[str, Any]]], post: list[tuple[str, dict[str, Any]]], cfg: Path
) -> tuple[dict[str, Any], list[str], list[str]]:
    """Return ``(card fields, carried, notes)``; refuse any transform we cannot translate."""
    from geomed_seg.models import card as card_module

    fields: dict[str, Any] = {}
    carried: list[str] = []
    notes: list[str] = []
    for name, args in pre:
        if name in NEUTRAL:
            continue
        if name == "Orientation":
            fields["axcodes"] = str(_arg(args, "axcodes", "RAS")).upper()
            carried.append(f"Orientation -> axcodes {fields['axcodes']}")
        elif name == "Spacing":
            pixdim = _arg(args, "pixdim")
            pix = [float(v) for v in (pixdim if isinstance(pixdim, list | tuple) else [pixdim] * 3)]
            fields["spacing"], fields["spacing_unit"] = pix[::-1], "mm"  # (x, y, z) -> (z, y, x)
            carried.append(f"Spacing pixdim {pix} -> spacing (z, y, x) {pix[::-1]} mm")
        elif name == "ScaleIntensityRange":
            b_min, b_max = _arg(args, "b_min"), _arg(args, "b_max")
            if b_min is None or b_max is None:
                raise ModelError(f"{cfg}: ScaleIntensityRange without b_min/b_max is not supported")
            fields["normalisation"] = {
                "type": "scale_range", "a_min": float(_arg(args, "a_min")),
                "a_max": float(_arg(args, "a_max")), "b_min": float(b_min), "b_max": float(b_max),
                "clip": bool(_arg(args, "clip", False)),
            }  # fmt: skip
            carried.append("ScaleIntensityRange -> scale_range normalisation")
        elif name == "NormalizeIntensity":
            plain = _arg(args, "subtrahend") is None and _arg(args, "divisor") is None
            if _arg(args, "nonzero") and _arg(args, "channel_wise") and plain:
                if not hasattr(card_module, "NonZeroZScore"):
                    raise ModelError(
                        f"{cfg}: NormalizeIntensity(nonzero=True) needs the per-case "
                        "'nonzero_zscore' card normalisation, which this version lacks"
                    )
                fields["normalisation"] = {"type": "nonzero_zscore"}
                carried.append("NormalizeIntensity(nonzero, channel_wise) -> nonzero_zscore")
            else:
                raise ModelError(
                    f"{cfg}: preprocessing transform NormalizeIntensity with {args} cannot be "
                    "translated (only nonzero=True, channel_wise=True without subtrahend/divisor)"
                )
        elif name == "CropForeground":
            notes.append(
                "CropForeground not applied: the engine runs the whole volume and skips "
                "windows without foreground; labels outside the foreground box may differ"
            )
        else:
            raise ModelError(
                f"{cfg}: preprocessing transform {name} cannot be translated into a model card; "
                "refusing rather than dropping it"
            )
    for name, args in post:
        if name not in POST_NEUTRAL:
            raise ModelError(
                f"{cfg}: postprocessing transform {name} cannot be translated; refusing rather "
                "than dropping it"
            )
        if name == "Activations" and _arg(args, "sigmoid"):
            raise ModelError(
                f"{cfg}: postprocessing Activations(sigmoid=True): per-channel sigmoid outputs "
                "are not supported (the engine applies softmax to several channels)"
            )
    return fields, carried, notes


def _inferer(parser: Any, resolve: _Resolver, cfg: Path) -> tuple[dict[str, Any], str]:
    if "inferer" not in parser:
        return {}, "no inferer"
    raw = resolve(parser.get("inferer"), "inferer")
    name = _short(str(raw.get("_target_", "")))
    if name == "SlidingWindowInferer":
        out: dict[str, Any] = {"roi_size": [int(v) for v in raw["roi_size"]][::-1]}
        if "overlap" in raw:
            ov = raw["overlap"]
            if isinstance(ov, list | tuple):
                if len(set(ov)) != 1:
                    raise ModelError(f"{cfg}: per-axis overlap {ov} is not supported")
                ov = ov[0]
            out["overlap"] = float(ov)
        else:
            out["overlap"] = 0.25
        mode = str(raw.get("mode", "constant"))
        if mode not in ("gaussian", "constant"):
            raise ModelError(f"{cfg}: inferer mode {mode!r} is not supported")
        out["mode"] = mode
        out["blend"] = "logits"  # the inferer blends the network's logits; activation follows
        if "sigma_scale" in raw and float(raw["sigma_scale"]) != 0.125:
            raise ModelError(f"{cfg}: inferer sigma_scale {raw['sigma_scale']} is not supported")
        return out, f"SlidingWindowInferer roi {raw['roi_size']} (x, y, z), overlap, mode"
    if name == "SimpleInferer":
        return {}, "SimpleInferer (whole image): windows of the metadata spatial_shape"
    raise ModelError(f"{cfg}: inferer {name!r} cannot be translated")


def _weights(root: Path, trust: bool) -> tuple[dict[str, Any], Path, bool]:
    models = root / "models"
    for name in ("model.safetensors", "model.pt", "model.pth"):
        if (models / name).is_file():
            tensors, trusted = load_state_dict(models / name, trust_code=trust)
            return tensors, models / name, trusted
    if (models / "model.ts").is_file():
        obj, trusted = load_torch_file(models / "model.ts", trust_code=trust)
        return state_dict_of(obj, models / "model.ts"), models / "model.ts", trusted
    raise ModelError(f"{root}: no models/model.pt, model.safetensors or model.ts")


def run(src: Path, options: ImportOptions) -> ImportedModel:
    """Import the MONAI bundle ``src`` (folder or zip)."""
    with tempfile.TemporaryDirectory() as tmp:
        return _run(src, _bundle_root(src, Path(tmp)), options)


def _parse(root: Path, options: ImportOptions) -> tuple[Path, dict, Path, Any, _Resolver]:
    """Read ``metadata.json`` and the inference config; return them, the parser and resolver."""
    from monai.bundle import ConfigParser

    meta_path = root / "configs" / "metadata.json"
    meta = read_json(meta_path)
    cfg = _inference_config(root)
    parser = ConfigParser()
    try:
        parser.read_config(str(cfg))
        parser.read_meta(str(meta_path))
        parser.parse()  # macros and relative ids only; nothing is evaluated or instantiated
    except (ValueError, OSError, KeyError) as exc:
        raise ModelError(f"{cfg}: unreadable bundle config ({exc})") from exc
    return meta_path, meta, cfg, parser, _Resolver(parser, cfg, options.trust_code)


def _channels(
    src: Path, meta: dict, net_kwargs: dict, options: ImportOptions
) -> tuple[int, int, list, bool]:
    """Return ``(in_channels, out_channels, classes, classes from channel_def)``.

    ``in_channels``/``out_channels`` are taken out of ``net_kwargs`` (else from the
    metadata's data format).
    """
    fmt = meta.get("network_data_format", {})
    inp = fmt.get("inputs", {}).get("image", {})
    out = next(iter(fmt.get("outputs", {}).values()), {})
    in_channels = int(net_kwargs.pop("in_channels", inp.get("num_channels", 1)))
    n_out = int(net_kwargs.pop("out_channels", out.get("num_channels", 2)))
    channel_def = {int(k): str(v) for k, v in (out.get("channel_def") or {}).items()}
    classes = options.classes or classes_from_names(
        channel_def if len(channel_def) == n_out else [f"class_{i}" for i in range(n_out)]
    )
    if len(classes) != n_out:
        raise ModelError(f"{src}: {len(classes)} classes for {n_out} output channels")
    return in_channels, n_out, classes, bool(channel_def)


def _run(src: Path, root: Path, options: ImportOptions) -> ImportedModel:
    from geomed_seg.models.card import ModelCard
    from geomed_seg.models.registry import get_spec

    meta_path, meta, cfg, parser, resolve = _parse(root, options)
    net_name, net_kwargs = _network(parser, resolve, cfg)
    in_channels, n_out, classes, from_channel_def = _channels(src, meta, net_kwargs, options)
    pre = _transforms(parser, resolve, "preprocessing")
    post = _transforms(parser, resolve, "postprocessing")
    fields, carried, notes = _card_from_transforms(pre, post, cfg)
    inferer, inferer_note = _inferer(parser, resolve, cfg)
    carried = [f"network_def {net_name} (MONAI, spatial axes reversed)", *carried, inferer_note]
    if "roi_size" not in inferer and options.roi_size is None:
        shape = meta.get("network_data_format", {}).get("inputs", {}).get("image", {})
        shape = shape.get("spatial_shape")
        if not shape or not all(isinstance(v, int) for v in shape):
            raise ModelError(f"{meta_path}: no inferer roi_size and no numeric spatial_shape")
        inferer["roi_size"] = [int(v) for v in shape][::-1]
    if from_channel_def:
        carried.append("classes from metadata.json channel_def")
    tensors, weights, trusted = _weights(root, options.trust_code)
    kwargs = {"inner": get_spec(f"monai.{net_name}").name, "inner_kwargs": net_kwargs}
    module = build_with_weights(
        "reversed_axes", in_channels, n_out, kwargs, {f"net.{k}": v for k, v in tensors.items()},
        weights,
    )  # fmt: skip
    dims = int(net_kwargs.get("spatial_dims", 3))
    if dims != 3:
        raise ModelError(f"{cfg}: only 3D bundles are imported (spatial_dims={dims})")
    licence = meta.get("license") or meta.get("licence")
    card = ModelCard.from_dict(
        {
            "name": options.name or str(meta.get("name") or src.stem),
            "description": str(meta.get("description", ""))[:2000],
            "architecture": "reversed_axes",
            "architecture_kwargs": kwargs,
            "spatial_dims": 3,
            "in_channels": in_channels,
            "classes": classes,
            **fields,
            **inferer,
            **({"roi_size": list(options.roi_size)} if options.roi_size else {}),
            "licence": licence,
        },
        source=cfg,
    )
    if meta.get("copyright"):
        notes.append(f"copyright: {meta['copyright']}")
    authors = meta.get("authors", [])
    return ImportedModel(
        module,
        card,
        [meta_path, cfg, weights] if src.is_dir() else [src],  # a zip identifies the bundle
        licence=licence,
        authors=[str(a) for a in (authors if isinstance(authors, list) else [authors])],
        version=str(meta["version"]) if "version" in meta else None,
        carried=carried,
        notes=notes,
        trusted_code=trusted,
    )
