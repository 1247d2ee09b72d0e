"""Raster quicklook PNGs a GIS analyst can publish.

What is drawn (matplotlib, Agg):

- a background chosen from the band names: false colour SWIR/NIR/red when the bands are
  named (Landsat/Sentinel-2 common names, from the input or a sensor card), else natural
  colour red/green/blue, else the first bands; 2-98 % stretch. When a class colour would
  vanish on it (its mean background colour under the class is close to the class colour,
  e.g. blue water on a blue sea) the background becomes a contrast-stretched greyscale;
- class outlines (:func:`skimage.segmentation.find_boundaries`) plus a 40 % fill;
- a legend with class names and true ground areas (:func:`geomed_seg.pipelines.report.class_measures`,
  :mod:`geomed_seg.core.ground`: m²/km², or CRS units² when the grid has no ground — said so);
- a north arrow pointing to true north at the scene centre (pyproj: the centre and a point
  1/10 of the scene north of it, mapped back to pixels), so rotated grids and polar CRSs get
  the right direction; none (with a note) without a CRS;
- a scale bar in true ground metres, the CRS name and the corner coordinates.

Volume quicklooks: :mod:`geomed_seg.pipelines.quicklook_volume`.

Large images are decimated (strided reads) to at most ``max_px`` on a side, so a quicklook
never loads a whole scene. North arrow and scale bar are drawn by hand (matplotlib has
neither; no extra dependency).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from geomed_seg.core.grid import GeoGrid
from geomed_seg.core.ground import pixel_size_at
from geomed_seg.core.image import Image
from geomed_seg.core.labels import ClassInfo
from geomed_seg.io.atomic import atomic_output
from geomed_seg.pipelines import quicklook_map as qmap


def _stretch(arr: np.ndarray) -> np.ndarray:
    out = np.zeros(arr.shape, np.float32)
    for i, band in enumerate(arr):
        finite = band[np.isfinite(band)]
        if finite.size == 0:
            continue
        lo, hi = np.percentile(finite, (2, 98))
        out[i] = np.clip((band - lo) / max(hi - lo, 1e-6), 0, 1)
    return np.nan_to_num(out)


def _overlay(rgb: np.ndarray, labels: np.ndarray, classes: Sequence[ClassInfo], alpha=0.55):
    out = rgb.copy()
    for c in classes:
        if c.index == 0 or c.color is None:
            continue
        sel = labels == c.index
        out[sel] = (1 - alpha) * out[sel] + alpha * np.asarray(c.color[:3]) / 255.0
    return out


def _nice_length(span: float) -> float:
    target = span / 5
    base = 10 ** np.floor(np.log10(target))
    return float(max(m * base for m in (1, 2, 5) if m * base <= target))


def bar_label(px_size: float, width_px: int, unit: str) -> tuple[float, str]:
    """Return ``(bar length in pixels, label)`` of a scale bar about 1/5 of ``width_px``.

    ``px_size`` is the size of one shown pixel in ``unit`` (``"m"``, ``"mm"`` or
    ``"CRS units"``); metres of 1 km and more are labelled in km.
    """
    length = _nice_length(width_px * px_size)
    if unit == "m" and length >= 1000:
        label = f"{length / 1000:g} km"
    else:
        label = f"{length:g} {unit}"
    return length / px_size, label


def raster_bar(grid: GeoGrid, step: int, width_px: int) -> tuple[float, str]:
    """Return ``(bar length in shown pixels, label)`` for a raster quicklook.

    True ground metres (geodesic length of a pixel's column edge where the bar is drawn,
    near the top-left, :func:`geomed_seg.core.ground.pixel_size_at`), so Web Mercator or
    degrees get a correct bar; a grid without a ground says "CRS units".
    """
    gu = grid.ground
    if gu.metric:
        row, col = 0.05 * grid.height, 0.15 * grid.width  # where the bar is drawn
        px = pixel_size_at(grid, row, col)[0]
    else:
        px = grid.res[0]
    return bar_label(px * step, width_px, gu.length_unit)


def _scale_bar(ax, n_px: float, width_px: int, label: str) -> None:
    x0, y0 = width_px * 0.05, 0.95
    ax.plot([x0, x0 + n_px], [y0, y0], transform=ax.get_xaxis_transform(), color="white", lw=4)
    ax.plot([x0, x0 + n_px], [y0, y0], transform=ax.get_xaxis_transform(), color="black", lw=2)
    ax.text(
        x0 + n_px / 2,
        0.90,
        label,
        transform=ax.get_xaxis_transform(),
        ha="center",
        va="top",
        color="black",
        fontsize=8,
        bbox={"facecolor": "white", "alpha": 0.7, "pad": 1, "edgecolor": "none"},
    )


def _legend(fig, classes: Sequence[ClassInfo], ax=None) -> None:
    from matplotlib.patches import Patch

    handles = [
        Patch(color=np.asarray(c.color[:3]) / 255, label=f"{c.index} {c.name}")
        for c in classes
        if c.index != 0 and c.color is not None
    ]
    if handles and ax is not None:
        ax.legend(handles=handles, loc="lower left", fontsize=8, framealpha=0.8)
    elif handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 4), fontsize=8)


def _rgb_bands(image: Image) -> list[int]:
    names = image.channel_names or image.attrs.get("band_names")
    return qmap.background_bands(names, image.n_channels)[0]


def _fill_and_outline(rgb: np.ndarray, labels: np.ndarray, classes: Sequence[ClassInfo]):
    """40 % class-colour fill plus full-colour 2-pixel outlines (skimage find_boundaries)."""
    from skimage.segmentation import find_boundaries

    out = _overlay(rgb, labels, classes, alpha=0.4)
    for c in classes:
        if c.index == 0 or c.color is None:
            continue
        edge = find_boundaries(labels == c.index, mode="inner")
        edge |= np.roll(edge, 1, 0) & (labels == c.index)
        out[edge] = np.asarray(c.color[:3]) / 255.0
    return out


def raster_background(image: Image, step: int, lab: np.ndarray, classes: Sequence[ClassInfo]):
    """Return ``(rgb (y, x, 3) in 0-1, description)`` of a decimated raster background."""
    idx, what = qmap.background_bands(image.channel_names or image.attrs.get("band_names"),
                                      image.n_channels)  # fmt: skip
    raw = np.asarray(image.darray[idx, ::step, ::step].compute(), np.float32)
    if image.nodata is not None:
        raw[raw == image.nodata] = np.nan
    rgb = _stretch(raw).transpose(1, 2, 0)
    vanish = qmap.colour_vanishes(rgb, lab, classes)
    if vanish:
        grey = _stretch(np.nanmean(raw, axis=0)[None])[0]
        rgb = np.repeat(grey[..., None], 3, axis=2)
        what = f"greyscale stretch of {what} ({', '.join(vanish)} would vanish on colour)"
    return rgb, what


def _north_arrow(ax, grid: GeoGrid, shape: tuple[int, int]) -> str:
    """Draw a true-north arrow near the top right; return the note on the figure."""
    d = qmap.north_direction(grid)
    if d is None:
        why = "no CRS" if grid.crs is None else "north unknown for this georeference"
        return f"no north arrow ({why})"
    h, w = shape
    n = 0.07 * min(h, w) + 8
    cx, cy = w - 1.6 * n, 1.6 * n
    tail = (cx - d[0] * n / 2, cy - d[1] * n / 2)
    tip = (cx + d[0] * n / 2, cy + d[1] * n / 2)
    style = {"arrowstyle": "-|>,head_width=0.5,head_length=0.9", "lw": 2.5}
    ax.annotate("", xy=tip, xytext=tail, arrowprops={**style, "color": "white", "lw": 4.5})
    ax.annotate("", xy=tip, xytext=tail, arrowprops={**style, "color": "black"})
    ax.text(cx + d[0] * n * 0.85, cy + d[1] * n * 0.85, "N", ha="center", va="center",
            fontsize=11, fontweight="bold", color="black",
            bbox={"facecolor": "white", "alpha": 0.7, "pad": 1, "edgecolor": "none"})  # fmt: skip
    return "north arrow: true north at the scene centre"


def _corners(ax, grid: GeoGrid) -> None:
    """Write the map coordinates of the four outer corners outside the image."""
    corners = qmap.corner_coordinates(grid)
    place = {"UL": (0, 1, "left", "bottom"), "UR": (1, 1, "right", "bottom"),
             "LL": (0, 0, "left", "top"), "LR": (1, 0, "right", "top")}  # fmt: skip
    for k, (x, y, ha, va) in place.items():
        text = qmap.format_coordinate(grid, *corners[k])
        ax.annotate(text, (x, y), xycoords="axes fraction", ha=ha, va=va, fontsize=7,
                    xytext=(0, 3 if va == "bottom" else -3), textcoords="offset points")  # fmt: skip


def build_raster_figure(
    image: Image,
    labels: Image,
    classes: Sequence[ClassInfo],
    *,
    title: str = "",
    max_px: int = 1024,
    rows: Sequence[dict] | None = None,
):
    """Return the matplotlib figure of a raster quicklook (see the module docstring).

    ``rows`` are :func:`geomed_seg.pipelines.report.class_measures` rows (computed at full
    resolution when not given) for the legend's ground areas.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    from geomed_seg.pipelines.report import class_measures

    step = max(1, int(np.ceil(max(image.spatial_shape) / max_px)))
    lab = np.asarray(labels.darray[0, ::step, ::step].compute())
    rgb, what = raster_background(image, step, lab, classes)
    shown = _fill_and_outline(rgb, lab, classes)
    fig, ax = plt.subplots(figsize=(7, max(3.0, 7 * shown.shape[0] / shown.shape[1])))
    ax.imshow(shown, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=10, pad=14)
    grid = image.grid
    n_px, label = raster_bar(grid, step, shown.shape[1])
    _scale_bar(ax, n_px, shown.shape[1], label)
    north = _north_arrow(ax, grid, shown.shape[:2])
    _corners(ax, grid)
    rows = class_measures(labels, classes) if rows is None else rows
    entries = qmap.legend_lines(rows, classes)
    if entries:
        handles = [Patch(facecolor=np.asarray(c.color[:3]) / 255, edgecolor="black", label=t)
                   for c, t in entries]  # fmt: skip
        ground = grid.ground
        head = "class: ground area" if ground.metric else "class: area (no ground: CRS units²)"
        ax.legend(handles=handles, loc="lower left", fontsize=8, framealpha=0.85,
                  title=head, title_fontsize=8, bbox_to_anchor=(0, 0.08))  # fmt: skip
    notes = [f"CRS: {qmap.crs_name(grid)}", f"background: {what}", north]
    if not grid.ground.metric:
        notes.append("scale bar and areas in CRS units (no ground units for this grid)")
    ax.text(0.5, -0.045, "\n".join(notes), transform=ax.transAxes, ha="center", va="top",
            fontsize=7.5)  # fmt: skip
    return fig


def raster_quicklook(
    image: Image,
    labels: Image,
    classes: Sequence[ClassInfo],
    path: str | os.PathLike,
    *,
    title: str = "",
    max_px: int = 1024,
    overwrite: bool = False,
    rows: Sequence[dict] | None = None,
) -> Path:
    """Write the PNG of :func:`build_raster_figure`; return its path."""
    fig = build_raster_figure(image, labels, classes, title=title, max_px=max_px, rows=rows)
    return _save(fig, path, overwrite)


def _save(fig, path: str | os.PathLike, overwrite: bool) -> Path:
    import matplotlib.pyplot as plt

    with atomic_output(path, overwrite) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)
    return Path(path)
