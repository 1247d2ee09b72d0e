"""GCP-only, RPC-only and ungeoreferenced inputs keep (or keep lacking) their georeference.

Independent references: rasterio/GDAL's reading of inputs and outputs (``ds.gcps``,
``ds.rpcs``, ``GCPTransformer``, ``RPCTransformer``) and GDAL's warper
(``rasterio.warp.reproject`` through the input's GCPs) for the polygons.
"""

from __future__ import annotations

import json

import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
from affine import Affine
from rasterio.crs import CRS
from rasterio.features import shapes
from rasterio.transform import GCPTransformer, RPCTransformer

import geomed_seg as gs
from geomed_seg.core.grid import GeoGrid
from geomed_seg.io.convert import convert_image
from tests.io.georef_data import gcps_for, write_gcp_copy, write_plain, write_rpc

FAST = ["outputs.quicklook=false", "outputs.report=false"]


def _gcp_tuples(ds) -> list[tuple[float, ...]]:
    return [(g.row, g.col, g.x, g.y, g.z or 0.0) for g in ds.gcps[0]]


def _assert_same_gcps(out, ref) -> None:
    with rasterio.open(out) as o, rasterio.open(ref) as r:
        assert o.gcps[1] == r.gcps[1] and r.gcps[1] is not None
        np.testing.assert_allclose(_gcp_tuples(o), _gcp_tuples(r), rtol=0, atol=1e-9)
        assert o.transform == Affine.identity() and o.crs is None  # GCPs, no geotransform


@pytest.fixture
def gcp_tif(tmp_path, landsat_path):
    return write_gcp_copy(landsat_path, tmp_path / "gcp.tif")


def test_gcp_input_opens_with_gcps_and_fit(gcp_tif):
    img = gs.open_image(gcp_tif)
    assert img.grid.georeference == "gcps"
    with rasterio.open(gcp_tif) as ds:
        assert img.grid.crs == ds.gcps[1]
        np.testing.assert_allclose([g[:5] for g in img.grid.gcps], _gcp_tuples(ds))
        fit = rasterio.transform.from_gcps(ds.gcps[0])
    assert img.grid.transform.almost_equals(fit)  # GDAL's least-squares fit
    from geomed_seg.core.describe import describe

    summary = describe(img)
    assert summary["georeference"] == "gcps" and summary["gcp_count"] == 12
    assert summary["gcp_fit_residual_px"] > 0.1  # the bent GCPs are not affine


@pytest.mark.parametrize("via_zarr", [False, True])
def test_convert_keeps_gcps_and_pixels(gcp_tif, tmp_path, via_zarr):
    out = tmp_path / "out.tif"
    if via_zarr:
        convert_image(gcp_tif, tmp_path / "mid.zarr")
        convert_image(tmp_path / "mid.zarr", out)
    else:
        convert_image(gcp_tif, out)
    _assert_same_gcps(out, gcp_tif)
    with rasterio.open(out) as o, rasterio.open(gcp_tif) as r:
        np.testing.assert_array_equal(o.read(), r.read())


def test_gcp_cog_with_overviews_keeps_gcps(tmp_path):
    h = w = 1100  # > 512: the COG gets internal overviews
    t = Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 4000000.0)
    src = tmp_path / "big_gcp.tif"
    data = (np.indices((h, w)).sum(axis=0) % 251).astype(np.uint8)[None]
    with rasterio.open(src, "w", driver="GTiff", width=w, height=h, count=1, dtype="uint8",
                       gcps=gcps_for(t, h, w), crs=CRS.from_epsg(32633)) as dst:  # fmt: skip
        dst.write(data)
    convert_image(src, tmp_path / "cog.tif")
    with rasterio.open(tmp_path / "cog.tif") as ds:
        assert ds.overviews(1)  # the case GDAL users lost GCPs in
    _assert_same_gcps(tmp_path / "cog.tif", src)
    convert_image(tmp_path / "cog.tif", tmp_path / "again.tif")  # a COG with GCPs as input
    _assert_same_gcps(tmp_path / "again.tif", src)


def test_gcp_window_is_exact_through_gdal(gcp_tif, tmp_path):
    img = gs.open_image(gcp_tif)
    r0, c0 = 37, 101
    gs.write_image(img.sel_window((slice(r0, r0 + 90), slice(c0, c0 + 120))), tmp_path / "w.tif")
    with rasterio.open(gcp_tif) as full, rasterio.open(tmp_path / "w.tif") as win:
        rows, cols = np.meshgrid(np.arange(0, 91, 15), np.arange(0, 121, 20), indexing="ij")
        xw, yw = GCPTransformer(win.gcps[0]).xy(rows.ravel(), cols.ravel(), offset="ul")
        xf, yf = GCPTransformer(full.gcps[0]).xy(rows.ravel() + r0, cols.ravel() + c0,
                                                 offset="ul")  # fmt: skip
        np.testing.assert_allclose(xw, xf, atol=1e-6)
        np.testing.assert_allclose(yw, yf, atol=1e-6)
        assert win.gcps[1] == full.gcps[1]


