"""Which sample types the compute commands accept, and the explicit way in for complex data.

``info`` and ``convert`` carry any type GDAL, nibabel or zarr can store. Segmenting,
thresholding or training on complex samples (SAR single-look complex products) would
silently drop the imaginary part, so those commands refuse complex input by name unless the
user asks for the magnitude (``--allow-complex=magnitude``, YAML ``input.allow_complex``).
"""

from __future__ import annotations

import numpy as np

from geomed_seg.core.image import Image
from geomed_seg.errors import InvalidInputError

#: Accepted values of ``--allow-complex`` / ``input.allow_complex``.
COMPLEX_MODES = ("magnitude",)


def check_compute_dtype(image: Image, source: object, allow_complex: str | None = None) -> Image:
    """Return ``image`` ready for computing; complex samples need ``allow_complex``.

    Parameters
    ----------
    image : Image
        Any image; channel-first.
    source : path or str
        Named in the error.
    allow_complex : {"magnitude"} or None
        ``"magnitude"`` replaces complex samples by ``abs(z)`` (float32/float64).

    Raises
    ------
    InvalidInputError
        Complex samples without ``allow_complex``, an unknown ``allow_complex`` value, or a
        sample type that is not a number (bool is fine, strings/objects are not).
    """
    dtype = np.dtype(image.dtype)
    if allow_complex is not None and allow_complex not in COMPLEX_MODES:
        raise InvalidInputError(
            f"--allow-complex {allow_complex!r}: choose {', '.join(COMPLEX_MODES)}"
        )
    if np.issubdtype(dtype, np.complexfloating):
        if allow_complex != "magnitude":
            raise InvalidInputError(
                f"{source}: complex samples ({dtype.name}) are not supported for segmentation; "
                "pass --allow-complex=magnitude (YAML: input.allow_complex: magnitude) to use "
                "the magnitude |z|, or convert to intensity first"
            )
        real = np.float32 if dtype.itemsize <= 8 else np.float64
        data = abs(image.data).astype(real)
        return Image(data, image.grid, image.nodata, image.mask,
                     {**image.attrs, "complex": "magnitude"})  # fmt: skip
    if not (np.issubdtype(dtype, np.number) or dtype == np.bool_):
        raise InvalidInputError(f"{source}: sample type {dtype} is not numeric; not supported")
    return image


__all__ = ["COMPLEX_MODES", "check_compute_dtype"]
