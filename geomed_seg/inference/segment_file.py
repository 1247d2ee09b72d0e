"""Segment a file: the library function behind ``geomed-seg segment`` (no typer, no CLI).

:func:`segment_file` opens the input, reads the checkpoint's card, checks that the model fits
the input, loads the weights and runs :func:`geomed_seg.inference.segment.segment` (or
:func:`~geomed_seg.inference.respaced.segment_resampled` for a volume at another spacing)
into the output file. Checks that need no weights run first, so a mismatch fails in a
second, and torch is imported only once the inputs are valid.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from geomed_seg.errors import InvalidInputError
from geomed_seg.inference.options import EngineOptions


def segment_file(
    input_path: str | os.PathLike,
    checkpoint: str | os.PathLike,
    output: str | os.PathLike,
    options: EngineOptions | None = None,
    *,
    series: str | None = None,
    card: str | os.PathLike | None = None,
    resample: bool = True,
    allow_complex: str | None = None,
) -> Any:
    """Segment ``input_path`` with ``checkpoint`` into ``output``; return the ``SegmentResult``.

    Parameters
    ----------
    input_path : path
        A file, a DICOM series folder or a case folder holding one file or DICOM series per
        band of the card (found by name, as ``run`` finds BraTS sequences:
        :func:`geomed_seg.pipelines.inputs.open_case_folder`).
    checkpoint : path
        Checkpoint folder or ``.safetensors`` (or a bare ``.pt`` state dict with ``card``).
    output : path
        Output file; its format follows the suffix (``.tif``, ``.nii.gz``, ``.zarr``...).
    options : EngineOptions, optional
        Engine options (``roi_size``, ``overlap``, ``mode`` default to the card's values;
        ``output="probabilities"`` writes class probabilities; ``overwrite``, ``quiet``).
    series : str, optional
        DICOM series (index in ``info``'s list, UID or description).
    card : path, optional
        Card JSON for a bare state dict.
    resample : bool
        Volumes whose spacing differs > 10 % from the card's run at the card's spacing and
        the probabilities come back onto the input grid before the labels; False runs at
        the input spacing, with a warning. The output is always on the input's grid.
    allow_complex : str, optional
        ``"magnitude"`` segments ``|z|`` of a complex input (SAR SLC).

    Raises
    ------
    ModelError
        Unreadable checkpoint, 2D model on a volume (or 3D on a raster), band-count mismatch.
    OutputExistsError
        ``output`` exists and not ``overwrite``.
    """
    from geomed_seg.core.dtypes import check_compute_dtype
    from geomed_seg.io.transaction import OutputTransaction
    from geomed_seg.models.card import ModelCard
    from geomed_seg.models.checkpoint import load_checkpoint, read_card

    opts = options if options is not None else EngineOptions()
    # every conflict (existing output, output = input or checkpoint, blocked folder) first;
    # the one output (and its .aux.xml sidecar) is then committed by its atomic writer
    OutputTransaction([output], overwrite=opts.overwrite, inputs=[input_path, checkpoint, card])
    model_card = ModelCard.load(card) if card is not None else read_card(checkpoint)
    image = open_input(input_path, model_card, series=series)
    image = check_compute_dtype(image, input_path, allow_complex)
    model_card.check_image(image, source=input_path)
    roi = opts.roi_size
    if isinstance(roi, tuple) and len(roi) != model_card.spatial_dims:
        raise InvalidInputError(
            f"--roi {','.join(map(str, roi))}: model {model_card.name!r} needs "
            f"{model_card.spatial_dims} values (array order)"
        )
    loaded = load_checkpoint(checkpoint, card=card)
    from geomed_seg.inference.respaced import model_grid
    from geomed_seg.inference.segment import segment  # torch: only once the inputs are valid

    grid = model_grid(image, model_card, resample_to_model=resample)
    if grid is None:  # same spacing, or resample=False (segment() warns on a mismatch)
        return segment(image, loaded, opts, sink=Path(output))
    from geomed_seg.inference.respaced import segment_resampled
    from geomed_seg.io.registry import write_image

    res = segment_resampled(image, loaded, grid, opts)
    res.path = write_image(res.image, output, overwrite=opts.overwrite)
    return res


def open_input(path: str | os.PathLike, card: Any, series: str | None = None) -> Any:
    """Return the input :class:`~geomed_seg.core.image.Image` of ``segment``: one file or
    DICOM series, or a case folder of one file/series per band named in ``card``."""
    from geomed_seg.io.registry import open_image
    from geomed_seg.pipelines.inputs import is_case_folder, open_case_folder, sequence_patterns

    names = list(card.band_names or [])
    if len(names) > 1 and Path(path).is_dir():
        patterns = sequence_patterns(names)
        if is_case_folder(Path(path), patterns):
            if series is not None:
                raise InvalidInputError(
                    f"{path}: --series selects one DICOM series; this is a case folder of "
                    f"{', '.join(names)}"
                )
            return open_case_folder(Path(path), patterns)[0]
    return open_image(path, series=series)


__all__ = ["open_input", "segment_file"]