def test_grid_attrs_roundtrip_and_equality(gcp_tif):
    grid = gs.open_image(gcp_tif).grid
    back = GeoGrid.from_attrs(json.loads(json.dumps(grid.to_attrs())))
    assert back == grid and back.almost_equals(grid)
    plain = GeoGrid(grid.crs, grid.transform, grid.shape)
    assert not plain.almost_equals(grid) and not grid.almost_equals(plain)


def _tiny_checkpoint(tmp_path, bands: int):
    torch = pytest.importorskip("torch")
    from geomed_seg.models import ModelCard, build_model, save_checkpoint

    card = ModelCard(
        name="tiny", architecture="smp.Unet", spatial_dims=2, in_channels=bands,
        architecture_kwargs={"encoder_name": "resnet18", "encoder_depth": 3,
                             "decoder_channels": [16, 8, 8]},
        normalisation={"type": "meanstd", "mean": [60.0] * bands, "std": [30.0] * bands},
        classes=[{"index": 0, "name": "land"}, {"index": 1, "name": "water"}],
        roi_size=[64, 64],
    )  # fmt: skip
    torch.manual_seed(0)
    model = build_model(card.architecture, bands, card.num_classes, **card.architecture_kwargs)
    path = tmp_path / "tiny.safetensors"
    save_checkpoint(model.eval(), card, path)
    return path


def test_segment_gcp_input_writes_gcps(gcp_tif, tmp_path):
    from geomed_seg.cli import main

    ckpt = _tiny_checkpoint(tmp_path, 6)
    out = tmp_path / "labels.tif"
    assert main(["segment", str(gcp_tif), "-m", str(ckpt), "-o", str(out), "--quiet"]) == 0
    _assert_same_gcps(out, gcp_tif)


def test_run_gcp_input_labels_and_polygons_follow_gdal(gcp_tif, tmp_path):
    from rasterio.enums import Resampling
    from rasterio.warp import calculate_default_transform, reproject

    from geomed_seg.pipelines.runner import run_pipeline

    run_pipeline("flood", input=gcp_tif, output=tmp_path / "out", overrides=FAST)
    labels = tmp_path / "out" / "labels.tif"
    _assert_same_gcps(labels, gcp_tif)
    meta, _, wkb, _ = pyogrio.raw.read(tmp_path / "out" / "polygons.gpkg")
    with rasterio.open(gcp_tif) as ds:
        gcps, crs = ds.gcps
    assert CRS.from_user_input(meta["crs"]) == crs
    water = shapely.union_all(shapely.from_wkb(wkb))
    # independent: GDAL warps the labels through the same GCPs onto a 5 m north-up grid
    with rasterio.open(labels) as ds:
        lab = ds.read(1)
        h, w = lab.shape
    dst_t, dw, dh = calculate_default_transform(crs, crs, w, h, gcps=gcps, resolution=5.0)
    warped = np.full((dh, dw), 255, np.uint8)
    reproject(lab, warped, gcps=gcps, src_crs=crs, dst_transform=dst_t, dst_crs=crs,
              src_nodata=None, dst_nodata=255, resampling=Resampling.nearest)  # fmt: skip
    is_water = (warped == 1).astype(np.uint8)
    ref = shapely.union_all(
        [
            shapely.geometry.shape(g)
            for g, _ in shapes(is_water, mask=is_water == 1, transform=dst_t)
        ]
    )
    assert ref.area > 100 * 28.5**2
    # measured: 0.0055 through the GCP transformer; 0.03 if the affine fit of the GCPs
    # placed the polygons (up to ~4 px off at the far corner)
    mismatch = shapely.symmetric_difference(water, ref).area / ref.area
    assert mismatch < 0.01, mismatch


@pytest.fixture
def plain_tif(tmp_path, landsat_path):
    with rasterio.open(landsat_path) as ds:
        return write_plain(tmp_path / "plain.tif", ds.read())


