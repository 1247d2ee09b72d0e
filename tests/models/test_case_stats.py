"""Per-case normalisation ``nonzero_zscore``: streamed statistics and window application against
MONAI ``NormalizeIntensity(nonzero=True, channel_wise=True)`` on the whole case."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from model_helpers import tiny_card

from geomed_seg.core.grid import VoxelGrid
from geomed_seg.core.image import Image
from geomed_seg.errors import ModelError
from geomed_seg.models.case_stats import case_normaliser, nonzero_statistics


def _case(chunks=None, seed=0) -> tuple[np.ndarray, Image]:
    rng = np.random.default_rng(seed)
    arr = rng.gamma(3.0, 150.0, size=(4, 20, 18, 22)).astype(np.float32)
    arr[:, :, :4] = 0  # background outside the "head"
    arr[2, 5:9] = 0
    arr[3] = 0  # an all-zero channel: stays zero (MONAI keeps it as is)
    grid = VoxelGrid(np.diag([1.2, 0.9, 3.0, 1.0]), arr.shape[1:])
    img = Image.from_array(arr, grid, channel_names=["t1n", "t1c", "t2w", "t2f"])
    if chunks is not None:
        img = img.with_data(img.darray.rechunk((1, *chunks)))
    return arr, img


def _card():
    return tiny_card(
        spatial_dims=3, roi_size=[8, 8, 8], spacing=None, spacing_unit=None,
        band_names=["t1n", "t1c", "t2w", "t2f"], normalisation={"type": "nonzero_zscore"},
    )  # fmt: skip


@pytest.mark.parametrize("chunks", [None, (7, 5, 9), (20, 18, 22)])
def test_whole_case_equals_monai_for_any_chunking(chunks):
    from monai.transforms import NormalizeIntensity

    arr, img = _case(chunks)
    card = _card()
    norm = case_normaliser(card, img)
    ref = np.asarray(NormalizeIntensity(nonzero=True, channel_wise=True)(arr.copy()))
    # applied window by window (as the engine does), then put back together
    ours = np.zeros_like(arr)
    for z in range(0, 20, 6):
        win = arr[None, :, z : z + 6]
        ours[:, z : z + 6] = norm(win)[0]
    np.testing.assert_allclose(ours, ref, atol=2e-5)
    assert np.all(ours[:, :, :4] == 0) and np.all(ours[3] == 0)
    assert norm.stats.count[3] == 0


def test_statistics_equal_numpy_over_nonzero_valid():
    arr, img = _case((5, 6, 7))
    mask = np.ones(arr.shape[1:], bool)
    mask[-3:] = False
    stats = nonzero_statistics(replace(img, mask=_dask(mask)))
    for c in range(3):
        v = arr[c][(arr[c] != 0) & mask].astype(np.float64)
        assert stats.mean[c] == pytest.approx(float(v.mean()), rel=1e-9)
        assert stats.std[c] == pytest.approx(float(v.std()), rel=1e-7)
        assert stats.count[c] == v.size


def _dask(mask):
    import dask.array as da
    import xarray as xr

    return xr.DataArray(da.from_array(mask), dims=("z", "y", "x"))


@pytest.mark.parametrize("factor", [0.5, 3.0, 1234.5])
def test_global_rescale_gives_identical_model_input(factor):
    arr, img = _case()
    card = _card()
    a = case_normaliser(card, img)(arr[None])
    b = case_normaliser(card, img.with_data(img.darray * np.float32(factor)))(
        arr[None] * np.float32(factor)
    )
    np.testing.assert_allclose(a, b, atol=1e-4)


def test_card_refuses_without_statistics_and_exports_stac():
    card = _card()
    assert card.needs_case_statistics and not tiny_card().needs_case_statistics
    with pytest.raises(ModelError, match="nonzero_zscore.*needs the case statistics"):
        card.normalise(np.ones((1, 4, 8, 8, 8)))
    scaling = card.to_stac_mlm()["properties"]["mlm:input"][0]["value_scaling"]
    assert scaling[0]["type"] == "processing" and "non-zero" in scaling[0]["description"]
