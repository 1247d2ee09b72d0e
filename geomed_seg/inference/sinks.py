"""Where blended output goes: memory, Zarr, (COG) GeoTIFF or NIfTI.

The engine hands each finished output chunk (``(band, *spatial)`` numpy, array order) to a
sink with its spatial slices. Every file sink is atomic (the writers of :mod:`geomed_seg.io`
commit by rename on success; :meth:`Sink.abort` leaves nothing behind). Writers are imported
lazily so this module stays import-light.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from geomed_seg.core.grid import GeoGrid, Grid, VoxelGrid
from geomed_seg.core.image import Image
from geomed_seg.core.labels import ClassInfo
from geomed_seg.errors import InvalidInputError, WriteError


@dataclass(frozen=True)
class OutputSpec:
    """What the engine will write: geometry, bands, dtype, nodata and class table."""

    grid: Grid
    count: int
    dtype: np.dtype
    nodata: float | None
    classes: list[ClassInfo] = field(default_factory=list)
    band_names: list[str] | None = None
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.count, *self.grid.shape)


class Sink:
    """Base sink: ``start(spec)``, ``write(array, slices)`` per chunk, then ``finish()``/``abort()``."""

    #: Preferred output chunk edge in pixels (None: let the engine choose).
    chunk: int | None = None
    path: Path | None = None

    def start(self, spec: OutputSpec) -> None:
        self.spec = spec

    def write(self, array: np.ndarray, slices: tuple[slice, ...]) -> None:
        raise NotImplementedError

    def finish(self) -> Image:
        """Commit the output and return it as an :class:`Image` on the input grid."""
        raise NotImplementedError

    def abort(self) -> None:
        """Drop everything written so far (no partial file is left)."""

    def disk_bytes(self, spec: OutputSpec) -> int:
        """Return an upper bound of the disk space the output takes while written (bytes)."""
        return 0


def raw_bytes(spec: OutputSpec) -> int:
    """Return the uncompressed size of the output (bytes), plus 1 % and 1 MiB of margin.

    Compression never grows a tile by more than a fraction of a percent (deflate, zstd, lzw
    on incompressible data), so this bounds a compressed file of the same samples.
    """
    raw = int(np.prod(spec.shape, dtype=np.int64)) * np.dtype(spec.dtype).itemsize
    return raw + raw // 100 + 2**20


def check_disk_space(sink: Sink, spec: OutputSpec) -> None:
    """Raise :class:`WriteError` before any work when ``sink``'s output may not fit its disk."""
    need = sink.disk_bytes(spec)
    if not need or sink.path is None:
        return
    folder = Path(sink.path).absolute().parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if need > free:
        raise WriteError(
            f"{sink.path}: the output ({' x '.join(map(str, spec.shape))} {np.dtype(spec.dtype)}"
            f") may need up to {_gib(need)} while written, but {folder} has {_gib(free)} free; "
            "write it to a larger disk (a .zarr output needs no COG copy)"
        )


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


class MemorySink(Sink):
    """Collect the output in one numpy array (channel-first).

    ``chunk``: output chunk edge (pixels) the engine blends and flushes by (default 512
    for rasters, 128 for volumes).
    """

    def __init__(self, chunk: int | None = None) -> None:
        self.chunk = chunk

    def start(self, spec: OutputSpec) -> None:
        super().start(spec)
        fill = 0 if spec.nodata is None else spec.nodata
        self.array = np.full(spec.shape, fill, dtype=spec.dtype)

    def write(self, array: np.ndarray, slices: tuple[slice, ...]) -> None:
        self.array[(slice(None), *slices)] = array

    def finish(self) -> Image:
        s = self.spec
        attrs = dict(s.attrs)
        if s.classes:
            attrs["classes"] = [
                {"index": c.index, "name": c.name, "color": c.color} for c in s.classes
            ]
        return Image.from_array(
            self.array, s.grid, nodata=s.nodata, channel_names=s.band_names, attrs=attrs
        )

    def abort(self) -> None:
        self.array = None  # type: ignore[assignment]


class _WriterSink(Sink):
    def __init__(self, path: str | os.PathLike, *, overwrite: bool = False) -> None:
        self.path = Path(path)
        self.overwrite = overwrite
        self._writer: Any = None

    def write(self, array: np.ndarray, slices: tuple[slice, ...]) -> None:
        self._writer.write(array, slices)

    def abort(self) -> None:
        if self._writer is not None:
            err = RuntimeError("segmentation aborted")
            self._writer.__exit__(RuntimeError, err, None)
            self._writer = None

    def _close(self) -> None:
        self._writer.__exit__(None, None, None)
        self._writer = None


