"""DICOM series of a folder: grouping, the listed order, and choosing one (``--series``).

Files are grouped by ``SeriesInstanceUID``. Series are listed by ``SeriesNumber`` (a missing
or non-numeric number sorts first, as 0), then by ``SeriesInstanceUID`` compared as its
dot-separated integer components; the 1-based position in that list is the series'
*index* (what ``geomed-seg info FOLDER`` prints and ``--series N`` takes).

A choice is, in this order: an exact ``SeriesInstanceUID``; an index ``1..N``; a
``SeriesDescription`` equal to the text (case-insensitive); a description containing it
(case-insensitive). A choice that fits several series is refused with the candidates, one
that fits none with the whole list: a wrong series would be converted or segmented
without a word (pydicom's test folders put one-slice localizers beside the CT).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom

from geomed_seg.errors import InvalidInputError, ReadError


@dataclass(frozen=True)
class DicomFile:
    """One image file of a folder and its header (Pixel Data deferred)."""

    path: Path
    ds: pydicom.Dataset
    problem: ReadError | None = None  # a truncated header: raised if this series is chosen

    def get(self, key: str, default: Any = None) -> Any:
        return self.ds.get(key, default)


@dataclass
class DicomSeries:
    """The files of one ``SeriesInstanceUID``."""

    uid: str
    files: list[DicomFile]

    @property
    def first(self) -> pydicom.Dataset:
        return self.files[0].ds

    @property
    def number(self) -> int | None:
        """``SeriesNumber`` of the first file, or None when missing or not a number."""
        try:
            value = self.first.get("SeriesNumber")
            return None if value in (None, "") else int(value)
        except (TypeError, ValueError):
            return None

    @property
    def description(self) -> str:
        return str(self.first.get("SeriesDescription", "") or "").strip()

    @property
    def modality(self) -> str:
        return str(self.first.get("Modality", "") or "")

    @property
    def slices(self) -> int:
        """Images in the series: one per single-frame file, ``NumberOfFrames`` per multi-frame."""
        total = 0
        for f in self.files:
            try:
                total += max(int(f.get("NumberOfFrames") or 1), 1)
            except (TypeError, ValueError):
                total += 1
        return total

    def describe(self, index: int) -> str:
        number = "-" if self.number is None else self.number
        return (
            f"[{index}] #{number} {self.uid} {self.modality or '?'} "
            f"'{self.description}', {self.slices} slice(s)"
        )


@dataclass(frozen=True)
class SeriesInfo:
    """One line of a folder's series listing (what ``info FOLDER`` shows)."""

    index: int  # 1-based position in the listed order: what ``--series N`` takes
    number: int | None  # SeriesNumber
    uid: str  # SeriesInstanceUID
    modality: str
    description: str  # SeriesDescription
    slices: int  # images: files, or frames of multi-frame files
    files: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "number": self.number,
            "uid": self.uid,
            "modality": self.modality,
            "description": self.description,
            "slices": self.slices,
            "files": self.files,
        }


def _uid_key(uid: str) -> tuple[tuple[int, ...], str]:
    parts = uid.split(".")
    if all(p.isdigit() for p in parts):
        return tuple(int(p) for p in parts), ""
    return (), uid  # not a valid UID: after none of the numeric ones' order matters, by text


def group_series(files: list[DicomFile]) -> list[DicomSeries]:
    """Return the series of ``files`` in the listed order (series number, then UID)."""
    groups: dict[str, list[DicomFile]] = {}
    for f in files:
        groups.setdefault(str(f.get("SeriesInstanceUID", "")), []).append(f)
    series = [DicomSeries(uid, fs) for uid, fs in groups.items()]
    series.sort(key=lambda s: (s.number if s.number is not None else 0, _uid_key(s.uid)))
    return series


def series_infos(series: list[DicomSeries]) -> list[SeriesInfo]:
    """Return the listing of ``series`` (already in the listed order)."""
    return [
        SeriesInfo(i + 1, s.number, s.uid, s.modality, s.description, s.slices, len(s.files))
        for i, s in enumerate(series)
    ]


def choose_series(series: list[DicomSeries], choice: str | int | None, where: str) -> DicomSeries:
    """Return the series ``choice`` names (see the module docstring for the rules).

    Raises
    ------
    InvalidInputError
        No choice among several series, a choice that fits several (the candidates are
        listed) or none (every series is listed).
    """
    listing = "; ".join(s.describe(i + 1) for i, s in enumerate(series))
    if choice is None:
        if len(series) == 1:
            return series[0]
        raise InvalidInputError(
            f"{where}: {len(series)} DICOM series found; choose one with --series (series=) "
            f"as the index listed by `geomed-seg info`, a SeriesInstanceUID or a description: "
            f"{listing}"
        )
    text = str(choice).strip()
    exact = [s for s in series if s.uid == text]
    if exact:
        return exact[0]
    if text.isdigit() and 1 <= int(text) <= len(series):
        return series[int(text) - 1]
    low = text.lower()
    for rule in (lambda d: d == low, lambda d: bool(low) and low in d):
        found = [(i, s) for i, s in enumerate(series) if rule(s.description.lower())]
        if len(found) == 1:
            return found[0][1]
        if found:
            candidates = "; ".join(s.describe(i + 1) for i, s in found)
            raise InvalidInputError(
                f"{where}: --series {text!r} fits {len(found)} series; choose one by index or "
                f"SeriesInstanceUID: {candidates}"
            )
    raise InvalidInputError(
        f"{where}: --series {text!r} matches none of the series found (index 1..{len(series)}, "
        f"SeriesInstanceUID or description): {listing}"
    )
