"""The tangent model's ops (docs/math.md §7) against onnxruntime and finite differences.

Each case is a tiny ONNX model around one op (or a small composite) with the data input
feeding it; `test_ops.verify` checks the forward against onnxruntime, the decomposition
and completeness for every rule with sums computed here, and `W^x` against central finite
differences of the float64 model run by `onnx.reference`. Kinks and domain limits are
tested directly below against hand computations.
"""

from __future__ import annotations

import numpy as np
import pytest
from builders import f32, model, node
from test_ops import Case, verify

import bbp_ref
from bbp_ref.errors import InputError

RNG_SEED = 7


def _unary(op: str, x: np.ndarray, opset: int = 13, **attributes: object) -> Case:
    """`y = Gemm(op(Gemm(x)))`: the op between two affine layers, so the gradient and the
    bias mass pass through it from and to several elements."""
    rng = np.random.default_rng(RNG_SEED)
    k = x.shape[1]
    inits = {"w1": f32(rng, k, 5), "b1": f32(rng, 5), "w2": f32(rng, 5, 3), "b2": f32(rng, 3)}
    nodes = [node("Gemm", ["x", "w1", "b1"], "h"), node(op, ["h"], "a", **attributes),
             node("Gemm", ["a", "w2", "b2"], "y")]
    return Case(model(nodes, ["N", k], inits, opset=opset), x)


SMOOTH = [
    ("Sigmoid", {}, 13), ("Tanh", {}, 13), ("Softplus", {}, 13), ("Softsign", {}, 13),
    ("Elu", {"alpha": 0.75}, 13), ("Selu", {}, 13), ("Celu", {"alpha": 1.25}, 13),
    ("Erf", {}, 13), ("Exp", {}, 13), ("Sin", {}, 13), ("Cos", {}, 13), ("Atan", {}, 13),
    ("Sinh", {}, 13), ("Cosh", {}, 13), ("Asinh", {}, 13), ("Mish", {}, 18),
    ("HardSwish", {}, 14), ("Gelu", {}, 20), ("Gelu", {"approximate": "tanh"}, 20),
    ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}, 13), ("Abs", {}, 13),
    ("ThresholdedRelu", {"alpha": 0.4}, 13),
]


@pytest.mark.parametrize(("op", "attributes", "opset"), SMOOTH,
                         ids=[f"{op}-{i}" for i, (op, _, _) in enumerate(SMOOTH)])
def test_elementwise_function(op: str, attributes: dict, opset: int) -> None:
    rng = np.random.default_rng(1)
    x = f32(rng, 3, 4)
    case = _unary(op, x, opset, **attributes)
    # onnx.reference's Gelu runs a function body with float32 constants (errors ~1e-8):
    # its Jacobian is compared with torch autograd instead (test_against_torch_autograd)
    case.fd = op != "Gelu"
    # keep the hidden pre-activations off the kinks (Abs, Elu at 0, HardSwish at +-3,
    # ThresholdedRelu at alpha, HardSigmoid at its saturation points)
    m = bbp_ref.load(case.proto)
    pre = _hidden(case, x)
    kinks = {"Abs": (0.0,), "Elu": (0.0,), "Selu": (0.0,), "HardSwish": (-3.0, 3.0),
             "ThresholdedRelu": (0.4,), "HardSigmoid": ((0 - 0.4) / 0.3, (1 - 0.4) / 0.3)}
    assert np.min([np.abs(pre - k).min() for k in kinks.get(op, (1e9,))]) > 1e-3
    verify(case)
    kinds = {n.op: n.kind for n in m.nodes}
    expected = "gate" if op in ("Abs", "ThresholdedRelu") else "smooth"
    if op == "HardSigmoid":
        # its affine part folds into the Gemm before it (canonicalisation)
        assert kinds["HardSigmoid"] == "gate" and kinds["Gemm+HardSigmoid/affine"] == "affine"
    else:
        assert kinds[op] == expected


