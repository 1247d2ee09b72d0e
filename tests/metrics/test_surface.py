"""Surface distances against MONAI (HD, HD95, ASSD, NSD) and panoptica, anisotropic spacing."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from monai.metrics import (
    compute_average_surface_distance,
    compute_hausdorff_distance,
    compute_surface_dice,
)

from geomed_seg.metrics.surface import scores_from_distances, surface_distances, surface_metrics
from tests.metrics.data import ellipsoid

SPACING = (2.5, 0.9, 1.3)


def _pair(shape=(30, 40, 36), seed=0):
    rng = np.random.default_rng(seed)
    ref = ellipsoid(shape, (15, 20, 17), (8, 12, 10), rng, 0.1)
    pred = ellipsoid(shape, (16, 19, 18), (7, 13, 9), rng, 0.1)
    pred[2:4, 30:33, 3:6] = True  # a distant false-positive blob
    return pred, ref


def _t(mask):
    return torch.as_tensor(mask[None, None].astype(np.float32))


@pytest.mark.parametrize("spacing", [None, SPACING])
def test_hd_hd95_assd_equal_monai(spacing):
    pred, ref = _pair()
    ours = surface_metrics(pred, ref, spacing)
    kw = {} if spacing is None else {"spacing": list(spacing)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hd = compute_hausdorff_distance(_t(pred), _t(ref), **kw).item()
        hd95 = compute_hausdorff_distance(_t(pred), _t(ref), percentile=95, **kw).item()
        assd = compute_average_surface_distance(_t(pred), _t(ref), symmetric=True, **kw).item()
    assert ours.hd == pytest.approx(hd, rel=1e-6)
    assert ours.hd95 == pytest.approx(hd95, rel=1e-6)
    assert ours.assd == pytest.approx(assd, rel=1e-6)


@pytest.mark.parametrize("tol", [1.0, 2.0])
def test_nsd_equals_monai(tol):
    pred, ref = _pair(seed=1)
    ours = surface_metrics(pred, ref, SPACING, tolerance=tol)
    yp = torch.cat([1 - _t(pred), _t(pred)], dim=1)
    yt = torch.cat([1 - _t(ref), _t(ref)], dim=1)
    nsd = compute_surface_dice(yp, yt, class_thresholds=[tol], spacing=list(SPACING))[0, 0].item()
    assert ours.nsd == pytest.approx(nsd, rel=1e-6)


def test_panoptica_convention_equals_panoptica():
    from panoptica.metrics.assd import _average_symmetric_surface_distance
    from panoptica.metrics.hausdorff_distance import _compute_hausdorff_distance95
    from panoptica.metrics.normalized_surface_dice import _compute_normalized_surface_dice

    pred, ref = _pair(seed=2)
    ours = surface_metrics(pred, ref, SPACING, tolerance=min(SPACING), convention="panoptica")
    assert ours.hd95 == pytest.approx(_compute_hausdorff_distance95(ref, pred, SPACING), rel=1e-9)
    assert ours.assd == pytest.approx(
        _average_symmetric_surface_distance(ref, pred, SPACING), rel=1e-9
    )
    assert ours.nsd == pytest.approx(_compute_normalized_surface_dice(ref, pred, SPACING), rel=1e-9)


def test_crop_does_not_change_distances():
    pred, ref = _pair(seed=4)
    big_p = np.zeros((80, 90, 70), bool)
    big_r = np.zeros_like(big_p)
    big_p[40:70, 30:70, 20:56] = pred
    big_r[40:70, 30:70, 20:56] = ref
    a = surface_distances(big_p, big_r, SPACING, crop=True)
    b = surface_distances(big_p, big_r, SPACING, crop=False)
    np.testing.assert_allclose(np.sort(a[0]), np.sort(b[0]))
    np.testing.assert_allclose(np.sort(a[1]), np.sort(b[1]))


def test_mask_touching_the_array_edge():
    pred = np.zeros((10, 12), bool)
    ref = np.zeros((10, 12), bool)
    pred[0:5, 0:6] = True
    ref[0:6, 0:5] = True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hd = compute_hausdorff_distance(_t(pred), _t(ref)).item()
    assert surface_metrics(pred, ref).hd == pytest.approx(hd)


def test_empty_cases():
    z = np.zeros((5, 5, 5), bool)
    m = z.copy()
    m[2, 2, 2] = True
    both = surface_metrics(z, z)
    assert (both.hd, both.hd95, both.assd, both.nsd) == (0.0, 0.0, 0.0, 1.0)
    one = surface_metrics(m, z, empty_penalty=373.0)
    assert (one.hd95, one.nsd) == (373.0, 0.0)
    assert np.isinf(surface_metrics(z, m).hd95)
    same = scores_from_distances(np.zeros(3), np.zeros(3))
    assert same.hd95 == 0.0 and same.nsd == 1.0


@pytest.mark.parametrize("shape", [(30, 40, 35), (20, 25), (7,)])
def test_surface_equals_scipy_erosion(shape):
    from scipy import ndimage

    from geomed_seg.metrics.surface import surface

    m = np.random.default_rng(0).random(shape) < 0.7
    np.testing.assert_array_equal(surface(m), m ^ ndimage.binary_erosion(m))
