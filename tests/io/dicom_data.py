"""Generate small synthetic DICOM series with pydicom (test data, regenerated in ``tmp_path``).

``make_series`` writes one single-frame file per slice with shuffled file names and
shuffled ``InstanceNumber`` so readers must sort by position. Geometry is given in DICOM's
LPS patient coordinates; the stored pixel values are returned for comparison.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def oblique_orientation(deg_a: float = 20.0, deg_b: float = 10.0) -> tuple[float, ...]:
    """Return ImageOrientationPatient of axial axes rotated about z then x (degrees)."""
    a, b = np.deg2rad(deg_a), np.deg2rad(deg_b)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    rot = rx @ rz
    return tuple(float(v) for v in (*rot[:, 0], *rot[:, 1]))


def slice_positions(
    n: int,
    spacing: Sequence[float],
    orientation: Sequence[float],
    origin: Sequence[float],
    *,
    uneven: bool = False,
    tilt: float = 0.0,
) -> np.ndarray:
    """Return ``(n, 3)`` LPS positions (mm) of each slice's first pixel, in spatial order."""
    row, col = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    normal = np.cross(row, col)
    dz = float(spacing[2])
    steps = np.arange(n, dtype=float) * dz
    if uneven:
        steps += np.where(np.arange(n) >= n // 2, 0.5 * dz, 0.0)
    shear = np.tan(np.deg2rad(tilt)) * steps
    return np.asarray(origin, float) + steps[:, None] * normal + shear[:, None] * col


def make_series(
    folder: str | Path,
    shape: Sequence[int] = (6, 8, 10),
    spacing: Sequence[float] = (0.8, 0.9, 2.5),
    orientation: Sequence[float] = AXIAL,
    origin: Sequence[float] = (-20.0, -30.0, 40.0),
    uneven: bool = False,
    tilt: float = 0.0,
    missing: Sequence[int] = (),
    rescale: tuple[float, float] = (1.0, 0.0),
    series_uid: str | None = None,
    description: str = "synthetic",
    modality: str = "CT",
    seed: int = 0,
    values: np.ndarray | None = None,
    series_number: int | None = 1,
) -> tuple[list[Path], np.ndarray]:
    """Write a series; return ``(files in spatial order, stored values (z, y, x) int16)``.

    Parameters
    ----------
    shape : (slices, rows, columns)
    spacing : (x, y, z) mm — column spacing, row spacing, slice step along the normal.
    orientation : ImageOrientationPatient (row cosines, column cosines), LPS.
    origin : LPS mm of slice 0's first pixel.
    uneven : the second half of the slices is shifted by half a slice step.
    tilt : gantry tilt in degrees: positions drift along the column direction.
    missing : slice indices left out (a gap); the returned array keeps only written slices.
    rescale : (RescaleSlope, RescaleIntercept).
    values : stored int16 values (z, y, x); default random in [0, 2000).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    nz, ny, nx = shape
    rng = np.random.default_rng(seed)
    if values is None:
        values = rng.integers(0, 2000, size=(nz, ny, nx))
    values = np.asarray(values).astype(np.int16)
    positions = slice_positions(nz, spacing, orientation, origin, uneven=uneven, tilt=tilt)
    keep = [k for k in range(nz) if k not in set(missing)]
    series_uid = series_uid or generate_uid()
    study_uid, frame_uid = generate_uid(), generate_uid()
    order = rng.permutation(len(keep))
    files = []
    for rank, k in enumerate(keep):
        sop_uid = generate_uid()
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = (
            CTImageStorage if modality == "CT" else MRImageStorage
        )
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = sop_uid
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = (
            study_uid,
            series_uid,
            frame_uid,
        )
        ds.Modality, ds.SeriesDescription = modality, description
        if series_number is not None:
            ds.SeriesNumber = series_number
        ds.PatientID, ds.PatientName = "SYNTH001", "Synthetic^Patient"
        ds.StudyDate, ds.StudyTime, ds.AccessionNumber = "20240101", "120000", "A1"
        ds.Manufacturer, ds.ImageType = "geomed-seg tests", ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.InstanceNumber = int(order[rank]) + 1
        ds.ImagePositionPatient = [f"{v:.6f}" for v in positions[k]]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in orientation]
        ds.PixelSpacing = [float(spacing[1]), float(spacing[0])]
        ds.SliceThickness = float(spacing[2])
        ds.GantryDetectorTilt = float(tilt)
        ds.Rows, ds.Columns = ny, nx
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = rescale
        if modality == "MR":
            ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions = "SE", "NONE", ""
            ds.MRAcquisitionType, ds.EchoTime, ds.RepetitionTime = "2D", 10.0, 500.0
            ds.ImagedNucleus, ds.MagneticFieldStrength, ds.EchoTrainLength = "1H", 1.5, 1
            ds.PixelPresentation, ds.VolumetricProperties = "MONOCHROME", "VOLUME"
            ds.ContentDate, ds.ContentTime = "20240101", "120000"
            ds.SeriesDate, ds.SeriesTime = "20240101", "120000"
            del ds.RescaleSlope, ds.RescaleIntercept
        ds.PixelData = values[k].tobytes()
        path = folder / f"{generate_uid().split('.')[-1][-10:]}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files, values[keep]


def pixel_positions(
    positions: np.ndarray, spacing: Sequence[float], orientation: Sequence[float], ny: int, nx: int
) -> np.ndarray:
    """Return LPS mm ``(z, y, x, 3)`` of every pixel of slices starting at ``positions``."""
    row, col = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    r, c = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
    inplane = c[..., None] * spacing[0] * row + r[..., None] * spacing[1] * col
    return positions[:, None, None, :] + inplane[None]


def read_back(files: Sequence[Path]) -> list[pydicom.Dataset]:
    """Return the datasets of ``files`` (for building multi-frame files in tests)."""
    return [pydicom.dcmread(f) for f in files]
