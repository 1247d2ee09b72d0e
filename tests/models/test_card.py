"""ModelCard: validation, normalisation numbers (vs MONAI / numpy), STAC MLM export."""

from __future__ import annotations

import json

import numpy as np
import pytest
from model_helpers import tiny_card
from pydantic import ValidationError

from geomed_seg.core.grid import GeoGrid, VoxelGrid
from geomed_seg.core.image import Image
from geomed_seg.errors import ModelError
from geomed_seg.models.card import ModelCard


def test_extra_key_rejected():
    with pytest.raises(ValidationError, match="extra"):
        tiny_card(colour_map="viridis")
    data = json.loads(tiny_card().to_json())
    data["roi"] = [1, 2]
    with pytest.raises(ModelError, match=r"my\.json: invalid model card \(roi: unknown key"):
        ModelCard.from_dict(data, source="my.json")


def test_wrong_types_rejected():
    with pytest.raises(ValidationError):
        tiny_card(in_channels="four")
    with pytest.raises(ModelError, match="roi_size"):
        ModelCard.from_dict({**json.loads(tiny_card().to_json()), "roi_size": "big"}, "c.json")
    with pytest.raises(ModelError, match="spatial_dims"):
        ModelCard.from_dict({**json.loads(tiny_card().to_json()), "spatial_dims": 4}, "c.json")


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"band_names": ["a", "b"]}, "band_names has 2"),
        ({"roi_size": [64, 64, 64]}, "roi_size"),
        ({"normalisation": {"type": "meanstd", "mean": [0, 0], "std": [1, 1]}}, "2 means"),
        (
            {"normalisation": {"type": "meanstd", "mean": [0] * 4, "std": [1, 0, 1, 1]}},
            "std must be > 0",
        ),
        ({"normalisation": {"type": "percentile", "low": 99, "high": 1}}, "low"),
        ({"normalisation": {"type": "zscore"}}, "does not match any of the expected tags"),
        ({"classes": [{"index": 1, "name": "a"}, {"index": 1, "name": "b"}]}, "unique"),
        ({"classes": [{"index": 0, "name": "a", "color": [0, 0, 300]}]}, "RGB"),
        ({"nodata_label": 1}, "nodata_label 1 is also a class"),
        ({"overlap": 1.0}, "overlap"),
        ({"mode": "triangle"}, "mode"),
    ],
)
def test_inconsistent_cards_rejected(overrides, message):
    with pytest.raises(ValidationError, match=message):
        tiny_card(**overrides)


def test_json_round_trip(tmp_path):
    card = tiny_card(
        training={"dataset": "S1Floods11", "weak_labels": "Otsu masks", "metrics": {"dice": 0.8}}
    )
    path = tmp_path / "card.json"
    path.write_text(card.to_json())
    assert ModelCard.load(path) == card
    path.write_text("{not json")
    with pytest.raises(ModelError, match="card.json: model card is not valid JSON"):
        ModelCard.load(path)


def test_meanstd_numbers():
    card = tiny_card()
    batch = np.arange(2 * 4 * 3 * 3, dtype=np.uint16).reshape(2, 4, 3, 3)
    out = card.normalise(batch)
    mean = np.array([1, 2, 3, 4], dtype=np.float64)[None, :, None, None]
    std = np.array([2, 4, 8, 16], dtype=np.float64)[None, :, None, None]
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, (batch - mean) / std, rtol=1e-6)
    assert out[0, 1, 0, 0] == pytest.approx((9 - 2) / 4)


def test_percentile_matches_monai():
    from monai.transforms import ScaleIntensityRangePercentiles

    card = tiny_card(normalisation={"type": "percentile", "low": 2, "high": 98})
    rng = np.random.default_rng(0)
    batch = rng.gamma(2.0, 300.0, size=(3, 4, 16, 16)).astype(np.float32)
    batch[1, 2] = 7.0  # constant channel
    ours = card.normalise(batch)
    ref = ScaleIntensityRangePercentiles(2, 98, 0.0, 1.0, clip=True, channel_wise=True)
    for n in range(3):
        np.testing.assert_allclose(ours[n], np.asarray(ref(batch[n])), atol=1e-5)
    assert ours.min() >= 0 and ours.max() <= 1


def test_no_normalisation_is_float32_identity():
    card = tiny_card(normalisation={"type": "none"})
    batch = np.full((1, 4, 2, 2), 300, dtype=np.uint16)
    out = card.normalise(batch)
    assert out.dtype == np.float32 and np.all(out == 300)


def test_normalise_rejects_wrong_band_count():
    with pytest.raises(ValueError, match=r"expects|is not \(N, 4"):
        tiny_card().normalise(np.zeros((1, 3, 8, 8)))


