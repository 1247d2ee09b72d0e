"""One entry point for every classical method: ``run_classical(method, image, ...)``.

This is the public function behind ``geomed-seg classical METHOD``; it maps a method name
and plain options (numbers, world coordinates) onto the functions of this package and
returns the output image with its class table (``None`` for continuous outputs).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from geomed_seg.core.image import Image
from geomed_seg.core.labels import ClassInfo
from geomed_seg.errors import InvalidInputError

METHODS = (
    "ndwi",
    "mndwi",
    "ndvi",
    "ndbi",
    "otsu",
    "multiotsu",
    "sar-threshold",
    "canny",
    "watershed",
    "kmeans",
    "slic",
    "region-grow",
    "grabcut",
    "chan-vese",
    "geodesic",
    "instances",
)

WATER = [ClassInfo(0, "land", (160, 130, 90)), ClassInfo(1, "water", (30, 90, 200))]
BINARY = [ClassInfo(0, "background", (0, 0, 0)), ClassInfo(1, "foreground", (255, 255, 0))]


@dataclass
class ClassicalResult:
    """What a method returns: the output image, its classes, and facts worth reporting."""

    image: Image
    classes: list[ClassInfo] | None = None
    facts: dict[str, Any] = field(default_factory=dict)


def with_band_names(image: Image, names: Sequence[str] | str | None) -> Image:
    """Return ``image`` with ``attrs["band_names"]`` set (``"blue,green,..."`` or a list)."""
    if names is None:
        return image
    names = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
    if len(names) != image.n_channels:
        raise InvalidInputError(f"{len(names)} band names given for {image.n_channels} bands")
    return replace(image, attrs={**image.attrs, "band_names": names})


def _need(value: Any, what: str, method: str) -> Any:
    if value is None:
        raise InvalidInputError(f"method {method!r} needs {what}")
    return value


def _classes(n: int) -> list[ClassInfo]:
    return [ClassInfo(i, f"class_{i}") for i in range(n)]


def run_classical(
    method: str,
    image: Image,
    *,
    band: str | int = 1,
    bands: dict[str, str | int] | None = None,
    threshold: float | None = None,
    otsu: bool = False,
    classes: int = 3,
    sigma: float = 1.0,
    low: float | None = None,
    high: float | None = None,
    halo: int = 32,
    seed: Sequence[float] | None = None,
    box: Sequence[float] | None = None,
    tolerance: float | None = None,
    radius: int = 128,
    n_segments: int = 100,
    compactness: float = 10.0,
    iterations: int = 100,
    db_input: bool = False,
) -> ClassicalResult:
    """Run classical ``method`` (see :data:`METHODS`) on ``image``; return a ``ClassicalResult``.

    World coordinates (``seed``, ``box``) are CRS ``x, y`` for rasters and RAS mm for
    volumes. Index methods return the float index unless ``threshold`` or ``otsu`` asks for
    a water/foreground mask.
    """
    from geomed_seg.classical import clustering, interactive, local, thresholds
    from geomed_seg.classical.indices import INDEX_BINS, INDEX_RANGE, INDICES, spectral_index

    m = method.lower()
    if m not in METHODS:
        raise InvalidInputError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if m in INDICES:
        idx = spectral_index(image, m, bands)
        if threshold is None and not otsu:
            return ClassicalResult(idx)
        t = (
            thresholds.otsu_threshold(idx, INDEX_BINS, INDEX_RANGE)
            if threshold is None
            else float(threshold)
        )
        return ClassicalResult(
            thresholds.apply_thresholds(idx, [t]),
            WATER if m != "ndvi" else BINARY,
            {"threshold": t},
        )
    if m in ("otsu", "multiotsu"):
        one = _one_band(image, band)
        lab, ts = thresholds.otsu_labels(one, classes=2 if m == "otsu" else classes)
        return ClassicalResult(lab, _classes(len(ts) + 1), {"thresholds": ts})
    if m == "sar-threshold":
        from geomed_seg.classical.indices import band_index

        lab, t = thresholds.sar_water(
            image, threshold_db=threshold, band=band_index(image, band), linear=not db_input
        )
        return ClassicalResult(lab, WATER, {"threshold_db": t})
    if m == "canny":
        return ClassicalResult(
            local.canny(image, band=band, sigma=sigma, low_threshold=low, high_threshold=high),
            BINARY,
        )
    if m == "watershed":
        out = local.watershed(image, band=band, threshold=threshold, halo=halo)
        from geomed_seg.instances.components import relabel_sequential

        ids, n = relabel_sequential(out.darray[0])
        return ClassicalResult(
            Image.from_array(ids[None], image.grid, chunks=(1, *ids.chunks)), None, {"objects": n}
        )
    if m == "kmeans":
        return ClassicalResult(clustering.kmeans(image, n_clusters=classes), _classes(classes))
    if m == "slic":
        return ClassicalResult(
            clustering.slic(image, n_segments=n_segments, compactness=compactness)
        )
    if m == "region-grow":
        out = interactive.region_grow(
            image,
            _need(seed, "--seed x,y", m),
            tolerance=_need(tolerance, "--tolerance", m),
            band=band,
            radius=radius,
        )
        return ClassicalResult(out, BINARY)
    if m == "grabcut":
        return ClassicalResult(
            interactive.grabcut(
                image, _need(box, "--box x0,y0,x1,y1", m), iterations=min(iterations, 20)
            ),
            BINARY,
        )
    if m in ("chan-vese", "geodesic"):
        out = interactive.active_contour(
            image,
            _need(seed, "--seed", m),
            radius=radius,
            band=band,
            method=m,
            iterations=iterations,
        )
        return ClassicalResult(out, BINARY)
    # instances: the input is a semantic label image
    from geomed_seg.instances.instances import semantic_to_instances

    inst = semantic_to_instances(image)
    return ClassicalResult(inst, None, {"instances": inst.attrs["n_instances"]})


def _one_band(image: Image, band: str | int) -> Image:
    from geomed_seg.classical.indices import band_index

    b = band_index(image, band)
    return Image.from_array(
        image.darray[b][None], image.grid, nodata=image.nodata, attrs=dict(image.attrs)
    )


def classical_file(
    method: str,
    input_path: str | os.PathLike,
    output: str | os.PathLike,
    *,
    overwrite: bool = False,
    band_names: str | Sequence[str] | None = None,
    table: str | os.PathLike | None = None,
    panoptic: str | os.PathLike | None = None,
    things: Sequence[int] | None = None,
    **options: Any,
) -> ClassicalResult:
    """Open ``input_path``, run :func:`run_classical`, write ``output``.

    For ``method="instances"`` also the instance ``table`` (.csv/.json) and a ``panoptic``
    output: a raster/volume of ``class * 1000 + k`` (any writable suffix), or for ``.png``
    a COCO-panoptic PNG plus its ``.json`` beside it. ``things`` are the instance classes
    (default: every non-zero class).
    """
    from geomed_seg.core.dtypes import check_compute_dtype
    from geomed_seg.io.registry import open_image
    from geomed_seg.io.transaction import OutputTransaction

    if (table is not None or panoptic is not None) and method != "instances":
        raise InvalidInputError("--table/--panoptic are only written by the 'instances' method")
    outputs = [output, table, panoptic]
    if panoptic is not None and Path(panoptic).suffix.lower() == ".png":
        outputs.append(Path(panoptic).with_suffix(".json"))
    # all outputs are checked before computing and appear together (or none does)
    txn = OutputTransaction(
        [o for o in outputs if o is not None], overwrite=overwrite, inputs=[input_path]
    )
    image = with_band_names(open_image(input_path), band_names)
    image = check_compute_dtype(image, input_path)
    with txn:
        return _write_classical(method, image, output, overwrite, table, panoptic, things,
                                options)  # fmt: skip


def _write_classical(method, image, output, overwrite, table, panoptic, things, options):
    """Run ``method`` and write its outputs (inside :func:`classical_file`'s transaction)."""
    from geomed_seg.io.registry import write_image

    result = run_classical(method, image, **options)
    kw = {"classes": result.classes} if result.classes else {}
    write_image(result.image, output, overwrite=overwrite, **kw)
    if table is None and panoptic is None:
        return result
    from geomed_seg.instances.instances import instance_table, write_table

    tab = instance_table(result.image, image)
    if table is not None:
        write_table(tab, table, overwrite=overwrite)
        result.facts["table"] = str(Path(table))
    if panoptic is not None:
        from geomed_seg.instances.panoptic import panoptic_ids, write_coco_panoptic

        th = sorted(set(tab["class"].tolist())) if things is None else list(things)
        pan = panoptic_ids(image, result.image, tab, things=th)
        p = Path(panoptic)
        if p.suffix.lower() == ".png":
            write_coco_panoptic(pan, p, p.with_suffix(".json"), things=th, overwrite=overwrite)
        else:
            write_image(pan, p, overwrite=overwrite)
        result.facts["panoptic"] = str(p)
    return result
