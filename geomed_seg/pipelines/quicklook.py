"""Quicklook PNGs: the input with the label mask overlaid, a legend and a scale bar.

Rasters: an RGB composite (bands named red/green/blue, else the first three; 2-98 %
stretch) with the classes in their card colours. Volumes: axial, coronal and sagittal
slices through the centre of the foreground of one channel. Large images are decimated
(strided reads) to at most ``max_px`` on a side, so a quicklook never loads a whole scene.
matplotlib (Agg) draws it; the scale bar is drawn by hand (no extra dependency). Raster
scale bars are in true ground metres/km (:mod:`geomed_seg.core.ground`), or say "CRS units"
when the grid has no CRS or a local one.
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
    names = [n.lower() for n in image.channel_names or image.attrs.get("band_names") or []]
    if all(b in names for b in ("red", "green", "blue")):
        return [names.index(b) for b in ("red", "green", "blue")]
    return [min(i, image.n_channels - 1) for i in range(3)]


def raster_quicklook(
    image: Image,
    labels: Image,
    classes: Sequence[ClassInfo],
    path: str | os.PathLike,
    *,
    title: str = "",
    max_px: int = 1024,
    overwrite: bool = False,
) -> Path:
    """Write a PNG of ``image`` (RGB) with ``labels`` overlaid; return its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    step = max(1, int(np.ceil(max(image.spatial_shape) / max_px)))
    rgb = np.asarray(image.darray[_rgb_bands(image), ::step, ::step].compute(), np.float32)
    lab = np.asarray(labels.darray[0, ::step, ::step].compute())
    shown = _overlay(_stretch(rgb).transpose(1, 2, 0), lab, classes)
    fig, ax = plt.subplots(figsize=(7, 7 * shown.shape[0] / shown.shape[1]))
    ax.imshow(shown, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(title, fontsize=10)
    n_px, label = raster_bar(image.grid, step, shown.shape[1])
    _scale_bar(ax, n_px, shown.shape[1], label)
    _legend(fig, classes, ax)
    return _save(fig, path, overwrite)


def volume_quicklook(
    image: Image,
    labels: Image,
    classes: Sequence[ClassInfo],
    path: str | os.PathLike,
    *,
    channel: int = 0,
    title: str = "",
    overwrite: bool = False,
) -> Path:
    """Write a PNG of three orthogonal slices of ``image[channel]`` with ``labels``; return path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    vol = np.asarray(image.darray[channel].compute(), np.float32)
    lab = np.asarray(labels.darray[0].compute())
    fg = np.argwhere(lab > 0)
    centre = fg.mean(0).astype(int) if len(fg) else np.array(vol.shape) // 2
    sz, sy, sx = image.grid.spacing_zyx
    views = [  # (slice (rows, cols) with rows flipped for display, pixel size along cols)
        ("axial", vol[centre[0]], lab[centre[0]], sx, sy / sx),
        ("coronal", vol[:, centre[1]], lab[:, centre[1]], sx, sz / sx),
        ("sagittal", vol[:, :, centre[2]], lab[:, :, centre[2]], sy, sz / sy),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(11, 4.4))
    for ax, (name, img2d, lab2d, px, aspect) in zip(axes, views, strict=True):
        grey = _stretch(img2d[None])[0]
        shown = _overlay(np.repeat(grey[..., None], 3, axis=2), lab2d, classes)
        ax.imshow(shown, origin="lower", aspect=aspect, interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.set_axis_off()
        n_px, label = bar_label(px, shown.shape[1], "mm")
        _scale_bar(ax, n_px, shown.shape[1], label)
    fig.suptitle(title, fontsize=10)
    _legend(fig, classes)
    return _save(fig, path, overwrite)


def _save(fig, path: str | os.PathLike, overwrite: bool) -> Path:
    import matplotlib.pyplot as plt

    with atomic_output(path, overwrite) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)
    return Path(path)
