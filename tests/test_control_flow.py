"""Control flow with constant conditions (docs/math.md §7.8): If with a constant
condition inlined, Loop with a constant trip count and Scan unrolled, each checked by
`test_ops.verify` against onnxruntime, the decomposition for every rule and finite
differences of the float64 model run by `onnx.reference` (which runs the control flow
itself); refusals for data-dependent conditions and trip counts."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from builders import f32, model, node
from onnx import TensorProto, helper
from test_ops import Case, verify
from test_recurrent import engine_finite_differences

import bbp_ref
from bbp_ref.errors import UnsupportedOpError
from bbp_ref.importer import unrolling

FLOAT = TensorProto.FLOAT


def _branch(name: str, nodes: list, output: str) -> onnx.GraphProto:
    return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(output, FLOAT,
                                                                             None)])


def _if_model(rng: np.random.Generator, condition_nodes: list) -> onnx.ModelProto:
    """y = Gemm(If(cond, then: Tanh(h) * 2, else: Relu(h) - 1)); h, 2 and 1 come from
    the outer scope; both branches name their local tensor ``t``."""
    then_branch = _branch("then", [node("Tanh", ["h"], "t"), node("Mul", ["t", "two"], "out")],
                          "out")
    else_branch = _branch("else", [node("Relu", ["h"], "t"), node("Sub", ["t", "one"], "out")],
                          "out")
    inits = {"w1": f32(rng, 4, 5), "b1": f32(rng, 5), "w2": f32(rng, 5, 3), "b2": f32(rng, 3),
             "two": np.array(2.0, np.float32), "one": np.array(1.0, np.float32)}
    nodes = [node("Gemm", ["x", "w1", "b1"], "h"), *condition_nodes,
             helper.make_node("If", ["cond"], ["branch"], name="if",
                              then_branch=then_branch, else_branch=else_branch),
             node("Gemm", ["branch", "w2", "b2"], "y")]
    return model(nodes, ["N", 4], inits)


@pytest.mark.parametrize("features", [4, 5])
def test_if_with_a_folded_condition(features: int) -> None:
    """cond = (Shape(x)[1] == features): folds at import, picks a branch."""
    rng = np.random.default_rng(0)
    nodes = [node("Shape", ["x"], "shape"),
             node("Constant", [], "index", value=helper.make_tensor("index", TensorProto.INT64,
                                                                  [1], [1])),
             node("Gather", ["shape", "index"], "width", axis=0),
             node("Constant", [], "expected", value=helper.make_tensor(
                 "expected", TensorProto.INT64, [1], [features])),
             node("Equal", ["width", "expected"], "equal"),
             node("Squeeze", ["equal"], "cond")]
    case = Case(_if_model(rng, nodes), f32(rng, 3, 4))
    m, explanations = verify(case)
    names = set(m.graph.nodes) if hasattr(m, "graph") else set()
    ops = {n.op for n in m.graph.nodes.values()} if names else set()
    assert ("Tanh" in ops) == (features == 4) and ("Relu" in ops) == (features != 4)
    assert not explanations[0].piecewise_linear if features == 4 else True


def test_if_with_a_data_condition_is_refused() -> None:
    rng = np.random.default_rng(0)
    nodes = [node("ReduceMean", ["h"], "total", keepdims=0, axes=[1]),
             node("Constant", [], "zero", value=helper.make_tensor("zero", FLOAT, [], [0.0])),
             node("Greater", ["total", "zero"], "cond")]
    proto = _if_model(rng, nodes)
    with pytest.raises(UnsupportedOpError) as info:
        bbp_ref.load(proto).forward(np.ones((1, 4), np.float32))
    # a comparison of data is itself refused first (it is not differentiable): no data
    # condition reaches the If
    assert (info.value.op_type, info.value.node_name) == ("Greater", "greater_cond")


def _loop_model(rng: np.random.Generator, trip: int, condition_output: str = "cond_in"
                ) -> onnx.ModelProto:
    """state <- Tanh(state @ w + b) for ``trip`` iterations (w, b from the outer scope),
    a scan output of every state; y = Gemm(final state) + the scan outputs' mean."""
    body = helper.make_graph(
        [node("MatMul", ["state_in", "w"], "mm"), node("Add", ["mm", "b"], "pre"),
         node("Tanh", ["pre"], "state_out"), node("Identity", ["state_out"], "scan"),
         node("Identity", [condition_output], "cond_out")],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("state_in", FLOAT, None)],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("state_out", FLOAT, None),
         helper.make_tensor_value_info("scan", FLOAT, None)])
    inits = {"w": f32(rng, 3, 3, scale=0.8), "b": f32(rng, 3), "trip": np.array(trip, np.int64),
             "true": np.array(True), "wo": f32(rng, 3, 2), "bo": f32(rng, 2)}
    nodes = [helper.make_node("Loop", ["trip", "true", "x"], ["final", "states"], name="loop",
                              body=body),
             node("ReduceMean", ["states"], "mean", axes=[0], keepdims=0),
             node("Add", ["final", "mean"], "both"),
             node("Gemm", ["both", "wo", "bo"], "y")]
    return model(nodes, ["N", 3], inits, opset=13)


