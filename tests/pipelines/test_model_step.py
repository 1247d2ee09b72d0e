"""Checkpoint pipelines against MONAI's sliding_window_inference, SAR and preprocessing
steps against rasterio / NumPy / SimpleITK."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine

from geomed_seg.core.grid import GeoGrid
from geomed_seg.core.image import Image
from geomed_seg.errors import ConfigError, ModelError
from geomed_seg.models.card import ModelCard
from geomed_seg.models.checkpoint import load_checkpoint, save_checkpoint
from geomed_seg.models.registry import build_model
from geomed_seg.pipelines import load_config, run_pipeline
from geomed_seg.pipelines.inputs import reproject, respace

CARD = dict(
    name="tiny-water",
    architecture="smp.Unet",
    architecture_kwargs={
        "encoder_name": "resnet18",
        "encoder_depth": 3,
        "decoder_channels": [32, 16, 8],
    },  # fmt: skip
    spatial_dims=2,
    in_channels=4,
    band_names=["blue", "green", "red", "nir"],
    normalisation={"type": "meanstd", "mean": [60, 50, 40, 50], "std": [20, 20, 20, 30]},
    classes=[{"index": 0, "name": "land"}, {"index": 1, "name": "water"}],
    roi_size=[64, 64],
    overlap=0.25,
    mode="gaussian",
)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    card = ModelCard(**CARD)
    module = build_model("smp.Unet", 4, 2, **CARD["architecture_kwargs"]).eval()
    path = tmp_path_factory.mktemp("ckpt") / "water"
    save_checkpoint(module, card, path)
    return path


def _crop(landsat_path, tmp_path, size=112):
    """A small crop of the bundled scene (keeps the test fast on 2 shared cores)."""
    from rasterio.windows import Window

    with rasterio.open(landsat_path) as src:
        win = Window(200, 150, size, size)
        profile = {**src.profile, "width": size, "height": size,
                   "transform": src.window_transform(win)}  # fmt: skip
        data = src.read(window=win)
    path = tmp_path / "crop.tif"
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def test_checkpoint_pipeline_matches_monai(checkpoint, landsat_path, tmp_path):
    from monai.inferers import sliding_window_inference

    torch.set_num_threads(1)
    landsat_path = _crop(landsat_path, tmp_path)
    sets = [f"input.path={landsat_path}", "model.method=checkpoint",
            f"model.checkpoint={checkpoint}", "engine.roi_size=[64, 64]", "engine.tta=false",
            "engine.amp=false", "engine.device=cpu", "outputs.polygons=false",
            "outputs.quicklook=false", "postprocess.min_object_size=null"]  # fmt: skip
    run = run_pipeline("flood", output=tmp_path / "out", overrides=sets)
    with rasterio.open(landsat_path) as ds:
        x = ds.read([1, 2, 3, 4]).astype(np.float32)
    mean = np.array([60, 50, 40, 50], np.float32)[:, None, None]
    std = np.array([20, 20, 20, 30], np.float32)[:, None, None]
    xt = torch.from_numpy(((x - mean) / std)[None])
    module = load_checkpoint(checkpoint).module
    with torch.no_grad():
        ref = sliding_window_inference(xt, (64, 64), 4, module, overlap=0.25, mode="gaussian")
    ref_lab = ref[0].argmax(0).numpy()
    with rasterio.open(tmp_path / "out" / "labels.tif") as lab:
        ours = lab.read(1)
    assert (ours != ref_lab).mean() < 1e-3
    assert run.report["method"] == "checkpoint:tiny-water"
    assert run.report["engine"]["windows_run"] > 0
    # probabilities (Zarr) requested: they sum to 1 and their argmax gives the same labels
    from geomed_seg.io.registry import open_image

    run2 = run_pipeline("flood", output=tmp_path / "p", overrides=[*sets,
                        "outputs.probabilities=zarr"])  # fmt: skip
    probs = open_image(run2.outputs["probabilities"]).compute()
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-4)
    np.testing.assert_array_equal(probs.argmax(0), ours)


def test_missing_checkpoint_falls_back_or_fails(landsat_path, tmp_path):
    sets = [f"input.path={landsat_path}", "model.method=checkpoint",
            f"model.checkpoint={tmp_path / 'none'}", "outputs.polygons=false",
            "outputs.quicklook=false"]  # fmt: skip
    run = run_pipeline("flood", output=tmp_path / "a", overrides=sets)
    assert run.report["method"] == "ndwi_otsu" and "not found" in run.report["notes"][0]
    with pytest.raises(ModelError, match="checkpoint not found"):
        run_pipeline("flood", output=tmp_path / "b", overrides=[*sets, "model.fallback=none"])


def _s1(tmp_path, rng):
    """Linear sigma0 VV/VH: water (low backscatter) on the left third."""
    vv = rng.gamma(4, 0.1 / 4, (60, 90)).astype(np.float32)
    vv[:, :30] = rng.gamma(4, 0.004 / 4, (60, 30))
    vh = vv / 5
    path = tmp_path / "s1.tif"
    with rasterio.open(path, "w", driver="GTiff", width=90, height=60, count=2,
                       dtype="float32", crs="EPSG:32633",
                       transform=Affine(10, 0, 500000, 0, -10, 4000000)) as ds:  # fmt: skip
        ds.write(np.stack([vv, vh]))
    return path, vv


def test_sar_pipeline_matches_numpy_otsu(tmp_path):
    from skimage.filters import threshold_otsu

    path, vv = _s1(tmp_path, np.random.default_rng(0))
    sets = [f"input.path={path}", "postprocess.min_object_size=null",
            "postprocess.fill_holes=false"]  # fmt: skip
    run = run_pipeline("flood-sar", output=tmp_path / "out", overrides=sets)
    db = 10 * np.log10(vv)
    t_ref = threshold_otsu(db, nbins=1024)
    assert abs(run.report["threshold"] - t_ref) < 2 * (db.max() - db.min()) / 1024
    with rasterio.open(tmp_path / "out" / "labels.tif") as lab:
        water = lab.read(1) == 1
    assert (water != (db < t_ref)).mean() < 1e-3
    assert water[:, :30].mean() > 0.99 and water[:, 30:].mean() < 0.01


def test_reproject_matches_rasterio_warp(landsat_path):
    from rasterio.vrt import WarpedVRT

    from geomed_seg.io.registry import open_image

    img = open_image(landsat_path)
    out = reproject(img, "EPSG:4326", None, "nearest")
    with rasterio.open(landsat_path) as src, WarpedVRT(src, crs="EPSG:4326",
                                                        resampling=0) as vrt:  # fmt: skip
        assert out.grid.shape == (vrt.height, vrt.width)
        assert out.grid.transform.almost_equals(vrt.transform, precision=1e-9)
        ref = vrt.read(2).astype(np.float32)
    ours = out.compute()[1]
    inside = np.isfinite(ours) & (ref > 0)
    assert inside.mean() > 0.5
    assert (ours[inside] == ref[inside]).mean() > 0.99


def test_respace_matches_simpleitk():
    import SimpleITK as sitk

    from geomed_seg.core.grid import VoxelGrid

    rng = np.random.default_rng(0)
    arr = rng.random((10, 12, 14)).astype(np.float32)
    grid = VoxelGrid(np.diag([1.0, 1.5, 2.0, 1.0]), arr.shape)
    img = Image.from_array(arr, grid)
    out = respace(img, [2.0, 1.5, 1.0])
    assert out.grid.spacing == pytest.approx((2.0, 1.5, 1.0))
    src = sitk.GetImageFromArray(arr)
    origin, spacing, direction = grid.to_itk()
    src.SetOrigin(origin), src.SetSpacing(spacing), src.SetDirection(direction)
    ref = sitk.GetArrayFromImage(sitk.Resample(src, [7, 12, 20], sitk.Transform(),
                                               sitk.sitkLinear, origin, [2.0, 1.5, 1.0],
                                               direction, 0.0, sitk.sitkFloat32))  # fmt: skip
    np.testing.assert_allclose(out.compute()[0], ref, atol=1e-6)


def test_select_and_rescale_from_sensor_card(tmp_path):
    from geomed_seg.pipelines.cards import load_sensor_card
    from geomed_seg.pipelines.inputs import rescale, select_bands

    a = np.arange(2 * 4 * 5, dtype=np.uint16).reshape(2, 4, 5) + 7000
    img = Image.from_array(a, GeoGrid(None, Affine.identity(), (4, 5)),
                           channel_names=["green", "nir"])  # fmt: skip
    card = load_sensor_card("landsat89_oli")
    out = rescale(select_bands(img, ["nir"]), card)
    np.testing.assert_allclose(out.compute()[0], a[1] * 0.0000275 - 0.2, rtol=1e-6)
    with pytest.raises(ConfigError, match="swir1"):
        select_bands(img, ["swir1"])


def test_brats_inputs_found_by_glob(tmp_path):
    cfg = load_config("brats")
    from geomed_seg.errors import InvalidInputError
    from geomed_seg.pipelines.inputs import find_sequences

    (tmp_path / "x-t1n.nii.gz").write_bytes(b"")
    with pytest.raises(InvalidInputError, match="no file match t1c"):
        find_sequences(tmp_path, cfg.input.sequences)


def test_one_channel_model_labels_agree_on_every_path(landsat_path, tmp_path):
    """A sigmoid (one-channel) model: labels the pipeline derives from its probabilities
    equal the engine's own labels and MONAI's ``sigmoid > 0.5`` (the pipeline took an argmax
    over one channel before, labelling every pixel water)."""
    from monai.inferers import sliding_window_inference

    torch.set_num_threads(1)
    crop = _crop(landsat_path, tmp_path, size=96)
    torch.manual_seed(1)
    card = ModelCard(**{**CARD, "classes": [{"index": 1, "name": "water"}], "nodata_label": 200})
    module = build_model("smp.Unet", 4, 1, **CARD["architecture_kwargs"]).eval()
    with rasterio.open(crop) as ds:
        x = ds.read([1, 2, 3, 4]).astype(np.float32)
    mean = np.array([60, 50, 40, 50], np.float32)[:, None, None]
    std = np.array([20, 20, 20, 30], np.float32)[:, None, None]
    xt = torch.from_numpy(((x - mean) / std)[None])
    with torch.no_grad():  # centre the logits so that both labels occur
        module.segmentation_head[0].bias -= module(xt).median()
    ckpt = tmp_path / "sigmoid"
    save_checkpoint(module, card, ckpt)
    sets = [f"input.path={crop}", "model.method=checkpoint", f"model.checkpoint={ckpt}",
            "engine.roi_size=[64, 64]", "engine.tta=false", "engine.amp=false",
            "engine.device=cpu", "outputs.polygons=false", "outputs.quicklook=false",
            "outputs.report=false", "postprocess.min_object_size=null",
            "postprocess.fill_holes=false"]  # fmt: skip
    labels = {}
    for name, extra in (("engine", []), ("probabilities", ["outputs.probabilities=zarr"])):
        run = run_pipeline("flood", output=tmp_path / name, overrides=[*sets, *extra])
        with rasterio.open(run.outputs["labels"]) as lab:
            labels[name] = lab.read(1)
    with torch.no_grad():
        prob = sliding_window_inference(xt, (64, 64), 4,
                                        lambda t: torch.sigmoid(module(t)), overlap=0.25,
                                        mode="gaussian")[0, 0].numpy()  # fmt: skip
    ref = np.where(prob > 0.5, 1, 0)
    assert 0.05 < (ref == 1).mean() < 0.95  # both labels occur
    near = np.abs(prob - 0.5) < 1e-4  # float noise may flip pixels right at the threshold
    for got in labels.values():
        assert (got != ref)[~near].sum() == 0
    np.testing.assert_array_equal(labels["probabilities"], labels["engine"])
