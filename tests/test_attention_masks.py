"""Boolean attention masks: a -inf added to the scores (or chosen by a Where) and read by a
Softmax, whose masked elements are hard zeros (docs/math.md §7.5, decision 6).

Hand-built models: scores `h = x @ Wq`, `s = h + M` with `M` -inf where masked (written as a
constant, as `Where(mask, -inf, 0)` of a constant bool mask, as `Where(mask, -inf, h)`, or
from a second graph input given through ``inputs=``), `p = Softmax(s)`, then `p @ x` (a
product of data), flattened, times a matrix. Each is checked by `test_ops.verify` or the
same checks by hand: the forward against onnxruntime, the decomposition and completeness
for every rule, the Jacobian against central finite differences of `onnx.reference` in
float64 (which computes the -inf itself); one row against the softmax computed by hand.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from builders import f32, model, node
from onnx import TensorProto, helper, numpy_helper
from test_ops import (
    FD_TOL,
    RESIDUAL_TOL,
    Case,
    assert_forward_close,
    finite_difference_jacobian,
    verify,
)

import bbp_ref
from bbp_ref.errors import ModelLoadError, UnsupportedOpError

ROWS = KEYS = 4  # `p @ x` needs as many keys as rows
RULES = ("abs", "signed", "uniform")
# masked (True) positions of the [ROWS, KEYS] scores: causal-like, never a whole row
MASK = np.triu(np.ones((ROWS, KEYS), bool), 1)
MASK[0, 1] = False
MASK[2, 0] = True


def _weights(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"wq": f32(rng, KEYS, KEYS), "wo": f32(rng, ROWS * KEYS, 2),
            "shape": np.array([0, -1])}


def _attention_nodes() -> list[onnx.NodeProto]:
    """`y = Reshape(Softmax(h + M) @ x, [N, -1]) @ Wo`, `h = x @ Wq`; ``M`` is tensor ``m``."""
    return [node("MatMul", ["x", "wq"], "h"), node("Add", ["h", "m"], "s", name="add_mask"),
            node("Softmax", ["s"], "p", name="softmax", axis=-1),
            node("MatMul", ["p", "x"], "c"), node("Reshape", ["c", "shape"], "f"),
            node("MatMul", ["f", "wo"], "y")]


def _minus_inf(mask: np.ndarray, finite: np.ndarray | float = 0.0) -> np.ndarray:
    return np.where(mask, -np.inf, finite).astype(np.float32)


def _x(rng: np.random.Generator, n: int = 3) -> np.ndarray:
    return f32(rng, n, ROWS, KEYS)


def test_an_added_minus_inf_constant_is_a_hard_zero_of_the_softmax() -> None:
    rng = np.random.default_rng(1)
    inits = {**_weights(rng), "m": _minus_inf(MASK, f32(rng, ROWS, KEYS, scale=0.5))}
    m, explanations = verify(Case(model(_attention_nodes(), ["N", ROWS, KEYS], inits),
                                  _x(rng)))
    assert "Softmax/exp" in [n.op for n in m.nodes]
    for e in explanations:
        assert np.isfinite(e.bias_attribution).all() and np.isfinite(e.bias).all()


def test_where_of_a_constant_bool_mask() -> None:
    """`Where(mask, -inf, 0)` of constants (PyTorch's key_padding_mask / is_causal) folds
    to the -inf constant of the test above."""
    rng = np.random.default_rng(2)
    inits = {**_weights(rng), "mask": MASK, "minus_inf": np.float32(-np.inf),
             "zero": np.float32(0.0)}
    nodes = [node("Where", ["mask", "minus_inf", "zero"], "m"), *_attention_nodes()]
    verify(Case(model(nodes, ["N", ROWS, KEYS], inits), _x(rng)))


@pytest.mark.parametrize("order", ["mask-first", "scores-first"])
def test_masked_fill_of_the_scores(order: str) -> None:
    """`scores.masked_fill(mask, -inf)` exports as `Where(mask, -inf, scores)`: the
    elements chosen from the -inf constant are hard zeros of the Softmax too."""
    rng = np.random.default_rng(10)
    inits = {**_weights(rng), "mask": MASK, "keep": ~MASK, "minus_inf": np.float32(-np.inf)}
    where = (node("Where", ["mask", "minus_inf", "h"], "s", name="masked_fill")
             if order == "mask-first" else
             node("Where", ["keep", "h", "minus_inf"], "s", name="masked_fill"))
    nodes = _attention_nodes()
    nodes[1] = where
    m, explanations = verify(Case(model(nodes, ["N", ROWS, KEYS], inits), _x(rng)))
    for e in explanations:
        assert np.isfinite(e.bias_attribution).all()


def test_the_softmax_guard_of_scaled_dot_product_attention() -> None:
    """PyTorch's exporters write `Where(IsNaN(p), 0, p)` after a bool-masked Softmax:
    IsNaN of a computed tensor is a constant False (the engine refuses NaN values)."""
    rng = np.random.default_rng(3)
    inits = {**_weights(rng), "m": _minus_inf(MASK), "zero": np.float32(0.0)}
    nodes = _attention_nodes()
    nodes[2] = node("Softmax", ["s"], "q", name="softmax", axis=-1)
    nodes[3:3] = [node("IsNaN", ["q"], "nan"), node("Where", ["nan", "zero", "q"], "p")]
    verify(Case(model(nodes, ["N", ROWS, KEYS], inits), _x(rng)))


def _two_input_model(inits: dict[str, np.ndarray], mask_type: int) -> onnx.ModelProto:
    """The attention model with the mask a second graph input ``mask`` of shape
    [N, ROWS, KEYS]: bool (through `Where(mask, -inf, 0)`) or float (added as is)."""
    nodes = _attention_nodes()
    if mask_type == TensorProto.BOOL:
        nodes.insert(0, node("Where", ["mask", "minus_inf", "zero"], "m"))
        inits = {**inits, "minus_inf": np.float32(-np.inf), "zero": np.float32(0.0)}
    else:
        nodes[1] = node("Add", ["h", "mask"], "s", name="add_mask")
    graph = helper.make_graph(
        nodes, "masked",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", ROWS, KEYS]),
         helper.make_tensor_value_info("mask", mask_type, ["N", ROWS, KEYS])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    proto.ir_version = 7
    return proto


def _with_mask_constant(proto: onnx.ModelProto, mask: np.ndarray) -> onnx.ModelProto:
    """``proto`` with its ``mask`` input replaced by an initializer (written here, not by
    bbp_ref's binding): the reference for onnxruntime and the finite differences."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(proto)
    del fixed.graph.input[1]
    fixed.graph.initializer.append(numpy_helper.from_array(mask, "mask"))
    return fixed


@pytest.mark.parametrize("mask_type", [TensorProto.BOOL, TensorProto.FLOAT],
                         ids=["bool", "float-minus-inf"])
def test_a_mask_given_as_an_input(mask_type: int) -> None:
    """A mask per example, given through ``inputs=``: each example is explained with its
    own mask (binding makes it a constant), against a model written with that mask."""
    rng = np.random.default_rng(4)
    x = _x(rng)
    masks = np.stack([MASK, MASK.T[:ROWS, :KEYS] & ~np.eye(ROWS, KEYS, dtype=bool),
                      np.zeros((ROWS, KEYS), bool)])
    given = masks if mask_type == TensorProto.BOOL else _minus_inf(masks)
    proto = _two_input_model(_weights(rng), mask_type)
    m = bbp_ref.load(proto)
    out = m.forward(x, inputs={"mask": given})
    jacobian = m.jacobian(x, inputs={"mask": given})
    for i in range(len(x)):
        reference = _with_mask_constant(proto, given[i:i + 1])
        case = Case(reference, x[i:i + 1])
        _, explanations = verify(case)  # the mask as a constant, imported directly
        assert_forward_close(out[i:i + 1], bbp_ref.load(reference).forward(x[i:i + 1]))
        expected = finite_difference_jacobian(reference, x[i:i + 1])
        scale = max(1.0, float(np.abs(jacobian[i]).max() * np.abs(x[i]).max()))
        np.testing.assert_allclose(jacobian[i:i + 1], expected, rtol=0, atol=FD_TOL * scale)
        for rule, direct in zip(RULES, explanations):
            e = bbp_ref.explain(m, x[i:i + 1], rule=rule, check=True,
                                inputs={"mask": given[i:i + 1]})
            assert e.checks.passed, e.checks.summary()
            np.testing.assert_allclose(e.bias_attribution, direct.bias_attribution,
                                       rtol=0, atol=1e-12)
    for rule in RULES:
        e = bbp_ref.explain(m, x, rule=rule, check=True, inputs={"mask": given})
        assert e.checks.passed, e.checks.summary()
        assert (e.checks.completeness <= RESIDUAL_TOL).all()


def test_masked_elements_have_no_slope_and_no_bias() -> None:
    """Hand computation on one row: `p = softmax(u + M)` with `u` the input itself. At a
    masked key `p` is 0 and so is its column of the Jacobian; the unmasked keys have the
    softmax Jacobian of the unmasked elements alone, and `b^x = p - J u` has no -inf."""
    x = np.array([[0.3, -1.2, 2.0, 0.5]], np.float32)
    mask = np.array([False, True, False, True])
    # a Softmax as the graph's last op would be stripped (§2): explain `p * 1`
    nodes = [node("Add", ["x", "m"], "s", name="add_mask"),
             node("Softmax", ["s"], "p", name="softmax", axis=-1),
             node("Mul", ["p", "one"], "y")]
    proto = model(nodes, ["N", 4], {"m": _minus_inf(mask), "one": np.float32(1.0)})
    m = bbp_ref.load(proto)
    u = x[0].astype(np.float64)
    kept = np.exp(u[~mask] - u[~mask].max())
    p = np.zeros(4)
    p[~mask] = kept / kept.sum()
    np.testing.assert_allclose(m.forward(x)[0], p, rtol=1e-15, atol=0)
    expected = np.diag(p) - np.outer(p, p)
    np.testing.assert_allclose(m.jacobian(x)[0], expected, rtol=0, atol=1e-15)
    for rule in RULES:
        for target in range(4):
            e = bbp_ref.explain(m, x, target=target, rule=rule, check=True)
            np.testing.assert_allclose(e.bias, p[target] - expected[target] @ u,
                                       rtol=0, atol=1e-15)
            assert e.checks.passed, e.checks.summary()


def test_a_row_masked_entirely_is_refused_naming_the_softmax() -> None:
    rng = np.random.default_rng(5)
    mask = MASK.copy()
    mask[1] = True
    inits = {**_weights(rng), "m": _minus_inf(mask)}
    proto = model(_attention_nodes(), ["N", ROWS, KEYS], inits)
    with pytest.raises(UnsupportedOpError, match=r"'softmax'.*row \[1\].*0 / 0") as info:
        bbp_ref.load(proto)
    assert info.value.op_type == "Softmax"


@pytest.mark.parametrize("consumer", ["Relu", "LogSoftmax", "output"])
def test_minus_inf_read_by_anything_but_a_softmax_is_refused(consumer: str) -> None:
    rng = np.random.default_rng(6)
    inits = {**_weights(rng), "m": _minus_inf(MASK)}
    if consumer == "output":
        nodes = [node("MatMul", ["x", "wq"], "h"), node("Add", ["h", "m"], "y",
                                                          name="add_mask")]
        match = "add_mask.*explained output, holds -inf"
    else:
        nodes = _attention_nodes()
        nodes[2] = node(consumer, ["s"], "p", name="reader", **(
            {"axis": -1} if consumer == "LogSoftmax" else {}))
        match = "'reader'.*holds -inf.*'add_mask'"
    with pytest.raises(UnsupportedOpError, match=match):
        bbp_ref.load(model(nodes, ["N", ROWS, KEYS], inits))


@pytest.mark.parametrize("constant", [np.inf, np.nan], ids=["plus-inf", "nan"])
def test_other_non_finite_constants_stay_refused(constant: float) -> None:
    rng = np.random.default_rng(7)
    values = _minus_inf(MASK)
    values[0, 0] = constant
    inits = {**_weights(rng), "m": values}
    with pytest.raises(ModelLoadError, match="add_mask.*NaN or infinite"):
        bbp_ref.load(model(_attention_nodes(), ["N", ROWS, KEYS], inits))


def test_minus_inf_in_a_multiplication_stays_refused() -> None:
    rng = np.random.default_rng(8)
    inits = {**_weights(rng), "m": _minus_inf(MASK, 1.0)}
    nodes = _attention_nodes()
    nodes[1] = node("Mul", ["h", "m"], "s", name="mul_mask")
    with pytest.raises(ModelLoadError, match="mul_mask.*NaN or infinite"):
        bbp_ref.load(model(nodes, ["N", ROWS, KEYS], inits))


@pytest.mark.parametrize("value", [np.inf, np.nan], ids=["plus-inf", "nan"])
def test_a_given_input_may_hold_minus_inf_but_not_nan_or_plus_inf(value: float) -> None:
    rng = np.random.default_rng(9)
    proto = _two_input_model(_weights(rng), TensorProto.FLOAT)
    mask = _minus_inf(np.stack([MASK] * 2))
    mask[1, 0, 0] = value
    with pytest.raises(bbp_ref.errors.InputError, match=r"inputs\['mask'\].*NaN or \+inf"):
        bbp_ref.load(proto).forward(_x(rng, 2), inputs={"mask": mask})