def test_loop_with_a_constant_trip_count() -> None:
    """onnx.reference concatenates a Loop's scan outputs instead of stacking them (its
    result is right for a batch of one only), so the Jacobian is compared with central
    differences of the engine's forward, itself checked against onnxruntime."""
    rng = np.random.default_rng(1)
    proto = _loop_model(rng, 4)
    case = Case(proto, f32(rng, 3, 3), fd=False)
    m, _ = verify(case)
    engine_finite_differences(m, case.x)
    assert any(name.startswith("loop/3/") for name in m.graph.nodes)


def test_loop_with_a_data_dependent_condition_is_refused() -> None:
    rng = np.random.default_rng(1)
    proto = _loop_model(rng, 4)
    body = proto.graph.node[0].attribute[0].g
    body.node.insert(3, node("ReduceMean", ["state_out"], "s", keepdims=0, axes=[1]))
    body.node.insert(4, node("Constant", [], "zero",
                             value=helper.make_tensor("zero", FLOAT, [], [0.0])))
    body.node[-1].CopyFrom(node("Greater", ["s", "zero"], "cond_out"))
    with pytest.raises(UnsupportedOpError) as info:
        bbp_ref.load(proto).forward(np.ones((1, 3), np.float32))
    assert info.value.node_name in ("loop", "loop/0/greater_cond_out")


def test_loop_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(unrolling, "MAX_UNROLLED_NODES", 12)
    rng = np.random.default_rng(1)
    with pytest.raises(UnsupportedOpError, match="limit of 12 unrolled nodes") as info:
        bbp_ref.load(_loop_model(rng, 4)).forward(np.ones((1, 3), np.float32))
    assert info.value.node_name == "loop"


@pytest.mark.parametrize("reverse", [0, 1])
def test_scan_over_the_sequence_axis(reverse: int) -> None:
    """A running state over x [N, T, F] along axis 1: state <- Tanh(state @ w + x_t)."""
    rng = np.random.default_rng(2)
    body = helper.make_graph(
        [node("MatMul", ["state_in", "w"], "mm"), node("Add", ["mm", "x_t"], "pre"),
         node("Tanh", ["pre"], "state_out"), node("Identity", ["state_out"], "scan_out")],
        "body",
        [helper.make_tensor_value_info("state_in", FLOAT, None),
         helper.make_tensor_value_info("x_t", FLOAT, None)],
        [helper.make_tensor_value_info("state_out", FLOAT, None),
         helper.make_tensor_value_info("scan_out", FLOAT, None)])
    inits = {"w": f32(rng, 3, 3, scale=0.8), "h0w": f32(rng, 3, 3),
             "wo": f32(rng, 3, 2), "bo": f32(rng, 2)}
    nodes = [node("ReduceMean", ["x"], "mean", axes=[1], keepdims=0),
             node("MatMul", ["mean", "h0w"], "h0"),
             helper.make_node("Scan", ["h0", "x"], ["final", "states"], name="scan",
                              body=body, num_scan_inputs=1, scan_input_axes=[1],
                              scan_input_directions=[reverse], scan_output_axes=[1]),
             node("ReduceMean", ["states"], "total", axes=[1], keepdims=0),
             node("Add", ["final", "total"], "both"),
             node("Gemm", ["both", "wo", "bo"], "y")]
    proto = model(nodes, ["N", 4, 3], inits, opset=13)
    # onnx.reference's Scan supports axis 0 and the forward direction only: finite
    # differences of the engine's forward (checked against onnxruntime) instead
    case = Case(proto, f32(rng, 3, 4, 3), fd=False)
    m, _ = verify(case)
    engine_finite_differences(m, case.x)
