"""Our ``sliding_window_inference`` against MONAI 1.6's on the behaviours MONAI's own tests cover.

The parameter sets follow MONAI's tests/inferers/test_sliding_window_inference.py (written
anew here): 1D to 4D inputs, rois with -1/1/larger-than-image entries, huge batches, buffered
runs along every axis, constant padding values, stateful predictors, extra positional and
keyword predictor arguments, ``condition=``, tuple/dict outputs at other scales,
``with_coord``, ``roi_weight_map`` and ``process_fn``. Every case checks the expected values
derived by hand (blending invariance: ``f(x) = x + c`` must come back as ``x + c``) AND the
installed MONAI's output (<= 1e-4).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.inferers import sliding_window_inference as monai_swi

from geomed_seg.errors import InvalidInputError, ModelError
from geomed_seg.inference.sliding import sliding_window_inference as ours


def _close(a, b, tol=1e-4):
    """Assert tensors / tuples / dicts are equal within ``tol`` (same structure)."""
    if isinstance(b, dict):
        assert isinstance(a, dict) and list(a) == list(b)
        for k in b:
            _close(a[k], b[k], tol)
    elif isinstance(b, tuple):
        assert isinstance(a, tuple) and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _close(x, y, tol)
    else:
        assert isinstance(a, torch.Tensor) and a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), atol=tol, rtol=0)


def _net(ndim: int, cin: int = 3, cout: int = 2) -> torch.nn.Module:
    torch.manual_seed(0)
    conv = {1: torch.nn.Conv1d, 2: torch.nn.Conv2d, 3: torch.nn.Conv3d}[ndim]
    return torch.nn.Sequential(conv(cin, 4, 3, padding=1), torch.nn.Tanh(), conv(4, cout, 1)).eval()


# image shape (N, C, *spatial), roi, windows per call, overlap, blend mode
SHAPES = [
    ((2, 3, 17), (5,), 2, 0.25, "constant"),  # 1D
    ((1, 2, 9, 8, 5, 6), 3, 4, 0.25, "constant"),  # 4D, scalar roi
    ((2, 3, 12, 11, 6), (4, -1, 6), 3, 0.25, "constant"),  # -1 takes the image size
    ((3, 3, 12, 11, 6), (4, 9, 6), 3, 0.25, "gaussian"),
    ((1, 3, 12, 11, 6), (15, 14, 13), 9, 0.5, "constant"),  # roi larger than the image
    ((2, 3, 13, 6), (2, 5), 500, 0.25, "constant"),  # all windows in one call
    ((1, 3, 13, 6), (40, 30), 5, 0.5, "gaussian"),
    ((4, 3, 12, 11, 6), (4, 1, 6), 3, 0.25, "constant"),  # roi of 1 along an axis
]


@pytest.mark.parametrize(("shape", "roi", "batch", "overlap", "mode"), SHAPES)
def test_plus_one_comes_back_and_equals_monai(shape, roi, batch, overlap, mode):
    x = torch.arange(int(np.prod(shape)), dtype=torch.float32).reshape(shape) / 100
    got = ours(x, roi, batch, lambda t: t + 1, overlap, mode=mode)
    np.testing.assert_allclose(got.numpy(), x.numpy() + 1, rtol=1e-5, atol=1e-4)
    _close(got, monai_swi(x, roi, batch, lambda t: t + 1, overlap, mode=mode))


@pytest.mark.parametrize(
    ("shape", "roi", "batch", "overlap", "mode"), [SHAPES[0], *SHAPES[2:4], SHAPES[6]]
)  # torch has no 4D convolution: the 4D case runs with the +1 predictor only
def test_real_net_equals_monai(shape, roi, batch, overlap, mode):
    net = _net(len(shape) - 2)
    x = torch.from_numpy(np.random.default_rng(0).random(shape, dtype=np.float32))
    with torch.no_grad():
        _close(
            ours(x, roi, batch, net, overlap, mode=mode),
            monai_swi(x, roi, batch, net, overlap, mode=mode),
        )


# (image shape, roi, overlap, windows per call); dtype/mode vary with the roi/channels as in MONAI
BUFFERED = [
    ((2, 3, 10, 11), (7, 10), 0.8, 5),
    ((2, 3, 10, 11), (15, 12), 0.0, 2),
    ((2, 2, 10, 11), (10, 11), 0.0, 3),
    ((1, 3, 61, 37), (16, 12), 0.4, 5),
    ((2, 2, 64, 45), (64, 12), 0.125, 5),
    ((2, 3, 10, 11, 12), (7, 8, 10), 0.2, 2),
    ((1, 1, 12, 30, 20), (9, 10, 11), (0.4, 0.32, 0.0), 7),
]


@pytest.mark.parametrize("buffer_dim", [-1, 0, 1])
@pytest.mark.parametrize("buffer_steps", [1, 3, 4])
@pytest.mark.parametrize(("shape", "roi", "overlap", "batch"), BUFFERED)
def test_buffered_equals_unbuffered_and_monai(shape, roi, overlap, batch, buffer_steps, buffer_dim):
    dtype = (torch.float32, torch.float64)[roi[0] % 2]
    mode = ("constant", "gaussian")[shape[1] % 2]
    # 8-bit values scaled to [0, 2.55], so that 1e-4 is well above float32 rounding
    x = torch.randint(0, 255, shape, generator=torch.Generator().manual_seed(0)).to(dtype) / 100
    kw = dict(mode=mode, buffer_steps=buffer_steps, buffer_dim=buffer_dim)
    got = ours(x, roi, batch, lambda t: 2 * t, overlap, **kw)
    assert got.dtype == dtype
    np.testing.assert_allclose(got.numpy(), 2 * x.numpy(), rtol=1e-5, atol=1e-5)
    _close(got, monai_swi(x, roi, batch, lambda t: 2 * t, overlap, **kw))
    _close(got, ours(x, roi, batch, lambda t: 2 * t, overlap, mode=mode))


@pytest.mark.parametrize("buffer_dim", [0, -1])
def test_buffered_real_net_equals_monai(buffer_dim):
    net = _net(2)
    x = torch.from_numpy(np.random.default_rng(1).random((2, 3, 37, 29), dtype=np.float32))
    kw = dict(mode="gaussian", buffer_steps=2, buffer_dim=buffer_dim)
    with torch.no_grad():
        _close(ours(x, (12, 10), 3, net, 0.5, **kw), monai_swi(x, (12, 10), 3, net, 0.5, **kw))


def test_buffered_keeps_every_output():
    """MONAI keeps only the first output when buffering; we keep all, equal to unbuffered."""
    x = torch.rand(1, 2, 20, 16)

    def two(t):
        return t + 1, t[:, :1, ::2, ::2] * 3

    got = ours(x, (8, 8), 3, two, 0.5, buffer_steps=2, buffer_dim=0)
    want = ours(x, (8, 8), 3, two, 0.5)
    _close(got, want, 1e-6)
    _close(got[0], monai_swi(x, (8, 8), 3, two, 0.5, buffer_steps=2, buffer_dim=0))


def test_gradient_and_metatensor_survive():
    x = MetaTensor(torch.ones(1, 3, 12, 11, 6), affine=torch.diag(torch.tensor([2.0, 3, 4, 1])))
    x.requires_grad = True
    got = ours(x, (4, 9, 6), 10, lambda t: t + 1)
    ref = monai_swi(x, (4, 9, 6), 10, lambda t: t + 1)
    assert got.requires_grad and type(got) is type(ref) is MetaTensor
    torch.testing.assert_close(got.affine, x.affine)
    got.sum().backward()  # d(sum(x + 1))/dx = 1 everywhere
    np.testing.assert_allclose(x.grad.numpy(), 1.0)
    _close(got.as_tensor(), ref.as_tensor())


class _Counter:
    """A predictor whose output depends on how many calls came before (order matters)."""

    def __init__(self):
        self.calls = 0

    def __call__(self, t):
        self.calls += 1
        return t + self.calls


@pytest.mark.parametrize("mode", ["constant", "gaussian"])
@pytest.mark.parametrize("batch", [1, 4, 10])
def test_call_order_padding_value_and_sigma_equal_monai(mode, batch):
    x = torch.ones(1, 1, 7, 7)
    kw = dict(overlap=0.5, padding_mode="constant", cval=-1.0, mode=mode, sigma_scale=1.0)
    _close(ours(x, (3, 3), batch, _Counter(), **kw), monai_swi(x, (3, 3), batch, _Counter(), **kw))


def test_constant_padding_value_reaches_the_predictor():
    # a 3x3 image of ones padded to 5x5 with -1: every window sums to 9 - 16 = -7
    x = torch.ones(1, 1, 3, 3)
    got = ours(x, (5, 5), 10, lambda t: t + t.sum(), overlap=0.5, cval=-1.0)
    np.testing.assert_allclose(got.numpy(), -6.0)
    _close(got, monai_swi(x, (5, 5), 10, lambda t: t + t.sum(), overlap=0.5, cval=-1.0))


def test_positional_and_keyword_arguments_reach_the_predictor():
    x, t1, t2 = torch.ones(1, 1, 3, 3), torch.ones(1), 2 * torch.ones(1)

    def add(data, a, b):
        return data + a + b

    # overlap .. device, then progress, roi_weight_map, process_fn, buffer_steps/dim, with_coord
    positional = (0.5, "constant", 1.0, "constant", 0.0, "cpu", "cpu")
    positional += (False, None, None, None, 0, False)
    got = ours(x, (5, 5), 10, add, *positional, t1, b=t2)
    np.testing.assert_allclose(got.numpy(), 4.0)
    _close(got, monai_swi(x, (5, 5), 10, add, *positional, t1, b=t2))


def test_condition_is_padded_and_windowed_like_the_input():
    x = torch.rand(2, 2, 9, 13)
    cond = torch.rand(2, 2, 9, 13)

    def add(data, condition):
        assert condition.shape == data.shape
        return data * condition

    kw = dict(overlap=0.25, mode="gaussian", padding_mode="reflect", condition=cond)
    got = ours(x, (12, 8), 3, add, **kw)
    np.testing.assert_allclose(got.numpy(), (x * cond).numpy(), rtol=1e-5, atol=1e-6)
    _close(got, monai_swi(x, (12, 8), 3, add, **kw))


def _heads(t):
    return t + 1, t[:, ::3, ::2, ::2] + 2, t[:, ::2, ::4, ::4] + 3


def test_tuple_and_dict_outputs_at_other_scales():
    x = torch.ones(1, 6, 20, 20)
    want = (np.full((1, 6, 20, 20), 2.0), np.full((1, 2, 10, 10), 3.0), np.full((1, 3, 5, 5), 4.0))
    got = ours(x, (8, 8), 10, _heads, 0.5)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g.numpy(), w)
    _close(got, monai_swi(x, (8, 8), 10, _heads, 0.5))

    def as_dict(t):
        full, half, quarter = _heads(t)
        return {"seg_x4": quarter, "seg": full, "seg_x2": half}

    got = ours(x, (8, 8), 10, as_dict, 0.5)
    assert list(got) == ["seg", "seg_x2", "seg_x4"]  # sorted keys, as MONAI
    _close(got, monai_swi(x, (8, 8), 10, as_dict, 0.5))


def test_two_head_real_net_gaussian_with_padding_equals_monai():
    torch.manual_seed(0)
    body = _net(2, 2, 3)
    pool = torch.nn.AvgPool2d(2)

    def net(t):
        y = body(t)
        return [y, pool(y)]

    x = torch.rand(2, 2, 12, 40)  # padded to the 16-high roi along y
    with torch.no_grad():
        got = ours(x, (16, 16), 4, net, 0.5, mode="gaussian")
        ref = monai_swi(x, (16, 16), 4, net, 0.5, mode="gaussian")
    assert got[1].shape == (2, 3, 6, 20)
    _close(got, ref)


def test_scaled_output_first_is_blended_on_its_own_grid():
    """MONAI fails when a scaled output comes before a full-size one; each output gets its own weight."""
    x = torch.rand(1, 1, 20, 24)
    got = ours(x, (8, 8), 3, lambda t: (t[..., ::2, ::2] * 2, t * 3), 0.5, mode="gaussian")
    np.testing.assert_allclose(got[0].numpy(), 2 * x[..., ::2, ::2].numpy(), rtol=1e-5)
    np.testing.assert_allclose(got[1].numpy(), 3 * x.numpy(), rtol=1e-5)


def test_half_scale_output_equals_monai():
    x = torch.rand(1, 1, 20, 20)
    half = ours(x, 8, 1, lambda t: t[..., :4, :4])  # a legitimate half-scale output
    assert half.shape == (1, 1, 10, 10)
    _close(half, monai_swi(x, 8, 1, lambda t: t[..., :4, :4]))


def test_unaligned_scaled_windows_are_named_in_a_warning(caplog):
    x = torch.rand(1, 1, 21, 21)
    ours(x, (8, 8), 4, lambda t: t[..., ::2, ::2], 0.25)
    assert "floored" in caplog.text and "output 0" in caplog.text


def test_with_coord_gives_the_window_coordinates_monai_gives():
    seen_ours, seen_monai = [], []

    def where(seen):
        def predictor(t, coords):
            seen.append([[(s.start, s.stop) for s in c[2:]] + [c[0].start] for c in coords])
            # each window says where it starts: y0 + x0 / 100
            starts = torch.tensor([c[2].start + c[3].start / 100 for c in coords])
            return t * 0 + starts[:, None, None, None]

        return predictor

    x = torch.rand(2, 1, 10, 13)
    got = ours(x, (6, 6), 3, where(seen_ours), 0.5, with_coord=True, padding_mode="replicate")
    ref = monai_swi(x, (6, 6), 3, where(seen_monai), 0.5, with_coord=True, padding_mode="replicate")
    assert seen_ours == seen_monai and len(seen_ours) == 8  # 2 images x 12 windows / 3
    _close(got, ref)


def test_roi_weight_map_replaces_the_blend_weight():
    rng = np.random.default_rng(4)
    weight = torch.from_numpy(rng.uniform(0.1, 1.0, (9, 7)).astype(np.float32))
    net = _net(2)
    x = torch.from_numpy(rng.random((1, 3, 30, 20), dtype=np.float32))
    with torch.no_grad():
        got = ours(x, (9, 7), 4, net, 0.5, roi_weight_map=weight)
        _close(got, monai_swi(x, (9, 7), 4, net, 0.5, roi_weight_map=weight))
        _close(ours(x, (9, 7), 4, net, 0.5, roi_weight_map=weight[None, None]), got)
        plain = ours(x, (9, 7), 4, net, 0.5)
    assert (got - plain).abs().max() > 1e-3  # the weight really changed the blend


def test_weights_that_leave_samples_unweighted_are_refused():
    x = torch.rand(1, 1, 16, 16)
    weight = torch.ones(8, 8)
    weight[:, :2] = 0  # the first columns of the image are covered by no other window
    with pytest.raises(InvalidInputError, match="weight of 0"):
        ours(x, (8, 8), 2, lambda t: t, 0.25, roi_weight_map=weight)
    with pytest.raises(InvalidInputError, match="negative"):
        ours(x, (8, 8), 2, lambda t: t, 0.25, roi_weight_map=-weight)
    with pytest.raises(InvalidInputError, match="roi_weight_map shape"):
        ours(x, (8, 8), 2, lambda t: t, 0.25, roi_weight_map=torch.ones(8, 7))


def test_process_fn_sees_outputs_windows_and_weight_like_monai():
    def squash(outputs, windows, weight):
        assert weight.shape == (10, 10) and windows.shape[1:] == (3, 10, 10)
        return tuple(torch.sigmoid(o) for o in outputs), weight * 0.5 + 0.1

    net = _net(2)
    x = torch.rand(2, 3, 25, 31)
    with torch.no_grad():
        got = ours(x, (10, 10), 3, net, 0.3, mode="gaussian", process_fn=squash)
        ref = monai_swi(x, (10, 10), 3, net, 0.3, mode="gaussian", process_fn=squash)
    _close(got, ref)
    assert float(got.min()) > 0 and float(got.max()) < 1


def test_process_fn_weights_that_change_per_batch_give_a_weighted_mean():
    """Brute-force weighted mean as the reference (MONAI normalises by the first batch's weight)."""
    x = torch.rand(1, 1, 11, 14)
    calls = []

    def vary(outputs, windows, weight):
        calls.append(len(calls) + 1)
        return outputs, torch.full_like(weight, float(len(calls)))  # call k weighs k

    def value(t):  # window-dependent prediction: the window's mean everywhere
        return t.mean(dim=(2, 3), keepdim=True).expand_as(t).clone()

    got = ours(x, (6, 6), 2, value, 0.5, process_fn=vary).numpy()[0, 0]
    total, count = np.zeros((11, 14)), np.zeros((11, 14))
    ys, xs = (0, 3, 5), (0, 3, 6, 8)
    for k, (y, xx) in enumerate([(y, xx) for y in ys for xx in xs]):
        w = k // 2 + 1  # batches of 2 windows, MONAI's window order
        patch = x[0, 0, y : y + 6, xx : xx + 6].numpy()
        total[y : y + 6, xx : xx + 6] += w * patch.mean()
        count[y : y + 6, xx : xx + 6] += w
    np.testing.assert_allclose(got, total / count, rtol=1e-5)


def test_roi_rank_must_match_the_input():
    with pytest.raises(InvalidInputError, match="inputs must have 5 dimensions"):
        ours(torch.rand(1, 16, 16, 16), (8, 8, 8), 2, lambda t: t)
    with pytest.raises(ValueError, match="inputs must have 5 dimensions"):
        ours(torch.rand(16, 16, 16), (8, 8, 8), 2, lambda t: t)


@pytest.mark.parametrize(
    ("predictor", "words"),
    [
        (lambda t: None, "NoneType"),
        (lambda t: (t, "seg"), r"item\(s\) \[1\]"),
        (lambda t: t[:, :, 0], "expected"),  # a spatial axis dropped
        (lambda t: t[:1], "expected"),  # one result for several windows
    ],
)
def test_outputs_that_cannot_be_blended_are_refused(predictor, words):
    with pytest.raises(ModelError, match=words):
        ours(torch.rand(1, 1, 16, 16), (8, 8), 2, predictor)


def test_integer_input_is_blended_in_float():
    x = torch.arange(2 * 9 * 10).reshape(1, 2, 9, 10)
    got = ours(x, (4, 4), 3, lambda t: t * 2, 0.5, mode="gaussian")
    assert got.dtype == torch.get_default_dtype()
    np.testing.assert_allclose(got.numpy(), 2 * x.numpy(), rtol=1e-5)
