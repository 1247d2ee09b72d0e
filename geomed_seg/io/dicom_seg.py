"""DICOM Segmentation (SEG) objects of label volumes, referencing their source series.

highdicom builds the SEG (one binary segment per non-zero class, frames referencing the
source SOP instances); we only map our label volume ``(z, y, x)`` onto the source slices
(``attrs["dicom"]["files"]`` of :func:`geomed_seg.io.dicom.open_dicom`, already in ``z``
order, so frame ``k`` is slice ``k`` with rows = ``y`` and columns = ``x``) and classes onto
SNOMED CT coded segment descriptions.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from geomed_seg.core.image import Image
from geomed_seg.core.labels import ClassInfo
from geomed_seg.errors import GeometryError, InvalidInputError, WriteError
from geomed_seg.io.atomic import atomic_output

log = logging.getLogger(__name__)

#: Class-name keywords -> SNOMED CT (code, meaning) of the segmented property type.
_PROPERTY_TYPES = {
    "netc": ("6574001", "Necrosis"),
    "necro": ("6574001", "Necrosis"),
    "snfh": ("79654002", "Edema"),
    "edema": ("79654002", "Edema"),
    "oedema": ("79654002", "Edema"),
}
_NEOPLASM = ("108369006", "Neoplasm")


#: Type 2 Patient/General Study attributes that a SEG copies from its source (may be empty).
_TYPE2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)


def _with_type2(ds: Any) -> Any:
    """Return ``ds`` with missing type 2 attributes present and empty (in memory only)."""
    for key in _TYPE2:
        if key not in ds:
            setattr(ds, key, "")
    return ds


def _property_type(name: str):
    from highdicom.sr import CodedConcept

    key = name.lower()
    code, meaning = next((v for k, v in _PROPERTY_TYPES.items() if k in key), _NEOPLASM)
    return CodedConcept(code, "SCT", meaning)


def _descriptions(present: Sequence[ClassInfo]) -> list[Any]:
    import highdicom as hd
    from highdicom.sr import CodedConcept

    from geomed_seg import __version__

    algo = hd.AlgorithmIdentificationSequence(
        name="geomed-seg",
        version=__version__,
        family=CodedConcept("123110", "DCM", "Artificial Intelligence"),
    )
    category = CodedConcept("49755003", "SCT", "Morphologically Altered Structure")
    return [
        hd.seg.SegmentDescription(
            segment_number=i + 1,
            segment_label=c.name[:64],
            segmented_property_category=category,
            segmented_property_type=_property_type(c.name),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algo,
        )
        for i, c in enumerate(present)
    ]


def _further_sources(
    dicom: dict[str, Any], further_series: Sequence[dict[str, Any]], first: Any, path: Any
) -> list[Any]:
    """Return the headers (no pixels) of the other series' instances, checked."""
    import pydicom

    out = []
    seen = {dicom.get("series_uid")}
    for series in further_series:
        if series.get("series_uid") in seen:
            continue
        seen.add(series.get("series_uid"))
        files = [Path(f) for f in series.get("files", [])]
        if len(files) != len(dicom.get("files", [])):
            raise GeometryError(
                f"{path}: series {series.get('series_uid')} has {len(files)} slices, the "
                f"labels' series {len(dicom.get('files', []))}"
            )
        heads = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
        study = str(heads[0].get("StudyInstanceUID", ""))
        if study != str(first.StudyInstanceUID):
            raise InvalidInputError(
                f"{path}: series {series.get('series_uid')} ({files[0].parent}) is in study "
                f"{study}, the labels' series in {first.StudyInstanceUID}: a SEG references "
                "one study"
            )
        out.extend(heads)
    return out


def write_dicom_seg(
    labels: Image,
    dicom: dict[str, Any],
    path: str | os.PathLike,
    *,
    classes: Sequence[ClassInfo],
    overwrite: bool = False,
    series_description: str = "geomed-seg segmentation",
    further_series: Sequence[dict[str, Any]] = (),
) -> Path:
    """Write a DICOM SEG of ``labels`` referencing the source series; return its path.

    Parameters
    ----------
    labels : Image
        One-channel label volume ``(1, z, y, x)`` on the source series' grid.
    dicom : dict
        ``attrs["dicom"]`` of the source image (files in ``z`` order).
    classes : sequence of ClassInfo
        Non-zero classes become segments 1..n in index order (named by ``name``).
    further_series : sequence of dict
        ``attrs["dicom"]`` of the other series the labels were made from (e.g. the t1c,
        t2w, t2f series of a BraTS case; ``attrs["dicom_series"]`` of a stacked case). Their
        instances are referenced in the Common Instance Reference (``ReferencedSeriesSequence``)
        and ``SourceImageSequence`` (highdicom's ``further_source_images``); frames derive
        from ``dicom``'s slices. They must belong to the same study and lie on the same grid.
    """
    import highdicom as hd
    import pydicom

    from geomed_seg import __version__

    files = [Path(f) for f in dicom.get("files", [])]
    if not files:
        raise InvalidInputError(f"{path}: the source image has no DICOM files to reference")
    arr = np.asarray(labels.darray[0].compute())
    if arr.shape[0] != len(files):
        raise GeometryError(f"{path}: {arr.shape[0]} label slices for {len(files)} source files")
    sources = [_with_type2(pydicom.dcmread(f)) for f in files]
    if (int(sources[0].Rows), int(sources[0].Columns)) != arr.shape[1:]:
        raise GeometryError(f"{path}: label slices {arr.shape[1:]} != source rows/columns")
    further = _further_sources(dicom, further_series, sources[0], path)
    present = [c for c in sorted(classes, key=lambda c: c.index) if c.index != 0]
    lut = np.zeros(
        int(max(arr.max(initial=0), max((c.index for c in present), default=0))) + 1, np.uint8
    )
    for i, c in enumerate(present):
        lut[c.index] = i + 1
    seg_map = lut[arr.astype(np.int64)]
    if not present:
        raise InvalidInputError(f"{path}: no non-zero class to store as a segment")
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=seg_map,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=_descriptions(present),
        series_instance_uid=hd.UID(),
        series_number=int(getattr(sources[0], "SeriesNumber", 0) or 0) + 1000,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="geomed-seg",
        manufacturer_model_name="geomed-seg",
        software_versions=__version__,
        device_serial_number="0",
        series_description=series_description,
        omit_empty_frames=True,
        further_source_images=further or None,
    )
    with atomic_output(path, overwrite) as tmp:
        try:
            seg.save_as(tmp)
        except (OSError, ValueError) as exc:
            raise WriteError(f"{path}: cannot write DICOM SEG ({exc})") from exc
    log.info(
        "%s: DICOM SEG with %d segments referencing %d series",
        path, len(present), 1 + len({d.SeriesInstanceUID for d in further}),
    )  # fmt: skip
    return Path(path)
