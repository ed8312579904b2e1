"""`GatheredConv` (`engine.affine`): the convolution computed by gathered windows, which the
attribution rules and the reverse pass of BBp use (docs/math.md §8). Its forward is held to
ONNX's reference implementation, its vector-Jacobian product to the transpose of the dense
matrix that the reference forward gives column by column, for every geometry and for every
way of slicing the work (`COLUMN_ELEMENTS`, `MIN_POSITIONS`)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

import bbp_ref
from bbp_ref.engine import affine
from bbp_ref.engine.affine import Conv, GatheredConv
from bbp_ref.engine.windows import Window

# (input spatial, channels, output channels, kernel, strides, dilations, pads begin, pads
# end, groups)
CASES = {
    "3x3 same": ((9, 8), 3, 4, (3, 3), (1, 1), (1, 1), (1, 1), (1, 1), 1),
    "strided, dilated, uneven pads, 2 groups": (
        (11, 10), 4, 6, (3, 2), (2, 3), (1, 2), (0, 1), (2, 0), 2),
    "depthwise": ((7, 7), 3, 6, (3, 3), (1, 1), (2, 2), (2, 2), (2, 2), 3),
    "1-D": ((12,), 2, 3, (4,), (2,), (1,), (1,), (2,), 1),
    "3-D": ((5, 4, 6), 2, 2, (2, 3, 2), (1, 2, 1), (1, 1, 2), (1, 0, 1), (0, 1, 1), 1),
    "1x1": ((6, 5), 4, 3, (1, 1), (1, 1), (1, 1), (0, 0), (0, 0), 1),
    "1x1 strided, 2 groups": ((7, 6), 4, 6, (1, 1), (2, 3), (1, 1), (0, 0), (0, 0), 2),
    "1x1 1-D strided": ((9,), 3, 5, (1,), (2,), (1,), (0,), (0,), 1),
    "1x1 padded": ((5, 4), 3, 2, (1, 1), (1, 1), (1, 1), (1, 0), (0, 2), 1),
}
# Output positions per slice: the default; one output row per slice; a few (slices of rows,
# or of several examples, ending mid-example or mid-row-block).
SLICINGS = [None, 1, 7]


def _geometry(case):
    spatial, channels, out_channels, kernel, strides, dilations, begin, end, groups = case
    window = Window(spatial, kernel, strides, dilations, begin, end)
    rng = np.random.default_rng(len(spatial) * 100 + channels)
    weight = rng.normal(size=(out_channels, channels // groups, *kernel))
    return window, weight, groups, channels


def _slice_by(monkeypatch, positions):
    """Slices of ``positions`` output positions (at least one row)."""
    monkeypatch.setattr(affine, "COLUMN_ELEMENTS", 1)
    monkeypatch.setattr(affine, "MIN_POSITIONS", positions)


def _onnx_conv(window, weight, groups, x):
    """ONNX's reference Conv in float64, independent of the engine."""
    node = helper.make_node("Conv", ["x", "w"], ["y"], strides=list(window.strides),
                            dilations=list(window.dilations), group=groups,
                            pads=list(window.pads_begin) + list(window.pads_end))
    graph = helper.make_graph(
        [node], "conv", [helper.make_tensor_value_info("x", TensorProto.DOUBLE, None),
                         helper.make_tensor_value_info("w", TensorProto.DOUBLE, None)],
        [helper.make_tensor_value_info("y", TensorProto.DOUBLE, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return ReferenceEvaluator(model).run(None, {"x": x, "w": weight})[0]


@pytest.mark.parametrize("slicing", SLICINGS)
@pytest.mark.parametrize("name", list(CASES))
def test_gathered_forward_equals_onnx_reference(name, slicing, monkeypatch):
    window, weight, groups, channels = _geometry(CASES[name])
    if slicing is not None:
        _slice_by(monkeypatch, slicing)
    x = np.random.default_rng(1).normal(size=(3, channels, *window.in_spatial))
    out = GatheredConv(weight, None, window, groups, channels).linear([x])
    np.testing.assert_allclose(out, _onnx_conv(window, weight, groups, x), rtol=1e-12,
                               atol=1e-12)


@pytest.mark.parametrize("slicing", SLICINGS)
@pytest.mark.parametrize("name", list(CASES))
def test_gathered_vjp_is_the_transpose_of_the_reference_matrix(name, slicing, monkeypatch):
    window, weight, groups, channels = _geometry(CASES[name])
    if slicing is not None:
        _slice_by(monkeypatch, slicing)
    in_shape = (channels, *window.in_spatial)
    size = int(np.prod(in_shape))
    # the dense matrix of the reference forward, one unit input per column
    columns = _onnx_conv(window, weight, groups, np.eye(size).reshape(size, *in_shape))
    dense = columns.reshape(size, -1).T  # [outputs, inputs]
    grad = np.random.default_rng(2).normal(size=(2, *columns.shape[1:]))
    (back,) = GatheredConv(weight, None, window, groups, channels).vjp(grad)
    expected = grad.reshape(2, -1) @ dense
    np.testing.assert_allclose(back.reshape(2, -1), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("slicing", SLICINGS)
@pytest.mark.parametrize("name", list(CASES))
def test_several_kernels_at_once_equal_the_reference(name, slicing, monkeypatch):
    """`linear_many` (the windows gathered once for several kernels) gives each kernel's
    convolution, and `vjp_sum` the sum of their transposes, against onnx.reference."""
    window, weight, groups, channels = _geometry(CASES[name])
    if slicing is not None:
        _slice_by(monkeypatch, slicing)
    rng = np.random.default_rng(4)
    weights = [weight, np.abs(rng.normal(size=weight.shape))]
    convs = [GatheredConv(w, None, window, groups, channels) for w in weights]
    x = rng.normal(size=(3, channels, *window.in_spatial))
    for out, w in zip(convs[0].linear_many(convs, [x]), weights):
        np.testing.assert_allclose(out, _onnx_conv(window, w, groups, x), rtol=1e-12,
                                   atol=1e-12)
    in_shape = (channels, *window.in_spatial)
    size = int(np.prod(in_shape))
    eye = np.eye(size).reshape(size, *in_shape)
    dense = [_onnx_conv(window, w, groups, eye).reshape(size, -1).T for w in weights]
    grads = [rng.normal(size=(3, *_onnx_conv(window, weight, groups, x).shape[1:]))
             for _ in weights]
    (back,) = convs[0].vjp_sum(convs, grads)
    expected = sum(g.reshape(3, -1) @ d for g, d in zip(grads, dense))
    np.testing.assert_allclose(back.reshape(3, -1), expected, rtol=1e-12, atol=1e-12)


def test_gathered_and_per_offset_convolutions_agree_to_rounding():
    """The two summation orders give the same numbers up to rounding, on a batch."""
    window, weight, groups, channels = _geometry(CASES["strided, dilated, uneven pads, 2 groups"])
    rng = np.random.default_rng(3)
    x = rng.normal(size=(4, channels, *window.in_spatial))
    per_offset = Conv(weight, None, window, groups, channels)
    gathered = per_offset.gathered()
    assert type(gathered) is GatheredConv
    np.testing.assert_allclose(gathered.linear([x]), per_offset.linear([x]), rtol=1e-13,
                               atol=1e-13)
    grad = rng.normal(size=per_offset.linear([x]).shape)
    np.testing.assert_allclose(gathered.vjp(grad)[0], per_offset.vjp(grad)[0], rtol=1e-13,
                               atol=1e-13)


def test_explanations_do_not_depend_on_the_slicing(monkeypatch):
    """A whole explanation (rules and reverse pass through `GatheredConv`) with one output
    row per slice equals the default one up to rounding."""
    from architectures import ARCHITECTURES

    rng = np.random.default_rng(0)
    proto, shape = ARCHITECTURES["conv_variants"](rng)
    x = rng.normal(size=(3, *shape)).astype(np.float32)
    whole = bbp_ref.explain(proto, x, rule="signed", check=False)
    _slice_by(monkeypatch, 1)
    sliced = bbp_ref.explain(proto, x, target=whole.target, rule="signed", check=False)
    assert sliced.checks.passed
    np.testing.assert_allclose(sliced.gradient, whole.gradient, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(sliced.bias_attribution, whole.bias_attribution, rtol=1e-12,
                               atol=1e-15)
