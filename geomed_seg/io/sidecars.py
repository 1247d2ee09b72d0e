"""Class-table sidecars that GIS and medical viewers load beside a label file.

A label raster or volume is only readable by a specialist when its viewer shows the class
names and colours without any set-up. GeoTIFF carries a colour table, but QGIS draws it
without names, and NIfTI carries neither. So every label output gets, beside it, the file
its tool reads natively:

* **QGIS layer style** ``<stem>.qml`` (QGIS loads ``<file base name>.qml`` as the layer's
  default style): a *paletted* raster renderer on band 1 with one ``paletteEntry`` (value,
  colour, alpha, label) per class, the structure ``QgsPalettedRasterRenderer`` reads;
* **ITK-SNAP label description** ``<stem>.label.txt`` (*Segmentation → Import Label
  Descriptions*): the documented "ITK-SnAP Label Description File", one line
  ``IDX R G B A VIS MSH "LABEL"`` per class, ``A`` the opacity 0..1;
* **3D Slicer colour table** ``<stem>.ctbl`` (loaded as a colour node): ``# Color table
  file`` header, then ``index name R G B A`` lines, ``A`` 0..255; Slicer's names are one
  token, so blanks become ``_`` (as Slicer itself writes them).

``<stem>`` is the output name without its format suffix (``labels.nii.gz`` → ``labels``).
The texts are built here (pure, no I/O: hand-written because no maintained Python library
writes these formats); writers put them next to their staged output and
:mod:`geomed_seg.io.atomic` commits them with it (see :data:`RASTER_SIDECARS`).

A class without a colour gets one from a fixed 20-colour table (matplotlib's ``tab20``),
so the three sidecars and the GeoTIFF colour table agree.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from xml.etree import ElementTree as ET

from geomed_seg.core.labels import ClassInfo
from geomed_seg.errors import OutputExistsError
from geomed_seg.io.atomic import companion_path, data_stem

#: Companion templates (see :func:`geomed_seg.io.atomic.companion_path`) of label rasters.
QML = "{stem}.qml"
#: ... and of label volumes.
ITKSNAP = "{stem}.label.txt"
SLICER = "{stem}.ctbl"
RASTER_SIDECARS = (QML,)
VOLUME_SIDECARS = (ITKSNAP, SLICER)

#: matplotlib's ``tab20`` as 0..255 RGB: colours for classes whose card gives none.
FALLBACK_COLORS = (
    (31, 119, 180), (174, 199, 232), (255, 127, 14), (255, 187, 120), (44, 160, 44),
    (152, 223, 138), (214, 39, 40), (255, 152, 150), (148, 103, 189), (197, 176, 213),
    (140, 86, 75), (196, 156, 148), (227, 119, 194), (247, 182, 210), (127, 127, 127),
    (199, 199, 199), (188, 189, 34), (219, 219, 141), (23, 190, 207), (158, 218, 229),
)  # fmt: skip
#: QGIS version the style is written for (the paletted renderer is unchanged since 3.0).
QGIS_VERSION = "3.34.0-Prizren"


def rgba(c: ClassInfo) -> tuple[int, int, int, int]:
    """Return the class's ``(r, g, b, a)`` 0..255 (its card colour, else :data:`FALLBACK_COLORS`)."""
    color = c.color if c.color is not None else FALLBACK_COLORS[c.index % len(FALLBACK_COLORS)]
    return (*color[:3], color[3] if len(color) > 3 else 255)  # type: ignore[return-value]


def qgis_style(classes: Sequence[ClassInfo], band: int = 1) -> str:
    """Return a QGIS layer style (``.qml`` XML): a paletted renderer of ``band`` with the classes.

    Each class is a ``<paletteEntry value color alpha label>`` (colour ``#rrggbb``, alpha
    0..255); nodata is not listed, QGIS takes it from the raster and draws it transparent.
    """
    root = ET.Element("qgis", version=QGIS_VERSION, styleCategories="AllStyleCategories")
    pipe = ET.SubElement(root, "pipe")
    ren = ET.SubElement(pipe, "rasterrenderer", type="paletted", band=str(band), opacity="1",
                        alphaBand="-1", nodataColor="")  # fmt: skip
    ET.SubElement(ren, "rasterTransparency")
    pal = ET.SubElement(ren, "colorPalette")
    for c in sorted(classes, key=lambda c: c.index):
        r, g, b, a = rgba(c)
        ET.SubElement(pal, "paletteEntry", value=str(c.index), color=f"#{r:02x}{g:02x}{b:02x}",
                      alpha=str(a), label=c.name)  # fmt: skip
    ET.SubElement(pipe, "brightnesscontrast", brightness="0", contrast="0", gamma="1")
    ET.SubElement(pipe, "huesaturation", saturation="0", grayscaleMode="0", colorizeOn="0",
                  invertColors="0")  # fmt: skip
    ET.SubElement(pipe, "rasterresampler", maxOversampling="2")
    ET.SubElement(root, "blendMode").text = "0"
    ET.indent(root)
    doctype = "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>"
    return f"{doctype}\n{ET.tostring(root, encoding='unicode')}\n"


