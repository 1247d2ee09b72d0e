"""Side outputs of a run besides the labels: probabilities, polygons, quicklook, DICOM SEG."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from geomed_seg.core.image import Image
from geomed_seg.pipelines.schema import PipelineConfig

log = logging.getLogger(__name__)


def _dicom_source(source: Image) -> dict[str, Any] | None:
    return source.attrs.get("dicom") if isinstance(source.attrs.get("dicom"), dict) else None


def planned_outputs(
    cfg: PipelineConfig, folder: Path, kind: str, source: Image | None = None
) -> list[Path]:
    """Return every file a run of ``cfg`` may write into ``folder``, ``run.json`` last.

    Checked by the run's output transaction before anything is computed, so a run that
    would refuse to replace one of them refuses before writing any. ``kind`` is the input's
    ``"raster"`` or ``"volume"``; ``source`` tells whether a DICOM SEG will be written.
    """
    o = cfg.outputs
    names = []
    if o.labels:
        names.append("labels.tif" if kind == "raster" else "labels.nii.gz")
    if o.probabilities:
        names.append("probabilities.zarr" if o.probabilities == "zarr" else "probabilities.tif")
    if kind == "raster" and o.polygons:
        names.append("polygons.gpkg")
    if o.quicklook:
        names.append("quicklook.png")
    if kind != "raster" and o.dicom_seg == "auto" and source is not None and _dicom_source(source):
        names.append("seg.dcm")
    if o.report:
        names += ["report.md", "report.json", "report.html"]
    if o.stac:
        names.append("item.json")
    names.append("run.json")
    return [folder / n for n in names]


#: Every file a run may write (any kind, any options): an older set's extras are replaced.
RUN_OUTPUTS = ("labels.tif", "labels.nii.gz", "probabilities.zarr", "probabilities.tif",
               "polygons.gpkg", "quicklook.png", "seg.dcm", "report.md", "report.json",
               "report.html", "item.json")  # fmt: skip


def write_outputs(
    cfg: PipelineConfig,
    image: Image,
    source: Image,
    out: Any,
    classes: list,
    folder: Path,
    overwrite: bool,
) -> dict[str, Path]:
    """Write the configured side outputs into ``folder``; return ``{what: path}``.

    ``image`` is the model's input (the quicklook's background), ``source`` the input as
    opened (its DICOM attributes give the SEG), ``out`` the model step's output.
    """
    written = _probabilities(cfg, out, folder, overwrite)
    if image.kind == "raster":
        written.update(_raster_outputs(cfg, image, out, classes, folder, overwrite))
    else:
        written.update(_volume_outputs(cfg, image, source, out, classes, folder, overwrite))
    return written


def _probabilities(cfg: PipelineConfig, out: Any, folder: Path, overwrite: bool) -> dict:
    """``probabilities.zarr``/``.tif`` when asked for and the method made them (else a note)."""
    o = cfg.outputs
    if o.probabilities and out.probabilities is not None:
        from geomed_seg.io.registry import write_image

        suffix = ".zarr" if o.probabilities == "zarr" else ".tif"
        path = write_image(
            out.probabilities, folder / f"probabilities{suffix}", overwrite=overwrite
        )
        return {"probabilities": path}
    if o.probabilities:
        out.notes.append("probabilities: not produced by this method")
    return {}


def _raster_outputs(
    cfg: PipelineConfig, image: Image, out: Any, classes: list, folder: Path, overwrite: bool
) -> dict[str, Path]:
    """Polygons (GeoPackage) and the quicklook of a raster run."""
    from geomed_seg.pipelines import quicklook

    o, written = cfg.outputs, {}
    if o.polygons:
        from geomed_seg.io.vector import write_polygons

        summary = write_polygons(
            out.labels,
            folder / "polygons.gpkg",
            classes=classes,
            tile=o.polygon_tile,
            overwrite=overwrite,
        )
        written["polygons"] = summary.path
        out.stats["polygons"] = summary.n_features
    if o.quicklook:
        written["quicklook"] = quicklook.raster_quicklook(
            image,
            out.labels,
            classes,
            folder / "quicklook.png",
            title=f"{cfg.name}: {out.method}",
            overwrite=overwrite,
        )
    return written


def _volume_outputs(
    cfg: PipelineConfig,
    image: Image,
    source: Image,
    out: Any,
    classes: list,
    folder: Path,
    overwrite: bool,
) -> dict[str, Path]:
    """The quicklook (T1c slice when there is one) and the DICOM SEG of a volume run."""
    from geomed_seg.pipelines import quicklook_volume

    o, written = cfg.outputs, {}
    if o.quicklook:
        names = [n.lower() for n in image.channel_names or []]
        ch = names.index("t1c") if "t1c" in names else 0
        title = f"{cfg.name}: {out.method}"
        if source.attrs.get("synthetic") or cfg.input.synthetic:
            title += " — SYNTHETIC phantom"
        written["quicklook"] = quicklook_volume.volume_quicklook(
            image,
            out.labels,
            classes,
            folder / "quicklook.png",
            channel=ch,
            title=title,
            overwrite=overwrite,
            convention=o.quicklook_convention,
        )
    dicom = _dicom_source(source)
    if o.dicom_seg == "auto" and dicom is not None:
        from geomed_seg.io.dicom_seg import write_dicom_seg

        if image.grid.almost_equals(source.grid):
            written["DICOM SEG"] = write_dicom_seg(
                out.labels, dicom, folder / "seg.dcm", classes=classes, overwrite=overwrite,
                further_series=source.attrs.get("dicom_series") or (),
            )  # fmt: skip
        else:
            out.notes.append("DICOM SEG skipped: labels are not on the source series grid")
    return written
