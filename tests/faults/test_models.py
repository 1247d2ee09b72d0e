"""Model outputs the engine cannot blend: a clear ModelError, never a raw AttributeError.

The streaming engine blends one tensor per window; the in-memory ``sliding_window_inference``
(a MONAI drop-in) blends tuple/dict outputs too, and refuses what is not tensors.
"""

from __future__ import annotations

import pytest
import torch

from geomed_seg.errors import GeomedSegError, ModelError
from geomed_seg.inference.engine import one_tensor
from geomed_seg.inference.sliding import sliding_window_inference


@pytest.mark.parametrize(
    "predictor,words",
    [
        (lambda x: (x, x), "tuple of 2"),
        (lambda x: {"seg": x, "aux": x}, "keys ['aux', 'seg']"),
        (lambda x: [x], "list of 1"),
    ],
)
def test_tuple_dict_outputs_are_refused_clearly_by_the_engine(predictor, words):
    x = torch.rand(1, 1, 16, 16)
    with pytest.raises(ModelError, match="not one tensor") as err:
        one_tensor(predictor(x))
    assert words in str(err.value) and isinstance(err.value, GeomedSegError)


@pytest.mark.parametrize("predictor", [lambda x: (x, None), lambda x: {"seg": "x"}, lambda x: 3])
def test_non_tensor_outputs_are_refused_by_sliding_window_inference(predictor):
    with pytest.raises(ModelError, match="tensor"):
        sliding_window_inference(torch.rand(1, 1, 16, 16), (8, 8), 2, predictor)


def test_tensor_output_still_matches_monai():
    monai = pytest.importorskip("monai.inferers")
    x = torch.rand(1, 2, 20, 18)
    ours = sliding_window_inference(x, (8, 8), 3, lambda t: 2 * t, overlap=0.25)
    ref = monai.sliding_window_inference(x, (8, 8), 3, lambda t: 2 * t, overlap=0.25)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)
