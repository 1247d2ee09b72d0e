"""Format conversion that keeps geometry: open with the registry, write by output suffix."""

from __future__ import annotations

import os
from pathlib import Path

from geomed_seg.core.image import Image
from geomed_seg.errors import InvalidInputError


def open_input(
    src: str | os.PathLike,
    *,
    series: str | None = None,
    resample: bool = False,
    verify: bool = True,
) -> Image:
    """Return the image at ``src``; ``resample`` is the DICOM opt-in for uneven/tilted series.

    ``verify`` checks the payload's integrity first (see
    :func:`~geomed_seg.io.registry.open_image`); only descriptions that read no pixels
    (``info`` without ``--stats``) turn it off.
    """
    from geomed_seg.io.registry import find_adapter, open_image

    if not resample:
        return open_image(src, series=series, verify=verify)
    adapter = find_adapter(src)
    if "resample" not in adapter.open_options:  # the formats whose entry takes resample=
        raise InvalidInputError(
            f"{src}: --resample applies to DICOM series only (this is {adapter.format_name})"
        )
    return open_image(src, series=series, resample=True, verify=verify)


def convert_image(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    overwrite: bool = False,
    series: str | None = None,
    resample: bool = False,
) -> Path:
    """Return the path written after converting ``src`` to the format of ``dst``'s suffix.

    Rasters go to ``.tif`` (COG) or ``.zarr``; volumes to ``.nii``/``.nii.gz`` or ``.zarr``.
    The output is written atomically and never replaces an existing file unless ``overwrite``.
    The input's payload is verified first (gzip CRC, DICOM pixel data), so a corrupt input
    raises :class:`~geomed_seg.errors.ReadError` and nothing is written. Band descriptions
    are the input's; a single-band Landsat / Sentinel-2 L2A product file without one gets
    its band's common name from the matching sensor card
    (:func:`geomed_seg.pipelines.cards.with_matched_sensor_bands`); none is invented.
    """
    from geomed_seg.io.registry import write_image

    if Path(src).resolve() == Path(dst).resolve():
        raise InvalidInputError(f"{dst}: output is the input; choose another name")
    from geomed_seg.pipelines.cards import with_matched_sensor_bands

    image = open_input(src, series=series, resample=resample)
    if image.kind == "raster":  # a Landsat/Sentinel-2 band file: its band's name from the card
        image = with_matched_sensor_bands(image, src)
    return write_image(image, dst, overwrite=overwrite)
