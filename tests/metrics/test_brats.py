"""BraTS regions and lesion-wise metrics equal brats-evaluation (panoptica) case by case.

Lesion-wise numbers come straight from brats-evaluation run with the correct spacing. Its
*global* HD95/NSD ignore the spacing (panoptica passes none to global metrics: voxel units),
so the global distances are compared with panoptica's own metric functions called on the same
region masks *with* the spacing (tolerance 0.5 x smallest spacing, brats-evaluation's 0.5
voxel at 1 mm), and, on isotropic grids, with brats-evaluation's voxel values times the spacing.
"""

from __future__ import annotations

import warnings

import nibabel as nib
import numpy as np
import pytest

from geomed_seg.catalog import load_card
from geomed_seg.errors import ConfigError
from geomed_seg.metrics.brats import HD95_PENALTY, brats_metrics, region_definitions
from tests.metrics.data import brats_case

brats_evaluation = pytest.importorskip("brats_evaluation")
from panoptica import Panoptica_Evaluator  # noqa: E402
from panoptica.metrics.hausdorff_distance import _compute_hausdorff_distance95  # noqa: E402
from panoptica.metrics.normalized_surface_dice import (  # noqa: E402
    _compute_normalized_surface_dice,
)

KINDS = ["several", "missed", "false_positive", "empty_pred", "empty_ref", "both_empty"]
SPACING = (1.5, 1.0, 1.2)  # (z, y, x) mm, anisotropic on purpose

#: (brats-evaluation key, our RegionResult attribute)
PAIRS = [
    ("global_bin_dsc", "global_dsc"),
    ("global_bin_nsd", "global_nsd"),
    ("global_bin_hd95", "global_hd95"),
    ("tp", "tp"),
    ("fp", "fp"),
    ("fn", "fn"),
    ("prec", "precision"),
    ("rec", "recall"),
    ("rq", "f1"),
    ("sq_dsc", "lesionwise_dsc_mean"),
    ("sq_dsc_std", "lesionwise_dsc_std"),
    ("sq_nsd", "lesionwise_nsd_mean"),
    ("sq_nsd_std", "lesionwise_nsd_std"),
    ("sq_hd95", "lesionwise_hd95_mean"),
    ("sq_hd95_std", "lesionwise_hd95_std"),
]


def _evaluator(
    name: str, relabel: dict[str, str] | None = None, tmp_path=None
) -> Panoptica_Evaluator:
    path = brats_evaluation.config_path(name)
    if relabel:
        text = path.read_text()
        for a, b in relabel.items():
            text = text.replace(a, b)
        path = tmp_path / f"config_{name}_relabelled.yaml"
        path.write_text(text)
    return Panoptica_Evaluator.load_from_config(str(path))


def _global_mm(pred, ref, labels, spacing, key, edge_value):
    """panoptica's global metric of one region, given the spacing brats-evaluation omits."""
    p, r = np.isin(pred, labels), np.isin(ref, labels)
    if not np.any(p & r) or edge_value is None or not np.isfinite(edge_value):
        return edge_value  # edge cases (no overlap, empty) are unit-free: keep theirs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if key == "global_bin_hd95":
            return float(_compute_hausdorff_distance95(r, p, voxelspacing=spacing))
        return float(
            _compute_normalized_surface_dice(
                r, p, voxelspacing=spacing, threshold=0.5 * min(spacing)
            )
        )


def _compare(reference: dict, ours, pred=None, ref=None, spacing=None, regions=None) -> None:
    by_region = {r.region.lower(): r for r in ours}
    assert set(by_region) == set(reference)
    for region, res in reference.items():
        d = res.to_dict()
        mine = by_region[region]
        for key, attr in PAIRS:
            want = d.get(key, float("nan"))  # metrics panoptica could not compute are absent
            if want is None:
                want = float("nan")
            if key in ("global_bin_hd95", "global_bin_nsd") and pred is not None:
                want = _global_mm(pred, ref, regions[region.upper()], spacing, key, want)
            if key == "global_bin_hd95" and np.isinf(want):
                want = HD95_PENALTY  # brats-evaluation's parse_seg_results
            got = getattr(mine, attr)
            if np.isnan(want):
                assert np.isnan(got), (region, key, got)
            else:
                assert got == pytest.approx(want, rel=1e-6, abs=1e-9), (region, key, got, want)


def _run(evaluator, pred, ref, spacing):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return evaluator.evaluate(pred, ref, voxelspacing=spacing, verbose=False)


@pytest.mark.parametrize("kind", KINDS)
def test_2023_equals_brats_evaluation(kind):
    """2023 labels {1,2,3}: brats-evaluation's config with regions ET/TC/WT (GoAT)."""
    pred, ref = brats_case(kind)
    _compare(
        _run(_evaluator("GoAT"), pred, ref, SPACING),
        brats_metrics(pred, ref, SPACING, convention="2023"),
        pred, ref, SPACING, region_definitions("2023"),
    )  # fmt: skip