class ZarrSink(_WriterSink):
    """Write into a Zarr v3 store (``*.zarr``) chunk by chunk, committed on success."""

    chunk = 512

    def disk_bytes(self, spec: OutputSpec) -> int:
        return raw_bytes(spec)

    def start(self, spec: OutputSpec) -> None:
        from geomed_seg.io.zarr import ZarrBlockWriter

        super().start(spec)
        edge = 512 if isinstance(spec.grid, GeoGrid) else 128
        self.chunk = edge
        chunks = (spec.count, *(min(edge, n) for n in spec.grid.shape))
        attrs = dict(spec.attrs)
        if spec.classes:
            attrs["classes"] = [
                {"index": c.index, "name": c.name, "color": c.color} for c in spec.classes
            ]
        self._writer = ZarrBlockWriter(
            self.path, spec.grid, spec.shape, spec.dtype, chunks=chunks, nodata=spec.nodata,
            attrs=attrs, channel_names=spec.band_names, overwrite=self.overwrite,
        )  # fmt: skip
        self._writer.__enter__()

    def finish(self) -> Image:
        from geomed_seg.io.zarr import open_zarr

        self._close()
        return open_zarr(self.path)


class GeoTIFFSink(_WriterSink):
    """Write a tiled GeoTIFF / COG (labels get the class colour table and names)."""

    chunk = 512

    def __init__(
        self, path: str | os.PathLike, *, overwrite: bool = False, cog: bool = True
    ) -> None:
        super().__init__(path, overwrite=overwrite)
        self.cog = cog

    def disk_bytes(self, spec: OutputSpec) -> int:
        """Uncompressed size, times 8/3 for a COG: the tiled part file, the COG with its
        overviews (1/3 more) and GDAL's temporary overview file exist at the same time."""
        raw = raw_bytes(spec)
        return raw * 8 // 3 if self.cog else raw

    def start(self, spec: OutputSpec) -> None:
        from geomed_seg.io.geotiff import GeoTIFFBlockWriter

        super().start(spec)
        if not isinstance(spec.grid, GeoGrid):
            raise InvalidInputError(f"{self.path}: GeoTIFF output needs a raster input")
        self._writer = GeoTIFFBlockWriter(
            self.path, spec.grid, spec.count, spec.dtype, nodata=spec.nodata,
            classes=spec.classes or None, band_names=spec.band_names,
            overwrite=self.overwrite, cog=self.cog, blocksize=self.chunk,
        )  # fmt: skip
        self._writer.__enter__()

    def finish(self) -> Image:
        from geomed_seg.io.geotiff import open_geotiff

        self._close()
        return open_geotiff(self.path)


class NiftiSink(MemorySink):
    """Collect a volume in memory (volumes fit), then write NIfTI atomically on finish."""

    def __init__(self, path: str | os.PathLike, *, overwrite: bool = False) -> None:
        from geomed_seg.io.atomic import check_output

        self.path = check_output(path, overwrite)
        self.overwrite = overwrite

    def disk_bytes(self, spec: OutputSpec) -> int:
        return raw_bytes(spec)

    def start(self, spec: OutputSpec) -> None:
        if not isinstance(spec.grid, VoxelGrid):
            raise InvalidInputError(f"{self.path}: NIfTI output needs a volume input")
        super().start(spec)

    def finish(self) -> Image:
        from geomed_seg.io.nifti import open_nifti, write_nifti

        image = super().finish()
        assert self.path is not None
        write_nifti(image, self.path, overwrite=self.overwrite, classes=self.spec.classes)
        return open_nifti(self.path)


def sink_for(target: Sink | str | os.PathLike | None, *, overwrite: bool = False) -> Sink:
    """Return a sink for ``target``: a Sink as is, None → memory, a path → the streaming sink
    its format's registry entry names (:func:`geomed_seg.io.registry.sink_class`)."""
    if target is None:
        return MemorySink()
    if isinstance(target, Sink):
        return target
    from geomed_seg.io.registry import sink_class

    return sink_class(target)(Path(target), overwrite=overwrite)
