"""``evaluate``: score a label prediction against a reference, for one pair or two folders.

Overlap scores come from one streamed pass (:mod:`.overlap`), in bounded memory whatever
the image size; surface distances (:mod:`.surface`) and BraTS regions (:mod:`.brats`) load
the label arrays into memory and work per class / region cropped to the objects. Grids must
agree (``GeometryError`` naming both otherwise) unless ``resample_to="reference"``.

Every distance is physical: the spacing comes from the reference grid through
:func:`geomed_seg.metrics.spacing.distance_spacing` (mm for volumes, m for rasters with a
metric CRS), for the per-class surface metrics and the BraTS regions and lesions alike. Class
names come from :func:`geomed_seg.metrics.classes.resolve_classes`; a prediction label that
is no class is an error unless ``allow_unknown``.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from geomed_seg.core.grid import GeoGrid
from geomed_seg.core.image import Image
from geomed_seg.errors import GeometryError, InvalidInputError
from geomed_seg.metrics.align import align_to_reference
from geomed_seg.metrics.brats import (
    RegionResult,
    brats_metrics,
    global_nsd_tolerance,
    lesion_nsd_tolerance,
    region_definitions,
)
from geomed_seg.metrics.classes import check_unknown, resolve_classes
from geomed_seg.metrics.overlap import EmptyRule, OverlapResult, overlap_metrics
from geomed_seg.metrics.spacing import distance_spacing
from geomed_seg.metrics.surface import SurfaceScores, surface_metrics

logger = logging.getLogger(__name__)

ImageLike = Image | str | os.PathLike

#: Extra area/volume columns derived from the base unit.
_UNIT_CONVERSIONS = {"m2": {"ha": 1e-4, "km2": 1e-6}, "mm3": {"ml": 1e-3}}


@dataclass
class EvaluationResult:
    """Everything measured on one prediction/reference pair."""

    overlap: OverlapResult
    surface: dict[int, SurfaceScores] = field(default_factory=dict)
    brats: list[RegionResult] = field(default_factory=list)
    spacing: tuple[float, ...] = ()
    distance_unit: str = "px"
    pred_path: str | None = None
    ref_path: str | None = None
    classes_source: str = ""
    grid: str = ""
    tolerance: float | None = None
    brats_convention: str | None = None
    regions: dict[str, list[int]] = field(default_factory=dict)
    lesion_wise: bool = False
    brats_protocol: str = "panoptica"

    def metric_set(self) -> list[str]:
        """What was measured, one line per family, with units (for reports)."""
        names = ", ".join(self.overlap.names)
        out = [
            f"overlap per class ({names}; names from {self.classes_source or 'the labels'}): "
            f"Dice, IoU, Tversky, precision, recall; areas in {self.overlap.area_unit}"
        ]
        u = self.distance_unit
        if self.surface:
            out.append(
                f"surface per non-zero class (MONAI conventions): HD, HD95, ASSD in {u}; "
                f"NSD at {self.tolerance:g} {u}"
            )
        if self.brats:
            sp = self.spacing
            regions = ", ".join(f"{k} = labels {'+'.join(map(str, v))}"
                                for k, v in self.regions.items())  # fmt: skip
            line = (
                f"BraTS {self.brats_convention} regions ({regions}), as brats-evaluation: "
                f"global Dice, HD95 in {u}, NSD at {global_nsd_tolerance(sp):g} {u}"
            )
            if self.lesion_wise:
                line += (
                    f"; lesion-wise ({self.brats_protocol}): TP/FP/FN, F1, Dice, HD95 in {u}, "
                    f"NSD at {lesion_nsd_tolerance(sp):g} {u}"
                )
            out.append(line)
        return out

    def _tolerances(self) -> dict[str, float]:
        """NSD tolerances used, in :attr:`distance_unit`."""
        out = {}
        if self.surface and self.tolerance is not None:
            out["surface"] = float(self.tolerance)
        if self.brats:
            out["brats_global"] = global_nsd_tolerance(self.spacing)
            if self.lesion_wise:
                out["brats_lesionwise"] = lesion_nsd_tolerance(self.spacing)
        return out

    def headline(self) -> list[str]:
        """The key numbers, each naming its class or region."""
        ov = self.overlap
        fg = [c for c in ov.classes if c.index != 0] or ov.classes
        out = [", ".join(f"Dice {c.name} {c.dice:.4f}" for c in fg)]
        out += [
            f"region {r.region}: Dice {r.global_dsc:.4f}, HD95 {r.global_hd95:.4g} "
            f"{self.distance_unit}"
            for r in self.brats
        ]
        named = ", ".join(ov.names)
        out.append(
            f"mean over classes ({named}): Dice {ov.mean_dice:.4f}, IoU {ov.mean_iou:.4f}; "
            f"frequency-weighted IoU {ov.fw_iou:.4f}; overall accuracy {ov.overall_accuracy:.4f}"
        )
        return out

    def rows(self) -> list[dict[str, Any]]:
        """One flat dict per class (overlap + surface), then one per BraTS region."""
        out = []
        conv = _UNIT_CONVERSIONS.get(self.overlap.area_unit, {})
        for row in self.overlap.rows():
            for side in ("ref", "pred"):
                for unit, factor in conv.items():
                    row[f"{side}_area_{unit}"] = row[f"{side}_area"] * factor
            s = self.surface.get(row["index"])
            if s is not None:
                row.update({k: v for k, v in s.to_dict().items()})
                row["distance_unit"] = self.distance_unit
            out.append({"kind": "class", **row})
        out.extend(
            {"kind": "region", **r.row(), "distance_unit": self.distance_unit} for r in self.brats
        )
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly nested dict."""
        return {
            "pred": self.pred_path,
            "ref": self.ref_path,
            "grid": self.grid,
            "classes_source": self.classes_source,
            "metric_set": self.metric_set(),
            "headline": self.headline(),
            "overlap": self.overlap.to_dict(),
            "surface": {str(k): v.to_dict() for k, v in self.surface.items()},
            "brats": [r.row() for r in self.brats],
            "brats_regions": dict(self.regions),
            "nsd_tolerance": self._tolerances(),
            "spacing": list(self.spacing),
            "distance_unit": self.distance_unit,
        }