def test_no_georeference_says_so_and_outputs_stay_plain(plain_tif, tmp_path, capsys):
    from geomed_seg.cli import main
    from geomed_seg.pipelines.runner import run_pipeline

    assert main(["info", str(plain_tif), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["georeference"] == "none" and "no georeference" in summary["georeference_note"]
    assert summary["crs"] is None
    assert main(["info", str(plain_tif)]) == 0
    assert "no georeference" in capsys.readouterr().out
    convert_image(plain_tif, tmp_path / "conv.tif")
    img = gs.open_image(plain_tif)
    gs.write_image(img.sel_window((slice(10, 60), slice(20, 90))), tmp_path / "win.tif")
    run_pipeline("flood", input=plain_tif, output=tmp_path / "out", overrides=FAST)
    for out in ("conv.tif", "win.tif", "out/labels.tif"):
        with rasterio.open(tmp_path / out) as ds:
            assert ds.crs is None and ds.gcps == ([], None) and ds.rpcs is None, out
            assert ds.transform == Affine.identity(), out
    meta = pyogrio.read_info(tmp_path / "out" / "polygons.gpkg")
    assert meta["crs"] is None


def test_rpcs_are_carried_and_shifted(tmp_path):
    data = (np.arange(100 * 100).reshape(1, 100, 100) % 200).astype(np.uint8)
    src = write_rpc(tmp_path / "rpc.tif", data)
    img = gs.open_image(src)
    assert img.grid.georeference == "rpcs" and img.grid.crs is None
    convert_image(src, tmp_path / "conv.tif")
    gs.write_image(img.sel_window((slice(10, 40), slice(25, 75))), tmp_path / "win.tif")
    with (
        rasterio.open(src) as s,
        rasterio.open(tmp_path / "conv.tif") as c,
        rasterio.open(tmp_path / "win.tif") as w,
    ):
        assert c.rpcs == s.rpcs and c.crs is None and c.transform == Affine.identity()
        with RPCTransformer(s.rpcs) as ts, RPCTransformer(w.rpcs) as tw:
            np.testing.assert_allclose(tw.xy([0, 29], [0, 49], offset="ul"),
                                       ts.xy([10, 39], [25, 74], offset="ul"),
                                       atol=1e-9)  # fmt: skip


def test_grid_xy_rowcol_bounds_follow_gdal_transformer(gcp_tif):
    grid = gs.open_image(gcp_tif).grid
    with rasterio.open(gcp_tif) as ds:
        gdal = GCPTransformer(ds.gcps[0])
        for row, col in ((0, 0), (100, 250), (351, 348)):
            x, y = gdal.xy(row, col)  # pixel centre
            assert grid.xy(row, col) == pytest.approx((x, y), abs=1e-6)
            # GDAL fits the inverse polynomial separately: back within 0.01 px, not exactly
            assert grid.rowcol(x, y) == pytest.approx((row, col), abs=0.01)
        h, w = grid.shape
        edge = [(r, c) for r in np.linspace(0, h, 41) for c in (0, w)]
        edge += [(r, c) for c in np.linspace(0, w, 41) for r in (0, h)]
        xs, ys = gdal.xy([e[0] for e in edge], [e[1] for e in edge], offset="ul")
    left, bottom, right, top = grid.bounds
    assert (left, bottom) == pytest.approx((min(xs), min(ys)), abs=0.5)
    assert (right, top) == pytest.approx((max(xs), max(ys)), abs=0.5)


def _gcp_vrt_with_srs(gcp_tif, path, srs: str = "EPSG:3857"):
    """A VRT of ``gcp_tif`` with an ``<SRS>``, an identity ``<GeoTransform>`` and the GCPs.

    The shape of rasterio's ``RGB.byte.gcp.vrt`` and GDAL's ``compdcs.vrt``: rasterio reads a
    CRS and the identity transform next to the GCPs; GDAL places the pixels by the GCPs.
    """
    from xml.sax.saxutils import quoteattr

    with rasterio.open(gcp_tif) as ds:
        gcps, gcp_crs = ds.gcps
        h, w, n, dtype = ds.height, ds.width, ds.count, ds.dtypes[0]
    gdal_type = {"uint8": "Byte", "uint16": "UInt16", "int16": "Int16", "float32": "Float32"}[dtype]
    pts = "".join(f'<GCP Id="{i}" Pixel="{g.col}" Line="{g.row}" X="{g.x!r}" Y="{g.y!r}" Z="0"/>'
                  for i, g in enumerate(gcps))  # fmt: skip
    bands = "".join(
        f'<VRTRasterBand dataType="{gdal_type}" band="{b}"><SimpleSource>'
        f'<SourceFilename relativeToVRT="0">{gcp_tif}</SourceFilename><SourceBand>{b}</SourceBand>'
        f"</SimpleSource></VRTRasterBand>"
        for b in range(1, n + 1)
    )
    path.write_text(
        f'<VRTDataset rasterXSize="{w}" rasterYSize="{h}"><SRS>{CRS.from_user_input(srs).to_wkt()}</SRS>'
        "<GeoTransform>0, 1, 0, 0, 0, 1</GeoTransform>"
        f"<GCPList Projection={quoteattr(gcp_crs.to_wkt())}>{pts}</GCPList>{bands}</VRTDataset>"
    )
    return path


def test_gcps_next_to_a_crs_and_identity_transform_place_the_pixels(gcp_tif, tmp_path):
    vrt = _gcp_vrt_with_srs(gcp_tif, tmp_path / "srs_gcp.vrt")
    with rasterio.open(vrt) as ds:  # the case: a CRS, no geotransform, GCPs
        assert ds.crs == CRS.from_epsg(3857) and ds.transform == Affine.identity()
        ref_gcps, ref_crs = ds.gcps
        fit = rasterio.transform.from_gcps(ref_gcps)
    img = gs.open_image(vrt)
    assert img.grid.georeference == "gcps" and img.grid.crs == ref_crs
    assert img.grid.transform.almost_equals(fit)
    from geomed_seg.core.describe import describe

    summary = describe(img)
    assert summary["georeference"] == "gcps" and summary["crs"]["epsg"] == ref_crs.to_epsg()
    convert_image(vrt, tmp_path / "conv.tif")
    _assert_same_gcps(tmp_path / "conv.tif", gcp_tif)
