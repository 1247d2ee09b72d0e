"""Per-format conformance suite, run for every adapter of the format registry.

In the spirit of nibabel's per-format API validators (``nibabel/tests/test_api_validators``)
and xarray's backend ``roundtrip()`` tests: one set of checks, one :class:`FormatCase` per
registered adapter that says how to make a sample of that format. ``test_conformance.py``
fails for an adapter without a case, so a new format (built-in or plug-in registered in the
test process) cannot skip the suite.

Checks (each compares with the format's own library, never only with our reader):

* round trip of data and grid: writable formats write an in-memory image and read it back
  (our reader and the independent one); read-only formats open a file written by the
  independent library (rasterio, pydicom) and are compared with what that library reads;
* the streaming sink of formats that have one (blocks in, same image out);
* nodata: kept where the format stores it, never turned into another value;
* refused overwrite: a second write without ``overwrite`` raises and leaves the file as it was;
* atomic write on failure: a failure at commit (``io/faults.py`` hook, ``ENOSPC``) leaves no
  output, no temporary file, and an existing output unchanged;
* lazy open: opening allocates far less than the pixel payload (``tracemalloc``; NumPy reports
  its buffers there), computing allocates it.

The samples are generated here with the independent libraries (see each ``make_*``).
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS

from geomed_seg.core import GeoGrid, Image
from geomed_seg.core.grid import VoxelGrid

UTM33 = CRS.from_epsg(32633)
TRANSFORM = Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 4000000.0)


# -- samples -------------------------------------------------------------------------------
def raster(shape: tuple[int, int, int] = (2, 70, 90), dtype: Any = np.uint16) -> Image:
    """A ``(band, y, x)`` ramp on a UTM 33N 10 m grid, nodata 0 in one corner, 32-px chunks."""
    b, y, x = np.indices(shape)
    data = ((b * 1000 + y * 7 + x * 3) % 5000 + 1).astype(dtype)
    data[:, :5, :7] = 0
    return Image.from_array(data, GeoGrid(UTM33, TRANSFORM, shape[1:]), nodata=0,
                            chunks=(shape[0], 32, 32))  # fmt: skip


def volume_affine() -> np.ndarray:
    """An oblique RAS affine with anisotropic spacing (0.8, 0.9, 2.5 mm) and an offset."""
    c, s = np.cos(0.3), np.sin(0.3)
    rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag([0.8, 0.9, 2.5])
    aff[:3, 3] = (-20.0, 31.5, 40.25)
    return aff


def volume(shape: tuple[int, int, int, int] = (1, 12, 20, 16), dtype: Any = np.int16) -> Image:
    """A ``(channel, z, y, x)`` ramp on an oblique grid, 4-slice chunks."""
    c, z, y, x = np.indices(shape)
    data = (c * 500 + z * 37 + y * 5 + x - 300).astype(dtype)
    return Image.from_array(data, VoxelGrid(volume_affine(), shape[1:]),
                            chunks=(shape[0], 4, *shape[2:]))  # fmt: skip


def same_grid(a: Image, b: Image) -> bool:
    """True when two images have the same grid (1e-6 px / 1e-4 mm)."""
    return a.grid.almost_equals(b.grid)


# -- independent readers ---------------------------------------------------------------------
def read_rasterio(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    """Return ``(band, y, x)`` data and ``{crs, transform, nodata}`` as rasterio reads them."""
    with rasterio.open(path) as ds:
        return ds.read(), {"crs": ds.crs, "transform": ds.transform, "nodata": ds.nodata}


def read_nibabel(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    """Return ``(channel, z, y, x)`` data and ``{affine}`` as nibabel reads them."""
    import nibabel as nib

    img = nib.load(path)
    arr = np.asarray(img.dataobj)
    arr = arr[..., None] if arr.ndim == 3 else arr
    return arr.transpose(3, 2, 1, 0), {"affine": img.affine}


def read_zarr(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    """Return the store's one array as zarr-python reads it (and its attributes)."""
    import zarr

    group = zarr.open_group(str(path), mode="r")
    ((name, arr),) = list(group.arrays())
    return np.asarray(arr[...]), {"attrs": dict(arr.attrs), "group": dict(group.attrs)}


def check_independent(fmt: str, path: Path, image: Image) -> None:
    """Assert that the format's own library reads ``image``'s data and geometry at ``path``."""
    if fmt in ("geotiff", "vrt"):
        data, meta = read_rasterio(path)
        assert meta["crs"] == image.grid.crs and meta["transform"].almost_equals(
            image.grid.transform
        )
    elif fmt == "nifti":
        data, meta = read_nibabel(path)
        np.testing.assert_allclose(meta["affine"], image.grid.affine, atol=1e-5)
    elif fmt == "zarr":
        data, _ = read_zarr(path)
    else:
        raise AssertionError(f"no independent reader for {fmt}")
    np.testing.assert_array_equal(data, image.compute())