def test_check_image_band_count_and_dims():
    card = tiny_card()
    grid = GeoGrid(None, __import__("affine").Affine.identity(), (8, 8))
    card.check_image(Image.from_array(np.zeros((4, 8, 8)), grid))
    with pytest.raises(
        ModelError, match="scene.tif: input has 6 bands/channels but model 'tiny-unet' expects 4"
    ):
        card.check_image(Image.from_array(np.zeros((6, 8, 8)), grid), "scene.tif")
    named = ["coastal", "blue", "green", "red", "nir", "swir"]
    card.check_image(Image.from_array(np.zeros((6, 8, 8)), grid, channel_names=named))
    with pytest.raises(ModelError, match="expects 4"):
        card.check_image(Image.from_array(np.zeros((6, 8, 8)), grid, channel_names=list("abcdef")))
    vol = Image.from_array(np.zeros((4, 4, 8, 8)), VoxelGrid(np.eye(4), (4, 8, 8)))
    with pytest.raises(ModelError, match="2D but the input is a 3D volume"):
        card.check_image(vol, "brain.nii.gz")


def test_channel_to_label_for_non_contiguous_classes():
    card = tiny_card(
        classes=[{"index": i, "name": n} for i, n in [(0, "bg"), (1, "ncr"), (2, "ed"), (4, "et")]],
        nodata_label=None,
    )
    assert card.channel_to_label().tolist() == [0, 1, 2, 4]
    assert [c.index for c in card.class_infos()] == [0, 1, 2, 4]


def test_stac_mlm_export_fields():
    card = tiny_card(weights_sha256="ab" * 32)
    item = card.to_stac_mlm(
        item_id="flood-v1", bbox=[-35.0, -8.1, -34.8, -7.9], total_parameters=123
    )
    props = item["properties"]
    assert item["type"] == "Feature" and item["id"] == "flood-v1"
    assert any("stac-extensions.github.io/mlm/" in e for e in item["stac_extensions"])
    assert props["mlm:name"] == "tiny-unet"
    assert props["mlm:architecture"] == "smp.Unet"
    assert props["mlm:tasks"] == ["semantic-segmentation"]
    assert props["mlm:framework"] == "pytorch"
    assert props["mlm:framework_version"]
    assert props["mlm:total_parameters"] == 123
    assert "mlm:accelerator" in props
    (inp,) = props["mlm:input"]
    assert inp["bands"] == ["blue", "green", "red", "nir"]
    assert inp["input"]["shape"] == [-1, 4, 64, 64]
    assert inp["input"]["dim_order"] == ["batch", "channel", "height", "width"]
    assert inp["value_scaling"][3] == {"type": "z-score", "mean": 4.0, "stddev": 16.0}
    (out,) = props["mlm:output"]
    assert out["classification:classes"][1] == {"value": 1, "name": "water", "color_hint": "0000FF"}
    assert out["result"]["shape"] == [-1, 2, 64, 64]
    assert "mlm:model" in item["assets"]["weights"]["roles"]
    assert item["bbox"] == [-35.0, -8.1, -34.8, -7.9]
    assert item["geometry"]["coordinates"][0][0] == [-35.0, -8.1]
    json.dumps(item)  # serialisable


def test_stac_3d_dim_order():
    card = tiny_card(
        architecture="monai.BasicUNet",
        architecture_kwargs={},
        spatial_dims=3,
        in_channels=1,
        band_names=None,
        normalisation={"type": "none"},
        spacing=[1, 1, 1],
        spacing_unit="mm",
        roi_size=[32, 32, 32],
    )
    inp = card.to_stac_mlm()["properties"]["mlm:input"][0]
    assert inp["input"]["dim_order"] == ["batch", "channel", "depth", "height", "width"]
    assert inp["value_scaling"] is None


def test_stac_mlm_bands_are_never_invented():
    card = tiny_card(band_names=None)
    item = card.to_stac_mlm()
    assert item["properties"]["mlm:input"][0]["bands"] == []  # MLM: unnamed bands (not channel_i)
    named = card.to_stac_mlm(bands=["B2", "B3", "B4", "B8"], datetime="2024-01-02T00:00:00Z",
                             datetime_source="test")  # fmt: skip
    assert named["properties"]["mlm:input"][0]["bands"] == ["B2", "B3", "B4", "B8"]
    assert named["properties"]["datetime"] == "2024-01-02T00:00:00Z"
    with pytest.raises(ValueError, match="3 band names for in_channels=4"):
        card.to_stac_mlm(bands=["a", "b", "c"])