def _hidden(case: Case, x: np.ndarray) -> np.ndarray:
    from onnx import numpy_helper
    inits = {t.name: numpy_helper.to_array(t).astype(np.float64)
             for t in case.proto.graph.initializer}
    return x.astype(np.float64) @ inits["w1"] + inits["b1"]


@pytest.mark.parametrize("op", ["Log", "Sqrt", "Reciprocal"])
def test_positive_domain_functions(op: str) -> None:
    rng = np.random.default_rng(2)
    x = np.abs(f32(rng, 3, 4)) + 0.5
    inits = {"w": np.abs(f32(rng, 4, 5)) + 0.1, "w2": f32(rng, 5, 2)}
    nodes = [node("MatMul", ["x", "w"], "h"), node(op, ["h"], "a"),
             node("MatMul", ["a", "w2"], "y")]
    verify(Case(model(nodes, ["N", 4], inits), x))


@pytest.mark.parametrize("exponent", [2.0, 3.0, 0.5, -1.5, np.array([1.0, 2.0, 3.0, 0.0])])
def test_pow_constant_exponent(exponent: object) -> None:
    rng = np.random.default_rng(3)
    x = np.abs(f32(rng, 3, 4)) + 0.3
    nodes = [node("Pow", ["x", "p"], "a"), node("MatMul", ["a", "w"], "y")]
    inits = {"p": np.asarray(exponent, dtype=np.float32), "w": f32(rng, 4, 2)}
    verify(Case(model(nodes, ["N", 4], inits), x))


def test_product_of_two_data_tensors_broadcast() -> None:
    rng = np.random.default_rng(4)
    x = f32(rng, 3, 2, 4)
    inits = {"wa": f32(rng, 4, 4), "wb": f32(rng, 4, 1), "w": f32(rng, 4, 2)}
    nodes = [node("MatMul", ["x", "wa"], "a"), node("MatMul", ["x", "wb"], "b"),
             node("Mul", ["a", "b"], "p"), node("MatMul", ["p", "w"], "y")]
    m, _ = verify(Case(model(nodes, ["N", 2, 4], inits), x))
    assert {n.op: n.kind for n in m.nodes}["Mul"] == "product"


def test_silu_as_product_with_itself() -> None:
    rng = np.random.default_rng(5)
    x = f32(rng, 3, 4)
    inits = {"w": f32(rng, 4, 3)}
    nodes = [node("Sigmoid", ["x"], "s"), node("Mul", ["x", "s"], "a"),
             node("MatMul", ["a", "w"], "y")]
    verify(Case(model(nodes, ["N", 4], inits), x))


def test_matmul_of_two_data_tensors() -> None:
    rng = np.random.default_rng(6)
    x = f32(rng, 2, 3, 4)
    inits = {"wq": f32(rng, 4, 4), "wk": f32(rng, 4, 4)}
    nodes = [node("MatMul", ["x", "wq"], "q"), node("MatMul", ["x", "wk"], "k"),
             node("Transpose", ["k"], "kt", perm=[0, 2, 1]), node("MatMul", ["q", "kt"], "y")]
    verify(Case(model(nodes, ["N", 3, 4], inits), x))


@pytest.mark.parametrize("numerator", ["data", "constant"])
def test_div_by_data(numerator: str) -> None:
    rng = np.random.default_rng(7)
    x = np.abs(f32(rng, 3, 4)) + 0.5
    inits = {"w": np.abs(f32(rng, 4, 4)) + 0.1, "c": f32(rng, 4)}
    top = "x" if numerator == "data" else "c"
    nodes = [node("MatMul", ["x", "w"], "d"), node("Div", [top, "d"], "y")]
    m, _ = verify(Case(model(nodes, ["N", 4], inits), x))
    ops = [n.op for n in m.nodes]
    assert "Div/reciprocal" in ops


@pytest.mark.parametrize(("op", "opset", "axis"), [("Softmax", 13, -1), ("Softmax", 11, 1),
                                                  ("LogSoftmax", 13, 1), ("LogSoftmax", 11, 2)])
