"""The main job on bundled real data: what ``make demo`` / ``geomed-seg demo`` runs.

1. Describe the bundled Landsat 7 scene and MNI152 T1 template and convert them keeping
   geometry (GeoTIFF → COG, NIfTI → Zarr → NIfTI).
2. The ``flood`` pipeline on the Landsat scene with the classical baseline (NDWI + scene-wide
   Otsu): label COG, GeoPackage polygons, quicklook, report; and the U-Net when
   ``checkpoints/water_unet`` exists.
3. The ``brats`` pipeline on a BraTS-like phantom: SYNTHETIC tumour compartments and four
   SYNTHETIC sequences built on the real MNI152 anatomy, written as NIfTI files; the 3D U-Net
   of ``checkpoints/brats_unet`` when present, else the whole-tumour T2-FLAIR baseline,
   evaluated against the phantom's truth (BraTS 2023 regions).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "tests" / "data"
CHECKPOINTS = ROOT / "checkpoints"
LANDSAT = "landsat7_olinda_L7_ETMs.tif"
MNI_T1 = "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
#: ETM+ bands stored in the bundled scene, in file order (see tests/data/NOTICE.md).
LANDSAT_BANDS = ["blue", "green", "red", "nir", "swir1", "swir2"]
PHANTOM_SEED = 7


@dataclass
class DemoResult:
    """What the demo wrote and measured."""

    outputs: dict[str, Path] = field(default_factory=dict)
    facts: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


def _conversions(res: DemoResult, data_dir: Path, output: Path, overwrite: bool) -> None:
    from geomed_seg.core.describe import describe
    from geomed_seg.io.registry import open_image, write_image
    from geomed_seg.pipelines.cards import with_sensor_bands

    # the file has no band descriptions; its notice says which ETM+ bands it holds
    scene = with_sensor_bands(open_image(data_dir / LANDSAT), "landsat7_etm", LANDSAT_BANDS)
    brain = open_image(data_dir / MNI_T1)
    res.facts["landsat"] = _one_line(describe(scene))
    res.facts["mni152"] = _one_line(describe(brain))
    out = output / "conversions"
    out.mkdir(parents=True, exist_ok=True)
    res.outputs["landsat COG"] = write_image(scene, out / "landsat_cog.tif", overwrite=overwrite)
    zarr_path = write_image(brain, out / "mni_t1.zarr", overwrite=overwrite)
    res.outputs["MNI NIfTI (via Zarr)"] = write_image(
        open_image(zarr_path), out / "mni_t1_roundtrip.nii.gz", overwrite=overwrite
    )


def _flood(res: DemoResult, data_dir: Path, output: Path, overwrite: bool) -> None:
    from geomed_seg.pipelines.runner import run_pipeline

    sets = [f"input.path={data_dir / LANDSAT}", "model.method=ndwi_otsu"]
    run = run_pipeline("flood", output=output / "flood", overrides=sets, overwrite=overwrite)
    water = next(r for r in run.report["classes"] if r["name"] == "water")
    valid = sum(r["samples"] for r in run.report["classes"])
    res.facts["flood (NDWI+Otsu)"] = (
        f"threshold {run.report['threshold']:.4f}, water {water['area_km2']:.2f} km² "
        f"({100 * water['samples'] / max(valid, 1):.1f}% of valid pixels), "
        f"{run.report['engine'].get('polygons', 0)} polygons, {run.seconds:.1f} s"
    )
    res.outputs["flood labels"] = run.outputs["labels"]
    res.outputs["flood polygons"] = run.outputs["polygons"]
    res.outputs["flood quicklook"] = run.outputs["quicklook"]
    res.outputs["flood report"] = run.outputs["report (Markdown)"]
    ckpt = CHECKPOINTS / "water_unet"
    if not ckpt.exists():
        res.facts["flood (U-Net)"] = f"skipped: no checkpoint at {ckpt}"
        return
    sets = [f"input.path={data_dir / LANDSAT}", "model.method=checkpoint",
            f"model.checkpoint={ckpt}", f"evaluation.reference={run.outputs['labels']}",
            "outputs.polygons=false"]  # fmt: skip
    run = run_pipeline("flood", output=output / "flood_unet", overrides=sets, overwrite=overwrite)
    water = next((r for r in run.report["classes"] if r["name"] == "water"), None)
    area = f"water {water['area_km2']:.2f} km², " if water else ""
    agree = next(
        (m["dice"] for m in run.report["metrics"]
         if m.get("kind") == "class" and m.get("name") == "water"),
        None,
    )  # fmt: skip
    versus = (
        "" if agree is None else f"water Dice {agree:.3f} vs the NDWI baseline (its weak labels), "
    )
    res.facts["flood (U-Net)"] = f"{area}{versus}{run.seconds:.1f} s"
    res.outputs["flood U-Net labels"] = run.outputs["labels"]


def write_phantom_case(
    folder: Path, seed: int, data_dir: Path = SAMPLES, *, zoom: int = 3, overwrite: bool = True
) -> tuple[Path, Path]:
    """Write a SYNTHETIC BraTS-like case (four sequences + truth) as NIfTI; return (case, truth).

    ``zoom=3`` gives 3 mm voxels, the spacing the demo ``brats_unet`` checkpoint was trained at.
    """
    from geomed_seg.io.registry import open_image, write_image
    from geomed_seg.synthetic.phantom import SEQUENCES, make_phantom

    ph = make_phantom(open_image(data_dir / MNI_T1), seed=seed, zoom=zoom)
    case = folder / "case"
    case.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(SEQUENCES):
        seq = ph.image.with_data(ph.image.darray[i : i + 1], attrs=dict(ph.image.attrs))
        write_image(seq, case / f"phantom-{seed:03d}-{name}.nii.gz", overwrite=overwrite)
    truth = write_image(ph.labels, folder / f"phantom-{seed:03d}-seg.nii.gz", overwrite=overwrite)
    return case, truth


def _brats(res: DemoResult, data_dir: Path, output: Path, overwrite: bool) -> None:
    from geomed_seg.pipelines.runner import run_pipeline

    case, truth = write_phantom_case(output / "brats_phantom", PHANTOM_SEED, data_dir,
                                     overwrite=overwrite)  # fmt: skip
    ckpt = CHECKPOINTS / "brats_unet"
    sets = [f"evaluation.reference={truth}", f"model.checkpoint={ckpt}", "input.synthetic=true"]
    run = run_pipeline("brats", input=case, output=output / "brats", overrides=sets,
                       overwrite=overwrite)  # fmt: skip
    regions = [m for m in run.report["metrics"] if m.get("kind") == "region"]
    dice = ", ".join(
        f"{m['name']} {m['dice']:.3f} (HD95 {m['hd95']:.1f} {m['distance_unit']})" for m in regions
    )
    res.facts["brats input"] = "SYNTHETIC phantom: synthetic tumour + sequences on real MNI152"
    res.facts["brats method"] = "; ".join(run.report["notes"]) or run.report["method"]
    res.facts["brats Dice vs phantom truth"] = dice
    res.outputs["brats labels"] = run.outputs["labels"]
    res.outputs["brats quicklook"] = run.outputs["quicklook"]
    res.outputs["brats report"] = run.outputs["report (Markdown)"]


def run_demo(
    output: Path, data_dir: Path = SAMPLES, *, overwrite: bool = True, brats: bool = True
) -> DemoResult:
    """Run the demo into ``output`` (created if missing) and return what it wrote.

    ``output`` must be a folder (``demo -o README.md`` is refused before any work). Each
    step commits on its own (every file atomic, each pipeline run one output transaction),
    because later steps read what earlier ones wrote.
    """
    from geomed_seg.io.transaction import OutputTransaction

    start = time.perf_counter()
    OutputTransaction(folders=[output], overwrite=overwrite, inputs=[data_dir])
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        from geomed_seg.io.atomic import write_error

        raise write_error(output, exc) from exc
    res = DemoResult()
    _conversions(res, data_dir, output, overwrite)
    _flood(res, data_dir, output, overwrite)
    if brats:
        _brats(res, data_dir, output, overwrite)
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
