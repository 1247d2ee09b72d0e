"""The built-in classical methods: each a registry entry with its own options model.

Importing this module registers them (:mod:`geomed_seg.classical.registry` does it on first
lookup). Class tables come from data catalog cards (``water_mask``, ``binary_mask``,
``brats2023``), never from code; methods whose classes depend on the data (Otsu, k-means)
name them ``class_<k>``. The heavy libraries are imported inside each ``run``, so listing
the methods stays cheap.
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
from pydantic import Field

from geomed_seg.classical.registry import (
    ClassicalMethod,
    ClassicalResult,
    MethodOptions,
    SceneThreshold,
    register,
)
from geomed_seg.core.image import Image
from geomed_seg.core.labels import ClassInfo
from geomed_seg.errors import InvalidInputError

Band = Annotated[str | int, Field(description="band: 1-based number or name")]
Seed = Annotated[list[float], Field(min_length=2, max_length=3, description="world x,y | R,A,S")]


def _one_band(image: Image, band: str | int) -> Image:
    from geomed_seg.classical.indices import band_index

    b = band_index(image, band)
    return Image.from_array(
        image.darray[b][None], image.grid, nodata=image.nodata, attrs=dict(image.attrs)
    )


def _numbered(n: int) -> list[ClassInfo]:
    return [ClassInfo(i, f"class_{i}") for i in range(n)]


def threshold_values(
    values: Image,
    threshold: float | None,
    scene: SceneThreshold,
    *,
    below_is_one: bool = False,
    classes: list[ClassInfo] | None = None,
) -> ClassicalResult:
    """Return binary labels of 1-band ``values`` at ``threshold`` (scene-wide Otsu if None).

    ``values > t`` is class 1 (``below_is_one``: ``values < t``); 255 where ``values`` is
    nodata. The result's ``thresholding`` says how ``t`` was chosen (and, for Otsu, how
    separable the histogram was; a histogram that is not bimodal is logged as a warning).
    """
    from geomed_seg.classical.thresholds import apply_thresholds, otsu_decision

    if threshold is None:
        d = otsu_decision(values, scene.bins, scene.value_range, scene.classes)
        t = d.thresholds[0]
        how = {"scope": "scene", "how": f"Otsu, separability eta {d.eta:.3f}", **d.as_dict()}
    else:
        t, how = float(threshold), {"scope": "fixed", "how": "fixed"}
    labels = apply_thresholds(values, [t], below_is_one=below_is_one)
    return ClassicalResult(labels, classes, threshold=t, thresholding=how)


# -- spectral indices ----------------------------------------------------------------------
class IndexOptions(MethodOptions):
    """A normalised-difference index; thresholded when ``threshold`` or ``otsu`` is given."""

    bands: dict[str, str | int] | None = Field(
        None, description="index roles -> band (name or 1-based), e.g. green=2,nir=4"
    )
    threshold: float | None = Field(None, description="fixed threshold (index units)")
    otsu: bool = Field(False, description="threshold at the scene-wide Otsu threshold")


def _index_method(name: str, table: str, summary: str) -> ClassicalMethod:
    from geomed_seg.classical.indices import INDEX_BINS, INDEX_RANGE

    def values(image: Image, o: IndexOptions) -> Image:
        from geomed_seg.classical.indices import spectral_index

        return spectral_index(image, name, o.bands)

    scene = SceneThreshold(values, INDEX_RANGE, INDEX_BINS)

    def run(image: Image, o: IndexOptions) -> ClassicalResult:
        idx = values(image, o)
        if o.threshold is None and not o.otsu:
            return ClassicalResult(idx)
        res = threshold_values(idx, o.threshold, scene, classes=method.class_table())
        res.facts["threshold"] = res.threshold
        return res

    method = ClassicalMethod(name, run, IndexOptions, table, summary, scene)
    return method


# -- scene-wide thresholds -----------------------------------------------------------------
class OtsuOptions(MethodOptions):
    band: Band = 1


class MultiOtsuOptions(MethodOptions):
    band: Band = 1
    classes: int = Field(3, ge=2, le=32, description="number of classes")


def _otsu(image: Image, o: OtsuOptions | MultiOtsuOptions) -> ClassicalResult:
    from geomed_seg.classical.thresholds import otsu_labels

    lab, ts = otsu_labels(_one_band(image, o.band), classes=getattr(o, "classes", 2))
    return ClassicalResult(lab, _numbered(len(ts) + 1), {"thresholds": ts})


class SarOptions(MethodOptions):
    band: Band = 1
    threshold: float | None = Field(None, description="fixed threshold in dB")
    db_input: bool = Field(False, description="the band already holds dB (else linear)")


def _sar_values(image: Image, o: SarOptions) -> Image:
    from geomed_seg.classical.indices import band_index
    from geomed_seg.classical.thresholds import sar_db

    return sar_db(image, band_index(image, o.band), not o.db_input)


# dB is unbounded (and a dB band may hold anything): bins over the data's min/max
SAR_SCENE = SceneThreshold(_sar_values, None, 1024)


def _sar(image: Image, o: SarOptions) -> ClassicalResult:
    res = threshold_values(_sar_values(image, o), o.threshold, SAR_SCENE, below_is_one=True,
                           classes=SAR.class_table())  # fmt: skip
    res.facts["threshold_db"] = res.threshold
    return res


class T2fOptions(MethodOptions):
    threshold: float | None = Field(None, description="fixed T2-FLAIR threshold")
    label: int = Field(2, ge=1, le=254, description="label value of the whole tumour")
    channel: str = Field("t2f", description="name of the T2-FLAIR channel")


def _t2f(image: Image, o: T2fOptions) -> ClassicalResult:
    """Whole-tumour baseline: the brightest multi-Otsu class of T2-FLAIR inside the head."""
    from skimage.filters import threshold_multiotsu, threshold_otsu

    names = [n.lower() for n in image.channel_names or []]
    if o.channel.lower() not in names:
        raise InvalidInputError(
            f"{image.attrs.get('source') or 'input'}: method t2f-otsu needs a "
            f"{o.channel!r} channel; channels are {names}"
        )
    t2f = np.asarray(image.darray[names.index(o.channel.lower())].compute(), np.float32)
    head = t2f > threshold_otsu(t2f)
    t = float(o.threshold) if o.threshold is not None else None
    if t is None:
        t = float(threshold_multiotsu(t2f[head], classes=3)[-1])
    lab = ((t2f > t) & head).astype(np.uint8) * np.uint8(o.label)
    labels = Image.from_array(lab[None], image.grid, attrs={"source": image.attrs.get("source")})
    table = {c.name: c for c in T2F.class_table() or []}
    classes = [ClassInfo(0, table["background"].name, table["background"].color),
               ClassInfo(o.label, "SNFH", table["SNFH"].color)]  # fmt: skip
    scope = "fixed" if o.threshold is not None else "case"
    return ClassicalResult(labels, classes, {"threshold": t}, threshold=t,
                           thresholding={"scope": scope})  # fmt: skip


# -- local and interactive methods ----------------------------------------------------------
class CannyOptions(MethodOptions):
    band: Band = 1
    sigma: float = Field(1.0, gt=0, description="Gaussian sigma (pixels)")
    low: float | None = Field(None, description="low hysteresis threshold")
    high: float | None = Field(None, description="high hysteresis threshold")


def _canny(image: Image, o: CannyOptions) -> ClassicalResult:
    from geomed_seg.classical import local

    out = local.canny(image, band=o.band, sigma=o.sigma, low_threshold=o.low,
                      high_threshold=o.high)  # fmt: skip
    return ClassicalResult(out, CANNY.class_table())


class WatershedOptions(MethodOptions):
    band: Band = 1
    threshold: float | None = Field(None, description="foreground above this value")
    halo: int = Field(32, ge=0, description="tile halo (pixels)")


def _watershed(image: Image, o: WatershedOptions) -> ClassicalResult:
    from geomed_seg.classical import local
    from geomed_seg.instances.components import relabel_sequential

    out = local.watershed(image, band=o.band, threshold=o.threshold, halo=o.halo)
    ids, n = relabel_sequential(out.darray[0])
    img = Image.from_array(ids[None], image.grid, chunks=(1, *ids.chunks))
    return ClassicalResult(img, None, {"objects": n})


class KMeansOptions(MethodOptions):
    classes: int = Field(3, ge=2, le=255, description="number of clusters")


def _kmeans(image: Image, o: KMeansOptions) -> ClassicalResult:
    from geomed_seg.classical import clustering

    return ClassicalResult(clustering.kmeans(image, n_clusters=o.classes), _numbered(o.classes))


class SlicOptions(MethodOptions):
    n_segments: int = Field(100, ge=1, description="superpixels over the whole image")
    compactness: float = Field(10.0, gt=0)


def _slic(image: Image, o: SlicOptions) -> ClassicalResult:
    from geomed_seg.classical import clustering

    return ClassicalResult(
        clustering.slic(image, n_segments=o.n_segments, compactness=o.compactness)
    )


class RegionGrowOptions(MethodOptions):
    seed: Seed
    tolerance: float = Field(ge=0, description="intensity tolerance around the seed value")
    band: Band = 1
    radius: int = Field(128, ge=1, description="window half-size (pixels) around the seed")


def _region_grow(image: Image, o: RegionGrowOptions) -> ClassicalResult:
    from geomed_seg.classical import interactive

    out = interactive.region_grow(image, o.seed, tolerance=o.tolerance, band=o.band,
                                  radius=o.radius)  # fmt: skip
    return ClassicalResult(out, REGION_GROW.class_table())


class GrabCutOptions(MethodOptions):
    box: list[float] = Field(min_length=4, max_length=4, description="world x0,y0,x1,y1")
    iterations: int = Field(100, ge=1, description="iterations (at most 20 are run)")


def _grabcut(image: Image, o: GrabCutOptions) -> ClassicalResult:
    from geomed_seg.classical import interactive

    out = interactive.grabcut(image, o.box, iterations=min(o.iterations, 20))
    return ClassicalResult(out, GRABCUT.class_table())


class ContourOptions(MethodOptions):
    seed: Seed
    radius: int = Field(128, ge=1, description="window half-size (pixels) around the seed")
    band: Band = 1
    iterations: int = Field(100, ge=1)


def _contour(kind: str):
    def run(image: Image, o: ContourOptions) -> ClassicalResult:
        from geomed_seg.classical import interactive

        out = interactive.active_contour(image, o.seed, radius=o.radius, band=o.band,
                                         method=kind, iterations=o.iterations)  # fmt: skip
        return ClassicalResult(out, CONTOURS[kind].class_table())

    return run


class NoOptions(MethodOptions):
    pass


def _instances(image: Image, o: NoOptions) -> ClassicalResult:
    from geomed_seg.instances.instances import semantic_to_instances

    inst = semantic_to_instances(image)
    return ClassicalResult(inst, None, {"instances": inst.attrs["n_instances"]})


WATER, BINARY = "water_mask", "binary_mask"
for _name, _table, _what in (
    ("ndwi", WATER, "NDWI (green, nir); water mask with --otsu or --threshold"),
    ("mndwi", WATER, "MNDWI (green, swir1); water mask with --otsu or --threshold"),
    ("ndvi", BINARY, "NDVI (nir, red); vegetation mask with --otsu or --threshold"),
    ("ndbi", BINARY, "NDBI (swir1, nir); built-up mask with --otsu or --threshold"),
):
    register(_index_method(_name, _table, _what))
register(ClassicalMethod("otsu", _otsu, OtsuOptions, None, "scene-wide Otsu of one band"))
register(ClassicalMethod("multiotsu", _otsu, MultiOtsuOptions, None,
                         "scene-wide multi-Otsu of one band into --classes classes"))  # fmt: skip
SAR = register(ClassicalMethod("sar-threshold", _sar, SarOptions, WATER,
                               "SAR water: backscatter (dB) below Otsu or --threshold",
                               SAR_SCENE))  # fmt: skip
T2F = register(ClassicalMethod("t2f-otsu", _t2f, T2fOptions, "brats2023",
                               "whole tumour: bright T2-FLAIR multi-Otsu class in the head"))  # fmt: skip
CANNY = register(ClassicalMethod("canny", _canny, CannyOptions, BINARY, "Canny edges"))
register(ClassicalMethod("watershed", _watershed, WatershedOptions, None,
                         "marker watershed objects (tiled with a halo)"))  # fmt: skip
register(ClassicalMethod("kmeans", _kmeans, KMeansOptions, None, "k-means of the bands"))
register(ClassicalMethod("slic", _slic, SlicOptions, None, "SLIC superpixels"))
REGION_GROW = register(ClassicalMethod("region-grow", _region_grow, RegionGrowOptions, BINARY,
                                       "region growing from --seed"))  # fmt: skip
GRABCUT = register(ClassicalMethod("grabcut", _grabcut, GrabCutOptions, BINARY,
                                   "GrabCut inside --box"))  # fmt: skip
CONTOURS = {
    k: register(
        ClassicalMethod(k, _contour(k), ContourOptions, BINARY, f"{k} active contour from --seed")
    )  # fmt: skip
    for k in ("chan-vese", "geodesic")
}
register(ClassicalMethod("instances", _instances, NoOptions, None,
                         "instances (connected objects) of a semantic label image"))  # fmt: skip
