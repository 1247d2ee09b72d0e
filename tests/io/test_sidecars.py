"""Class-table sidecars: QGIS ``.qml``, ITK-SNAP label descriptions, Slicer colour tables.

Each sidecar is parsed here the way its tool reads it (QGIS's paletted renderer reads
``pipe/rasterrenderer[@type=paletted]/colorPalette/paletteEntry`` value/color/alpha/label;
Slicer's colour-table storage node reads ``index name R G B A`` lines after ``#`` comments;
ITK-SNAP reads ``IDX R G B A VIS MSH "LABEL"`` lines), and compared with the label file as
an independent reader sees it (rasterio's colour table and band tags, nibabel's values).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from xml.etree import ElementTree as ET

import nibabel as nib
import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS

from geomed_seg.core.grid import GeoGrid, VoxelGrid
from geomed_seg.core.image import Image
from geomed_seg.core.labels import ClassInfo
from geomed_seg.errors import OutputExistsError
from geomed_seg.io.geotiff import open_geotiff, write_geotiff
from geomed_seg.io.nifti import write_nifti
from geomed_seg.io.sidecars import FALLBACK_COLORS
from geomed_seg.io.transaction import OutputTransaction

CLASSES = [
    ClassInfo(0, "not water", (200, 190, 150)),
    ClassInfo(1, "open water", (30, 90, 220)),
    ClassInfo(3, "flooded vegetation"),  # no colour in the card: fallback table
]


def _labels_raster(crs: str = "EPSG:32722") -> Image:
    data = np.zeros((1, 40, 50), np.uint8)
    data[0, 10:20, 5:30] = 1
    data[0, 25:, 30:] = 3
    data[0, 0, :] = 255
    grid = GeoGrid(CRS.from_user_input(crs), Affine(30.0, 0, 290000.0, 0, -30.0, 9120000.0),
                   (40, 50))  # fmt: skip
    return Image.from_array(data, grid, nodata=255)


def _labels_volume() -> Image:
    data = np.zeros((1, 6, 7, 8), np.uint8)
    data[0, 1:3, 2:5, 1:4] = 1
    data[0, 4, 4, 4] = 3
    affine = np.diag([1.5, 1.2, 3.0, 1.0])
    affine[:3, 3] = (-10, 20, 5)
    return Image.from_array(data, VoxelGrid(affine, (6, 7, 8)))


def parse_qml(path: Path) -> list[dict]:
    """Return the palette entries as QGIS's ``QgsPalettedRasterRenderer::create`` reads them."""
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE qgis")
    root = ET.fromstring(text.split("\n", 1)[1])
    assert root.tag == "qgis"
    ren = root.find("pipe/rasterrenderer")
    assert ren is not None and ren.get("type") == "paletted"
    assert ren.get("band") == "1" and float(ren.get("opacity")) == 1.0
    entries = []
    for e in ren.findall("colorPalette/paletteEntry"):
        color = e.get("color")
        assert re.fullmatch(r"#[0-9a-f]{6}", color), color  # QColor(name) form
        rgb = tuple(int(color[i : i + 2], 16) for i in (1, 3, 5))
        entries.append({"value": float(e.get("value")), "rgba": (*rgb, int(e.get("alpha"))),
                        "label": e.get("label")})  # fmt: skip
    return entries


def parse_slicer(path: Path) -> dict[int, tuple]:
    """Return ``{index: (name, r, g, b, a)}`` as Slicer's colour-table reader does."""
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split()
        assert len(fields) == 6, line  # index name R G B A, the name one token
        idx, name, *rgba = fields
        vals = tuple(int(v) for v in rgba)
        assert all(0 <= v <= 255 for v in vals)
        out[int(idx)] = (name, *vals)
    return out


def parse_itksnap(path: Path) -> dict[int, tuple]:
    """Return ``{index: (r, g, b, alpha 0..1, vis, mesh, label)}`` per the documented format."""
    text = path.read_text(encoding="utf-8")
    assert "# ITK-SnAP Label Description File" in text
    pat = re.compile(r'^\s*(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+([0-9.]+)\s+([01])\s+([01])\s+"(.*)"$')
    out = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        m = pat.match(line)
        assert m, line
        i, r, g, b, a, vis, msh, label = m.groups()
        assert 0.0 <= float(a) <= 1.0
        out[int(i)] = (int(r), int(g), int(b), float(a), int(vis), int(msh), label)
    return out


def _expected_rgba(c: ClassInfo) -> tuple[int, int, int, int]:
    color = c.color or FALLBACK_COLORS[c.index % len(FALLBACK_COLORS)]
    return (*color[:3], 255)