def test_softmax_in_the_middle(op: str, opset: int, axis: int) -> None:
    rng = np.random.default_rng(8)
    x = f32(rng, 3, 2, 4, scale=2.0)
    inits = {"w": f32(rng, 4, 4), "w2": f32(rng, 4, 3)}
    nodes = [node("MatMul", ["x", "w"], "h"), node(op, ["h"], "s", axis=axis),
             node("MatMul", ["s", "w2"], "y")]
    reference = None
    if opset < 13 and axis == 1:
        # before opset 13 the op normalises over every axis from `axis` on (onnxruntime
        # does; onnx.reference 1.23 takes one axis): the same written in opset 13
        inits_ref = {**inits, "flat": np.array([0, -1]), "back": np.array([0, 2, 4])}
        reference = model([node("MatMul", ["x", "w"], "h"), node("Reshape", ["h", "flat"], "f"),
                           node(op, ["f"], "g", axis=-1), node("Reshape", ["g", "back"], "s"),
                           node("MatMul", ["s", "w2"], "y")], ["N", 2, 4], inits_ref)
    m, _ = verify(Case(model(nodes, ["N", 2, 4], inits, opset=opset), x, reference))
    assert [n.op for n in m.nodes if n.op.startswith(op)][-1] == op


@pytest.mark.parametrize("keepdims", [0, 1])
def test_reduce_log_sum_exp(keepdims: int) -> None:
    rng = np.random.default_rng(9)
    x = f32(rng, 3, 2, 4)
    nodes = [node("ReduceLogSumExp", ["x"], "y", axes=[2], keepdims=keepdims)]
    verify(Case(model(nodes, ["N", 2, 4], opset=13), x))


def test_softmax_is_stable_for_large_logits() -> None:
    """Logits of +-1000: exp overflows float64 unshifted; the expansion must match the
    hand-computed softmax and keep the decomposition."""
    x = np.array([[1000.0, 999.0, -1000.0]], dtype=np.float32)
    nodes = [node("Softmax", ["x"], "s", axis=1), node("Identity", ["s"], "t"),
             node("Mul", ["t", "c"], "y")]
    proto = model(nodes, ["N", 3], {"c": np.float32(2.0)})
    m = bbp_ref.load(proto)
    e = np.exp(np.array([0.0, -1.0, -2000.0]))
    np.testing.assert_allclose(m.forward(x)[0], 2 * e / e.sum(), rtol=1e-15)
    for rule in ("abs", "signed", "uniform"):
        assert bbp_ref.explain(proto, x, rule=rule, check=False).checks.passed


def test_log_softmax_is_stable_for_large_logits() -> None:
    x = np.array([[1000.0, 999.0, -1000.0]], dtype=np.float32)
    nodes = [node("LogSoftmax", ["x"], "s", axis=1), node("Mul", ["s", "c"], "y")]
    proto = model(nodes, ["N", 3], {"c": np.float32(1.0)})
    lse = 1000.0 + np.log1p(np.exp(-1.0) + np.exp(-2000.0))
    np.testing.assert_allclose(bbp_ref.load(proto).forward(x)[0],
                               x[0].astype(np.float64) - lse, rtol=1e-15)
    assert bbp_ref.explain(proto, x, check=False).checks.passed


@pytest.mark.parametrize(("op", "x"), [("Sigmoid", 800.0), ("Sigmoid", -800.0),
                                       ("Softplus", 800.0), ("Softplus", -800.0),
                                       ("Tanh", 400.0)])
def test_saturating_functions_are_stable(op: str, x: float) -> None:
    proto = model([node(op, ["x"], "a"), node("Mul", ["a", "c"], "y")], ["N", 1],
                  {"c": np.float32(1.0)})
    e = bbp_ref.explain(proto, np.array([x], dtype=np.float32), target=0, check=False)
    expected = {"Sigmoid": 1.0 if x > 0 else 0.0, "Softplus": max(x, 0.0),
                "Tanh": 1.0}[op]
    np.testing.assert_allclose(e.output, expected, rtol=1e-15, atol=0)
    assert e.checks.passed


