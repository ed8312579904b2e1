"""Attention with the batch merged into another axis (docs/math.md §7.5), hand-built.

PyTorch's attention exports reshape `[T, N, E] -> [T, N * H, Dh]`, compute per head in
`[N * H, T, Dh]` and come back through `[T * N, E]`. The graphs here write that by hand,
with targets folded from the data's Shape (which carry their batch-of-two values) and
literal targets with a -1 (as the dynamo exporter writes them). `test_ops.verify` checks
the forward against onnxruntime at a batch of three, the decomposition and completeness
for every rule, and `W^x` against central finite differences of the float64 model run by
`onnx.reference`. Then the refusals: whatever would mix examples or is ambiguous.
"""

from __future__ import annotations

import numpy as np
import pytest
from builders import f32, model, node
from onnx.reference import ReferenceEvaluator
from test_ops import FD_STEP, FD_TOL, Case, float64_copy, verify

import bbp_ref
from bbp_ref.errors import UnsupportedOpError

T, E, H = 3, 4, 2
DH = E // H
RNG_SEED = 11


def _weights(rng: np.random.Generator) -> dict[str, np.ndarray]:
    causal = np.triu(np.full((T, T), -2.0, np.float32), 1)
    return {
        "wq": f32(rng, E, E), "wk": f32(rng, E, E), "wv": f32(rng, E, E),
        "wo": f32(rng, E, E), "bo": f32(rng, E),
        "scale": np.array(1.0 / np.sqrt(DH), np.float32), "mask": causal,
        "heads": np.array(H, np.int64), "t": np.array([T], np.int64),
        "dh": np.array([DH], np.int64), "one": np.array(1, np.int64),
        "zero": np.array([0], np.int64), "axis1": np.array([1], np.int64),
        "split": np.array([T, -1, DH], np.int64), "rows": np.array([-1, E], np.int64),
    }


def _attention_nodes(scores_extra: list | None = None) -> list:
    """x [N, T, E] -> sequence first -> heads (a target from Shape for q and v, a literal
    one for k) -> softmax(q k^T * scale + mask) v -> [T * N, E] -> Gemm -> [T, N, E]
    (a target from Shape) -> [N, T, E]."""
    return [
        node("Transpose", ["x"], "xt", perm=[1, 0, 2]),
        node("MatMul", ["xt", "wq"], "q"), node("MatMul", ["xt", "wk"], "k"),
        node("MatMul", ["xt", "wv"], "v"),
        node("Shape", ["xt"], "shape"), node("Gather", ["shape", "one"], "n", axis=0),
        node("Mul", ["n", "heads"], "nh"), node("Unsqueeze", ["nh", "zero"], "nh1"),
        node("Concat", ["t", "nh1", "dh"], "heads_shape", axis=0),
        node("Reshape", ["q", "heads_shape"], "qh"), node("Reshape", ["k", "split"], "kh"),
        node("Reshape", ["v", "heads_shape"], "vh"),
        node("Transpose", ["qh"], "qt", perm=[1, 0, 2]),
        node("Unsqueeze", ["qt", "axis1"], "qt4"), node("Squeeze", ["qt4", "axis1"], "qt3"),
        node("Transpose", ["kh"], "kt", perm=[1, 2, 0]),
        node("Transpose", ["vh"], "vt", perm=[1, 0, 2]),
        node("MatMul", ["qt3", "kt"], "s1"), node("Mul", ["s1", "scale"], "s2"),
        node("Add", ["s2", "mask"], "s3"), *(scores_extra or []),
        node("Softmax", ["s3" if not scores_extra else "s4"], "p", axis=-1),
        node("MatMul", ["p", "vt"], "o"), node("Transpose", ["o"], "o2", perm=[1, 0, 2]),
        node("Reshape", ["o2", "rows"], "o3"),
        node("Gemm", ["o3", "wo", "bo"], "o4", transB=1),
        node("Reshape", ["o4", "shape"], "o5"),
        node("Transpose", ["o5"], "y", perm=[1, 0, 2]),
    ]


def test_attention_through_merged_heads_matches_onnxruntime_and_differences() -> None:
    rng = np.random.default_rng(RNG_SEED)
    proto = model(_attention_nodes(), ["N", T, E], _weights(rng))
    _, explanations = verify(Case(proto, f32(rng, 3, T, E)))
    assert not explanations[0].piecewise_linear


