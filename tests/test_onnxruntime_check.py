"""The onnxruntime cross-checks: the explained output, and `first_divergence`, which
names the first canonical node whose tensor disagrees with onnxruntime."""

from dataclasses import replace

import numpy as np
import onnx
import pytest
from architectures import cnn, residual
from builders import model, node, run_onnxruntime

import bbp_ref
from bbp_ref.checks.onnxruntime_check import ShapeMismatch, compare
from bbp_ref.engine.affine import Conv


def _model_and_input(build, seed=0):
    rng = np.random.default_rng(seed)
    proto, shape = build(rng)
    return bbp_ref.load(proto), rng.normal(size=(2, *shape)).astype(np.float32)


def test_all_intermediate_tensors_agree_on_a_correct_import():
    model, x = _model_and_input(residual)
    first, comparisons = bbp_ref.first_divergence(model, x)
    assert first is None
    assert len(comparisons) == len(model.graph) - 1
    assert all(c.ok and c.max_abs_diff < 1e-5 for c in comparisons)


def test_first_divergence_names_the_node_that_is_wrong():
    model, x = _model_and_input(cnn)
    graph = model.graph_for(x.shape[1:])
    conv2 = graph["conv2"]
    wrong = Conv(conv2.operator.weight * 1.01, conv2.operator.bias, conv2.operator.window,
                 conv2.operator.groups, conv2.operator.in_channels)
    graph.nodes["conv2"] = replace(conv2, operator=wrong)
    first, comparisons = bbp_ref.first_divergence(model, x)
    assert first is not None and first.tensor.startswith("conv2 (Conv)")
    names = [c.tensor.split(" ")[0] for c in comparisons]
    assert all(c.ok for c in comparisons[: names.index("conv2")])


def test_explain_reports_an_onnxruntime_mismatch():
    model, x = _model_and_input(cnn)
    graph = model.graph_for(x.shape[1:])
    fc = graph["fc"]
    graph.nodes["fc"] = replace(fc, operator=type(fc.operator)(
        fc.operator.weight, fc.operator.bias + 0.5, fc.operator.operand_shape))
    e = bbp_ref.explain(model, x)
    assert e.checks.onnxruntime is not None and not e.checks.onnxruntime.ok
    assert not e.checks.passed
    assert abs(e.checks.onnxruntime.max_abs_diff - 0.5) < 1e-5
    assert np.max(e.checks.decomposition) <= 1e-10  # the engine is self-consistent


def test_arrays_of_different_sizes_are_a_shape_mismatch_naming_both_shapes():
    with pytest.raises(ShapeMismatch, match=r"'y' has shape \[2, 4\], the engine's \[2, 3\]"):
        compare("y", np.zeros((2, 3)), np.zeros((2, 4)))
    assert issubclass(ShapeMismatch, bbp_ref.errors.BBpError)
    assert not issubclass(ShapeMismatch, ValueError)


def _dilated_same_max_pool(auto_pad: str, stride: int) -> onnx.ModelProto:
    """MaxPool at opset 10, kernel 3, dilation 2 (an effective window of 5) on 8x8."""
    return model([node("MaxPool", ["x"], "y", kernel_shape=[3, 3], strides=[stride, stride],
                       dilations=[2, 2], auto_pad=auto_pad)], ["N", 1, 8, 8], opset=10)


def _max_pool_by_hand(x: np.ndarray, auto_pad: str, stride: int) -> np.ndarray:
    """The ONNX spec's SAME padding: ``ceil(8 / stride)`` outputs, total padding
    `(out - 1) stride + (3 - 1) 2 + 1 - 8`, its odd element at the end (SAME_UPPER) or the
    beginning (SAME_LOWER); the max over the in-bounds elements of each dilated window."""
    size, out = x.shape[-1], -(-x.shape[-1] // stride)
    total = (out - 1) * stride + 5 - size
    begin = total - total // 2 if auto_pad == "SAME_LOWER" else total // 2
    y = np.full((*x.shape[:2], out, out), -np.inf)
    for i, j, a, b in np.ndindex(out, out, 3, 3):
        row, column = i * stride - begin + 2 * a, j * stride - begin + 2 * b
        if 0 <= row < size and 0 <= column < size:
            y[..., i, j] = np.maximum(y[..., i, j], x[..., row, column])
    return y


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER"])
def test_dilated_same_max_pool_against_the_spec_and_onnxruntime(auto_pad, stride):
    """The engine's output shape and values are the spec's (by hand, and the shape ONNX
    shape inference declares); onnxruntime computes fewer outputs for a dilated SAME pool
    (onnxruntime 1.23: [2, 1, 6, 6] for [2, 1, 8, 8] at stride 1), which the check reports
    as a mismatch naming both shapes, not as an exception."""
    proto = _dilated_same_max_pool(auto_pad, stride)
    x = np.random.default_rng(3).normal(size=(2, 1, 8, 8)).astype(np.float32)
    loaded = bbp_ref.load(proto)
    out = loaded.forward(x)
    np.testing.assert_array_equal(out, _max_pool_by_hand(x.astype(np.float64), auto_pad, stride))
    declared = [d.dim_value for d in proto.graph.output[0].type.tensor_type.shape.dim[1:]]
    assert list(out.shape[1:]) == declared == [1, 8 // stride, 8 // stride]

    ort_shape = run_onnxruntime(proto, x).shape
    e = bbp_ref.explain(loaded, x, check=True)
    first, _ = bbp_ref.first_divergence(loaded, x)
    if ort_shape == out.shape:  # an onnxruntime that follows the spec
        assert e.checks.onnxruntime.ok and first is None
        return
    assert not e.checks.onnxruntime.ok and not e.checks.passed
    shapes = f"has shape {list(ort_shape)}, the engine's {list(out.shape)}"
    assert shapes in e.checks.onnxruntime.detail and shapes in e.checks.summary()
    assert "MISMATCH" in e.checks.summary()
    assert first is not None and first.tensor.endswith("-> y") and shapes in str(first)
