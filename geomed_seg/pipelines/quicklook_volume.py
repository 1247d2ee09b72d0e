"""Volume quicklook PNGs a radiologist can read: oriented slices, markers, volumes in ml.

The volume is brought to the nearest RAS+ storage order with nibabel's orientation tools
(:func:`nibabel.orientations.io_orientation`, ``ornt_transform``, ``apply_orientation``;
no resampling, so an oblique volume is shown on its nearest anatomical planes and the image
says so). Axial, coronal and sagittal slices go through the centroid of the largest
connected lesion (:func:`scipy.ndimage.label`, 26-connectivity, all foreground classes),
or the volume centre without one. Display convention: radiological by default (patient's
right on the image's left, said on the image), neurological on request. The L/R/A/P/S/I
markers at each edge are derived from the displayed plane's affine (the RAS direction of
its columns and rows), so they follow the anatomy whatever the input's orientation.
Classes are drawn as outlines plus 40 % fills, with a legend of volumes in ml (voxel counts
times the voxel volume, :func:`geomed_seg.pipelines.report.class_measures`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from geomed_seg.core.image import Image
from geomed_seg.core.labels import ClassInfo
from geomed_seg.pipelines.quicklook import _fill_and_outline, _save, _scale_bar, _stretch, bar_label

CONVENTIONS = ("radiological", "neurological")
_OPPOSITE = {"R": "L", "L": "R", "A": "P", "P": "A", "S": "I", "I": "S"}


@dataclass(frozen=True)
class Plane:
    """One displayed slice.

    Attributes
    ----------
    name : str
        ``"axial"``, ``"coronal"`` or ``"sagittal"``.
    image, labels : ndarray, shape (rows, cols)
        Display order: row 0 at the top, column 0 at the left.
    markers : dict
        Anatomical letter at each edge: keys ``"left", "right", "top", "bottom"``.
    pixel_mm : (float, float)
        Pixel size along rows and columns, mm.
    """

    name: str
    image: np.ndarray
    labels: np.ndarray
    markers: dict[str, str]
    pixel_mm: tuple[float, float]


def _code(direction: np.ndarray) -> str:
    """RAS letter of the dominant world axis of ``direction`` (nibabel's convention)."""
    axis = int(np.argmax(np.abs(direction)))
    return "RAS"[axis] if direction[axis] > 0 else "LPI"[axis]


def to_ras(vol_zyx: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(array (i, j, k) in the nearest RAS+ order, its affine)`` (nibabel)."""
    from nibabel.orientations import (
        apply_orientation,
        axcodes2ornt,
        inv_ornt_aff,
        io_orientation,
        ornt_transform,
    )

    arr = np.asarray(vol_zyx).transpose(2, 1, 0)  # (z, y, x) storage -> (i, j, k)
    xform = ornt_transform(io_orientation(affine), axcodes2ornt(("R", "A", "S")))
    return apply_orientation(arr, xform), affine @ inv_ornt_aff(xform, arr.shape)


def lesion_centre(lab_ijk: np.ndarray) -> tuple[int, int, int]:
    """Voxel ``(i, j, k)`` nearest the centroid of the largest connected foreground region."""
    from scipy import ndimage

    comp, n = ndimage.label(lab_ijk > 0, structure=np.ones((3, 3, 3), bool))
    if n == 0:
        return tuple(s // 2 for s in lab_ijk.shape)  # type: ignore[return-value]
    sizes = np.bincount(comp.ravel())[1:]
    c = ndimage.center_of_mass(comp == int(np.argmax(sizes)) + 1)
    return tuple(int(round(v)) for v in c)  # type: ignore[return-value]


def display_planes(
    vol_zyx: np.ndarray,
    lab_zyx: np.ndarray,
    affine: np.ndarray,
    convention: str = "radiological",
) -> list[Plane]:
    """Axial, coronal and sagittal planes through the largest lesion, display-ordered.

    ``affine`` maps voxel ``(i, j, k)`` = array ``(x, y, z)`` to RAS mm (nibabel). Axial
    and coronal: anterior / superior at the top, the patient's right on the image's left
    (radiological) or right (neurological). Sagittal: superior at the top, anterior left.
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    vol, aff = to_ras(vol_zyx, affine)
    lab, _ = to_ras(lab_zyx, affine)
    ci, cj, ck = lesion_centre(lab)
    lin = aff[:3, :3]
    flip_lr = convention == "radiological"
    # (name, 2D slicer, in-plane axes (col axis, row axis), flip cols, flip rows)
    specs = [
        ("axial", np.s_[:, :, ck], (0, 1), flip_lr, True),
        ("coronal", np.s_[:, cj, :], (0, 2), flip_lr, True),
        ("sagittal", np.s_[ci, :, :], (1, 2), True, True),
    ]
    planes = []
    for name, sl, (ca, ra), fc, fr in specs:
        img, lb = vol[sl].T, lab[sl].T  # rows = second in-plane axis, cols = first
        if fr:
            img, lb = img[::-1], lb[::-1]
        if fc:
            img, lb = img[:, ::-1], lb[:, ::-1]
        col_dir = lin[:, ca] * (-1 if fc else 1)  # world direction of increasing display col
        row_dir = lin[:, ra] * (-1 if fr else 1)  # ... of increasing display row (downwards)
        right, bottom = _code(col_dir), _code(row_dir)
        markers = {"right": right, "left": _OPPOSITE[right],
                   "bottom": bottom, "top": _OPPOSITE[bottom]}  # fmt: skip
        mm = (float(np.linalg.norm(lin[:, ra])), float(np.linalg.norm(lin[:, ca])))
        planes.append(Plane(name, np.ascontiguousarray(img), np.ascontiguousarray(lb), markers, mm))
    return planes


def legend_lines(rows: Sequence[dict], classes: Sequence[ClassInfo]) -> list[tuple[ClassInfo, str]]:
    """``(class, "index name: V ml")`` for every coloured foreground class (class_measures rows)."""
    by_index = {r["index"]: r for r in rows}
    return [(c, f"{c.index} {c.name}: {by_index.get(c.index, {}).get('volume_ml', 0.0):.2f} ml")
            for c in classes if c.index != 0 and c.color is not None]  # fmt: skip


def _is_oblique(affine: np.ndarray) -> bool:
    d = np.abs(affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0))
    return bool(np.any((d > 1e-6) & (d < 1 - 1e-6)))


def build_volume_figure(
    image: Image,
    labels: Image,
    classes: Sequence[ClassInfo],
    *,
    channel: int = 0,
    title: str = "",
    convention: str = "radiological",
    rows: Sequence[dict] | None = None,
):
    """Return the matplotlib figure of a volume quicklook (see the module docstring)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    from geomed_seg.pipelines.report import class_measures

    vol = np.asarray(image.darray[channel].compute(), np.float32)
    lab = np.asarray(labels.darray[0].compute())
    affine = np.asarray(image.grid.affine)
    planes = display_planes(vol, lab, affine, convention)
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.8))
    box = {"facecolor": "black", "alpha": 0.6, "pad": 1.5, "edgecolor": "none"}
    where = {"left": (0.02, 0.5, "left", "center"), "right": (0.98, 0.5, "right", "center"),
             "top": (0.5, 0.98, "center", "top"), "bottom": (0.5, 0.02, "center", "bottom")}  # fmt: skip
    for ax, p in zip(axes, planes, strict=True):
        grey = _stretch(p.image[None])[0]
        shown = _fill_and_outline(np.repeat(grey[..., None], 3, axis=2), p.labels, classes)
        ax.imshow(shown, aspect=p.pixel_mm[0] / p.pixel_mm[1], interpolation="nearest")
        ax.set_title(p.name, fontsize=9)
        ax.set_axis_off()
        for edge, letter in p.markers.items():
            x, y, ha, va = where[edge]
            ax.text(x, y, letter, transform=ax.transAxes, ha=ha, va=va, color="yellow",
                    fontsize=12, fontweight="bold", bbox=box)  # fmt: skip
        n_px, label = bar_label(p.pixel_mm[1], shown.shape[1], "mm")
        _scale_bar(ax, n_px, shown.shape[1], label)
    fig.suptitle(title, fontsize=10)
    rows = class_measures(labels, classes) if rows is None else rows
    entries = legend_lines(rows, classes)
    if entries:
        handles = [Patch(facecolor=np.asarray(c.color[:3]) / 255, edgecolor="black", label=t)
                   for c, t in entries]  # fmt: skip
        fig.legend(handles=handles, loc="lower center", ncol=min(len(entries), 4), fontsize=8,
                   bbox_to_anchor=(0.5, -0.02), title="class: volume", title_fontsize=8)  # fmt: skip
    side = "left" if convention == "radiological" else "right"
    notes = [f"{convention} convention: the patient's right is on the image's {side}; "
             "slices through the largest lesion's centroid"]  # fmt: skip
    if _is_oblique(affine):
        notes.append("oblique acquisition: shown on the nearest anatomical planes, not resampled")
    fig.text(0.5, -0.08, "\n".join(notes), ha="center", va="top", fontsize=8)
    return fig


def volume_quicklook(
    image: Image,
    labels: Image,
    classes: Sequence[ClassInfo],
    path: str | os.PathLike,
    *,
    channel: int = 0,
    title: str = "",
    overwrite: bool = False,
    convention: str = "radiological",
) -> Path:
    """Write the PNG of :func:`build_volume_figure`; return its path."""
    fig = build_volume_figure(image, labels, classes, channel=channel, title=title,
                              convention=convention)  # fmt: skip
    return _save(fig, path, overwrite)
