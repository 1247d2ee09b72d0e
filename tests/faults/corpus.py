"""Generators of the fault corpus: small hostile inputs made the way a bad day makes them.

Every function writes one file (or store) under a folder and returns its path. Run as a
script to write the whole corpus into a folder (``python tests/faults/corpus.py OUT``).
Valid inputs are written with the field's own writers (rasterio, nibabel, pydicom, zarr),
then damaged byte-wise: truncated at the header, inside the IFD or inside a tile,
bit-flipped inside compressed tiles, a gzip stream cut or scrambled, PixelData too short.
"""

from __future__ import annotations

import gzip
import struct
import sys
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine

UTM = "EPSG:32633"
TRANSFORM = Affine(30.0, 0.0, 500000.0, 0.0, -30.0, 4000000.0)
BANDS = ["blue", "green", "red", "nir", "swir1", "swir2"]


def scene(height: int = 64, width: int = 64, seed: int = 0) -> np.ndarray:
    """Return a 6-band uint8 ``(band, y, x)`` scene with a water-like dark patch."""
    rng = np.random.default_rng(seed)
    data = rng.integers(60, 120, size=(6, height, width), dtype=np.uint8)
    data[3:, : height // 2, : width // 2] = 10  # low nir/swir: water for NDWI
    data[1, : height // 2, : width // 2] = 90
    return data


def write_tif(path: Path, data: np.ndarray, **profile: Any) -> Path:
    """Write ``data`` ``(band, y, x)`` with rasterio; return ``path``."""
    count, height, width = data.shape
    prof = dict(driver="GTiff", width=width, height=height, count=count,
                dtype=data.dtype.name, crs=UTM, transform=TRANSFORM)  # fmt: skip
    prof.update(profile)
    with rasterio.open(path, "w", **prof) as dst:
        dst.write(data)
    return path


def good_tif(folder: Path, name: str = "scene.tif", **kw: Any) -> Path:
    """A valid 6-band 64x64 uint8 scene, tiled and deflate-compressed."""
    return write_tif(folder / name, scene(**kw), tiled=True, blockxsize=32, blockysize=32,
                     compress="deflate")  # fmt: skip


def degenerate_tif(folder: Path, kind: str) -> Path:
    """``kind``: ``"1x1"``, ``"constant"`` (every pixel equal) or ``"nodata"`` (all nodata)."""
    if kind == "1x1":
        return write_tif(folder / "one_pixel.tif", scene(1, 1))
    if kind == "constant":
        return write_tif(folder / "constant.tif", np.full((6, 32, 32), 77, np.uint8))
    return write_tif(folder / "all_nodata.tif", np.zeros((6, 32, 32), np.uint8), nodata=0)


def complex_tif(folder: Path, dtype: str = "complex_int16") -> Path:
    """A 6-band complex GeoTIFF (``complex_int16`` as SAR SLC products, or ``complex64``).

    Real part: :func:`scene`; imaginary part: a ramp, so the magnitude differs from both.
    """
    path = folder / f"{dtype}.tif"
    values = scene(32, 32) + 1j * (np.arange(32 * 32).reshape(1, 32, 32) % 50)
    with rasterio.open(path, "w", driver="GTiff", width=32, height=32, count=6, dtype=dtype,
                       crs=UTM, transform=TRANSFORM) as dst:  # fmt: skip
        if dtype == "complex64":
            dst.write(values.astype(np.complex64))
        else:  # numpy has no complex int16: let GDAL convert from complex64 (exact integers)
            dst.write(values.astype(np.complex64))
    return path


def int8_tif(folder: Path) -> Path:
    """A signed 8-bit GeoTIFF (GDAL >= 3.7 Int8)."""
    return write_tif(folder / "int8.tif", (scene(16, 16).astype(np.int16) - 128).astype(np.int8))


def _ifd_offset(data: bytes) -> int:
    return struct.unpack("<I", data[4:8])[0]


def truncated_tif(folder: Path, where: str) -> Path:
    """A valid GeoTIFF cut at ``"header"`` (6 bytes), inside the ``"ifd"`` or inside a ``"tile"``."""
    src = good_tif(folder, f"src_{where}.tif").read_bytes()
    (folder / f"src_{where}.tif").unlink()
    ifd = _ifd_offset(src)
    cut = {"header": 6, "ifd": ifd + 10, "tile": None}[where]
    if cut is None:  # tiles follow the IFD in GDAL files: cut in the middle of the pixel data
        cut = ifd + (len(src) - ifd) // 2 if ifd < len(src) // 2 else len(src) // 2
    path = folder / f"truncated_{where}.tif"
    path.write_bytes(src[:cut])
    return path


def bitflipped_tif(folder: Path) -> Path:
    """A deflate-tiled GeoTIFF whose tile bytes are scrambled (header and IFD intact)."""
    path = good_tif(folder, "bitflip.tif")
    with rasterio.open(path) as ds:
        offsets = {
            int(ds.get_tag_item(f"BLOCK_OFFSET_{c}_{r}", "TIFF", bidx=1))
            for r in range(2)
            for c in range(2)
        }  # fmt: skip (pixel interleave)
    raw = bytearray(path.read_bytes())
    for off in offsets:
        for k in range(2, 40):
            raw[off + k] ^= 0xA5
    path.write_bytes(bytes(raw))
    return path


def nifti(folder: Path, name: str = "vol.nii.gz") -> Path:
    """A valid 32^3 int16 NIfTI (random, so the gzip stream is long) written with nibabel."""
    import nibabel as nib

    data = np.random.default_rng(1).integers(0, 300, (32, 32, 32)).astype(np.int16)
    path = folder / name
    nib.save(nib.Nifti1Image(data, np.diag([1.0, 1.0, 1.0, 1.0])), path)
    return path


def corrupt_gzip_nifti(folder: Path, kind: str = "scrambled") -> Path:
    """A ``.nii.gz`` whose gzip stream is ``"scrambled"`` past the header or ``"truncated"``."""
    raw = bytearray(nifti(folder, f"src_{kind}.nii.gz").read_bytes())
    (folder / f"src_{kind}.nii.gz").unlink()
    if kind == "truncated":
        raw = raw[: len(raw) // 2]
    else:
        mid = len(raw) // 2
        for k in range(mid, min(mid + 64, len(raw) - 8)):
            raw[k] ^= 0xFF
    path = folder / f"gzip_{kind}.nii.gz"
    path.write_bytes(bytes(raw))
    # sanity: the header still decompresses (the format is detected), the body does not
    with gzip.open(path, "rb") as f:
        f.read(352)
    return path


def short_pixeldata_dicom(folder: Path) -> Path:
    """A folder with one CT DICOM file whose PixelData holds half the bytes it should."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    out = folder / "short_dicom"
    out.mkdir()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(out / "im0.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "CT", "FAULT"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Rows = ds.Columns = 32
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation, ds.SamplesPerPixel = 1, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelSpacing, ds.SliceThickness = [1.0, 1.0], 1.0
    ds.ImagePositionPatient, ds.ImageOrientationPatient = [0, 0, 0], [1, 0, 0, 0, 1, 0]
    ds.InstanceNumber = 1
    ds.PixelData = np.zeros(32 * 16, np.int16).tobytes()  # half of 32 x 32
    ds.save_as(out / "im0.dcm", enforce_file_format=True)
    return out


def wrong_rank_zarr(folder: Path, rank: int) -> Path:
    """A geomed-seg Zarr store whose ``data`` array has ``rank`` dims (2 or 5), not 3."""
    import zarr

    from geomed_seg.io.registry import open_image, write_image

    path = write_image(open_image(good_tif(folder, f"src_rank{rank}.tif")),
                       folder / f"rank{rank}.zarr")  # fmt: skip
    (folder / f"src_rank{rank}.tif").unlink()
    group = zarr.open_group(str(path), mode="r+")
    del group["data"]
    shape = (64, 64) if rank == 2 else (1, 6, 1, 64, 64)
    group.create_array("data", shape=shape, chunks=shape, dtype="uint8", fill_value=0)
    return path


def binary_yaml(folder: Path) -> Path:
    """A pipeline 'YAML' that is binary (a PNG/gzip-like header and invalid UTF-8)."""
    path = folder / "pipeline.yaml"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00\x01" + bytes(range(256)) * 4)
    return path


def main(out: str) -> None:
    """Write the whole corpus into ``out``."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    good_tif(folder)
    for kind in ("1x1", "constant", "nodata"):
        degenerate_tif(folder, kind)
    complex_tif(folder, "complex_int16")
    complex_tif(folder, "complex64")
    int8_tif(folder)
    for where in ("header", "ifd", "tile"):
        truncated_tif(folder, where)
    bitflipped_tif(folder)
    corrupt_gzip_nifti(folder, "scrambled")
    corrupt_gzip_nifti(folder, "truncated")
    short_pixeldata_dicom(folder)
    wrong_rank_zarr(folder, 2)
    wrong_rank_zarr(folder, 5)
    binary_yaml(folder)


if __name__ == "__main__":
    main(sys.argv[1])
