"""Pipeline steps as registered objects and post-processing as an ordered list of ops.

References: scikit-image / SciPy morphology applied in the list's order on the whole mask;
the old mapping form of ``postprocess`` must mean what the old if-chain did.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import rasterio
import yaml
from affine import Affine
from rasterio.crs import CRS
from scipy import ndimage as ndi
from skimage import morphology as m

from geomed_seg.batch.manifest import default_halo
from geomed_seg.core import GeoGrid, Image
from geomed_seg.core.labels import ClassInfo
from geomed_seg.errors import ConfigError
from geomed_seg.pipelines import run_pipeline
from geomed_seg.pipelines.methods import ModelOutput
from geomed_seg.pipelines.schema import PIPELINES_DIR, PipelineConfig, load_config
from geomed_seg.pipelines.steps import (
    STEPS,
    PipelineState,
    apply_ops,
    configured_steps,
    register_step,
)

REPO = Path(__file__).resolve().parents[2]
OLD_STYLE = {
    "name": "old",
    "kind": "raster",
    "input": {"path": "scene.tif"},
    "model": {"method": "ndwi_otsu"},
    # keys in another order than the old if-chain applied them
    "postprocess": {"min_object_size": 500, "fill_holes": True, "closing": 1, "opening": 2},
}


def _write(tmp_path: Path, data) -> Path:
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(data, sort_keys=False))
    return p


@pytest.mark.parametrize("path", sorted(PIPELINES_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_every_bundled_pipeline_loads_with_its_steps(path):
    cfg = load_config(path)
    names = [s.name for s in configured_steps(cfg)]
    assert names[:3] == ["preprocess", "model", "postprocess"]
    assert default_halo(cfg) >= 0
    # the dumped config (run.json) loads again to the same config
    again = PipelineConfig.model_validate(cfg.model_dump(mode="json"))
    assert again.postprocess == cfg.postprocess and again.steps == cfg.steps


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_training_config_loads(path):
    from geomed_seg.train.config import load_config as load_train_config

    assert load_train_config(path).model is not None


def test_old_mapping_form_means_the_old_fixed_order(tmp_path):
    cfg = load_config(_write(tmp_path, OLD_STYLE))
    assert [(o.op, getattr(o, o.main) if o.main else None) for o in cfg.postprocess.ops] == [
        ("opening", 2),
        ("closing", 1),
        ("fill_holes", None),
        ("min_object_size", 500.0),
    ]
    # zero / false / null switched an op off in the old form
    off = {**OLD_STYLE, "postprocess": {"opening": 0, "fill_holes": False, "min_object_size": None}}
    assert load_config(_write(tmp_path, off)).postprocess.ops == []
    assert default_halo(load_config(_write(tmp_path, OLD_STYLE), ["engine.roi_size=null"])) == 7


def test_list_form_shorthands_and_errors(tmp_path):
    raw = {**OLD_STYLE, "postprocess": [
        "fill_holes", {"opening": 1}, {"op": "min_object_size", "size": 8}, {"closing": 0},
    ]}  # fmt: skip
    ops = load_config(_write(tmp_path, raw)).postprocess.ops
    assert [o.op for o in ops] == ["fill_holes", "opening", "min_object_size"]
    for bad, match in (
        ([{"erode": 1}], "erode"),
        ([{"opening": -1}], "greater than or equal to 1"),
        ([{"op": "opening"}], "radius"),
        ({"min_objet_size": 5}, "postprocess.min_objet_size: unknown key"),
    ):
        with pytest.raises(ConfigError, match=match):
            load_config(_write(tmp_path, {**OLD_STYLE, "postprocess": bad}))


def test_overrides_address_ops_by_name():
    base = load_config("flood-sar")  # [fill_holes, min_object_size: 2000]
    assert [o.op for o in base.postprocess.ops] == ["fill_holes", "min_object_size"]
    cfg = load_config("flood-sar", ["postprocess.min_object_size=50", "postprocess.opening=3"])
    assert [(o.op, getattr(o, o.main or "op")) for o in cfg.postprocess.ops] == [
        ("fill_holes", "fill_holes"),
        ("min_object_size", 50.0),
        ("opening", 3),  # not in the list: appended
    ]
    cfg = load_config("flood-sar", ["postprocess.fill_holes=false"])
    assert [o.op for o in cfg.postprocess.ops] == ["min_object_size"]
    cfg = load_config("flood-sar", ["postprocess=[{closing: 2}, fill_holes]"])
    assert [o.op for o in cfg.postprocess.ops] == ["closing", "fill_holes"]
    cfg = load_config("flood-sar", ["postprocess.opening.radius=4"])
    assert cfg.postprocess.op("opening").radius == 4


def _mask_output(mask: np.ndarray, fg: int = 1) -> ModelOutput:
    grid = GeoGrid(CRS.from_epsg(32633), Affine(10.0, 0, 500000.0, 0, -10.0, 4000000.0), mask.shape)
    lab = Image.from_array((mask * fg)[None].astype(np.uint8), grid, nodata=255, chunks=(1, 23, 29))
    classes = [ClassInfo(0, "background"), ClassInfo(fg, "object")]
    return ModelOutput(labels=lab, classes=classes, method="test")


def _noisy_mask() -> np.ndarray:
    rng = np.random.default_rng(5)
    yy, xx = np.indices((70, 90))
    mask = np.zeros((70, 90), bool)
    for _ in range(9):
        cy, cx, r = rng.integers(8, 62), rng.integers(8, 82), rng.integers(3, 9)
        mask |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
    return mask ^ (rng.random(mask.shape) < 0.07)


@pytest.mark.parametrize(
    "ops",
    [
        ["fill_holes", {"opening": 2}],
        [{"opening": 2}, "fill_holes"],
        [{"closing": 1}, {"min_object_size": 3000}, {"opening": 1}],
    ],
)
def test_ops_apply_in_list_order_like_skimage(ops):
    mask = _noisy_mask()
    cfg = load_config({**OLD_STYLE, "postprocess": ops})
    out = _mask_output(mask, fg=2)
    apply_ops(out, cfg)
    ours = np.asarray(out.labels.darray.compute())[0]
    ref = mask.copy()
    for op in cfg.postprocess.ops:  # the same order, done by scikit-image / SciPy
        if op.op in ("opening", "closing"):
            ref = getattr(m, op.op)(ref, m.disk(op.radius)).astype(bool)
        elif op.op == "fill_holes":
            ref = ndi.binary_fill_holes(ref, structure=ndi.generate_binary_structure(2, 1))
        elif op.op == "min_object_size":  # 100 m² pixels of the UTM grid
            lab, n = ndi.label(ref)
            sizes = np.bincount(lab.ravel()) * 100.0
            ref = (sizes >= op.size)[lab] & (lab > 0)
    np.testing.assert_array_equal(ours, np.where(ref, 2, 0))
    assert any(n.startswith("post-processing: ") for n in out.notes)


def test_list_order_matters_and_is_kept():
    mask = _noisy_mask()
    results = []
    for ops in (["fill_holes", {"opening": 2}], [{"opening": 2}, "fill_holes"]):
        out = _mask_output(mask)
        apply_ops(out, load_config({**OLD_STYLE, "postprocess": ops}))
        results.append(np.asarray(out.labels.darray.compute()))
    assert not np.array_equal(*results)  # so the order test above can fail


def test_unknown_and_misordered_steps_are_refused():
    with pytest.raises(ConfigError, match="did you mean 'postprocess'"):
        configured_steps(load_config("flood", ["steps=[preprocess, model, postproces]"]))
    with pytest.raises(ConfigError, match="cannot follow"):
        configured_steps(load_config("flood", ["steps=[model, preprocess]"]))
    with pytest.raises(ConfigError, match="exactly one step"):
        configured_steps(load_config("flood", ["steps=[preprocess, postprocess]"]))
    with pytest.raises(ConfigError, match="needs the step 'relabel'"):
        configured_steps(load_config("flood", ["outputs.relabel_to_dataset=true", "steps=[model]"]))
    cfg = load_config("flood", ["outputs.relabel_to_dataset=true"])
    assert [s.name for s in configured_steps(cfg)][-1] == "relabel"


@dataclass(frozen=True)
class _Invert:
    """A test step: swaps water and land, and asks for a wide halo."""

    name: str = "test_invert"
    phase: str = "labels"

    def halo_px(self, cfg) -> int:
        return 999

    def __call__(self, state: PipelineState) -> None:
        lab = state.out.labels
        arr = lab.darray
        inv = da.where(arr == lab.nodata, arr, 1 - arr).astype(arr.dtype)
        state.out.labels = Image.from_array(inv, lab.grid, nodata=lab.nodata)


@pytest.fixture
def invert_step():
    register_step(_Invert())
    yield
    STEPS.pop("test_invert")


def test_a_registered_step_runs_in_order_and_sets_the_halo(invert_step, tmp_path, landsat_path):
    sets = [f"input.path={landsat_path}", "model.method=ndwi_otsu", "model.threshold=0.0",
            "postprocess=[]", "outputs.polygons=false", "outputs.quicklook=false"]  # fmt: skip
    cfg = load_config("flood", [*sets, "steps=[preprocess, model, postprocess, test_invert]"])
    assert default_halo(cfg) == 999
    plain = run_pipeline("flood", output=tmp_path / "a", overrides=sets)
    inverted = run_pipeline(cfg, output=tmp_path / "b")
    with (
        rasterio.open(plain.outputs["labels"]) as a,
        rasterio.open(inverted.outputs["labels"]) as b,
    ):
        la, lb = a.read(1), b.read(1)
        valid = la != a.nodata
    np.testing.assert_array_equal(lb[valid], 1 - la[valid])
    assert 0 < la[valid].mean() < 1
