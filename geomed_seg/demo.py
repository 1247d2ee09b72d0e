"""The main job on bundled real data: what ``make demo`` / ``geomed-seg demo`` runs.

1. Describe the bundled Landsat 7 scene and MNI152 T1 template (``info``).
2. Convert them keeping geometry: GeoTIFF → COG and Zarr, NIfTI → Zarr → NIfTI.
3. Map water on the Landsat scene with the classical baseline (NDWI + scene-wide Otsu),
   written as a label COG with class names and colours.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import dask.array as da
import numpy as np

from geomed_seg.core.labels import ClassInfo

log = logging.getLogger(__name__)

SAMPLES = Path(__file__).resolve().parent.parent / "tests" / "data"
LANDSAT = "landsat7_olinda_L7_ETMs.tif"
MNI_T1 = "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
#: ETM+ bands stored in the bundled scene, in file order (see tests/data/NOTICE.md).
LANDSAT_BANDS = ["blue", "green", "red", "nir", "swir1", "swir2"]
WATER_CLASSES = [ClassInfo(0, "land", (200, 190, 150)), ClassInfo(1, "water", (30, 90, 220))]


@dataclass
class DemoResult:
    """What the demo wrote and measured."""

    outputs: dict[str, Path] = field(default_factory=dict)
    facts: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


def water_baseline(image, bands: dict[str, str | int]):
    """Return ``(labels Image uint8 {0 land, 1 water, 255 nodata}, threshold, water fraction)``."""
    from geomed_seg.classical.indices import normalized_difference
    from geomed_seg.classical.thresholds import otsu_threshold
    from geomed_seg.core.image import Image

    ndwi = normalized_difference(image, bands["green"], bands["nir"])
    threshold = otsu_threshold(ndwi)
    values = ndwi.darray[0]
    labels = da.where(da.isnan(values), 255, (values > threshold).astype(np.uint8)).astype(np.uint8)
    valid = ~da.isnan(values)
    fraction = float((labels == 1).sum().compute() / max(int(valid.sum().compute()), 1))
    out = Image.from_array(
        labels[None], image.grid, nodata=255, attrs={"source": image.attrs.get("source")}
    )
    return out, threshold, fraction


def run_demo(output: Path, data_dir: Path = SAMPLES, *, overwrite: bool = True) -> DemoResult:
    """Run the demo into ``output`` (created if missing) and return what it wrote."""
    from geomed_seg.core.describe import describe
    from geomed_seg.io.registry import open_image, write_image

    start = time.perf_counter()
    output.mkdir(parents=True, exist_ok=True)
    res = DemoResult()
    scene = open_image(data_dir / LANDSAT)
    brain = open_image(data_dir / MNI_T1)
    res.facts["landsat"] = _one_line(describe(scene))
    res.facts["mni152"] = _one_line(describe(brain))

    res.outputs["landsat COG"] = write_image(scene, output / "landsat_cog.tif", overwrite=overwrite)
    res.outputs["landsat Zarr"] = write_image(scene, output / "landsat.zarr", overwrite=overwrite)
    zarr_path = write_image(brain, output / "mni_t1.zarr", overwrite=overwrite)
    res.outputs["MNI Zarr"] = zarr_path
    res.outputs["MNI NIfTI (from Zarr)"] = write_image(
        open_image(zarr_path), output / "mni_t1_roundtrip.nii.gz", overwrite=overwrite
    )

    bands = {name: i + 1 for i, name in enumerate(LANDSAT_BANDS)}
    labels, threshold, fraction = water_baseline(scene, bands)
    res.outputs["water map (NDWI+Otsu)"] = write_image(
        labels, output / "water_ndwi_otsu.tif", overwrite=overwrite, classes=WATER_CLASSES
    )
    res.facts["water baseline"] = (
        f"NDWI Otsu threshold {threshold:.4f}, water {100 * fraction:.1f}% of valid pixels"
    )
    res.seconds = time.perf_counter() - start
    log.info("demo finished in %.1f s", res.seconds)
    return res


def _one_line(summary: dict) -> str:
    shape = "x".join(str(s) for s in summary["shape"])
    if summary["kind"] == "raster":
        crs = summary["crs"] or {}
        ident = f"EPSG:{crs.get('epsg')}" if crs.get("epsg") else "custom CRS"
        return f"{shape} {summary['dtype']}, {ident}, {summary['resolution'][0]:g} m pixels"
    sp = "x".join(f"{s:g}" for s in summary["spacing_xyz_mm"])
    return f"{shape} {summary['dtype']}, {sp} mm, {summary['orientation']}"