def test_a_per_head_constant_broadcasts_per_example() -> None:
    """A constant of the per-example length H along the merged axis (a per-head bias, as
    folding at a batch of one gives): the same for every example. onnxruntime runs the
    file only at a batch of one, where `N * H = H`."""
    rng = np.random.default_rng(RNG_SEED + 1)
    inits = {**_weights(rng), "head_bias": f32(rng, H, 1, T)}
    proto = model(_attention_nodes([node("Add", ["s3", "head_bias"], "s4")]), ["N", T, E],
                  inits)
    x = f32(rng, 1, T, E)
    m, _ = verify(Case(proto, x, fd=False))
    # central differences one perturbation at a time (the file runs at a batch of one)
    evaluator = ReferenceEvaluator(float64_copy(proto))
    steps = np.eye(T * E).reshape(T * E, 1, T, E) * FD_STEP
    columns = [(evaluator.run(None, {"x": x + step})[0] - evaluator.run(None, {"x": x - step})[0])
               / (2 * FD_STEP) for step in steps]
    expected = np.stack(columns, axis=-1).reshape(1, T, E, T, E)
    np.testing.assert_allclose(m.jacobian(x), expected, rtol=0, atol=FD_TOL * 10)
    batch = np.concatenate([x, f32(rng, 2, T, E)])
    np.testing.assert_allclose(m.forward(batch)[:1], m.forward(x), rtol=0, atol=1e-15)
    for i in range(1, 3):  # each example alone gives what it gives in the batch
        np.testing.assert_allclose(m.forward(batch)[i], m.forward(batch[i:i + 1])[0],
                                   rtol=0, atol=1e-15)


def _refused(nodes: list, extra: dict | None = None, output: str = "y") -> str:
    rng = np.random.default_rng(RNG_SEED)
    proto = model(nodes, ["N", T, E], {**_weights(rng), **(extra or {})}, output_name=output)
    with pytest.raises(UnsupportedOpError) as info:
        bbp_ref.load(proto).forward(f32(rng, 2, T, E))
    return str(info.value)


def _head_nodes() -> list:
    """x -> [N * H, T, Dh] (output "qt")."""
    return [node("Transpose", ["x"], "xt", perm=[1, 0, 2]),
            node("Reshape", ["xt", "split"], "qh"),
            node("Transpose", ["qh"], "qt", perm=[1, 0, 2])]


def test_softmax_along_the_merged_axis_is_refused() -> None:
    message = _refused([*_head_nodes(), node("Softmax", ["qt"], "p", axis=0),
                        node("Transpose", ["p"], "q2", perm=[1, 0, 2]),
                        node("Reshape", ["q2", "rows"], "y")])
    assert "Softmax" in message and "mix examples" in message


def test_an_op_that_did_not_opt_in_is_refused_naming_the_merged_batch() -> None:
    message = _refused([*_head_nodes(), node("ReduceMax", ["qt"], "y", axes=[2])])
    assert "ReduceMax" in message and "merged" in message


def test_a_matmul_contracting_the_merged_axis_is_refused() -> None:
    """`[T, Dh, N * H] @ W[H, 5]` would sum over the examples."""
    extra = {"w_right": np.ones((H, 5), np.float32)}
    message = _refused([*_head_nodes(), node("Transpose", ["qt"], "qd", perm=[1, 2, 0]),
                        node("MatMul", ["qd", "w_right"], "y")], extra)
    assert "MatMul" in message and "does not contract that axis" in message


def test_a_target_written_for_a_batch_of_one_only_is_refused() -> None:
    """`[T, H, Dh]` without -1 or a Shape: where the batch goes cannot be told."""
    extra = {"fixed": np.array([T, H, DH], np.int64)}
    message = _refused([node("Transpose", ["x"], "xt", perm=[1, 0, 2]),
                        node("Reshape", ["xt", "fixed"], "y")], extra)
    assert "Reshape" in message and "merges it with other axes" in message


def test_a_reshape_interleaving_examples_is_refused() -> None:
    """`[T, N * H, Dh] -> [T, H, N * Dh]`: examples' elements would interleave."""
    extra = {"odd": np.array([T, H, -1], np.int64)}
    message = _refused([*_head_nodes(), node("Transpose", ["qt"], "q2", perm=[1, 0, 2]),
                        node("Reshape", ["q2", "odd"], "y")], extra)
    assert "interleave" in message


def test_an_explained_output_with_a_merged_batch_is_refused() -> None:
    message = _refused(_head_nodes(), output="qt")
    assert "explained output" in message and "merged into ONNX axis 0" in message