def _quoted(name: str) -> str:
    return '"' + name.replace('"', "'").replace("\n", " ") + '"'


def itksnap_labels(classes: Sequence[ClassInfo]) -> str:
    """Return an ITK-SNAP label description file for ``classes``.

    ITK-SNAP's label 0 is "Clear Label" (transparent); a class 0 named in the card keeps its
    name but stays invisible (VIS 0), as the viewer expects of the background.
    """
    lines = [
        "################################################",
        "# ITK-SnAP Label Description File",
        "# File format: ",
        "# IDX   -R-  -G-  -B-  -A--  VIS MSH  LABEL",
        "# Fields: ",
        "#    IDX:   Zero-based index ",
        "#    -R-:   Red color component (0..255)",
        "#    -G-:   Green color component (0..255)",
        "#    -B-:   Blue color component (0..255)",
        "#    -A-:   Label transparency (0.00 .. 1.00)",
        "#    VIS:   Label visibility (0 or 1)",
        "#    IDX:   Label mesh visibility (0 or 1)",
        "#  LABEL:   Label description ",
        "################################################",
    ]
    by_index = {c.index: c for c in classes}
    if 0 not in by_index:
        lines.append(f'{0:5d} {0:5d} {0:4d} {0:4d} {0:8.2f} {0:2d} {0:2d}    "Clear Label"')
    for c in sorted(classes, key=lambda c: c.index):
        r, g, b, a = rgba(c)
        vis = 0 if c.index == 0 else 1
        alpha = 0.0 if c.index == 0 else a / 255.0
        lines.append(f"{c.index:5d} {r:5d} {g:4d} {b:4d} {alpha:8.2f} {vis:2d} {vis:2d}    "
                     f"{_quoted(c.name)}")  # fmt: skip
    return "\n".join(lines) + "\n"


def slicer_name(name: str) -> str:
    """Return ``name`` as one Slicer colour-table token (blanks → ``_``; empty → ``unnamed``)."""
    return re.sub(r"\s+", "_", name.strip()) or "unnamed"


def slicer_color_table(classes: Sequence[ClassInfo], title: str = "labels") -> str:
    """Return a 3D Slicer colour table (``.ctbl``) for ``classes``.

    Format (Slicer's ``vtkMRMLColorTableStorageNode``): comment lines start with ``#``, then
    ``index name R G B A`` with 0..255 components, one line per class. Label 0 is the
    volume's background: transparent (A 0), as in Slicer's own label colour tables and as
    in the ITK-SNAP file.
    """
    lines = [f"# Color table file {title}", f"# {len(classes)} values"]
    for c in sorted(classes, key=lambda c: c.index):
        r, g, b, a = rgba(c)
        a = 0 if c.index == 0 else a
        lines.append(f"{c.index} {slicer_name(c.name)} {r} {g} {b} {a}")
    return "\n".join(lines) + "\n"


def sidecar_texts(
    path: str | os.PathLike, classes: Iterable[ClassInfo], kind: str
) -> dict[str, str]:
    """Return ``{companion template: text}`` for a label output of ``kind`` ``raster``/``volume``."""
    classes = list(classes)
    if not classes:
        return {}
    if kind == "raster":
        return {QML: qgis_style(classes)}
    title = data_stem(Path(path).name)
    return {ITKSNAP: itksnap_labels(classes), SLICER: slicer_color_table(classes, title)}


def sidecars_for(path: str | os.PathLike) -> tuple[str, ...]:
    """Return the companion templates a label output at ``path`` may get (by its suffix)."""
    name = Path(path).name.lower()
    if name.endswith((".tif", ".tiff", ".vrt")):
        return RASTER_SIDECARS
    if name.endswith((".nii", ".nii.gz")):
        return VOLUME_SIDECARS
    return ()


def check_sidecars(path: str | os.PathLike, overwrite: bool) -> None:
    """Raise :class:`OutputExistsError` if a sidecar ``path`` may get exists and not ``overwrite``.

    A hand-made ``labels.qml`` beside a new ``labels.tif`` is an existing output like the
    label file itself: it is replaced only with ``--overwrite``.
    """
    if overwrite:
        return
    for template in sidecars_for(path):
        side = companion_path(path, template)
        if side.exists():
            raise OutputExistsError(
                f"{side}: exists and would be replaced by the sidecar of {Path(path).name}; "
                "pass overwrite=True (--overwrite) to replace it"
            )


def write_sidecars(tmp: str | os.PathLike, texts: dict[str, str]) -> list[Path]:
    """Write each text at its companion path of ``tmp`` (the staged output); return the paths."""
    out = []
    for template, text in texts.items():
        p = companion_path(tmp, template)
        p.write_text(text, encoding="utf-8")
        out.append(p)
    return out


__all__ = [
    "ITKSNAP", "QML", "RASTER_SIDECARS", "SLICER", "VOLUME_SIDECARS", "check_sidecars",
    "data_stem", "sidecars_for",
    "itksnap_labels", "qgis_style", "sidecar_texts", "slicer_color_table", "write_sidecars",
]  # fmt: skip
