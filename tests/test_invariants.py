"""The seven invariants of docs/math.md §5 on several architectures (MLP, CNN, residual,
grouped/dilated/strided conv, saturated Clip, concatenated branches)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from architectures import ARCHITECTURES
from builders import reference_float64, run_onnxruntime

import bbp_ref
from bbp_ref.engine.gates import ElementwiseLocal, MaxPoolLocal

RULES = ("abs", "signed", "uniform")
TOL = 1e-10


def setup(name, bias=True, seed=0, batch=3):
    rng = np.random.default_rng(seed)
    proto, shape = ARCHITECTURES[name](rng, bias=bias)
    scale = 2.0 if name == "saturated_clip" else 1.0
    x = (rng.normal(size=(batch, *shape)) * scale).astype(np.float32)
    return proto, x


def rel(a, b, scale):
    return np.max(np.abs(np.asarray(a) - np.asarray(b)) / np.maximum(scale, 1e-300))


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_1_local_linear_model_reproduces_every_output(name):
    proto, x = setup(name)
    model = bbp_ref.load(proto)
    logits = model.forward(x).reshape(len(x), -1)
    jac = model.jacobian(x).reshape(len(x), logits.shape[1], -1)
    for k in range(logits.shape[1]):
        e = bbp_ref.explain(model, x, target=k, check="full")
        np.testing.assert_array_equal(e.gradient.reshape(len(x), -1), jac[:, k])
        wx = (jac[:, k] * x.reshape(len(x), -1)).sum(axis=1)
        magnitude = np.abs(jac[:, k] * x.reshape(len(x), -1)).sum(axis=1) + np.abs(e.bias)
        assert rel(wx + e.bias, logits[:, k], magnitude) <= TOL
        assert np.max(e.checks.linear_passes) <= TOL


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("name", ARCHITECTURES)
def test_2_bias_attribution_is_complete_for_every_target_and_layer_set(name, rule):
    proto, x = setup(name)
    model = bbp_ref.load(proto)
    n_out = model.forward(x[0]).size
    biased = [n.name for n in model.graph if n.has_bias]
    selections = [None, *([b] for b in biased), biased[::2]]
    for k in range(n_out):
        for layers in selections:
            e = bbp_ref.explain(model, x, target=k, rule=rule, layers=layers, check=False)
            injected = sum(e.layer_bias[n] for n in e.layers) if e.layers else np.zeros(len(x))
            total = e.bias_attribution.reshape(len(x), -1).sum(axis=1)
            scale = sum(np.abs(v) for v in e.layer_bias.values()) + 1e-300
            assert rel(total, injected, scale) <= TOL, (k, layers)


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_3_forward_agrees_with_onnxruntime(name):
    proto, x = setup(name)
    ours = bbp_ref.load(proto).forward(x)
    theirs = run_onnxruntime(proto, x)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5 * np.abs(theirs).max())
    e = bbp_ref.explain(proto, x)
    assert e.checks.onnxruntime is not None and e.checks.onnxruntime.ok


def _same_explanations(a, b, x, rules=RULES):
    for rule in rules:
        ea = bbp_ref.explain(a, x, rule=rule, check=False)
        eb = bbp_ref.explain(b, x, rule=rule, check=False)
        scale = np.abs(ea.gradient).max()
        np.testing.assert_allclose(eb.gradient, ea.gradient, rtol=1e-12, atol=1e-12 * scale)
        np.testing.assert_allclose(eb.bias, ea.bias, rtol=1e-12, atol=1e-12)
        scale = np.abs(ea.bias_attribution).max()
        np.testing.assert_allclose(eb.bias_attribution, ea.bias_attribution, rtol=1e-9,
                                   atol=1e-12 * scale)


def _gemm_as_matmul_add(proto):
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in out.graph.initializer}
    nodes = []
    for n in out.graph.node:
        if n.op_type != "Gemm":
            nodes.append(n)
            continue
        w_t = inits[n.input[1]].T.copy()
        out.graph.initializer.append(onnx.numpy_helper.from_array(w_t, n.input[1] + "_T"))
        mid = n.output[0] + "_mm"
        nodes.append(onnx.helper.make_node("MatMul", [n.input[0], n.input[1] + "_T"], [mid],
                                           name=n.name + "_matmul"))
        nodes.append(onnx.helper.make_node("Add", [mid, n.input[2]], [n.output[0]],
                                           name=n.name + "_add"))
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out


def _with_pass_through_ops(proto):
    """Identity, Dropout and a Flatten/Reshape pair inserted after every activation."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    nodes = []
    for n in out.graph.node:
        nodes.append(n)
        if n.op_type not in ("Relu", "LeakyRelu", "PRelu", "Clip"):
            continue
        original = n.output[0]
        n.output[0] = original + "_raw"
        nodes.append(onnx.helper.make_node("Identity", [original + "_raw"], [original + "_i"],
                                           name=n.name + "_identity"))
        nodes.append(onnx.helper.make_node("Dropout", [original + "_i"], [original],
                                           name=n.name + "_dropout"))
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_4_graph_rewrites_change_nothing(name, monkeypatch):
    proto, x = setup(name)
    _same_explanations(proto, _gemm_as_matmul_add(proto), x)
    _same_explanations(proto, _with_pass_through_ops(proto), x)
    folded = bbp_ref.load(proto)
    with monkeypatch.context() as patch:
        patch.setattr("bbp_ref.importer.builder.canonicalize", lambda graph: graph)
        unfolded = bbp_ref.load(proto)
    assert len(unfolded.graph) >= len(folded.graph)
    _same_explanations(folded, unfolded, x)


