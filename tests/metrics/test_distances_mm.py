"""Distances in mm at any spacing: region and lesion-wise HD95/NSD against MONAI, panoptica and
brats-evaluation given the correct spacing (issue 14 item 1).

References, all independent of our code:
* MONAI ``get_mask_edges`` + ``get_surface_distance(spacing=...)`` (directed distances in mm),
  ``compute_hausdorff_distance(percentile=95, spacing=...)``, ``compute_surface_dice(spacing=...)``;
* panoptica's metric functions with ``voxelspacing`` (what brats-evaluation uses per lesion);
* brats-evaluation's evaluator run with ``voxelspacing`` (lesion-wise values);
* scipy's ``generate_binary_structure`` dilations (the official BraTS 2023 script's).
"""

from __future__ import annotations

import logging
import warnings

import nibabel as nib
import numpy as np
import pytest
import torch
from affine import Affine
from monai.metrics import compute_hausdorff_distance, compute_surface_dice
from monai.metrics.utils import get_mask_edges, get_surface_distance
from rasterio.crs import CRS
from scipy import ndimage

from geomed_seg.core.grid import GeoGrid, VoxelGrid
from geomed_seg.errors import GeometryError
from geomed_seg.metrics.brats import (
    brats_metrics,
    dilation_structure,
    global_nsd_tolerance,
    region_definitions,
)
from geomed_seg.metrics.evaluate import evaluate
from geomed_seg.metrics.spacing import distance_spacing
from tests.metrics.data import brats_case

brats_evaluation = pytest.importorskip("brats_evaluation")
from panoptica import Panoptica_Evaluator  # noqa: E402
from panoptica.metrics.hausdorff_distance import _compute_hausdorff_distance95  # noqa: E402
from panoptica.metrics.normalized_surface_dice import (  # noqa: E402
    _compute_normalized_surface_dice,
)

#: (z, y, x) mm: 1 x 1 x 3 mm (x, y, z), 0.7 x 0.7 x 2.5 mm, 3 mm isotropic.
SPACINGS = [(3.0, 1.0, 1.0), (2.5, 0.7, 0.7), (3.0, 3.0, 3.0)]
SHAPE = (32, 44, 44)


def _monai_pooled(pred: np.ndarray, ref: np.ndarray, spacing) -> np.ndarray:
    """Both directed surface distances (mm) from MONAI's own edge and distance functions."""
    e_p, e_r = get_mask_edges(pred, ref, crop=True)
    d_pr = get_surface_distance(e_p, e_r, spacing=list(spacing))
    d_rp = get_surface_distance(e_r, e_p, spacing=list(spacing))
    return np.concatenate([np.asarray(d_pr), np.asarray(d_rp)])