def _open(x: ImageLike) -> Image:
    if isinstance(x, Image):
        return x
    from geomed_seg.io.registry import open_image

    return open_image(x)


def _sample_size(grid) -> tuple[float, str]:
    """Return (area or volume of one sample, its unit).

    Rasters: the sample area is the true ground area (:mod:`geomed_seg.core.ground`): one
    constant in m² where planar areas are exact, the mean pixel area where they vary (the
    class areas are then summed per pixel by :func:`_ground_areas`), CRS units² without a
    ground. Volumes: the voxel volume in mm³. (Distances and their spacing come from
    :mod:`geomed_seg.metrics.spacing`.)
    """
    if isinstance(grid, GeoGrid):
        gu = grid.ground
        area = gu.constant_area if gu.constant_area is not None else gu.mean_pixel_area
        return area, ("m2" if gu.metric else "crs_units2")
    return grid.voxel_volume, "mm3"


def _ground_areas(ov: OverlapResult, grid: GeoGrid, pred: Any, ref: Any, valid: Any, ignore):
    """Return ``ov`` with class areas summed from per-pixel ground areas (varying-area grids).

    The masks match the confusion matrix: reference areas over valid samples, prediction
    areas over valid samples whose reference label is one of the scored labels.
    """
    import dask.array as da

    from geomed_seg.core.ground import label_areas

    ok = da.ones(ref.shape, dtype=bool, chunks=ref.chunks) if valid is None else valid
    if ignore is not None:
        ok = ok & (ref != ignore)
    scored = ok & da.isin(ref, np.asarray(ov.labels))
    offset = -min(0, *ov.labels)  # bincount needs non-negative labels

    def areas(lab: Any, mask: Any) -> np.ndarray:
        shifted = da.where(mask, lab.astype(np.int64) + offset, 0)
        return label_areas(grid, da.where(shifted >= 0, shifted, 0), mask & (shifted >= 0))

    ref_a, pred_a = areas(ref, scored), areas(pred, scored)

    def get(a: np.ndarray, label: int) -> float:
        i = label + offset
        return float(a[i]) if 0 <= i < len(a) else 0.0

    classes = [
        replace(c, ref_area=get(ref_a, c.index), pred_area=get(pred_a, c.index)) for c in ov.classes
    ]
    extra = dict(ov.extra, area_method=grid.ground.method)
    return replace(ov, classes=classes, extra=extra)