def test_label_cog_gets_qgis_style_matching_its_colour_table(tmp_path: Path) -> None:
    out = write_geotiff(_labels_raster(), tmp_path / "labels.tif", classes=CLASSES)
    qml = tmp_path / "labels.qml"  # QGIS's default style: <base name>.qml
    entries = parse_qml(qml)
    assert [(e["value"], e["label"]) for e in entries] == [(0, "not water"), (1, "open water"),
                                                           (3, "flooded vegetation")]  # fmt: skip
    with rasterio.open(out) as src:  # the GeoTIFF palette, as GDAL reads it
        cmap = src.colormap(1)
    for e, c in zip(entries, CLASSES, strict=True):
        assert e["rgba"] == _expected_rgba(c)
        if c.color is not None:
            assert cmap[c.index][:3] == e["rgba"][:3]
    assert not any(e["value"] == 255 for e in entries)  # nodata comes from the raster


def test_class_names_survive_copying_the_tif_alone(tmp_path: Path) -> None:
    write_geotiff(_labels_raster(), tmp_path / "labels.tif", classes=CLASSES)
    alone = tmp_path / "copy"
    alone.mkdir()
    shutil.copy(tmp_path / "labels.tif", alone / "labels.tif")
    assert sorted(os.listdir(alone)) == ["labels.tif"]
    with rasterio.Env(GDAL_PAM_ENABLED=False), rasterio.open(alone / "labels.tif") as src:
        items = src.tags(1)  # GDAL_METADATA band items, read by GDAL from the file itself
    assert {k: v for k, v in items.items() if k.startswith("CLASS_")} == {
        "CLASS_0": "not water", "CLASS_1": "open water", "CLASS_3": "flooded vegetation",
    }  # fmt: skip
    img = open_geotiff(alone / "labels.tif")
    assert [(c["index"], c["name"]) for c in img.attrs["classes"]] == [
        (0, "not water"), (1, "open water"), (3, "flooded vegetation")
    ]  # fmt: skip


def test_band_class_items_alone_give_the_classes(make_tif) -> None:
    """A file with only band-1 CLASS_ items (no GEOMED_CLASSES tag, no .aux.xml) reads back."""
    path = make_tif("other.tif", np.zeros((1, 4, 4), np.uint8))
    with rasterio.open(path, "r+") as dst:
        dst.update_tags(1, CLASS_0="land", CLASS_2="cloud")
    classes = open_geotiff(path).attrs["classes"]
    assert [(c["index"], c["name"]) for c in classes] == [(0, "land"), (2, "cloud")]


def test_label_nifti_gets_itksnap_and_slicer_tables(tmp_path: Path) -> None:
    out = write_nifti(_labels_volume(), tmp_path / "labels.nii.gz", classes=CLASSES)
    snap = parse_itksnap(tmp_path / "labels.label.txt")
    slicer = parse_slicer(tmp_path / "labels.ctbl")
    assert (tmp_path / "labels.ctbl").read_text().startswith("# Color table file labels\n")
    values = set(np.unique(np.asarray(nib.load(out).dataobj)).tolist())  # independent reader
    assert values <= set(snap) and values <= set(slicer)
    for c in CLASSES:
        rgba = _expected_rgba(c)
        alpha = 0 if c.index == 0 else 255  # the background is transparent, as in ITK-SNAP
        assert slicer[c.index] == (c.name.replace(" ", "_"), *rgba[:3], alpha)
        r, g, b, a, vis, msh, label = snap[c.index]
        assert (r, g, b, label) == (*rgba[:3], c.name)
        assert (vis, msh, a) == ((0, 0, 0.0) if c.index == 0 else (1, 1, 1.0))


def test_itksnap_file_has_clear_label_when_card_lacks_class_0(tmp_path: Path) -> None:
    write_nifti(_labels_volume(), tmp_path / "seg.nii", classes=CLASSES[1:])
    snap = parse_itksnap(tmp_path / "seg.label.txt")
    assert snap[0][-1] == "Clear Label" and snap[0][4] == 0
    assert sorted(parse_slicer(tmp_path / "seg.ctbl")) == [1, 3]


def test_no_sidecars_without_classes_or_for_float_volumes(tmp_path: Path) -> None:
    write_geotiff(_labels_raster(), tmp_path / "plain.tif")
    vol = _labels_volume()
    write_nifti(vol.with_data(vol.darray.astype(np.float32)), tmp_path / "p.nii.gz",
                classes=CLASSES)  # fmt: skip
    assert sorted(os.listdir(tmp_path)) == ["p.nii.gz", "plain.tif"]


def test_class_probabilities_get_no_palette_style(tmp_path: Path) -> None:
    img = _labels_raster()
    probs = Image.from_array(np.zeros((2, 40, 50), np.float32), img.grid)
    write_geotiff(probs, tmp_path / "probabilities.tif", classes=CLASSES[:2])
    assert not (tmp_path / "probabilities.qml").exists()
    with rasterio.open(tmp_path / "probabilities.tif") as src:
        assert not any(k.startswith("CLASS_") for k in src.tags(1))