def _t(mask: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(mask[None, None].astype(np.float32))


@pytest.mark.parametrize("spacing", SPACINGS)
def test_region_hd95_nsd_in_mm_equal_monai_and_panoptica(spacing):
    pred, ref = brats_case("several", SHAPE, seed=4)
    ours = {r.region: r for r in brats_metrics(pred, ref, spacing, lesion_wise=False)}
    for region, labels in region_definitions("2023").items():
        p, r = np.isin(pred, labels), np.isin(ref, labels)
        # MONAI's directed distances, pooled and reduced as brats-evaluation reduces them
        pooled = _monai_pooled(p, r, spacing)
        assert ours[region].global_hd95 == pytest.approx(np.percentile(pooled, 95), abs=1e-4)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hd95 = _compute_hausdorff_distance95(r, p, voxelspacing=spacing)
            nsd = _compute_normalized_surface_dice(
                r, p, voxelspacing=spacing, threshold=0.5 * min(spacing)
            )
        assert ours[region].global_hd95 == pytest.approx(hd95, abs=1e-4)
        assert ours[region].global_nsd == pytest.approx(nsd, abs=1e-4)


def test_isotropic_3mm_global_is_brats_evaluation_times_spacing():
    """On a 3 mm grid brats-evaluation's global HD95 is in voxels: ours is exactly 3x, NSD equal."""
    pred, ref = brats_case("several", SHAPE, seed=5)
    ev = Panoptica_Evaluator.load_from_config(str(brats_evaluation.config_path("GoAT")))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = ev.evaluate(pred, ref, voxelspacing=(3.0, 3.0, 3.0), verbose=False)
    for r in brats_metrics(pred, ref, (3.0, 3.0, 3.0), lesion_wise=True):
        d = theirs[r.region.lower()].to_dict()
        assert r.global_hd95 == pytest.approx(3.0 * d["global_bin_hd95"], abs=1e-4)
        assert r.global_hd95 > d["global_bin_hd95"] + 1.0  # the old voxel value is gone
        assert r.global_nsd == pytest.approx(d["global_bin_nsd"], abs=1e-4)
        # lesion-wise values were already physical in brats-evaluation
        assert r.lesionwise_hd95_mean == pytest.approx(d["sq_hd95"], abs=1e-4)
        assert r.lesionwise_nsd_mean == pytest.approx(d["sq_nsd"], abs=1e-4)


@pytest.mark.parametrize("spacing", SPACINGS[:2])
@pytest.mark.parametrize("kind", ["several", "false_positive"])
def test_lesionwise_in_mm_equal_brats_evaluation(spacing, kind):
    pred, ref = brats_case(kind, SHAPE, seed=6)
    ev = Panoptica_Evaluator.load_from_config(str(brats_evaluation.config_path("GoAT")))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = ev.evaluate(pred, ref, voxelspacing=spacing, verbose=False)
    for r in brats_metrics(pred, ref, spacing, lesion_wise=True):
        d = theirs[r.region.lower()].to_dict()
        assert (r.tp, r.fp, r.fn) == (d["tp"], d["fp"], d["fn"])
        assert r.lesionwise_hd95_mean == pytest.approx(d["sq_hd95"], abs=1e-4)
        assert r.lesionwise_nsd_mean == pytest.approx(d["sq_nsd"], abs=1e-4)
        assert r.lesionwise_dsc_mean == pytest.approx(d["sq_dsc"], abs=1e-9)


def _nifti(path, vol_zyx, affine):
    nib.save(nib.Nifti1Image(vol_zyx.transpose(2, 1, 0).astype(np.uint8), affine), path)
    return path


@pytest.mark.parametrize("spacing", SPACINGS)
def test_evaluate_files_use_the_grid_spacing(tmp_path, spacing):
    """Through files: the spacing comes from the NIfTI affine (here oblique for one case),
    region HD95 equals panoptica with that spacing, per-class HD95/NSD equal MONAI's."""
    pred, ref = brats_case("several", SHAPE, seed=7)
    sz, sy, sx = spacing
    affine = np.diag([sx, sy, sz, 1.0])
    if spacing == SPACINGS[1]:  # rotate 30 degrees about S: spacing is the column norms
        c, s = np.cos(np.pi / 6), np.sin(np.pi / 6)
        affine[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ affine[:3, :3]
    p = _nifti(tmp_path / "p.nii.gz", pred, affine)
    r = _nifti(tmp_path / "r.nii.gz", ref, affine)
    res = evaluate(p, r, surface=True, tolerance=2.0, brats="2023")
    assert res.spacing == pytest.approx(spacing)
    assert res.distance_unit == "mm"
    wt = next(x for x in res.brats if x.region == "WT")
    mask_p, mask_r = np.isin(pred, [1, 2, 3]), np.isin(ref, [1, 2, 3])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = _compute_hausdorff_distance95(mask_r, mask_p, voxelspacing=spacing)
        for label, s in res.surface.items():
            yp, yt = _t(pred == label), _t(ref == label)
            hd95 = compute_hausdorff_distance(yp, yt, percentile=95, spacing=list(spacing))
            nsd = compute_surface_dice(
                torch.cat([1 - yp, yp], 1), torch.cat([1 - yt, yt], 1), [2.0],
                spacing=list(spacing),
            )[0, 0]  # fmt: skip
            assert s.hd95 == pytest.approx(hd95.item(), abs=1e-4), label
            assert s.nsd == pytest.approx(nsd.item(), abs=1e-4), label
    assert wt.global_hd95 == pytest.approx(want, abs=1e-4)
    voxels = _compute_hausdorff_distance95(mask_r, mask_p)
    assert abs(wt.global_hd95 - voxels) > 0.05  # the voxel-unit value of the old code differs


def test_cli_issue_case_3mm_json_in_mm(tmp_path, capsys):
    """The issue's report: a 3 mm case gave WT 1.0 / TC 1.494 'mm'; scipy in mm is 3x that."""
    import json

    from geomed_seg.cli import main

    pred, ref = brats_case("several", SHAPE, seed=8)
    aff = np.diag([3.0, 3.0, 3.0, 1.0])
    p, r = _nifti(tmp_path / "p.nii.gz", pred, aff), _nifti(tmp_path / "r.nii.gz", ref, aff)
    args = ["evaluate", str(p), str(r), "--brats", "2023", "--format", "json"]
    assert main(args) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["distance_unit"] == "mm"
    for row in data["brats"]:
        labels = data["brats_regions"][row["region"]]
        pm, rm = np.isin(pred, labels), np.isin(ref, labels)
        # scipy EDT in mm over the reference / prediction surfaces (independent reference)
        surf = [m ^ ndimage.binary_erosion(m) for m in (pm, rm)]
        d_pr = ndimage.distance_transform_edt(~surf[1], sampling=(3.0, 3.0, 3.0))[surf[0]]
        d_rp = ndimage.distance_transform_edt(~surf[0], sampling=(3.0, 3.0, 3.0))[surf[1]]
        want = np.percentile(np.concatenate([d_pr, d_rp]), 95)
        assert row["global_hd95"] == pytest.approx(want, abs=1e-4), row["region"]
    assert any("HD95 in mm" in m for m in data["metric_set"])


def test_dilation_structure_is_the_official_script_at_1mm():
    """3 mm at 1 mm == three 18-neighbourhood dilations (scipy), 3 mm at 3 mm == one."""
    seed = np.zeros((15, 15, 15), bool)
    seed[7, 7, 7] = True
    official = ndimage.binary_dilation(seed, ndimage.generate_binary_structure(3, 2), iterations=3)
    ours = ndimage.binary_dilation(seed, dilation_structure((1.0, 1.0, 1.0), 3.0))
    np.testing.assert_array_equal(ours, official)
    once = ndimage.binary_dilation(seed, ndimage.generate_binary_structure(3, 2))
    ours3 = ndimage.binary_dilation(seed, dilation_structure((3.0, 3.0, 3.0), 3.0))
    np.testing.assert_array_equal(ours3, once)
    assert dilation_structure((1.0, 1.0, 1.0), 0) is None
    # 1 x 1 x 3 mm: one voxel along z, three along y and x
    assert dilation_structure((3.0, 1.0, 1.0), 3.0).shape == (3, 7, 7)


def test_brats2023_protocol_matches_as_its_1mm_resampling():
    """Lesion merging and the minimum lesion volume are physical: a 3 mm case and its 1 mm
    nearest-neighbour upsampling give the same lesions (the old voxel-based protocol merged
    lesions 12 mm apart and dropped a 54 mm³ lesion at 3 mm)."""
    lab = np.zeros((12, 20, 20), np.uint8)
    lab[4:8, 4:8, 3:7] = 2  # lesion A
    lab[4:8, 4:8, 11:15] = 2  # lesion B, 4 voxels = 12 mm from A
    lab[10, 15, 15:17] = 2  # a 2-voxel lesion: 54 mm³ at 3 mm
    pred = lab.copy()
    pred[4:8, 4:8, 3:5] = 0
    fine = [np.repeat(np.repeat(np.repeat(a, 3, 0), 3, 1), 3, 2) for a in (pred, lab)]
    coarse = {r.region: r for r in brats_metrics(pred, lab, (3.0,) * 3, protocol="brats2023")}
    ref_1mm = {r.region: r for r in brats_metrics(*fine, (1.0,) * 3, protocol="brats2023")}
    wt, wt1 = coarse["WT"], ref_1mm["WT"]
    assert wt.n_ref_lesions == wt1.n_ref_lesions == 3
    assert (wt.tp, wt.fp, wt.fn) == (wt1.tp, wt1.fp, wt1.fn)


def test_global_nsd_tolerance_is_half_the_smallest_spacing():
    assert global_nsd_tolerance((3.0, 1.0, 1.0)) == 0.5
    assert global_nsd_tolerance((2.5, 0.7, 0.7)) == pytest.approx(0.35)


# -- the one spacing source --------------------------------------------------------------
def test_distance_spacing_volumes_and_rasters(caplog):
    aff = np.diag([0.7, 0.8, 2.5, 1.0])
    d = distance_spacing(VoxelGrid(aff, (4, 5, 6)))
    assert d.spacing == pytest.approx((2.5, 0.8, 0.7)) and d.unit == "mm"
    sheared = aff.copy()
    sheared[0, 1] = 0.3
    with pytest.raises(GeometryError, match="not orthogonal"):
        distance_spacing(VoxelGrid(sheared, (4, 5, 6)), "sheared.nii.gz")
    utm = GeoGrid(CRS.from_epsg(32633), Affine(10, 0, 500000, 0, -20, 6e6), (4, 4))
    assert distance_spacing(utm).spacing == (20.0, 10.0)
    assert distance_spacing(utm).unit == "m"
    feet = GeoGrid(CRS.from_epsg(2263), Affine(3, 0, 9e5, 0, -3, 2e5), (4, 4))
    assert distance_spacing(feet).spacing == pytest.approx((3 * 0.3048006096, 3 * 0.3048006096))
    # degrees or Web Mercator over many latitudes: the ground pixel size varies, no metres
    # (issue 13: a 4x4 grid of 0.001 deg now gets its ground metres, see below)
    with caplog.at_level(logging.WARNING):
        geo = distance_spacing(
            GeoGrid(CRS.from_epsg(4326), Affine(1e-3, 0, 0, 0, -1e-3, 60), (60000, 4))
        )
    assert geo.unit == "CRS units" and "CRS units" in caplog.text
    merc = GeoGrid(CRS.from_epsg(3857), Affine(100, 0, 0, 0, -100, 9.7e6), (20000, 4))
    assert distance_spacing(merc).unit == "CRS units"  # was "m": Mercator m are not ground m
    # small extents: one ground spacing, metres by pyproj.Geod (independent)
    from pyproj import Geod

    small = distance_spacing(GeoGrid(CRS.from_epsg(4326), Affine(1e-3, 0, 0, 0, -1e-3, 0), (4, 4)))
    g = Geod(ellps="WGS84")
    y_m = g.inv(0.0015, -0.002, 0.0015, -0.003)[2]
    x_m = g.inv(0.002, -0.0025, 0.003, -0.0025)[2]
    assert small.unit == "m" and small.spacing == pytest.approx((y_m, x_m), rel=1e-3)
    merc_small = distance_spacing(
        GeoGrid(CRS.from_epsg(3857), Affine(67.4, 0, 2e6, 0, -67.4, 9.68e6), (4, 4))
    )
    assert merc_small.unit == "m" and merc_small.spacing[1] == pytest.approx(28.27, rel=2e-3)
    assert distance_spacing(GeoGrid(None, Affine(2, 0, 0, 0, -2, 0), (4, 4))).unit == "CRS units"


def _geod_edges(crs, transform, row, col):
    """Ground lengths (m) of a pixel's column and row edges with pyproj.Geod (the reference)."""
    from pyproj import CRS as PCRS
    from pyproj import Transformer

    pcrs = PCRS.from_user_input(crs.to_wkt())
    to_ll = Transformer.from_crs(pcrs, pcrs.geodetic_crs, always_xy=True)
    corners = [transform @ (col, row), transform @ (col + 1, row), transform @ (col, row + 1)]
    (lon0, lat0), (lon1, lat1), (lon2, lat2) = (to_ll.transform(*c) for c in corners)
    geod = pcrs.get_geod()
    return geod.inv(lon0, lat0, lon1, lat1)[2], geod.inv(lon0, lat0, lon2, lat2)[2]


@pytest.mark.parametrize(
    ("epsg", "transform"),
    [
        (4326, Affine(1e-4, 0, 10.0, 0, -1e-4, 45.5)),  # degrees at 45 N
        (3857, Affine(3, 0, 1.5e6, 0, -3, 9.7e6)),  # Web Mercator at ~65 N (scale x2.4)
        (3413, Affine(10, 0, 2e5, 0, -10, -2e6)),  # polar stereographic
    ],
)
def test_raster_spacing_is_ground_metres_of_the_centre_pixel(epsg, transform):
    """Small scenes in CRSs whose scale is not 1: ground metres equal pyproj.Geod's."""
    grid = GeoGrid(CRS.from_epsg(epsg), transform, (64, 80))
    d = distance_spacing(grid, "scene.tif")
    x_m, y_m = _geod_edges(grid.crs, transform, 32, 40)
    assert d.unit == "m"
    assert d.spacing == pytest.approx((y_m, x_m), rel=1e-6)
    if epsg == 3857:
        assert d.spacing[1] < 0.5 * 3  # CRS metres would be 2.4x the ground


@pytest.mark.parametrize("spacing", SPACINGS[:2])
def test_each_matched_lesion_hd95_nsd_equal_monai_distances(spacing):
    """Per lesion pair (26-connected components by scipy), HD95 and NSD from MONAI's directed
    distances in mm, reduced as brats-evaluation (pooled 95th percentile, mean of the two
    directed fractions within the smallest spacing)."""
    pred, ref = brats_case("several", SHAPE, seed=9)
    cc26 = np.ones((3, 3, 3), bool)
    for res in brats_metrics(pred, ref, spacing, lesion_wise=True):
        labels = region_definitions("2023")[res.region]
        ref_cc, _ = ndimage.label(np.isin(ref, labels), cc26)
        pred_cc, _ = ndimage.label(np.isin(pred, labels), cc26)
        assert res.lesions
        for lp in res.lesions:
            r, p = ref_cc == lp.ref_label, pred_cc == lp.pred_labels[0]
            e_p, e_r = get_mask_edges(p, r, crop=True)
            d_pr = np.asarray(get_surface_distance(e_p, e_r, spacing=list(spacing)))
            d_rp = np.asarray(get_surface_distance(e_r, e_p, spacing=list(spacing)))
            hd95 = np.percentile(np.concatenate([d_pr, d_rp]), 95)
            tol = min(spacing)
            nsd = (np.mean(d_pr <= tol) + np.mean(d_rp <= tol)) / 2
            assert lp.hd95 == pytest.approx(hd95, abs=1e-4)
            assert lp.nsd == pytest.approx(nsd, abs=1e-4)


def test_card_option_names_classes(tmp_path, capsys):
    import json

    from geomed_seg.cli import main
    from geomed_seg.models.card import ModelCard

    pred, ref = brats_case("several", SHAPE, seed=10)
    aff = np.diag([1.0, 1.0, 3.0, 1.0])
    p, r = _nifti(tmp_path / "p.nii.gz", pred, aff), _nifti(tmp_path / "r.nii.gz", ref, aff)
    args = ["evaluate", str(p), str(r), "--format", "json"]
    assert main([*args, "--card", "brats2023"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["overlap"]["names"] == ["background", "NETC", "SNFH", "ET"]
    assert data["classes_source"] == "dataset card brats2023"
    card = ModelCard(
        name="tiny", architecture="monai.UNet", spatial_dims=3, in_channels=4,
        classes=[{"index": i, "name": n} for i, n in enumerate(["bg", "core", "edema", "rim"])],
        roi_size=[32, 32, 32],
    )  # fmt: skip
    (tmp_path / "card.json").write_text(card.to_json())
    assert main([*args, "--card", str(tmp_path / "card.json"), "--surface"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["overlap"]["names"] == ["bg", "core", "edema", "rim"]
    assert data["classes_source"].startswith("model card tiny")
    assert data["nsd_tolerance"] == {"surface": 1.0}
