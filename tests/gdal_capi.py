"""GDAL's own C API through ctypes, for what rasterio does not expose (category names).

The shared library is the one bundled in the rasterio wheel, so this is the GDAL that
``gdalinfo`` of the same version would be; no GDAL Python bindings are needed. Calls follow
``gdalinfo``'s order (``GDALGetFileList`` first): GDAL 3.10's GTiff driver loads the
``.aux.xml`` sidecar lazily and ``GDALGetRasterCategoryNames`` alone does not trigger it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
from functools import lru_cache

import rasterio

_STRLIST = ctypes.POINTER(ctypes.c_char_p)


@lru_cache(maxsize=1)
def gdal() -> ctypes.CDLL:
    """Return the rasterio wheel's libgdal with the few signatures used here."""
    libdir = os.path.join(os.path.dirname(rasterio.__file__), os.pardir, "rasterio.libs")
    found = sorted(glob.glob(os.path.join(libdir, "libgdal*.so*")))
    if not found:  # a rasterio built against a system GDAL
        found = [ctypes.util.find_library("gdal")]
    g = ctypes.CDLL(found[0])
    g.GDALAllRegister()
    sigs = {
        "GDALOpen": (ctypes.c_void_p, [ctypes.c_char_p, ctypes.c_int]),
        "GDALClose": (None, [ctypes.c_void_p]),
        "GDALGetFileList": (_STRLIST, [ctypes.c_void_p]),
        "CSLDestroy": (None, [_STRLIST]),
        "GDALGetRasterBand": (ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_int]),
        "GDALGetRasterCategoryNames": (_STRLIST, [ctypes.c_void_p]),
    }
    for name, (res, args) in sigs.items():
        fn = getattr(g, name)
        fn.restype, fn.argtypes = res, args
    return g


def _strings(p: _STRLIST) -> list[str]:
    out: list[str] = []
    while p and p[len(out)] is not None:
        out.append(p[len(out)].decode("utf-8"))
    return out


def category_names(path: str | os.PathLike, band: int = 1) -> list[str]:
    """Return GDAL's category names of ``band`` (``gdalinfo``'s "Categories"), [] if none."""
    g = gdal()
    ds = g.GDALOpen(os.fsencode(os.fspath(path)), 0)
    if not ds:
        raise OSError(f"GDAL cannot open {path}")
    try:
        files = g.GDALGetFileList(ds)  # as gdalinfo does; loads the PAM sidecar
        g.CSLDestroy(files)
        return _strings(g.GDALGetRasterCategoryNames(g.GDALGetRasterBand(ds, band)))
    finally:
        g.GDALClose(ds)
