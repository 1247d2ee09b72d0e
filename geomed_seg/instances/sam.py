"""Segment Anything (Hugging Face ``transformers`` ``SamModel``) on a window of a large scene.

Prompts are given in WORLD coordinates — CRS ``x, y`` for rasters, RAS millimetres for
volumes — and converted to pixels through the grid (rotated and south-up transforms, oblique
affines included). Only a window around the prompts is read (:meth:`Image.sel_window`); the
window is stretched to 8-bit RGB (2nd-98th percentile, as SAM expects photographs), run
through ``SamProcessor``/``SamModel``, and the mask is placed back on the scene grid (lazy
zeros elsewhere). Volumes are segmented slice-wise: all prompts must fall on the same
axial slice ``z`` (array order), which is the slice segmented.

The checkpoint is a local folder as written by ``save_pretrained`` (``config.json``,
``model.safetensors``, ``processor_config.json``); nothing is downloaded
(``local_files_only=True``). Needs the ``sam`` extra (``transformers``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from geomed_seg.classical.indices import band_index
from geomed_seg.classical.tiling import place_window, world_to_index
from geomed_seg.core.image import Image
from geomed_seg.errors import InvalidInputError, ModelError, OutputExistsError


class SamSegmenter:
    """A loaded SAM model and processor (from a local folder, or given directly)."""

    def __init__(
        self,
        checkpoint: str | os.PathLike | None = None,
        *,
        model=None,
        processor=None,
        device: str = "cpu",
    ) -> None:
        from transformers import SamModel, SamProcessor

        if checkpoint is not None:
            try:
                model = SamModel.from_pretrained(str(checkpoint), local_files_only=True)
                processor = SamProcessor.from_pretrained(str(checkpoint), local_files_only=True)
            except (OSError, ValueError) as exc:
                raise ModelError(f"{checkpoint}: not a SAM checkpoint folder ({exc})") from exc
        if model is None or processor is None:
            raise ModelError("SamSegmenter needs a checkpoint folder or a model and a processor")
        self.model = model.to(device).eval()
        self.processor = processor
        self.device = device

    def __call__(
        self, rgb8: np.ndarray, points: np.ndarray | None, labels: np.ndarray | None, box
    ) -> np.ndarray:
        """Return the boolean mask ``(h, w)`` of an RGB uint8 ``(h, w, 3)`` image.

        ``points`` ``(n, 2)`` and ``box`` ``(x0, y0, x1, y1)`` are pixel ``(col, row)``.
        """
        import torch

        kw = {}
        if points is not None and len(points):
            kw["input_points"] = [[[[float(c), float(r)] for c, r in points]]]
            kw["input_labels"] = [[[int(v) for v in labels]]]
        if box is not None:
            kw["input_boxes"] = [[[float(v) for v in box]]]
        inputs = self.processor(images=rgb8, return_tensors="pt", **kw).to(self.device)
        with torch.no_grad():
            out = self.model(**inputs, multimask_output=False)
        masks = self.processor.image_processor.post_process_masks(
            out.pred_masks.cpu(),
            inputs["original_sizes"].cpu(),
            inputs["reshaped_input_sizes"].cpu(),
        )
        return np.asarray(masks[0][0, 0], dtype=bool)


@dataclass
class SamWindow:
    """What SAM sees: scene ``slices`` (array order), the 8-bit RGB window ``(h, w, 3)`` and
    prompts in window pixels (``points`` ``(n, 2)`` as ``(col, row)``, ``box`` ``x0, y0, x1, y1``)."""

    slices: tuple[slice, ...]
    rgb8: np.ndarray
    points: np.ndarray | None
    labels: np.ndarray | None
    box: tuple[float, float, float, float] | None


def _stretch(x: np.ndarray) -> np.ndarray:
    lo, hi = np.nanpercentile(x, 2), np.nanpercentile(x, 98)
    y = np.clip((x - lo) / max(float(hi - lo), 1e-12), 0, 1)
    return (np.nan_to_num(y) * 255).astype(np.uint8)


def sam_window(
    image: Image,
    *,
    points: Sequence[Sequence[float]] | None = None,
    point_labels: Sequence[int] | None = None,
    box: Sequence[float] | None = None,
    window: int = 512,
    rgb: Sequence[str | int] | None = None,
) -> SamWindow:
    """Return the :class:`SamWindow` for world-coordinate prompts (see module docstring).

    The window is ``window`` pixels square, centred on the prompts (clipped to the scene);
    a box is given by two opposite world corners ``(x0, y0, x1, y1)`` (rasters only).
    """
    pts = [world_to_index(image.grid, p) for p in (points or [])]
    if box is not None:
        if image.grid.ndim != 2:
            raise InvalidInputError("box prompts are for rasters; use points on volumes")
        corners = [world_to_index(image.grid, box[:2]), world_to_index(image.grid, box[2:4])]
    else:
        corners = []
    allp = np.array(pts + corners)
    if len(allp) == 0:
        raise InvalidInputError("SAM needs at least one point or a box prompt")
    spatial = image.spatial_shape
    if image.grid.ndim == 3:
        if len(set(allp[:, 0])) != 1:
            raise InvalidInputError(
                f"volume prompts fall on several slices z={sorted(set(allp[:, 0]))}"
            )
        z = int(allp[0, 0])
        plane, yx = spatial[1:], allp[:, 1:]
    else:
        plane, yx = spatial, allp
    lo, hi = yx.min(0), yx.max(0)
    if np.any(hi - lo + 1 > window):
        raise InvalidInputError(f"prompts span {tuple(hi - lo + 1)} px, more than window {window}")
    centre = (lo + hi) // 2
    sl2 = []
    for c, n in zip(centre, plane, strict=True):
        start = int(min(max(c - window // 2, 0), max(n - window, 0)))
        sl2.append(slice(start, min(start + window, n)))
    slices = (slice(z, z + 1), *sl2) if image.grid.ndim == 3 else tuple(sl2)
    data = image.sel_window(slices).compute()
    if image.grid.ndim == 3:
        data = data[:, 0]
    if rgb is None:
        idx = [0, 1, 2] if image.n_channels >= 3 else [0, 0, 0]
    else:
        idx = [band_index(image, b) for b in rgb]
    rgb8 = np.stack([_stretch(data[i].astype(np.float64)) for i in idx], axis=-1)
    off = np.array([s.start for s in sl2])
    local = (yx - off)[:, ::-1]  # (col, row)
    p = local[: len(pts)] if pts else None
    lab = np.asarray(point_labels if point_labels is not None else [1] * len(pts)) if pts else None
    b = None
    if corners:
        c = local[len(pts) :]
        b = (float(c[:, 0].min()), float(c[:, 1].min()), float(c[:, 0].max()), float(c[:, 1].max()))
    return SamWindow(slices, rgb8, p, lab, b)


def sam_segment(
    image: Image,
    segmenter: SamSegmenter,
    *,
    points: Sequence[Sequence[float]] | None = None,
    point_labels: Sequence[int] | None = None,
    box: Sequence[float] | None = None,
    window: int = 512,
    rgb: Sequence[str | int] | None = None,
) -> Image:
    """Return SAM's mask (uint8 ``{0, 1}``) for world-coordinate prompts, on the scene grid."""
    w = sam_window(image, points=points, point_labels=point_labels, box=box, window=window, rgb=rgb)
    mask = segmenter(w.rgb8, w.points, w.labels, w.box).astype(np.uint8)
    if image.grid.ndim == 3:
        mask = mask[None]
    return place_window(image, w.slices, mask, attrs={"method": "sam"})


def sam_file(
    input_path: str | os.PathLike,
    checkpoint: str | os.PathLike,
    output: str | os.PathLike,
    *,
    points: Sequence[Sequence[float]] | None = None,
    box: Sequence[float] | None = None,
    window: int = 1024,
    overwrite: bool = False,
    device: str = "cpu",
) -> int:
    """Return the mask's pixel count after writing SAM's mask (uint8 ``{0, 1}``) of a file.

    ``points`` / ``box`` are WORLD coordinates of the input (CRS ``x, y`` for rasters, RAS mm
    for volumes); the mask is written on the input grid (COG for ``.tif``).
    """
    from geomed_seg.io.registry import open_image, write_image

    if not Path(checkpoint).is_dir():
        raise ModelError(f"{checkpoint}: SAM checkpoint folder not found")
    if Path(output).exists() and not overwrite:
        raise OutputExistsError(f"{output}: exists; pass --overwrite to replace it")
    image = open_image(input_path)
    segmenter = SamSegmenter(checkpoint, device=device)
    mask = sam_segment(image, segmenter, points=points, box=box, window=window)
    write_image(mask, output, overwrite=overwrite)
    return int(mask.darray.sum().compute())