def _labels(img: Image) -> Any:
    if img.n_channels != 1:
        raise InvalidInputError(f"label images need one channel/band, got {img.n_channels}")
    return img.darray[0]


def evaluate(
    pred: ImageLike,
    ref: ImageLike,
    *,
    classes: str | Iterable | None = None,
    ignore_index: int | None = None,
    tversky: tuple[float, float] = (0.5, 0.5),
    surface: bool = False,
    tolerance: float = 1.0,
    brats: str | None = None,
    lesion_wise: bool = False,
    resample_to: str | None = None,
    empty: EmptyRule = "brats",
    brats_protocol: str = "panoptica",
    card: str | None = None,
    allow_unknown: bool = False,
    classes_source: str | None = None,
) -> EvaluationResult:
    """Return overlap (and optionally surface / BraTS) scores of ``pred`` against ``ref``.

    Parameters
    ----------
    pred, ref : Image or path
        Single-channel label images (paths opened with :func:`geomed_seg.io.registry.open_image`).
    classes : str, mapping or ClassInfo list, optional
        ``"0:background,1:water"``; default: from ``card``, the ``brats`` dataset card, the
        files' class tables, else every label found (:func:`.classes.resolve_classes`).
    ignore_index : int, optional
        Reference label excluded from all scores (the reference's nodata is always excluded).
    tversky : (alpha, beta)
        False-positive and false-negative weights of the Tversky index.
    surface : bool
        Also compute HD, HD95, ASSD and NSD (MONAI conventions) for every non-zero class.
    tolerance : float
        NSD tolerance of the per-class surface metrics in the grid's distance unit (mm for
        volumes, m for rasters with a metric CRS).
    brats : {"legacy", "2023", "2024"} or card name, optional
        Also compute BraTS region metrics as brats-evaluation (volumes only).
    lesion_wise : bool
        With ``brats``: lesion detection and lesion-wise scores.
    resample_to : {None, "reference"}
        Resample the prediction (nearest) onto the reference grid instead of raising.
    empty : {"brats", "nan"}
        Overlap score of a class absent from both.
    brats_protocol : {"panoptica", "brats2023"}
        Lesion-wise protocol (see :mod:`geomed_seg.metrics.brats`).
    card : str, optional
        Dataset card name/YAML or checkpoint whose classes name the labels.
    allow_unknown : bool
        Accept prediction labels that are no class (a warning with counts; they count as
        misses) instead of raising :class:`InvalidInputError`.
    classes_source : str, optional
        Where ``classes`` come from, for reports (default ``"--classes"`` for a string).
    """
    pred_img, ref_img = _open(pred), _open(ref)
    pred_name = str(pred) if not isinstance(pred, Image) else pred.attrs.get("source", "prediction")
    ref_name = str(ref) if not isinstance(ref, Image) else ref.attrs.get("source", "reference")
    pred_img = align_to_reference(pred_img, ref_img, resample_to)
    table = resolve_classes(classes, card=card, brats=brats, reference=ref_img,
                            prediction=pred_img)  # fmt: skip
    infos = table.classes
    sample, area_unit = _sample_size(ref_img.grid)
    needed = bool(surface or brats)
    try:
        dist = distance_spacing(ref_img.grid, ref_name, quiet=not needed)
    except GeometryError:
        if needed:
            raise
        dist = None  # a sheared grid: no distance asked, none reported
    valid = None
    if ref_img.nodata is not None or ref_img.mask is not None:
        valid = ref_img.valid_mask()
    p_lab, r_lab = _labels(pred_img), _labels(ref_img)
    ov = overlap_metrics(
        p_lab,
        r_lab,
        labels=[c.index for c in infos] or None,
        names=[c.name for c in infos] or None,
        valid=valid,
        ignore_index=ignore_index,
        tversky=tversky,
        empty=empty,
        sample_size=sample,
        area_unit=area_unit,
        pred_nodata=pred_img.nodata,
    )
    check_unknown(ov.outside_pred, table, pred_name, allow_unknown=allow_unknown)
    if ov.excluded_ref and infos:
        logger.warning(
            "%s: reference labels not in the classes excluded from every score: %s",
            ref_name,
            ", ".join(f"{k} ({v} samples)" for k, v in sorted(ov.excluded_ref.items())),
        )
    if isinstance(ref_img.grid, GeoGrid) and ref_img.grid.ground.constant_area is None:
        ov = _ground_areas(ov, ref_img.grid, p_lab, r_lab, valid, ignore_index)
    result = EvaluationResult(
        ov,
        spacing=dist.spacing if dist else (),
        distance_unit=dist.unit if dist else "",
        classes_source=classes_source if classes_source and infos else table.source,
        grid=ref_img.grid.describe(),
        tolerance=tolerance if surface else None,
    )
    result.pred_path = None if isinstance(pred, Image) else str(pred)
    result.ref_path = None if isinstance(ref, Image) else str(ref)
    if surface or brats:
        p_np = np.asarray(p_lab.compute())
        r_np = np.asarray(r_lab.compute())
        if valid is not None or ignore_index is not None:
            keep = np.ones(r_np.shape, bool) if valid is None else np.asarray(valid.compute())
            if ignore_index is not None:
                keep &= r_np != ignore_index
            p_np = np.where(keep, p_np, 0)
            r_np = np.where(keep, r_np, 0)
        if surface:
            for label in ov.labels:
                if label == 0:
                    continue
                result.surface[label] = surface_metrics(
                    p_np == label, r_np == label, dist.spacing, tolerance=tolerance
                )
        if brats:
            if ref_img.kind != "volume":
                raise InvalidInputError(
                    f"{ref_name}: BraTS metrics need volumes (NIfTI/DICOM), got a raster"
                )
            result.brats_convention, result.lesion_wise = brats, lesion_wise
            result.brats_protocol = brats_protocol
            result.regions = region_definitions(brats)
            result.brats = brats_metrics(
                p_np,
                r_np,
                dist.spacing,
                convention=brats,
                lesion_wise=lesion_wise,
                protocol=brats_protocol,  # type: ignore[arg-type]
            )
    return result


