"""Checks shared by the conformance tests (`tests/conformance/`)."""

from __future__ import annotations

import numpy as np
import onnx

import bbp_ref

RULES = ("abs", "signed", "uniform")
RESIDUAL_TOL = 1e-10  # docs/math.md §5, invariants 1 and 2


def computed_ops(proto: onnx.ModelProto) -> set[str]:
    """The op types of the nodes that depend on a graph input that is not an initializer
    (bbp_ref folds the nodes whose inputs are all constant)."""
    constant = {t.name for t in proto.graph.initializer}
    ops = set()
    for n in proto.graph.node:
        if all(not name or name in constant for name in n.input):
            constant.update(n.output)
        else:
            ops.add(n.op_type)
    return ops


def assert_decomposition(model: bbp_ref.Model, x: np.ndarray, target: object = None,
                         rules: tuple[str, ...] = RULES) -> list[bbp_ref.Explanation]:
    """Explain a batch ``x`` with every rule (``check=False``: no onnxruntime) and
    recompute, in float64, `sum_q g[q] x[q] + b^x = f_t(x)` and `sum_q B(x)[q] = b^x`
    to ``RESIDUAL_TOL`` of the sum of the magnitudes of the terms."""
    x64 = np.asarray(x, dtype=np.float64)
    n = x64.shape[0]
    logits = model.forward(x).reshape(n, -1)
    explanations = []
    for rule in rules:
        e = bbp_ref.explain(model, x, target=target, rule=rule, check=False)
        np.testing.assert_array_equal(e.output, logits[np.arange(n), e.target])
        assert e.gradient.shape == e.bias_attribution.shape == x64.shape
        layer_magnitude = sum((np.abs(v) for v in e.layer_bias.values()), np.zeros(n))
        gradient_x_input = (e.gradient * x64).reshape(n, -1)
        scale = np.abs(gradient_x_input).sum(axis=1) + layer_magnitude + 1e-300
        residual = np.abs(gradient_x_input.sum(axis=1) + e.bias - e.output)
        assert (residual <= RESIDUAL_TOL * scale).all(), (rule, residual / scale)
        attribution = e.bias_attribution.reshape(n, -1)
        scale = np.abs(attribution).sum(axis=1) + layer_magnitude + 1e-300
        residual = np.abs(attribution.sum(axis=1) - e.bias)
        assert (residual <= RESIDUAL_TOL * scale).all(), (rule, residual / scale)
        explanations.append(e)
    return explanations


def assert_close_to_scale(actual: np.ndarray, expected: np.ndarray, rtol: float,
                          what: str = "") -> None:
    """``|actual - expected| <= rtol * (|expected| + max |expected|)`` element-wise: a
    relative tolerance per element plus the same, times the largest magnitude, absolute
    (elements that cancel to ~0 carry the rounding of the terms they were summed from)."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    scale = max(float(np.abs(expected).max(initial=0.0)), 1e-300)
    diff = np.abs(actual - expected)
    bound = rtol * (np.abs(expected) + scale)
    worst = float((diff / (np.abs(expected) + scale)).max(initial=0.0))
    assert (diff <= bound).all(), f"{what}: worst relative difference {worst:.3g} > {rtol:g}"
