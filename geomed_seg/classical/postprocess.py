"""Post-processing of binary masks on images of any size, in physical units.

Opening/closing run chunk-wise with a halo equal to the structuring element radius
(``skimage.morphology`` binary operators; exact versus the whole image). Hole filling and
minimum object size are global (a hole or object can span many chunks), so they use the
tiled connected components of :mod:`geomed_seg.instances.components`: a hole is a
background component that does not touch the image border (the definition
``scipy.ndimage.binary_fill_holes`` uses), an object is removed when its true ground area
(the sum of its pixels' ground areas in m², :mod:`geomed_seg.core.ground`: areas vary by
row in degrees or Web Mercator) or its volume (voxels times ``VoxelGrid.voxel_volume``, mm³)
is below the minimum. Objects and holes use the project's one connectivity (faces only,
:mod:`geomed_seg.core.connectivity`), the same as the polygons. Results equal the
whole-image scikit-image/SciPy results exactly.

Dense CRF was not added: ``pydensecrf`` is not on PyPI for Python 3.11 and ``pydensecrf2``
(single 1.1 release) is an unmaintained fork; see the project report.
"""

from __future__ import annotations

import logging

import dask.array as da
import numpy as np

from geomed_seg.classical.tiling import label_image, map_spatial
from geomed_seg.core.connectivity import CONNECTIVITY
from geomed_seg.core.grid import GeoGrid
from geomed_seg.core.ground import label_areas
from geomed_seg.core.image import Image
from geomed_seg.errors import InvalidInputError
from geomed_seg.instances.components import label_components

log = logging.getLogger(__name__)


def _binary(image: Image) -> da.Array:
    lab = image.darray[0]
    fg = lab != 0
    if image.nodata is not None:
        fg = fg & image.valid_mask()
    return fg


def _footprint(ndim: int, radius: int) -> np.ndarray:
    from skimage.morphology import ball, disk

    return disk(radius) if ndim == 2 else ball(radius)


def morphology(image: Image, op: str, radius: int = 1) -> Image:
    """Return binary ``op`` ("opening", "closing", "erosion", "dilation") of band 1 != 0.

    Structuring element: disk (2D) / ball (3D) of ``radius`` pixels; uint8 {0, 1}, 255 = nodata.
    Pixels outside the image count as background (scikit-image's convention), so results
    equal the whole-image run exactly (halo = 2 * radius for opening/closing).
    """
    from skimage import morphology as m

    funcs = {
        "opening": m.opening,
        "closing": m.closing,
        "erosion": m.erosion,
        "dilation": m.dilation,
    }
    if op not in funcs:
        raise InvalidInputError(f"unknown morphology {op!r}; choose one of {sorted(funcs)}")
    fp = _footprint(image.grid.ndim, radius)
    fg = _binary(image)
    fg_img = Image.from_array(fg[None], image.grid, chunks=(1, *fg.chunks))

    def _op(block: np.ndarray) -> np.ndarray:
        return funcs[op](block[0].astype(bool), fp)

    out = map_spatial(fg_img, _op, halo=2 * radius + 1, dtype=np.uint8)
    return label_image(image, out.rechunk(image.darray.chunks[1:]), nodata=_nodata(image))


def _nodata(image: Image) -> float | None:
    return 255 if image.nodata is not None else None


def fill_holes(image: Image, connectivity: int = CONNECTIVITY) -> Image:
    """Return band 1 != 0 with enclosed background regions filled (uint8 {0, 1}).

    A hole is a background component (``connectivity`` in scikit-image's convention) not
    touching the image border, as in ``scipy.ndimage.binary_fill_holes``.
    """
    fg = _binary(image)
    bg_ids, n = label_components(~fg, background=0, connectivity=connectivity)
    if n == 0:
        return label_image(image, fg.astype(np.uint8), nodata=_nodata(image))
    border = np.unique(
        np.concatenate(
            [np.asarray(bg_ids[tuple(s)].compute()).ravel() for s in _border_slices(fg.ndim)]
        )
    )
    is_hole = np.ones(n + 1, dtype=bool)
    is_hole[border] = False
    is_hole[0] = False
    filled = fg | bg_ids.map_blocks(lambda b: is_hole[b], dtype=bool)
    return label_image(image, filled.astype(np.uint8), nodata=_nodata(image))


def _border_slices(ndim: int) -> list[list]:
    out = []
    for a in range(ndim):
        for end in (0, -1):
            s: list = [slice(None)] * ndim
            s[a] = end
            out.append(s)
    return out


def object_sizes(image: Image, ids: da.Array, n: int) -> np.ndarray:
    """Return the size of objects ``0..n`` of ``ids`` in physical units (index = id).

    Rasters: true ground area (m², :func:`geomed_seg.core.ground.label_areas`; CRS units²
    without a ground, with a warning naming the grid). Volumes: voxels times the voxel
    volume (mm³). Nodata is not part of any object (``ids`` is 0 there).
    """
    grid = image.grid
    if isinstance(grid, GeoGrid):
        sizes = label_areas(grid, ids)
        if not grid.ground.metric:
            log.warning(
                "%s: object sizes in %s, not m² (%s)",
                grid.describe(),
                grid.ground.area_unit,
                grid.ground.reason,
            )
    else:
        sizes = da.bincount(ids.ravel(), minlength=n + 1).compute() * grid.voxel_volume
    out = np.zeros(n + 1)
    out[: min(len(sizes), n + 1)] = sizes[: n + 1]
    return out


def remove_small_objects(
    image: Image, min_size: float, *, connectivity: int = CONNECTIVITY, units: str = "physical"
) -> Image:
    """Return band 1 != 0 without objects smaller than ``min_size`` (uint8 {0, 1}).

    ``units="physical"``: ``min_size`` in m² of true ground area (GeoGrid; CRS units² for
    a grid without a ground) or mm³ (VoxelGrid), see :func:`object_sizes`; ``"pixels"``: a
    pixel count. Objects are connected components (``connectivity`` 1..ndim, default faces
    only as the polygons, :mod:`geomed_seg.core.connectivity`), consistent across chunks.
    """
    fg = _binary(image)
    ids, n = label_components(fg, background=0, connectivity=connectivity)
    if units == "physical":
        sizes = object_sizes(image, ids, n)
    elif units == "pixels":
        sizes = da.bincount(ids.ravel(), minlength=n + 1).compute().astype(np.float64)
    else:
        raise InvalidInputError(f"units must be 'physical' or 'pixels', got {units!r}")
    # relative slack: 10 pixels of 800 m2 are 8000 m2 even after float rounding
    keep = sizes >= float(min_size) * (1 - 1e-9)
    keep[0] = False
    out = ids.map_blocks(lambda b: keep[b], dtype=bool)
    return label_image(image, out.astype(np.uint8), nodata=_nodata(image))


def connected_components(image: Image, connectivity: int = CONNECTIVITY) -> Image:
    """Return uint32 component ids 1..n (0 = background) of band 1 != 0, chunk-consistent."""
    ids, n = label_components(_binary(image), background=0, connectivity=connectivity)
    return Image.from_array(ids[None], image.grid, nodata=None, attrs={"n_components": n})