@pytest.mark.parametrize("kind", ["several", "false_positive", "empty_pred"])
def test_2024_equals_brats_evaluation_gli(kind):
    pred, ref = brats_case(kind, seed=1)
    ref = ref.copy()
    ref[5:9, 5:10, 40:46] = 4  # a resection cavity
    pred = pred.copy()
    pred[5:9, 6:10, 41:47] = 4
    _compare(
        _run(_evaluator("gli"), pred, ref, SPACING),
        brats_metrics(pred, ref, SPACING, convention="2024"),
        pred, ref, SPACING, region_definitions("2024"),
    )  # fmt: skip


@pytest.mark.parametrize("kind", ["several", "missed", "empty_ref"])
def test_legacy_equals_brats_evaluation(kind, tmp_path):
    pred, ref = brats_case(kind, seed=2)
    pred = np.where(pred == 3, 4, pred).astype(np.uint8)
    ref = np.where(ref == 3, 4, ref).astype(np.uint8)
    relabel = {"[3]": "[4]", "[1, 3]": "[1, 4]", "[1, 2, 3]": "[1, 2, 4]"}
    ev = _evaluator("GoAT", relabel, tmp_path)
    _compare(
        _run(ev, pred, ref, SPACING),
        brats_metrics(pred, ref, SPACING, convention="legacy"),
        pred, ref, SPACING, region_definitions("legacy"),
    )  # fmt: skip


def test_nifti_files_through_evaluate_single_exam(tmp_path):
    """The package's own file entry point.

    panoptica reads ``.nii.gz`` with SimpleITK: the array comes back (z, y, x) but the
    spacing (x, y, z), so on anisotropic files its lesion-wise HD95/NSD use reversed spacing.
    We reproduce its numbers by handing it the same (reversed) spacing, and check that with
    the correct (z, y, x) spacing the values differ, i.e. the quirk is real and ours is not it.
    """
    pred, ref = brats_case("false_positive", seed=3)
    spacing_ijk = (1.2, 1.0, 1.5)
    affine = np.diag([*spacing_ijk, 1.0])
    paths = {}
    for name, vol in (("pred", pred), ("ref", ref)):
        paths[name] = tmp_path / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(vol.transpose(2, 1, 0), affine), paths[name])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = brats_evaluation.evaluate_single_exam(
            str(paths["pred"]), str(paths["ref"]), "case", _evaluator("GoAT")
        )
    ours = {r.region.lower(): r for r in brats_metrics(pred, ref, spacing_ijk, convention="2023")}
    right = {
        r.region.lower(): r for r in brats_metrics(pred, ref, spacing_ijk[::-1], convention="2023")
    }
    assert right["wt"].lesionwise_hd95_mean != pytest.approx(out["wt"]["sq_hd95"], rel=1e-6)
    for region in ("et", "tc", "wt"):
        assert ours[region].global_dsc == pytest.approx(out[region]["global_bin_dsc"], rel=1e-9)
        # brats-evaluation's global HD95 is in voxels: ours is in mm (never below 1 voxel's worth)
        assert ours[region].global_hd95 >= out[region]["global_bin_hd95"] * 1.0 - 1e-9
        assert ours[region].lesionwise_hd95_mean == pytest.approx(out[region]["sq_hd95"], rel=1e-6)
        assert ours[region].lesionwise_nsd_mean == pytest.approx(out[region]["sq_nsd"], rel=1e-6)
        assert ours[region].f1 == pytest.approx(out[region]["rq"], rel=1e-9)


def test_regions_come_from_cards():
    assert region_definitions("legacy") == {"WT": [1, 2, 4], "TC": [1, 4], "ET": [4]}
    assert region_definitions("2023") == {"WT": [1, 2, 3], "TC": [1, 3], "ET": [3]}
    assert region_definitions("2024")["RC"] == [4]
    assert load_card("brats2023").class_infos()[3].name == "ET"
    with pytest.raises(ConfigError):
        region_definitions("brats1999")


def test_brats2023_protocol_scores_missed_and_false_positive_lesions():
    pred, ref = brats_case("false_positive")
    (wt,) = [
        r
        for r in brats_metrics(pred, ref, (1.0, 1.0, 1.0), convention="2023", protocol="brats2023")
        if r.region == "WT"
    ]
    assert wt.n_ref_lesions == 2 and wt.tp == 2 and wt.fp == 1
    # FP lesion enters the mean with Dice 0 and the HD95 penalty.
    dice = [lp.dice for lp in wt.lesions]
    assert wt.lesionwise_dsc_mean == pytest.approx(sum(dice) / 3)
    assert wt.lesionwise_hd95_mean > HD95_PENALTY / 3
    pred, ref = brats_case("both_empty")
    (et,) = [
        r
        for r in brats_metrics(pred, ref, (1.0, 1.0, 1.0), protocol="brats2023")
        if r.region == "ET"
    ]
    assert (et.lesionwise_dsc_mean, et.lesionwise_hd95_mean) == (1.0, 0.0)
