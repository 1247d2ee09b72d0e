"""Mask R-CNN (torchvision) over large scenes: tiled detection, scene coordinates, NMS.

The model is torchvision's ``maskrcnn_resnet50_fpn_v2``, always built with
``weights=None, weights_backbone=None`` (nothing is ever downloaded); trained weights come
from the user as a safetensors file or a state dict loaded with ``weights_only=True``.

A scene is cut into ``tile`` x ``tile`` windows overlapping by ``overlap`` pixels
(``overlap`` should exceed the largest object so each object is whole in one tile). Each
window is read lazily, scaled to 0..1 with scene-wide per-band min/max and run; boxes and
masks are shifted to scene pixel coordinates; duplicates from overlapping tiles are removed
with ``torchvision.ops.batched_nms`` (per class). Instances are painted in increasing score
order into a scene-sized uint32 array (so memory is 4 bytes per pixel plus the masks), and
described by :func:`~geomed_seg.instances.instances.instance_table`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import dask.array as da
import numpy as np
import pandas as pd
import torch

from geomed_seg.classical.indices import band_index
from geomed_seg.core.image import Image
from geomed_seg.errors import InvalidInputError, ModelError


def build_maskrcnn(
    num_classes: int, weights: str | os.PathLike | None = None, *, image_size: int = 512
) -> torch.nn.Module:
    """Return an eval-mode Mask R-CNN (ResNet-50 FPN v2) with ``num_classes`` (incl. background).

    ``weights``: a ``.safetensors`` file or a ``torch.save``'d state dict (loaded with
    ``weights_only=True``); ``None`` keeps the random initialisation. ``image_size`` sets the
    model's internal resize (``min_size = max_size``) to the tile size, so tiles are not
    up-sampled to torchvision's default 800 px.
    """
    from torchvision.models.detection import maskrcnn_resnet50_fpn_v2

    model = maskrcnn_resnet50_fpn_v2(
        weights=None,
        weights_backbone=None,
        num_classes=num_classes,
        min_size=image_size,
        max_size=image_size,
    )
    if weights is not None:
        p = Path(weights)
        try:
            if p.suffix == ".safetensors":
                from safetensors.torch import load_file

                state = load_file(str(p))
            else:
                state = torch.load(p, map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        except (OSError, RuntimeError, ValueError) as exc:
            raise ModelError(f"{p}: cannot load Mask R-CNN weights ({exc})") from exc
    return model.eval()


@dataclass
class Detections:
    """Scene-level detections: boxes ``(N, 4)`` as ``x0, y0, x1, y1`` scene pixels (col, row),
    ``scores (N,)``, ``labels (N,)`` and per detection a boolean mask with its scene slices."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    masks: list[tuple[tuple[slice, slice], np.ndarray]]

    def __len__(self) -> int:
        return len(self.scores)


def tile_starts(n: int, tile: int, overlap: int) -> list[int]:
    """Return window starts covering ``0..n`` with windows of ``tile`` overlapping by ``overlap``."""
    if tile <= overlap:
        raise InvalidInputError(f"tile {tile} must be larger than overlap {overlap}")
    if n <= tile:
        return [0]
    starts = list(range(0, n - tile, tile - overlap))
    return starts + [n - tile]


def _scaled(image: Image, rgb: Sequence[str | int]) -> tuple[da.Array, np.ndarray, np.ndarray]:
    idx = [band_index(image, b) for b in rgb]
    if len(idx) != 3:
        raise InvalidInputError(f"Mask R-CNN needs 3 bands, got {list(rgb)}")
    arr = image.darray[idx].astype(np.float32)
    lo, hi = da.compute(arr.min(axis=(1, 2)), arr.max(axis=(1, 2)))
    return arr, np.asarray(lo), np.asarray(hi)


def detect_tiled(
    image: Image,
    model: Callable,
    *,
    tile: int = 512,
    overlap: int = 64,
    rgb: Sequence[str | int] = (1, 2, 3),
    score_threshold: float = 0.5,
    iou_threshold: float = 0.5,
    mask_threshold: float = 0.5,
    device: str = "cpu",
    drop_edge: bool = True,
) -> Detections:
    """Return :class:`Detections` of ``model`` over the whole raster ``image``.

    ``model`` is any torchvision-style detector: ``model([tensor(3, h, w)])`` returns a list
    of dicts with ``boxes``, ``scores``, ``labels`` and ``masks (N, 1, h, w)``.
    ``drop_edge`` discards detections touching a tile border that is not a scene border:
    such objects are cut by the tile and, when ``overlap`` exceeds the object size, whole
    in a neighbouring tile (NMS alone would keep both, their IoU being low).
    """
    from torchvision.ops import batched_nms

    if image.grid.ndim != 2:
        raise InvalidInputError("Mask R-CNN runs on rasters (band, y, x)")
    if isinstance(model, torch.nn.Module):
        model = model.to(device).eval()
    arr, lo, hi = _scaled(image, rgb)
    scale = np.where(hi > lo, hi - lo, 1.0).astype(np.float32)
    h, w = image.spatial_shape
    boxes, scores, labels, masks = [], [], [], []
    for r0 in tile_starts(h, tile, overlap):
        for c0 in tile_starts(w, tile, overlap):
            win = arr[:, r0 : r0 + tile, c0 : c0 + tile].compute()
            x = torch.from_numpy((win - lo[:, None, None]) / scale[:, None, None]).to(device)
            with torch.no_grad():
                out = model([x])[0]
            keep = out["scores"] >= score_threshold
            for box, score, lab, m in zip(
                out["boxes"][keep].cpu().numpy(),
                out["scores"][keep].cpu().numpy(),
                out["labels"][keep].cpu().numpy(),
                out["masks"][keep].cpu().numpy(),
                strict=True,
            ):
                tw, th = x.shape[2], x.shape[1]
                if drop_edge and (
                    (box[0] <= 0.5 and c0 > 0)
                    or (box[1] <= 0.5 and r0 > 0)
                    or (box[2] >= tw - 0.5 and c0 + tw < w)
                    or (box[3] >= th - 0.5 and r0 + th < h)
                ):
                    continue
                x0, y0 = int(np.floor(box[0])), int(np.floor(box[1]))
                x1, y1 = int(np.ceil(box[2])), int(np.ceil(box[3]))
                crop = m[0, y0:y1, x0:x1] > mask_threshold
                if crop.size == 0:
                    continue
                boxes.append(box + np.array([c0, r0, c0, r0], dtype=np.float32))
                scores.append(float(score))
                labels.append(int(lab))
                sl = (
                    slice(r0 + y0, r0 + y0 + crop.shape[0]),
                    slice(c0 + x0, c0 + x0 + crop.shape[1]),
                )
                masks.append((sl, crop))
    if not boxes:
        empty = np.zeros((0, 4), np.float32)
        return Detections(empty, np.zeros(0), np.zeros(0, np.int64), [])
    tb = torch.as_tensor(np.stack(boxes))
    keep = batched_nms(tb, torch.as_tensor(scores), torch.as_tensor(labels), iou_threshold).numpy()
    return Detections(
        np.stack(boxes)[keep],
        np.asarray(scores)[keep],
        np.asarray(labels)[keep],
        [masks[i] for i in keep],
    )


