"""Several inputs and explanations with respect to a tensor (`wrt=`, `inputs=`;
docs/math.md §7 "Several inputs"): against hand-built one-input models, hand computation
and onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from builders import f32, model, node
from onnx import TensorProto, helper, numpy_helper

import bbp_ref
from bbp_ref.errors import InputError


def _two_input_model() -> onnx.ModelProto:
    """y = (x * s) @ W + b with x, s both [N, 4]."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(f32(rng, 4, 3), "W"), numpy_helper.from_array(
        f32(rng, 3), "b")]
    nodes = [node("Mul", ["x", "s"], "p"), node("MatMul", ["p", "W"], "h"),
             node("Add", ["h", "b"], "y")]
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 4]) for n in "xs"]
    graph = helper.make_graph(nodes, "two", inputs,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
                              inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def _with_s_as_constant(proto: onnx.ModelProto, s: np.ndarray) -> onnx.ModelProto:
    """The same model with input s turned into an initializer, written by hand."""
    graph = proto.graph
    inits = list(graph.initializer) + [numpy_helper.from_array(s.astype(np.float32), "s")]
    new = helper.make_graph(list(graph.node), "one", [graph.input[0]], list(graph.output),
                            inits)
    return helper.make_model(new, opset_imports=list(proto.opset_import), ir_version=8)


def _token_model() -> onnx.ModelProto:
    """ids [N, T] int64 -> Gather(embedding) 'emb' [N, T, 4] -> * mask[N, T, 1] ->
    ReduceMean over T -> Gemm -> y [N, 2]."""
    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array(f32(rng, 10, 4), "E"),
             numpy_helper.from_array(f32(rng, 4, 2), "W"),
             numpy_helper.from_array(f32(rng, 2), "b"),
             numpy_helper.from_array(np.array([2], np.int64), "axis2")]
    nodes = [node("Gather", ["E", "ids"], "emb", name="embed"),
             node("Unsqueeze", ["mask", "axis2"], "m3"),
             node("Mul", ["emb", "m3"], "masked"),
             node("ReduceMean", ["masked"], "pooled", axes=[1], keepdims=0),
             node("Gemm", ["pooled", "W", "b"], "y"),
             node("Neg", ["mask"], "unused")]  # a tensor not on the path to y
    inputs = [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 3]),
              helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["N", 3])]
    graph = helper.make_graph(nodes, "tok", inputs,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
                              inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def _ort(proto: onnx.ModelProto, feeds: dict) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def test_other_inputs_are_constants_at_the_point() -> None:
    proto = _two_input_model()
    rng = np.random.default_rng(2)
    x, s = f32(rng, 2, 4), f32(rng, 2, 4)
    e = bbp_ref.explain(proto, x, inputs={"s": s})
    assert e.checks.passed  # onnxruntime ran the bound model
    np.testing.assert_array_equal(e.wrt_value, x.astype(np.float64))
    for i in range(2):  # the same as a model with s[i] an initializer, built by hand
        alone = bbp_ref.explain(_with_s_as_constant(proto, s[i:i + 1]), x[i])
        np.testing.assert_array_equal(e.gradient[i], alone.gradient)
        np.testing.assert_array_equal(e.bias_attribution[i], alone.bias_attribution)
        assert e.bias[i] == alone.bias and e.target[i] == alone.target
    w = numpy_helper.to_array(proto.graph.initializer[0]).astype(np.float64)
    np.testing.assert_allclose(e.gradient, s * w[:, e.target].T, rtol=1e-15)
    logits = bbp_ref.load(proto).forward(x, inputs={"s": s})
    np.testing.assert_allclose(logits, _ort(proto, {"x": x, "s": s}), rtol=1e-5)


def test_wrt_a_graph_input_by_name_and_a_single_example() -> None:
    proto = _two_input_model()
    rng = np.random.default_rng(3)
    x, s = f32(rng, 4), f32(rng, 1, 4)
    e = bbp_ref.explain(proto, s[0], wrt="s", inputs={"x": x[None]})
    alone = bbp_ref.explain(_with_s_as_constant(proto, s), x)  # y is symmetric in x, s
    np.testing.assert_allclose(e.output, alone.output, rtol=1e-15)
    w = numpy_helper.to_array(proto.graph.initializer[0]).astype(np.float64)
    np.testing.assert_allclose(e.gradient, x * w[:, e.target], rtol=1e-15)


def test_wrt_an_intermediate_tensor_equals_the_model_cut_there() -> None:
    proto = _token_model()
    ids = np.array([[1, 4, 7], [0, 0, 9]], np.int64)
    mask = np.array([[1, 1, 0], [1, 1, 1]], np.float32)
    e = bbp_ref.explain(proto, ids, wrt="emb", inputs={"mask": mask}, rule="signed")
    assert e.gradient.shape == (2, 3, 4) and e.bias_attribution.shape == (2, 3, 4)
    table = numpy_helper.to_array(proto.graph.initializer[0]).astype(np.float64)
    np.testing.assert_array_equal(e.wrt_value, table[ids])
    w = numpy_helper.to_array(proto.graph.initializer[1]).astype(np.float64)
    b = numpy_helper.to_array(proto.graph.initializer[2]).astype(np.float64)
    for i in range(2):
        # the cut model, by hand: emb [1, 3, 4] in, mask a constant
        nodes = [node("Mul", ["emb", "m3"], "masked"),
                 node("ReduceMean", ["masked"], "pooled", axes=[1], keepdims=0),
                 node("Gemm", ["pooled", "W", "b"], "y")]
        constants = {"m3": mask[i][None, :, None], "W": w.astype(np.float32),
                     "b": b.astype(np.float32)}
        cut = model(nodes, ["N", 3, 4], constants, input_name="emb")
        alone = bbp_ref.explain(cut, table[ids[i]].astype(np.float32), rule="signed")
        np.testing.assert_allclose(e.gradient[i], alone.gradient, rtol=1e-15)
        np.testing.assert_allclose(e.bias_attribution[i], alone.bias_attribution, rtol=1e-13,
                                   atol=1e-15)
        assert e.target[i] == alone.target
        # by hand: d y_t / d emb[k] = mask[k] / 3 * W[:, t]
        by_hand = mask[i].astype(np.float64)[:, None] / 3 * w[:, e.target[i]]
        np.testing.assert_allclose(e.gradient[i], by_hand, rtol=1e-15)
    g = bbp_ref.gradient(proto, ids, wrt="emb", inputs={"mask": mask})
    np.testing.assert_array_equal(g.attribution, e.gradient)
    ig = bbp_ref.integrated_gradients(proto, ids, wrt="emb", inputs={"mask": mask})
    np.testing.assert_allclose(ig.delta, 0, atol=1e-12)
    report = bbp_ref.oracle.compare(proto, ids, {"gradient": e.gradient.astype(np.float32)},
                                    wrt="emb", inputs={"mask": mask})
    assert report.passed


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"wrt": "nothing", "inputs": {"mask": np.ones((1, 3), np.float32)}}, "wrt='nothing'"),
    ({"wrt": "ids", "inputs": {"mask": np.ones((1, 3), np.float32)}}, "not a float tensor"),
    ({"inputs": {"mask": np.ones((1, 3), np.float32)}}, "not a float tensor"),
    ({"wrt": "emb"}, "several inputs not given"),
    ({"wrt": "emb", "inputs": {"mask": np.ones((1, 3), np.float32), "extra": 1}}, "extra"),
    ({"wrt": "emb", "inputs": {"mask": np.ones((1, 4), np.float32)}}, "inputs\\['mask'\\]"),
    ({"wrt": "unused", "inputs": {"mask": np.ones((1, 3), np.float32)}}, "not on the path"),
])
def test_binding_errors_name_the_argument(kwargs: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        bbp_ref.explain(_token_model(), np.array([[1, 2, 3]], np.int64), **kwargs)


def test_a_model_with_two_inputs_needs_a_binding() -> None:
    with pytest.raises(InputError, match="2 inputs"):
        bbp_ref.load(_two_input_model()).nodes  # noqa: B018


def test_cli_wrt_and_inputs(tmp_path, capsys) -> None:
    from bbp_ref.cli import main

    path = tmp_path / "tok.onnx"
    path.write_bytes(_token_model().SerializeToString())
    ids = np.array([[1, 4, 7]], np.int64)
    mask = np.array([[1, 1, 0]], np.float32)
    np.save(tmp_path / "ids.npy", ids)
    np.save(tmp_path / "mask.npy", mask)
    code = main(["explain", str(path), str(tmp_path / "ids.npy"), "--wrt", "emb",
                 "--input", f"mask={tmp_path / 'mask.npy'}", "--out", str(tmp_path / "r.npz")])
    out = capsys.readouterr().out
    assert code == 0, out
    e = bbp_ref.explain(_token_model(), ids, wrt="emb", inputs={"mask": mask})
    saved = np.load(tmp_path / "r.npz")
    np.testing.assert_array_equal(saved["gradient"], e.gradient)
    np.testing.assert_array_equal(saved["bias_attribution/abs"], e.bias_attribution)
    assert main(["nodes", str(path)]) == 0
    listing = capsys.readouterr().out
    assert "ids (int64, ['N', 3])" in listing and "mask (float32, ['N', 3])" in listing
    assert "emb" in listing and "float32 ['N', 3, 4]" in listing
    assert main(["explain", str(path), str(tmp_path / "ids.npy"), "--input", "mask"]) == 2
    assert "NAME=FILE.npy" in capsys.readouterr().err