# -- folders ----------------------------------------------------------------------------
def _case_name(p: Path) -> str:
    """The file name without its format suffix (the registry's, longest first: ``.nii.gz``)."""
    from geomed_seg.io.registry import known_suffixes

    name = p.name
    for s in known_suffixes():
        if name.lower().endswith(s):
            return name[: -len(s)]
    return p.stem


def _listing(folder: Path) -> dict[str, Path]:
    return {_case_name(p): p for p in sorted(folder.iterdir()) if not p.name.startswith(".")}


@dataclass
class FolderResult:
    """Per-case results of two folders paired by file name, plus what could not be paired."""

    cases: dict[str, EvaluationResult]
    missing_pred: list[str]
    missing_ref: list[str]

    @property
    def complete(self) -> bool:
        """True when every reference has a prediction and vice versa."""
        return not self.missing_pred and not self.missing_ref

    def case_rows(self) -> list[dict[str, Any]]:
        """One row per case and class/region."""
        return [{"case": c, **row} for c, res in self.cases.items() for row in res.rows()]

    def case_table(self, columns: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """One row per case, then a ``mean`` row (NaN-skipping mean over cases).

        Columns are ``case``, ``n_cases`` (in the mean row) and ``class_<name>_<metric>`` /
        ``region_<name>_<metric>`` for every numeric metric (or only the metrics in
        ``columns``), so a spreadsheet gets one line per case.
        """
        rows: list[dict[str, Any]] = []
        for case, res in self.cases.items():
            row: dict[str, Any] = {"case": case}
            for r in res.rows():
                name = _slug(str(r["name"] if r["kind"] == "class" else r["region"]))
                for col, v in r.items():
                    if col in ("index", "kind") or isinstance(v, bool):
                        continue
                    if not isinstance(v, (int, float)) or (columns and col not in columns):
                        continue
                    row[f"{r['kind']}_{name}_{col}"] = v
            rows.append(row)
        cols = rows_to_columns(rows)
        mean: dict[str, Any] = {"case": "mean", "n_cases": len(rows)}
        for col in cols[1:]:
            vals = np.array([r.get(col, math.nan) for r in rows], dtype=float)
            finite = vals[~np.isnan(vals)]
            mean[col] = float(finite.mean()) if finite.size else math.nan
        return [*rows, mean]

    def summary(self) -> list[dict[str, Any]]:
        """Mean, std and median over cases of every numeric column, per class/region."""
        groups: dict[tuple, list[dict]] = {}
        for row in self.case_rows():
            key = (
                row["kind"],
                row.get("index", row.get("region")),
                row.get("name", row.get("region")),
            )
            groups.setdefault(key, []).append(row)
        out = []
        for (kind, _key, name), rows in groups.items():
            for stat, fn in (("mean", np.nanmean), ("std", np.nanstd), ("median", np.nanmedian)):
                entry: dict[str, Any] = {"kind": kind, "name": name, "stat": stat, "n": len(rows)}
                for col, v in rows[0].items():
                    if isinstance(v, (int, float)) and not isinstance(v, bool) and col != "index":
                        vals = np.array([r[col] for r in rows], dtype=float)
                        finite = vals[~np.isnan(vals)]
                        entry[col] = float(fn(finite)) if finite.size else math.nan
                out.append(entry)
        return out


def evaluate_folder(
    pred_dir: str | os.PathLike,
    ref_dir: str | os.PathLike,
    *,
    max_workers: int | None = None,
    **kwargs: Any,
) -> FolderResult:
    """Evaluate every reference in ``ref_dir`` against the prediction of the same case name.

    Files pair by name without format suffix (``case1.nii.gz`` ↔ ``case1.nii.gz`` or
    ``case1.tif``); cases present on one side only are listed in ``missing_pred`` /
    ``missing_ref``, never silently skipped. Cases run in parallel threads; ``kwargs`` go to
    :func:`evaluate`.
    """
    pdir, rdir = Path(pred_dir), Path(ref_dir)
    for d in (pdir, rdir):
        if not d.is_dir():
            raise InvalidInputError(f"{d}: not a folder")
    preds, refs = _listing(pdir), _listing(rdir)
    names = [n for n in refs if n in preds]
    if not names:
        raise InvalidInputError(f"{pdir} and {rdir}: no case names in common")

    def one(name: str) -> EvaluationResult:
        return evaluate(preds[name], refs[name], **kwargs)

    workers = max_workers or min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(one, names))
    return FolderResult(
        cases=dict(zip(names, results, strict=True)),
        missing_pred=sorted(set(refs) - set(preds)),
        missing_ref=sorted(set(preds) - set(refs)),
    )


def _slug(name: str) -> str:
    return "_".join(name.split()) or "unnamed"


def rows_to_columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Union of keys in first-seen order (CSV header)."""
    cols: list[str] = []
    for r in rows:
        cols.extend(k for k in r if k not in cols)
    return cols
