"""One entry point for every classical method: ``run_classical(method, image, ...)``.

This is the public function behind ``geomed-seg classical METHOD``; it looks the method up in
the registry (:mod:`geomed_seg.classical.registry`), validates the options against the
method's own options model and returns the output image with its class table (``None`` for
continuous outputs). :func:`classical_file` adds reading and writing files.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from geomed_seg.classical.registry import ClassicalResult, MethodOptions, get_method
from geomed_seg.core.image import Image
from geomed_seg.errors import InvalidInputError

__all__ = ["ClassicalResult", "classical_file", "run_classical", "with_band_names"]


def with_band_names(image: Image, names: Sequence[str] | str | None) -> Image:
    """Return ``image`` with ``attrs["band_names"]`` set (``"blue,green,..."`` or a list)."""
    if names is None:
        return image
    names = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
    if len(names) != image.n_channels:
        raise InvalidInputError(f"{len(names)} band names given for {image.n_channels} bands")
    return replace(image, attrs={**image.attrs, "band_names": names})


def run_classical(
    method: str, image: Image, options: MethodOptions | None = None, **values: Any
) -> ClassicalResult:
    """Run the registered classical ``method`` on ``image``; return a ``ClassicalResult``.

    ``options`` is the method's options model, and/or ``values`` its fields as keywords
    (``None`` = the default); see :func:`geomed_seg.classical.registry.methods` for the
    methods and each one's options. World coordinates (``seed``, ``box``) are CRS ``x, y``
    for rasters and RAS mm for volumes. Index methods return the float index unless
    ``threshold`` or ``otsu`` asks for a mask.

    Raises
    ------
    InvalidInputError
        An unknown method (the known ones are listed), or an unknown, missing or invalid
        option (named with its command-line flag).
    """
    return get_method(method)(image, options, **values)


def classical_file(
    method: str,
    input_path: str | os.PathLike,
    output: str | os.PathLike,
    *,
    overwrite: bool = False,
    band_names: str | Sequence[str] | None = None,
    table: str | os.PathLike | None = None,
    panoptic: str | os.PathLike | None = None,
    things: Sequence[int] | None = None,
    **options: Any,
) -> ClassicalResult:
    """Open ``input_path``, run the classical ``method`` (see :func:`run_classical`; its
    ``options`` as keywords), write ``output``.

    For ``method="instances"`` also the instance ``table`` (.csv/.json) and a ``panoptic``
    output: a raster/volume of ``class * 1000 + k`` (any writable suffix), or for ``.png``
    a COCO-panoptic PNG plus its ``.json`` beside it. ``things`` are the instance classes
    (default: every non-zero class).
    """
    from geomed_seg.core.dtypes import check_compute_dtype
    from geomed_seg.io.registry import open_image
    from geomed_seg.io.transaction import OutputTransaction

    entry = get_method(method)  # unknown methods and options fail before any work
    opts = entry.validate(**options)
    if (table is not None or panoptic is not None) and entry.name != "instances":
        raise InvalidInputError("--table/--panoptic are only written by the 'instances' method")
    outputs = [output, table, panoptic]
    if panoptic is not None and Path(panoptic).suffix.lower() == ".png":
        outputs.append(Path(panoptic).with_suffix(".json"))
    # all outputs are checked before computing and appear together (or none does)
    txn = OutputTransaction(
        [o for o in outputs if o is not None], overwrite=overwrite, inputs=[input_path]
    )
    image = with_band_names(open_image(input_path), band_names)
    image = check_compute_dtype(image, input_path)
    with txn:
        return _write_classical(entry, image, output, overwrite, table, panoptic, things,
                                opts)  # fmt: skip


def _write_classical(entry, image, output, overwrite, table, panoptic, things, opts):
    """Run ``entry`` and write its outputs (inside :func:`classical_file`'s transaction)."""
    from geomed_seg.io.registry import write_image

    result = entry.run(image, opts)
    kw = {"classes": result.classes} if result.classes else {}
    write_image(result.image, output, overwrite=overwrite, **kw)
    if table is None and panoptic is None:
        return result
    from geomed_seg.instances.instances import instance_table, write_table

    tab = instance_table(result.image, image)
    if table is not None:
        write_table(tab, table, overwrite=overwrite)
        result.facts["table"] = str(Path(table))
    if panoptic is not None:
        from geomed_seg.instances.panoptic import panoptic_ids, write_coco_panoptic

        th = sorted(set(tab["class"].tolist())) if things is None else list(things)
        pan = panoptic_ids(image, result.image, tab, things=th)
        p = Path(panoptic)
        if p.suffix.lower() == ".png":
            write_coco_panoptic(pan, p, p.with_suffix(".json"), things=th, overwrite=overwrite)
        else:
            write_image(pan, p, overwrite=overwrite)
        result.facts["panoptic"] = str(p)
    return result
