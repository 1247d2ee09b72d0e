"""BraTS pipeline on a tiny 4-sequence case: both label conventions via the dataset card,
checked with nibabel + NumPy."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from geomed_seg.errors import ConfigError
from geomed_seg.models.card import ModelCard
from geomed_seg.models.checkpoint import save_checkpoint
from geomed_seg.models.registry import build_model
from geomed_seg.pipelines import run_pipeline

SEQ = ["t1n", "t1c", "t2w", "t2f"]


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    root = tmp_path_factory.mktemp("brats")
    folder = root / "case"
    folder.mkdir()
    rng = np.random.default_rng(0)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    for name in SEQ:  # nibabel (i, j, k) arrays
        nib.save(nib.Nifti1Image(rng.random((20, 18, 16)).astype(np.float32), affine),
                 folder / f"c-{name}.nii.gz")  # fmt: skip
    torch.manual_seed(1)
    kwargs = {"spatial_dims": 3, "channels": [4, 8], "strides": [2], "num_res_units": 0}
    card = ModelCard(
        name="tiny3d", architecture="monai.UNet", architecture_kwargs=kwargs, spatial_dims=3,
        in_channels=4, band_names=SEQ, roi_size=[16, 16, 16],
        classes=[{"index": i, "name": n} for i, n in enumerate(["bg", "NETC", "SNFH", "ET"])],
    )  # fmt: skip
    module = build_model("monai.UNet", 4, 4, **kwargs)
    with torch.no_grad():  # bias the output so every class appears
        module.model[-1].conv.bias.copy_(torch.tensor([0.0, 0.1, 0.2, 0.3]))
    save_checkpoint(module, card, root / "ckpt")
    return folder, root / "ckpt"


def _run(case, out, *sets):
    folder, ckpt = case
    base = [f"model.checkpoint={ckpt}", "outputs.quicklook=false", "engine.device=cpu"]
    return run_pipeline("brats", input=folder, output=out, overrides=[*base, *sets])


def test_legacy_convention_maps_et_to_4(case, tmp_path):
    torch.set_num_threads(1)
    new = _run(case, tmp_path / "2023")
    old = _run(case, tmp_path / "2021", "dataset=brats2021", "outputs.relabel_to_dataset=true",
               "evaluation.brats=brats2021")  # fmt: skip
    a = np.asarray(nib.load(tmp_path / "2023" / "labels.nii.gz").dataobj)
    b = np.asarray(nib.load(tmp_path / "2021" / "labels.nii.gz").dataobj)
    assert a.shape == (20, 18, 16)  # on the input grid, nibabel (i, j, k) order
    assert set(np.unique(a)) <= {0, 1, 2, 3} and 3 in a
    np.testing.assert_array_equal(b, np.array([0, 1, 2, 4])[a])
    names = {r["index"]: r["name"] for r in old.report["classes"]}
    assert names[4] == "ET" and names[2] == "ED"
    assert new.report["classes"][3]["volume_ml"] == pytest.approx((a == 3).sum() * 8 / 1000)
    assert "brats2021 convention" in old.report["notes"][-1]


def test_relabel_needs_matching_class_count(case, tmp_path):
    with pytest.raises(ConfigError, match="4 classes, dataset card brats2024 has 5"):
        _run(case, tmp_path, "dataset=brats2024", "outputs.relabel_to_dataset=true")