@pytest.mark.parametrize(("op", "value", "message"), [
    ("Log", 0.0, "Log"), ("Log", -1.0, "Log"), ("Sqrt", -1.0, "Sqrt"),
    ("Sqrt", 0.0, "Sqrt at 0"), ("Reciprocal", 0.0, "Reciprocal"), ("Exp", 800.0, "Exp")])
def test_outside_the_domain_is_an_input_error_naming_the_node(op: str, value: float,
                                                              message: str) -> None:
    proto = model([node(op, ["x"], "y", name="the_node")], ["N", 2])
    x = np.array([1.0, value], dtype=np.float32)
    with pytest.raises(InputError, match=f"the_node.*{message}"):
        bbp_ref.explain(proto, x, target=0, check=False)


@pytest.mark.parametrize(("exponent", "slope"), [(2.0, 0.0), (1.0, 1.0), (0.0, 0.0),
                                                 (3.0, 0.0)])
def test_pow_derivative_at_zero_is_the_limit(exponent: float, slope: float) -> None:
    proto = model([node("Pow", ["x", "p"], "y")], ["N", 1], {"p": np.float32(exponent)})
    e = bbp_ref.explain(proto, np.zeros(1, dtype=np.float32), target=0, check=False)
    assert e.gradient[0] == slope
    assert e.output == (1.0 if exponent == 0 else 0.0)


@pytest.mark.parametrize("exponent", [0.5, -1.0])
def test_pow_at_zero_without_a_finite_derivative_is_refused(exponent: float) -> None:
    proto = model([node("Pow", ["x", "p"], "y", name="pw")], ["N", 1],
                  {"p": np.float32(exponent)})
    with pytest.raises(InputError, match="pw"):
        bbp_ref.explain(proto, np.zeros(1, dtype=np.float32), target=0, check=False)


@pytest.mark.parametrize(("op", "point", "slope"), [
    ("Abs", 0.0, 0.0), ("Elu", 0.0, 1.0), ("HardSwish", -3.0, -0.5), ("HardSwish", 3.0, 1.5),
    ("ThresholdedRelu", 1.0, 0.0)])
def test_kink_conventions(op: str, point: float, slope: float) -> None:
    """At the kink the slope is autograd's (docs/math.md §7); hand-computed values."""
    proto = model([node(op, ["x"], "y")], ["N", 1], opset=14)
    e = bbp_ref.explain(proto, np.array([point], dtype=np.float32), target=0, check=False)
    assert e.gradient[0] == slope
    assert e.bias == pytest.approx(e.output - slope * point, abs=1e-15)


def test_tangent_bias_of_a_bias_free_product_is_minus_f() -> None:
    """Invariant 10: `x * x` has no bias of its own; its tangent intercept is `-f(x)`."""
    proto = model([node("Mul", ["x", "x"], "y")], ["N", 3])
    x = np.array([0.5, -2.0, 3.0], dtype=np.float32)
    e = bbp_ref.explain(proto, x, target=1, check=False)
    assert e.output == 4.0 and e.bias == -4.0
    np.testing.assert_array_equal(e.gradient, [0.0, -4.0, 0.0])
    np.testing.assert_array_equal(e.bias_attribution, [0.0, -4.0, 0.0])


TORCH_FUNCTIONS = {
    "Gelu": ({}, lambda t, u: t.nn.functional.gelu(u)),
    "Gelu-tanh": ({"approximate": "tanh"},
                  lambda t, u: t.nn.functional.gelu(u, approximate="tanh")),
    "Mish": ({}, lambda t, u: t.nn.functional.mish(u)),
    "HardSwish": ({}, lambda t, u: t.nn.functional.hardswish(u)),
    "Selu": ({}, lambda t, u: t.nn.functional.selu(u)),
    "Celu": ({"alpha": 1.25}, lambda t, u: t.nn.functional.celu(u, alpha=1.25)),
    "Elu": ({"alpha": 0.75}, lambda t, u: t.nn.functional.elu(u, alpha=0.75)),
    "Softplus": ({}, lambda t, u: t.nn.functional.softplus(u)),
    "Sigmoid": ({}, lambda t, u: t.sigmoid(u)),
}


