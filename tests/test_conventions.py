"""Behaviours no residual check can see, each compared with a hand computation or with
onnxruntime: the kink conventions of docs/math.md §2 decision 1 (built with exact zeros
from integer weights), PRelu's broadcasting, the signed rule's zero-sign fallback,
BatchNormalization folding with several consumers, and the strictness of the checks
themselves (tolerance, worst example, NaN, the CLI's exit code)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from builders import model, node, run_onnxruntime
from onnx import TensorProto

import bbp_ref
from bbp_ref import InputError, RuleError
from bbp_ref.attribution.bbp import _check_conservation
from bbp_ref.attribution.rules import ABS
from bbp_ref.checks.onnxruntime_check import Comparison
from bbp_ref.checks.residuals import RESIDUAL_TOL, Checks
from bbp_ref.cli import main

# x = (1, 2): pre-activations W1 x + b1 = (1 - 2 + 1, 2 - 2 + 0, 1 + 2 - 1) = (0, 0, 2), exactly
X = np.array([1.0, 2.0])
W1 = np.array([[1.0, -1.0], [2.0, -1.0], [1.0, 1.0]])
B1 = np.array([1.0, 0.0, -1.0])
W2 = np.array([[1.0, 2.0, 3.0]])
B2 = np.array([0.5])


def _gate_model(gate: str, slope: float = 0.25):
    inits = {"W1": W1.astype(np.float32), "b1": B1.astype(np.float32),
             "W2": W2.astype(np.float32), "b2": B2.astype(np.float32)}
    if gate == "LeakyRelu":
        activation = node("LeakyRelu", ["h"], "r", name="act", alpha=slope)
    elif gate == "PRelu":
        inits["slope"] = np.full(3, slope, np.float32)
        activation = node("PRelu", ["h", "slope"], "r", name="act")
    else:
        activation = node("Relu", ["h"], "r", name="act")
    return model([node("Gemm", ["x", "W1", "b1"], "h", name="fc1", transB=1), activation,
                  node("Gemm", ["r", "W2", "b2"], "y", name="fc2", transB=1)], ["N", 2], inits)


@pytest.mark.parametrize("gate, negative_slope", [("Relu", 0.0), ("LeakyRelu", 0.25),
                                                  ("PRelu", 0.25)])
def test_gates_at_exactly_zero_take_the_negative_side(gate: str, negative_slope: float) -> None:
    pre = W1 @ X + B1
    assert list(pre) == [0.0, 0.0, 2.0]
    d = np.where(pre > 0, 1.0, negative_slope)  # docs/math.md §2 decision 1
    gradient = (W2 * d) @ W1
    bias = (W2 * d) @ B1 + B2
    e = bbp_ref.explain(_gate_model(gate), X, target=0, check=False)
    np.testing.assert_array_equal(e.gradient, gradient[0])
    assert e.bias == bias[0] and e.checks.passed
    # the positive side would give a different gradient and bias: the test can fail
    d_positive = np.where(pre >= 0, 1.0, negative_slope)
    assert ((W2 * d_positive) @ B1 + B2)[0] != e.bias


def _clip_model(low: float, high: float):
    return model([node("Gemm", ["x", "W1", "b1"], "h", name="fc1", transB=1),
                  node("Clip", ["h", "lo", "hi"], "r", name="clip"),
                  node("Gemm", ["r", "W2", "b2"], "y", name="fc2", transB=1)], ["N", 2],
                 {"W1": W1.astype(np.float32), "b1": B1.astype(np.float32),
                  "lo": np.array(low, np.float32), "hi": np.array(high, np.float32),
                  "W2": W2.astype(np.float32), "b2": B2.astype(np.float32)})


def test_clip_at_a_bound_is_saturated() -> None:
    # pre-activations (0, 0, 2): the first two sit exactly on min = 0, the third on max = 2
    e = bbp_ref.explain(_clip_model(0.0, 2.0), X, target=0, check=False)
    np.testing.assert_array_equal(e.gradient, [0.0, 0.0])
    assert e.bias == 1 * 0 + 2 * 0 + 3 * 2 + 0.5
    np.testing.assert_array_equal(e.bias_attribution.sum(), e.bias)
    assert e.layer_bias["clip"] == 6.0


def test_clip_with_min_above_max_is_max_everywhere_and_saturated() -> None:
    proto = _clip_model(3.0, 1.0)
    x = np.array([[1.0, 2.0], [-5.0, 7.0]])
    np.testing.assert_allclose(run_onnxruntime(proto, x.astype(np.float32)), [[6.5], [6.5]])
    e = bbp_ref.explain(proto, x, target=0, check=False)
    np.testing.assert_array_equal(e.output, [6.5, 6.5])
    np.testing.assert_array_equal(e.gradient, np.zeros((2, 2)))
    np.testing.assert_array_equal(e.bias, [6.5, 6.5])


def test_prelu_slope_along_the_last_axis_broadcasts_at_opset_7_and_later() -> None:
    slope = np.array([0.5, 2.0, -1.0], np.float32)  # length 3 = channels = last axis
    proto = model([node("PRelu", ["x", "slope"], "y", name="prelu")], ["N", 3, 3],
                  {"slope": slope}, opset=9)
    x = -np.ones((1, 3, 3), np.float32)
    expected = run_onnxruntime(proto, x)
    np.testing.assert_array_equal(expected[0], -np.tile(slope, (3, 1)))  # not per channel
    np.testing.assert_array_equal(bbp_ref.load(proto).forward(x), expected)
    jacobian = bbp_ref.load(proto).jacobian(x[0]).reshape(9, 9)
    np.testing.assert_array_equal(np.diag(jacobian), np.tile(slope, 3))


def test_conservation_check_refuses_nan() -> None:
    beta = np.ones((1, 3))
    with pytest.raises(RuleError, match="does not conserve"):
        _check_conservation("fc", ABS, beta, [np.array([[1.0, np.nan, 2.0]])])
    _check_conservation("fc", ABS, beta, [np.array([[1.0, 0.5, 1.5]])])


def test_a_share_that_is_not_finite_is_an_input_error_naming_the_node() -> None:
    """The finiteness of the shares is read from their row sums; a non-finite sum leads to
    the element-wise check, which names the node and op."""
    beta = np.ones((2, 3))
    shares = [np.array([[1.0, 0.5, 1.5], [1.0, np.inf, 1.0]])]
    with pytest.raises(InputError, match="bias mass handed on at node 'fc' \\(Gemm\\)"):
        _check_conservation("fc", ABS, beta, shares, op="Gemm")
    overflowing = [np.array([[1.7e308, 1.7e308, -1.0]] * 2)]  # finite; their sum overflows
    with pytest.raises(RuleError, match="does not conserve"):
        _check_conservation("fc", ABS, beta, overflowing, op="Gemm")


def test_signed_rule_falls_back_to_abs_where_the_gradient_is_zero() -> None:
    """y = (2 h + 5) + (-2 h + 7) with h = fc1(x): the gradient at h is 0, yet h holds the
    mass 5 + 7 = 12 of the two Scale nodes' biases. sigma = sign(12 * 0) = 0, so fc1
    splits it by |z| = |W1 x| = (1, 2): B(x) = (4, 8). Taking sigma as +1 would give
    (12, 0), as -1 (0, 12)."""
    proto = model([node("Gemm", ["x", "W", "b"], "h", name="fc1", transB=1),
                   node("Mul", ["h", "two"], "a0", name="double"),
                   node("Add", ["a0", "five"], "a", name="plus5"),
                   node("Mul", ["h", "minus_two"], "c0", name="negate"),
                   node("Add", ["c0", "seven"], "c", name="plus7"),
                   node("Add", ["a", "c"], "y", name="sum")], ["N", 2],
                  {"W": np.array([[1.0, 2.0]], np.float32), "b": np.array([3.0], np.float32),
                   "two": np.array(2.0, np.float32), "five": np.array(5.0, np.float32),
                   "minus_two": np.array(-2.0, np.float32),
                   "seven": np.array(7.0, np.float32)})
    x = np.array([1.0, -1.0])
    e = bbp_ref.explain(proto, x, rule="signed", target=0)
    assert e.output == 12.0 and e.bias == 12.0 and e.checks.passed
    np.testing.assert_array_equal(e.gradient, [0.0, 0.0])
    np.testing.assert_allclose(e.bias_attribution, [4.0, 8.0], rtol=1e-15)


def test_batchnorm_is_not_folded_into_a_producer_with_other_consumers() -> None:
    """Conv -> BatchNormalization, and the Conv's output also added to the BN's: the BN
    must stay a node of its own. Compared with onnxruntime and a hand computation."""
    rng = np.random.default_rng(0)
    weight = rng.integers(-2, 3, size=(2, 1, 1, 1)).astype(np.float32)
    scale, shift = np.array([2.0, -1.0], np.float32), np.array([1.0, 3.0], np.float32)
    mean, var = np.array([0.5, -1.0], np.float32), np.array([3.0, 0.0], np.float32)
    proto = model([node("Conv", ["x", "W"], "c", name="conv"),
                   node("BatchNormalization", ["c", "s", "t", "m", "v"], "n", name="bn",
                        epsilon=1.0),
                   node("Add", ["c", "n"], "y", name="sum")], ["N", 1, 2, 2],
                  {"W": weight, "s": scale, "t": shift, "m": mean, "v": var}, opset=14)
    loaded = bbp_ref.load(proto)
    assert [n.op for n in loaded.nodes] == ["Input", "Conv", "BatchNormalization", "Add"]
    x = rng.normal(size=(3, 1, 2, 2)).astype(np.float32)
    np.testing.assert_allclose(loaded.forward(x), run_onnxruntime(proto, x), rtol=1e-5,
                               atol=1e-5)
    conv = weight.reshape(1, 2, 1, 1) * x.astype(np.float64)  # [N, 2, 2, 2]
    s = (scale / np.sqrt(var + 1.0)).reshape(1, 2, 1, 1)
    hand = conv + s * (conv - mean.reshape(1, 2, 1, 1)) + shift.reshape(1, 2, 1, 1)
    np.testing.assert_allclose(loaded.forward(x), hand, rtol=1e-12)
    e = bbp_ref.explain(loaded, x, target=0)
    assert e.checks.passed and e.checks.onnxruntime.ok


# -- the checks themselves --------------------------------------------------------------


def test_residual_tolerance_is_1e_10_and_the_worst_example_decides() -> None:
    assert RESIDUAL_TOL == 1e-10
    zero = np.zeros(2)
    assert not Checks(np.array([0.0, 1e-9]), zero, zero).passed
    assert not Checks(zero, np.array([1e-5, 0.0]), zero).passed
    assert not Checks(zero, zero, np.array([0.0, 1e-4])).passed
    assert Checks(np.array([1e-11, 5e-11]), zero, zero).passed
    failing = Comparison("y", 1.0, 1.0, False)
    assert not Checks(zero, zero, zero, failing).passed
    doc = (Path(__file__).resolve().parent.parent / "docs" / "math.md").read_text()
    assert "at most 1e-10" in doc


def test_explain_exits_1_when_a_check_fails(tmp_path: Path, monkeypatch, capsys) -> None:
    path, x = tmp_path / "m.onnx", tmp_path / "x.npy"
    path.write_bytes(_gate_model("Relu").SerializeToString())
    np.save(x, X)
    assert main(["explain", str(path), str(x)]) == 0
    explain_module = sys.modules["bbp_ref.explain"]  # bbp_ref.explain is the function
    monkeypatch.setattr(explain_module, "check_output",
                        lambda *a: Comparison("y", 1.0, 1.0, False))
    assert main(["explain", str(path), str(x)]) == 1
    assert "MISMATCH" in capsys.readouterr().out


def test_float64_model_wider_type_is_not_loosened() -> None:
    proto = _gate_model("Relu")
    double = model([node("Relu", ["x"], "y", name="relu")], ["N", 2],
                   elem_type=TensorProto.DOUBLE)
    from bbp_ref.checks.onnxruntime_check import ATOL, RTOL, tolerances

    assert tolerances(proto) == tolerances(double) == (RTOL, ATOL)


@pytest.mark.parametrize("slope", [0.0, 0.01, "per channel"])
def test_a_relu_gate_value_is_the_where_form_bitwise(slope):
    """The gate computes its value as `d u` from its slope `d`: the same numbers as
    `where(u > 0, u, a u)`, the sign of every zero included (an input of -0.0 or a
    negative one gives -0.0 on the off side, as PyTorch's and NumPy's `a u` do)."""
    from bbp_ref.engine.gates import PiecewiseLinear

    rng = np.random.default_rng(0)
    u = rng.normal(size=(3, 4, 5))
    u[0, 0] = [0.0, -0.0, 1e-300, -1e-300, 0.0]
    a = rng.uniform(size=(4, 1)) if slope == "per channel" else slope
    expected = np.where(u > 0, u, np.asarray(a) * u)
    for value in (PiecewiseLinear(a).evaluate([u])[0], PiecewiseLinear(a).forward([u])):
        assert np.array_equal(value, expected)
        assert np.array_equal(np.signbit(value), np.signbit(expected))