def test_overwrite_replaces_and_removes_stale_sidecars(tmp_path: Path) -> None:
    path = tmp_path / "labels.tif"
    write_geotiff(_labels_raster(), path, classes=CLASSES)
    before = (tmp_path / "labels.qml").read_text()
    with pytest.raises(OutputExistsError):
        write_geotiff(_labels_raster(), path, classes=CLASSES[:1])
    assert (tmp_path / "labels.qml").read_text() == before
    write_geotiff(_labels_raster(), path, classes=CLASSES[:2], overwrite=True)
    assert [e["label"] for e in parse_qml(tmp_path / "labels.qml")] == ["not water", "open water"]
    write_geotiff(_labels_raster(), path, overwrite=True)  # no classes now: no stale style
    assert not (tmp_path / "labels.qml").exists()
    nii = tmp_path / "labels.nii.gz"
    write_nifti(_labels_volume(), nii, classes=CLASSES)
    write_nifti(_labels_volume(), nii, overwrite=True)
    assert not (tmp_path / "labels.label.txt").exists() and not (tmp_path / "labels.ctbl").exists()


def test_an_existing_style_is_an_output_too(tmp_path: Path) -> None:
    """A hand-made labels.qml is replaced (or removed) only with overwrite, checked up front."""
    (tmp_path / "labels.qml").write_text("mine")
    (tmp_path / "seg.ctbl").write_text("mine")
    with pytest.raises(OutputExistsError, match="labels.qml"):
        write_geotiff(_labels_raster(), tmp_path / "labels.tif", classes=CLASSES)
    with pytest.raises(OutputExistsError, match="seg.ctbl"):
        write_nifti(_labels_volume(), tmp_path / "seg.nii.gz", classes=CLASSES)
    with pytest.raises(OutputExistsError, match="labels.qml"):
        OutputTransaction([tmp_path / "labels.tif"])  # before any computing
    assert sorted(os.listdir(tmp_path)) == ["labels.qml", "seg.ctbl"]
    assert (tmp_path / "labels.qml").read_text() == "mine"
    write_geotiff(_labels_raster(), tmp_path / "labels.tif", classes=CLASSES, overwrite=True)
    assert parse_qml(tmp_path / "labels.qml")[0]["label"] == "not water"


def test_sidecars_commit_with_the_transaction_or_not_at_all(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with pytest.raises(RuntimeError):
        with OutputTransaction(folders=[out]):
            write_geotiff(_labels_raster(), out / "labels.tif", classes=CLASSES)
            write_nifti(_labels_volume(), out / "labels.nii.gz", classes=CLASSES)
            assert not (out / "labels.qml").exists()  # staged, not in place yet
            raise RuntimeError("failed later in the command")
    assert not out.exists()
    with OutputTransaction(folders=[out]):
        write_geotiff(_labels_raster(), out / "labels.tif", classes=CLASSES)
        write_nifti(_labels_volume(), out / "labels.nii.gz", classes=CLASSES)
    assert sorted(os.listdir(out)) == ["labels.ctbl", "labels.label.txt", "labels.nii.gz",
                                       "labels.qml", "labels.tif", "labels.tif.aux.xml"]  # fmt: skip


def test_obsolete_volume_labels_keep_the_new_raster_style(tmp_path: Path) -> None:
    """``labels.nii.gz`` of an older run goes with its tables, not with the new labels.qml."""
    out = tmp_path / "run"
    out.mkdir()
    write_nifti(_labels_volume(), out / "labels.nii.gz", classes=CLASSES)
    with OutputTransaction(folders=[out], overwrite=True, obsolete=[out / "labels.nii.gz"]):
        write_geotiff(_labels_raster(), out / "labels.tif", classes=CLASSES)
    assert sorted(os.listdir(out)) == ["labels.qml", "labels.tif", "labels.tif.aux.xml"]


def test_failed_write_leaves_no_sidecar(tmp_path: Path, monkeypatch) -> None:
    from geomed_seg.errors import WriteError
    from geomed_seg.io import faults

    monkeypatch.setenv(faults.ENV, "commit:labels.*:errno=ENOSPC")
    faults._rules.cache_clear()
    try:
        with pytest.raises(WriteError):
            write_geotiff(_labels_raster(), tmp_path / "labels.tif", classes=CLASSES)
        with pytest.raises(WriteError):
            write_nifti(_labels_volume(), tmp_path / "labels.nii.gz", classes=CLASSES)
    finally:
        monkeypatch.delenv(faults.ENV)
        faults._rules.cache_clear()
    assert os.listdir(tmp_path) == []