def _pattern(model, x):
    trace = model.trace(np.asarray(x, np.float64))
    parts = []
    for local in trace.local.values():
        if isinstance(local, ElementwiseLocal):
            parts.append(local.slope.copy())
        elif isinstance(local, MaxPoolLocal):
            parts.append(local.index.copy())
    return parts


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_5_gradient_equals_finite_differences_inside_the_linear_region(name):
    proto, x = setup(name, batch=1)
    model = bbp_ref.load(proto)
    reference = reference_float64(proto)
    x64 = x.astype(np.float64)
    jac = model.jacobian(x64)[0].reshape(-1, x64[0].size)
    step = 1e-5
    base = _pattern(model, x64)
    for q in range(x64[0].size):
        delta = np.zeros(x64[0].size)
        delta[q] = step
        delta = delta.reshape(x64.shape)
        for point in (x64 + delta, x64 - delta):
            assert all(np.array_equal(a, b) for a, b in zip(base, _pattern(model, point))), \
                "the finite-difference step left the linear region"
        slope = (reference(x64 + delta) - reference(x64 - delta)).reshape(-1) / (2 * step)
        np.testing.assert_allclose(jac[:, q], slope, rtol=1e-6, atol=1e-8)


HOMOGENEOUS = [n for n in ARCHITECTURES if n != "saturated_clip"]


@pytest.mark.parametrize("name", HOMOGENEOUS)
def test_6_bias_free_network_has_no_bias_and_is_positively_homogeneous(name):
    proto, x = setup(name, bias=False)
    model = bbp_ref.load(proto)
    for rule in RULES:
        e = bbp_ref.explain(model, x, rule=rule, check=False)
        np.testing.assert_array_equal(e.bias, 0.0)
        np.testing.assert_array_equal(e.bias_attribution, 0.0)
    for k in (0.5, 3.0):
        np.testing.assert_allclose(model.forward(k * x.astype(np.float64)),
                                   k * model.forward(x), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("name", ARCHITECTURES)
def test_7_batched_equals_one_at_a_time(name, rule):
    proto, x = setup(name, batch=4)
    model = bbp_ref.load(proto)
    targets = np.arange(4) % model.forward(x[0]).size
    batched = bbp_ref.explain(model, x, target=targets, rule=rule, check=False)
    for i in range(4):
        single = bbp_ref.explain(model, x[i], target=int(targets[i]), rule=rule, check=False)
        for field in ("output", "gradient", "bias", "bias_attribution", "logits"):
            np.testing.assert_allclose(getattr(single, field), getattr(batched, field)[i],
                                       rtol=1e-13, atol=1e-15, err_msg=field)
        for layer, value in single.layer_bias.items():
            assert value == pytest.approx(batched.layer_bias[layer][i], rel=1e-13, abs=1e-15)


def test_saturated_clip_contributes_a_local_bias():
    proto, x = setup("saturated_clip")
    e = bbp_ref.explain(proto, x, check=False)
    assert np.any(e.layer_bias["hardtanh"] != 0) and np.any(e.layer_bias["clip01"] != 0)


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_decompose_gives_both_parts_for_every_output(name):
    proto, x = setup(name)
    model = bbp_ref.load(proto)
    weights_times_x, bias = model.decompose(x)
    logits = model.forward(x)
    n = len(x)
    jac = model.jacobian(x).reshape(n, logits[0].size, -1)
    expected_wx = np.einsum("nkq,nq->nk", jac, x.reshape(n, -1).astype(np.float64))
    np.testing.assert_allclose(weights_times_x.reshape(n, -1), expected_wx, rtol=1e-10,
                               atol=1e-12 * np.abs(expected_wx).max())
    for k in range(logits[0].size):
        e = bbp_ref.explain(model, x, target=k, check=False)
        np.testing.assert_allclose(bias.reshape(n, -1)[:, k], e.bias, rtol=1e-10, atol=1e-12)
    single_wx, single_b = model.decompose(x[0])
    np.testing.assert_allclose(single_wx + single_b, logits[0], rtol=1e-12, atol=1e-12)