# -- read-only formats: files written by the independent library --------------------------------
def make_vrt(folder: Path, img: Image) -> Path:
    """A VRT over a GeoTIFF of ``img`` written by rasterio (GDAL's XML, hand-written: no
    gdalbuildvrt here)."""
    tif = folder / "src.tif"
    data = img.compute()
    count, height, width = data.shape
    with rasterio.open(tif, "w", driver="GTiff", width=width, height=height, count=count,
                       dtype=data.dtype.name, crs=UTM33, transform=TRANSFORM, nodata=0,
                       tiled=True) as ds:  # fmt: skip
        ds.write(data)
    kind = {"uint16": "UInt16", "float32": "Float32"}[data.dtype.name]
    bands = "".join(
        f'<VRTRasterBand dataType="{kind}" band="{b}"><NoDataValue>0</NoDataValue>'
        f'<SimpleSource><SourceFilename relativeToVRT="1">src.tif</SourceFilename>'
        f"<SourceBand>{b}</SourceBand></SimpleSource></VRTRasterBand>"
        for b in range(1, count + 1)
    )
    gt = ", ".join(str(v) for v in TRANSFORM.to_gdal())
    vrt = folder / "scene.vrt"
    vrt.write_text(f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">'
                   f"<SRS>{UTM33.to_wkt()}</SRS><GeoTransform>{gt}</GeoTransform>{bands}"
                   "</VRTDataset>")  # fmt: skip
    return vrt


def make_dicom(
    folder: Path, shape: tuple[int, int, int] = (6, 8, 10)
) -> tuple[Any, np.ndarray, np.ndarray]:
    """A pydicom-written axial CT series; return ``(files, values (z, y, x), LPS of slices)``."""
    from tests.io.dicom_data import make_series

    files, values = make_series(folder, shape=shape)
    import pydicom

    lps = np.array([[float(v) for v in pydicom.dcmread(f).ImagePositionPatient] for f in files])
    return files, values, lps


def check_dicom(image: Image, values: np.ndarray, lps: np.ndarray) -> None:
    """Data as pydicom stores it; slice k's first voxel at its ImagePositionPatient (LPS)."""
    np.testing.assert_array_equal(image.compute()[0], values)
    for k, (x, y, z) in enumerate(lps):
        np.testing.assert_allclose(image.grid.world(k, 0, 0), (-x, -y, z), atol=1e-4)


# -- cases ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class FormatCase:
    """How the suite exercises one adapter.

    ``sample()`` is the image a writable format writes (``suffix``); ``stores_nodata`` says
    whether the format keeps a nodata value (NIfTI has no field for it). Read-only formats
    give ``make(folder) -> (path, check(image))`` instead.
    """

    suffix: str | None = None
    sample: Callable[[], Image] | None = None
    stores_nodata: bool = True
    make: Callable[..., tuple[Any, Callable[[Image], None]]] | None = None
    lazy_sample: Callable[[], Image] | None = None


def _vrt_case(folder: Path, big: bool = False) -> tuple[Any, Callable[[Image], None]]:
    img = raster((1, 1024, 1024), np.float32) if big else raster()
    path = make_vrt(folder, img)

    def check(opened: Image) -> None:
        assert same_grid(opened, img) and opened.nodata == 0
        check_independent("vrt", path, opened)

    return path, check


def _dicom_file_case(folder: Path, big: bool = False) -> tuple[Any, Callable[[Image], None]]:
    files, values, lps = make_dicom(folder, (1, 1024, 1024) if big else (6, 8, 10))
    return files[0], lambda img: check_dicom(img, values[:1], lps[:1])


def _dicom_folder_case(folder: Path, big: bool = False) -> tuple[Any, Callable[[Image], None]]:
    files, values, lps = make_dicom(folder / "series", (16, 256, 256) if big else (6, 8, 10))
    return folder / "series", lambda img: check_dicom(img, values, lps)


CASES: dict[str, FormatCase] = {
    "geotiff": FormatCase(
        ".tif", raster, lazy_sample=lambda: raster((1, 1024, 1024), np.float32)
    ),  # fmt: skip
    "nifti": FormatCase(
        ".nii.gz",
        volume,
        stores_nodata=False,
        lazy_sample=lambda: volume((1, 64, 128, 128), np.float32),
    ),  # fmt: skip
    "zarr": FormatCase(
        ".zarr", raster, lazy_sample=lambda: raster((1, 1024, 1024), np.float32)
    ),  # fmt: skip
    "vrt": FormatCase(make=_vrt_case),
    "dicom": FormatCase(make=_dicom_file_case),
    "dicom-folder": FormatCase(make=_dicom_folder_case),
}

#: Formats a writable case also writes volumes to (Zarr holds both kinds).
ALSO_VOLUMES = {"zarr"}


def allocated_while(fn: Callable[[], Any]) -> tuple[Any, int]:
    """Return ``(fn(), peak bytes traced by tracemalloc while it ran)``.

    Call ``fn`` once before measuring: first imports (pydicom, nibabel) allocate too.
    """
    tracemalloc.start()
    try:
        out = fn()
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