def detections_to_instances(image: Image, det: Detections) -> tuple[Image, Image, pd.DataFrame]:
    """Return ``(instances uint32, classes uint16, table)`` on ``image``'s grid.

    Instance ``k`` is the ``k``-th best detection; where masks overlap the higher score
    wins. The table's ``mean_score`` is the detection score.
    """
    from geomed_seg.instances.instances import instance_table

    h, w = image.spatial_shape
    ids = np.zeros((h, w), np.uint32)
    cls = np.zeros((h, w), np.uint16)
    score = np.zeros((h, w), np.float32)
    order = np.argsort(det.scores)  # ascending: best painted last
    rank = np.empty(len(order), np.int64)
    rank[np.argsort(-det.scores, kind="stable")] = np.arange(1, len(order) + 1)
    for i in order:
        sl, m = det.masks[i]
        ids[sl][m] = rank[i]
        cls[sl][m] = det.labels[i]
        score[sl][m] = det.scores[i]
    chunks = (1, *image.darray.chunks[1:])
    inst = Image.from_array(ids[None], image.grid, chunks=chunks, attrs={"n_instances": len(det)})
    sem = Image.from_array(cls[None], image.grid, chunks=chunks)
    sc = Image.from_array(score[None], image.grid, chunks=chunks)
    return inst, sem, instance_table(inst, sem, sc)


def maskrcnn_file(
    input_path: str | os.PathLike,
    output: str | os.PathLike,
    *,
    weights: str | os.PathLike | None = None,
    random_init: bool = False,
    num_classes: int = 2,
    class_names: dict[int, str] | None = None,
    tile: int = 512,
    overlap: int = 64,
    rgb: Sequence[str | int] = (1, 2, 3),
    score_threshold: float = 0.5,
    table: str | os.PathLike | None = None,
    overwrite: bool = False,
    device: str = "cpu",
) -> pd.DataFrame:
    """Return the instance table after writing Mask R-CNN instances (uint32) of a raster file.

    The instance raster is written on the input grid (COG for ``.tif``) and, with ``table``,
    the per-instance table (world centroids in CRS units, ``area_m2``, ``mean_score`` = detection
    score, ``class_name`` when ``class_names`` maps class index -> name). Without ``weights``
    the model is only run when ``random_init`` is set (pipeline tests); the model's internal
    resize is the tile size.
    """
    from geomed_seg.instances.instances import write_table
    from geomed_seg.io.registry import open_image, write_image

    if weights is None and not random_init:
        raise ModelError(
            f"{input_path}: Mask R-CNN needs --weights (a .safetensors or state-dict file); "
            "--random-init runs untrained weights for pipeline tests only"
        )
    if weights is not None and not Path(weights).is_file():
        raise ModelError(f"{weights}: Mask R-CNN weights file not found")
    from geomed_seg.io.transaction import OutputTransaction

    # both outputs checked now (exists, blocked folder, = input), committed together at the end
    txn = OutputTransaction(
        [p for p in (output, table) if p is not None], overwrite=overwrite,
        inputs=[input_path, weights],
    )  # fmt: skip
    image = open_image(input_path)
    if image.grid.ndim != 2:
        raise InvalidInputError(f"{input_path}: Mask R-CNN runs on rasters (band, y, x)")
    model = build_maskrcnn(num_classes, weights, image_size=tile)
    det = detect_tiled(
        image,
        model,
        tile=tile,
        overlap=overlap,
        rgb=rgb,
        score_threshold=score_threshold,
        device=device,
    )
    inst, _, tab = detections_to_instances(image, det)
    if class_names and len(tab):
        tab["class_name"] = [class_names.get(int(c), str(c)) for c in tab["class"]]
    with txn:
        write_image(inst, output, overwrite=overwrite)
        if table is not None:
            write_table(tab, table, overwrite=overwrite)
    return tab