@pytest.mark.torch
@pytest.mark.parametrize("name", sorted(TORCH_FUNCTIONS))
def test_against_torch_autograd(name: str) -> None:
    """`W^x` and `f(x)` of `Gemm(op(Gemm(x)))` against torch autograd in float64 with
    the same weights (invariant 8: 1e-12 relative)."""
    torch = pytest.importorskip("torch")
    from onnx import numpy_helper

    op = name.split("-")[0]
    attributes, function = TORCH_FUNCTIONS[name]
    rng = np.random.default_rng(11)
    x = f32(rng, 3, 4, scale=2.0)
    case = _unary(op, x, opset=20, **attributes)
    inits = {t.name: torch.tensor(numpy_helper.to_array(t), dtype=torch.float64)
             for t in case.proto.graph.initializer}
    if name == "Selu":  # ONNX's attribute defaults are float32 values
        alpha, gamma = float(np.float32(1.67326319217681884765625)), float(
            np.float32(1.05070102214813232421875))
        def function(t: object, u: object) -> object:
            return gamma * t.where(u > 0, u, alpha * t.expm1(u))

    def network(u: object) -> object:
        return function(torch, u @ inits["w1"] + inits["b1"]) @ inits["w2"] + inits["b2"]

    x64 = torch.tensor(x, dtype=torch.float64)
    expected = torch.stack([torch.autograd.functional.jacobian(network, x64[i])
                            for i in range(x.shape[0])]).numpy()
    m = bbp_ref.load(case.proto)
    np.testing.assert_allclose(m.forward(x), network(x64).detach().numpy(), rtol=1e-12)
    jacobian = m.jacobian(x)
    scale = np.abs(expected).max()
    np.testing.assert_allclose(jacobian, expected, rtol=0, atol=1e-12 * scale)


def test_class_token_concatenated_to_data() -> None:
    """A constant row before the data (a ViT class token): its elements are local bias
    whose mass is spread over the whole data input; completeness stays exact."""
    rng = np.random.default_rng(12)
    x = f32(rng, 3, 2, 4)
    inits = {"cls": f32(rng, 1, 1, 4), "w": f32(rng, 4, 3), "zero": np.array([0]),
             "rest": np.array([1, 4])}
    # as exporters write it: the token expanded to the batch size, then concatenated
    nodes = [node("Shape", ["x"], "shape"), node("Gather", ["shape", "zero"], "n"),
             node("Concat", ["n", "rest"], "target", axis=0),
             node("Expand", ["cls", "target"], "tokens"),
             node("Concat", ["tokens", "x"], "c", axis=1), node("MatMul", ["c", "w"], "y")]
    m, explanations = verify(Case(model(nodes, ["N", 2, 4], inits), x))
    assert {n.op: n.kind for n in m.nodes}["Concat"] == "affine"


def test_constant_element_mass_goes_to_the_whole_input_by_the_rule() -> None:
    """Hand computation: y = sum(Concat([c], x)) with c = 3, x = [1, -2, 0, 1]: the bias
    c = 3 is spread by |x| (abs), by the positive values (signed: mass and gradient
    positive), evenly (uniform)."""
    nodes = [node("Concat", ["c", "x"], "k", axis=1),
             node("ReduceSum", ["k"], "y", axes=[1], keepdims=0)]
    proto = model(nodes, ["N", 4], {"c": np.array([[3.0]], dtype=np.float32)}, opset=12)
    x = np.array([1.0, -2.0, 0.0, 1.0], dtype=np.float32)
    expected = {"abs": [0.75, 1.5, 0.0, 0.75], "signed": [1.5, 0.0, 0.0, 1.5],
                "uniform": [0.75, 0.75, 0.75, 0.75]}
    for rule, attribution in expected.items():
        e = bbp_ref.explain(proto, x, target=0, rule=rule, check=False)
        assert e.output == 3.0 and e.bias == 3.0
        np.testing.assert_allclose(e.bias_attribution, attribution, rtol=1e-15)
