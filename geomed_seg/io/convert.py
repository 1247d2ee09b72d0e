"""Format conversion that keeps geometry: open with the registry, write by output suffix."""

from __future__ import annotations

import os
from pathlib import Path

from geomed_seg.errors import InvalidInputError


def convert_image(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    overwrite: bool = False,
    series: str | None = None,
) -> Path:
    """Return the path written after converting ``src`` to the format of ``dst``'s suffix.

    Rasters go to ``.tif`` (COG) or ``.zarr``; volumes to ``.nii``/``.nii.gz`` or ``.zarr``.
    The output is written atomically and never replaces an existing file unless ``overwrite``.
    """
    from geomed_seg.io.registry import open_image, write_image

    if Path(src).resolve() == Path(dst).resolve():
        raise InvalidInputError(f"{dst}: output is the input; choose another name")
    image = open_image(src, series=series)
    return write_image(image, dst, overwrite=overwrite)
