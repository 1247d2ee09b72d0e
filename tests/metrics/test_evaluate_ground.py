"""evaluate(): class areas in true ground m² where pixel areas vary (issue 13 item 1)."""

from __future__ import annotations

import numpy as np
import pytest
from affine import Affine
from rasterio.crs import CRS

from geomed_seg.core.grid import GeoGrid
from geomed_seg.core.image import Image
from geomed_seg.metrics.evaluate import evaluate
from tests.geo_truth import geodesic_pixel_areas


@pytest.mark.parametrize(
    ("epsg", "transform"),
    [
        (4326, Affine(0.0003, 0, 10.0, 0, -0.0003, 60.0)),  # degrees: were degrees² ("crs")
        (3857, Affine(67.4, 0, 2.0e6, 0, -67.4, 9.68e6)),  # Web Mercator 65° N: 5.7x
        (2263, Affine(93.5, 0, 1.0e6, 0, -93.5, 2.0e5)),  # US feet: were ft²
    ],
)
def test_class_areas_are_geodesic_ground_areas(epsg, transform):
    rng = np.random.default_rng(0)
    ref = np.zeros((40, 50), np.uint8)
    ref[5:25, 10:35] = 1
    ref[28:36, 3:20] = 2
    pred = np.where(rng.random(ref.shape) < 0.1, rng.integers(0, 3, ref.shape), ref)
    pred = pred.astype(np.uint8)
    nodata = np.zeros(ref.shape, bool)
    nodata[:, :4] = True
    ref_nd = np.where(nodata, 255, ref).astype(np.uint8)
    grid = GeoGrid(CRS.from_epsg(epsg), transform, ref.shape)
    res = evaluate(
        Image.from_array(pred, grid),
        Image.from_array(ref_nd, grid, nodata=255),
        classes="0:bg,1:water,2:urban",
    )
    r, c = np.indices(ref.shape)
    px = geodesic_pixel_areas(grid.crs, transform, r.ravel(), c.ravel()).reshape(ref.shape)
    assert res.overlap.area_unit == "m2"
    for cls in res.overlap.classes:
        assert cls.ref_area == pytest.approx(px[(ref == cls.index) & ~nodata].sum(), rel=1e-4)
        assert cls.pred_area == pytest.approx(px[(pred == cls.index) & ~nodata].sum(), rel=1e-4)
    row = next(r for r in res.rows() if r["name"] == "water")
    assert row["ref_area_km2"] == pytest.approx(row["ref_area"] / 1e6)
