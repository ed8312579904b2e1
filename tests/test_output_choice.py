"""``output=``: any float tensor of the graph can be explained (the logit before a binary
classifier's Sigmoid, a hidden layer), checked against hand computation; scikit-learn's
ZipMap gets an error that says what to do."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from builders import f32, model, node
from onnx import TensorProto, helper

import bbp_ref

RNG = np.random.default_rng(7)
W1, B1 = f32(RNG, 5, 4), f32(RNG, 5)
W2, B2 = f32(RNG, 1, 5), f32(RNG, 1)
X = f32(RNG, 3, 4)


def binary_classifier() -> onnx.ModelProto:
    """x[N, 4] -> Gemm hidden (5) -> Relu -> Gemm logit (1) -> Sigmoid -> probability."""
    return model([node("Gemm", ["x", "W1", "b1"], "hidden", name="fc1", transB=1),
                  node("Relu", ["hidden"], "r", name="relu"),
                  node("Gemm", ["r", "W2", "b2"], "logit", name="fc2", transB=1),
                  node("Sigmoid", ["logit"], "y", name="sigmoid")],
                 ["N", 4], {"W1": W1, "b1": B1, "W2": W2, "b2": B2})


def by_hand(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The logit's value, gradient and local bias at each row of ``x``, in float64."""
    w1, b1, w2, b2 = (a.astype(np.float64) for a in (W1, B1, W2, B2))
    pre = x.astype(np.float64) @ w1.T + b1
    on = (pre > 0).astype(np.float64)
    gradient = (w2[0] * on) @ w1
    bias = (w2[0] * on * b1).sum(axis=1) + b2[0]
    return pre.clip(min=0) @ w2[0] + b2[0], gradient, bias


def test_the_logit_before_a_sigmoid_can_be_explained():
    """The probability is only a tangent model at x; its logit is piecewise linear."""
    assert not bbp_ref.explain(binary_classifier(), X).piecewise_linear
    for name in ("logit", "fc2"):  # the tensor, or the ONNX node that computes it
        e = bbp_ref.explain(binary_classifier(), X, output=name)
        assert e.piecewise_linear
        value, gradient, bias = by_hand(X)
        np.testing.assert_allclose(e.output, value, rtol=1e-12)
        np.testing.assert_allclose(e.gradient, gradient, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(e.bias, bias, rtol=1e-12, atol=1e-15)
        assert e.checks.passed and e.checks.onnxruntime is not None  # onnxruntime's "logit"


def test_a_hidden_layer_can_be_explained():
    """Unit t of the hidden Gemm: W^x = W1[t], b^x = b1[t], and the abs rule's B(x) is
    b1[t] |W1[t] * x| / sum |W1[t] * x| (hand computation)."""
    e = bbp_ref.explain(binary_classifier(), X, target=2, output="hidden")
    w1, b1, x = W1.astype(np.float64), B1.astype(np.float64), X.astype(np.float64)
    np.testing.assert_allclose(e.output, x @ w1[2] + b1[2], rtol=1e-12)
    np.testing.assert_array_equal(e.gradient, np.broadcast_to(w1[2], x.shape))
    np.testing.assert_allclose(e.bias, b1[2], rtol=1e-12)
    share = np.abs(w1[2] * x)
    np.testing.assert_allclose(e.bias_attribution,
                               b1[2] * share / share.sum(axis=1, keepdims=True), rtol=1e-12)
    assert bbp_ref.load(binary_classifier(), output="hidden").nodes[-1].name == "fc1"


def test_the_output_must_be_a_float_tensor_of_the_graph():
    proto = binary_classifier()
    proto.graph.node.append(node("Cast", ["logit"], "as_int", name="cast", to=TensorProto.INT64))
    with pytest.raises(bbp_ref.InputError, match="'as_int' has element type int64"):
        bbp_ref.load(proto, output="as_int")
    with pytest.raises(bbp_ref.InputError, match="'nope' is no tensor of the model"):
        bbp_ref.load(proto, output="nope")


def zipmap_classifier() -> onnx.ModelProto:
    """scikit-learn's shape: Softmax probabilities, then ZipMap (a list of dicts)."""
    rng = np.random.default_rng(3)
    nodes = [node("Gemm", ["x", "W", "b"], "scores", name="fc", transB=1),
             node("Softmax", ["scores"], "probabilities", name="softmax", axis=1),
             helper.make_node("ZipMap", ["probabilities"], ["output_probability"],
                              name="zipmap", domain="ai.onnx.ml",
                              classlabels_int64s=[0, 1, 2])]
    probability = helper.make_map_type_proto(TensorProto.INT64,
                                             helper.make_tensor_type_proto(TensorProto.FLOAT, []))
    seq = helper.make_value_info("output_probability",
                                 helper.make_sequence_type_proto(probability))
    graph = helper.make_graph(
        nodes, "zipmap", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [seq], [onnx.numpy_helper.from_array(f32(rng, 3, 4), "W"),
                onnx.numpy_helper.from_array(f32(rng, 3), "b")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13),
                                                    helper.make_opsetid("ai.onnx.ml", 1)])
    proto.ir_version = 7
    return proto


def test_zipmap_error_says_how_to_export_or_what_to_explain():
    with pytest.raises(bbp_ref.ModelLoadError) as info:
        bbp_ref.load(zipmap_classifier())
    message = str(info.value)
    assert "options={'zipmap': False}" in message and "output='probabilities'" in message
    with pytest.raises(bbp_ref.InputError, match="options=\\{'zipmap': False\\}"):
        bbp_ref.load(zipmap_classifier(), output="output_probability")
    e = bbp_ref.explain(zipmap_classifier(), X, output="probabilities")
    assert e.stripped == ("Softmax (node 'softmax')",) and e.checks.passed


@pytest.mark.torch
def test_scikit_learn_classifiers_exported_with_and_without_zipmap():
    sklearn = pytest.importorskip("sklearn.neural_network")
    skl2onnx = pytest.importorskip("skl2onnx")
    x = RNG.normal(size=(80, 4)).astype(np.float32)
    labels = (x[:, 0] > 0).astype(int)
    classifier = sklearn.MLPClassifier(hidden_layer_sizes=(6,), max_iter=300,
                                       random_state=0).fit(x, labels)
    with pytest.raises(bbp_ref.ModelLoadError, match="zipmap"):
        bbp_ref.load(skl2onnx.to_onnx(classifier, x[:1], target_opset=17))
    plain = skl2onnx.to_onnx(classifier, x[:1], target_opset=17, options={"zipmap": False})
    # the binary MLP's probability is a Sigmoid of its logit: name the logit tensor
    sigmoid = next(n for n in plain.graph.node if n.op_type == "Sigmoid")
    e = bbp_ref.explain(plain, x[:5], output=sigmoid.input[0])
    hidden = np.maximum(x[:5].astype(np.float64) @ classifier.coefs_[0]
                        + classifier.intercepts_[0], 0)
    logit = hidden @ classifier.coefs_[1][:, 0] + classifier.intercepts_[1][0]
    np.testing.assert_allclose(e.output, logit, rtol=1e-5, atol=1e-6)  # float32 weights
    assert e.checks.passed
