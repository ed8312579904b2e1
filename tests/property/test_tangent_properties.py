"""Property-based tests of the tangent model (docs/math.md §7; SPEC §6 invariants 1, 2, 7,
8, 9, 10) on random networks with smooth gates, products, Div of data, Softmax in the
middle, Concat with constants and composites (`tangent_strategies.tangent_networks`).

Each property runs a quarter of the profile's examples (50 in ``default``): the examples
are bigger than the piecewise-linear ones, and the suite has a time budget.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import event, given, reject, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from property_harness import absolute_backward, bias_contributions, failure_artifacts
from strategies import networks, output_shape, size
from tangent_more_ops import KINKED_OPS, MORE_OPS, float64_resize
from tangent_strategies import TangentNet, tangent_networks

import bbp_ref

RULES = ("abs", "signed", "uniform")
SPEC_TOL = 1e-10  # SPEC §5.1, §5.2
AUTODIFF_TOL = 1e-12  # SPEC §6, invariant 8
EXAMPLES = max(10, settings.default.max_examples // 4)
tangent_settings = settings(max_examples=EXAMPLES)
# the newer ops' networks are smaller (a few ms an example) and have more ops to cover
newer_settings = settings(max_examples=max(10, settings.default.max_examples // 2))
EACH_OP_EXAMPLES = max(5, settings.default.max_examples // 20)  # per op: 10 in default


def _all_targets(model: bbp_ref.Model, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    n_out = int(np.prod(model.forward(x[:1]).shape[1:]))
    return np.repeat(x, n_out, axis=0), np.tile(np.arange(n_out), len(x)), n_out


def _one_hot(n: int, shape: tuple[int, ...], targets: np.ndarray) -> np.ndarray:
    seed = np.zeros((n, int(np.prod(shape))))
    seed[np.arange(n), targets] = 1.0
    return seed.reshape(n, *shape)


def _bias_magnitude(model: bbp_ref.Model, x: np.ndarray, targets: np.ndarray) -> tuple:
    """(`b^x`, `sum_v sum_p |e_v[p]|`) recomputed from the reverse pass here."""
    trace = model.trace(np.asarray(x, np.float64))
    return bias_contributions(trace, _one_hot(len(x), trace.output.shape[1:], targets))


def _assert_close(actual, expected, tol, what: str) -> None:
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, f"{what}: shapes {actual.shape} != {expected.shape}"
    diff = np.abs(actual - expected)
    bound = np.broadcast_to(tol, diff.shape)
    bad = diff > bound
    assert not bad.any(), (f"{what}: |diff| {diff[bad].max():.3g} exceeds "
                           f"{bound[bad].min():.3g} at {np.argwhere(bad)[:3].tolist()}")


def _absolute_gradient(model: bbp_ref.Model, x: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """The reverse pass with `|W|` and `|slope|` from the one-hot seed (bounds the
    gradient's rounding), shaped like ``x``."""
    trace = model.trace(np.asarray(x, np.float64))
    gradient, _ = absolute_backward(trace, _one_hot(len(x), trace.output.shape[1:], targets))
    return gradient


def _kinds(model: bbp_ref.Model) -> str:
    return ",".join(sorted({n.kind for n in model.nodes}))


# -- invariant 1 ---------------------------------------------------------------------------
@tangent_settings
@given(net=tangent_networks())
def test_t1_tangent_model_reproduces_every_output(net: TangentNet):
    """`W^x x + b^x = f(x)` for every output to 1e-10 of `sum |W^x x| + sum_v sum_p |e_v|`;
    `b^x` equals the sum of the `e_v` recomputed from the reverse pass; `explain`'s
    gradient is the Jacobian's row; the explanation is piecewise linear exactly when no
    node is smooth or a product, and names those nodes."""
    _check_t1(net, "test_t1_tangent_model")


@newer_settings
@given(net=tangent_networks(more=True))
def test_t1_newer_ops_reproduce_every_output(net: TangentNet):
    """Invariant 1 (as `test_t1_tangent_model_reproduces_every_output`) on networks of the
    newer ops (`tangent_more_ops`: ConvTranspose, Resize, Pad, routes, Max/Min, ReduceMax/
    Min, Where, Einsum, HardSigmoid, LSTM/GRU/RNN)."""
    _check_t1(net, "test_t1_newer_ops")


def _check_t1(net: TangentNet, label: str) -> None:
    with failure_artifacts(label, net):
        model = bbp_ref.load(net.onnx())
        event(f"kinds: {_kinds(model)}")
        xt, targets, n_out = _all_targets(model, net.x)
        n = len(net.x)
        e = bbp_ref.explain(model, xt, target=targets, rule="abs", check=False)
        jacobian = model.jacobian(net.x).reshape(n * n_out, -1)
        row_scale = np.abs(jacobian).max(axis=1, keepdims=True)
        _assert_close(e.gradient.reshape(n * n_out, -1), jacobian, 1e-12 * row_scale + 1e-300,
                      "gradient vs Jacobian (the batch repeated: rounding only)")
        bias, magnitude = _bias_magnitude(model, xt, targets)
        _assert_close(e.bias, bias, 1e-12 * magnitude + 1e-300, "b^x vs sum of e_v")
        wx = jacobian * xt.reshape(n * n_out, -1).astype(np.float64)
        scale = np.abs(wx).sum(axis=1) + magnitude + 1e-300
        logits = model.forward(net.x).reshape(-1)
        _assert_close(wx.sum(axis=1) + e.bias, logits, SPEC_TOL * scale, "W^x x + b^x vs f(x)")
        smooth = {"smooth", "product"} & {n.kind for n in model.nodes}
        assert e.piecewise_linear == (not smooth), e.tangent_nodes
        assert set(e.tangent_nodes) == {n.name for n in model.nodes
                                        if n.kind in ("smooth", "product")}


# -- invariant 2 ---------------------------------------------------------------------------
@tangent_settings
@given(net=tangent_networks(), data=st.data())
def test_t2_bias_attribution_is_complete(net: TangentNet, data):
    """`sum B(x) = sum of the injected e_v` for every rule, every target, all layers and
    a random selection of the nodes with a local bias (tangent intercepts included)."""
    _check_t2(net, data, "test_t2_completeness")


@newer_settings
@given(net=tangent_networks(more=True), data=st.data())
def test_t2_newer_ops_bias_attribution_is_complete(net: TangentNet, data):
    """Invariant 2 on networks of the newer ops (constant Pad borders, Where choosing a
    constant, ConvTranspose's unreached outputs: `Embed`-style local bias included)."""
    _check_t2(net, data, "test_t2_newer_ops")


def _check_t2(net: TangentNet, data: st.DataObject, label: str) -> None:
    with failure_artifacts(label, net):
        model = bbp_ref.load(net.onnx())
        xt, targets, _ = _all_targets(model, net.x)
        names = [node.name for node in model.graph if node.has_bias]
        chosen = data.draw(st.lists(st.sampled_from(names), unique=True) if names
                           else st.just([]), label="layers")
        _, magnitude = _bias_magnitude(model, xt, targets)
        for rule in RULES:
            for layers in (None, chosen):
                e = bbp_ref.explain(model, xt, target=targets, rule=rule, layers=layers,
                                    check=False)
                injected = e.bias if layers is None else sum(
                    (e.layer_bias[v] for v in e.layers), np.zeros(len(xt)))
                total = e.bias_attribution.reshape(len(xt), -1).sum(axis=1)
                _assert_close(total, injected, SPEC_TOL * magnitude + 1e-300,
                              f"{rule}, layers={layers}: sum B(x)")


# -- invariant 7 ---------------------------------------------------------------------------
@tangent_settings
@given(net=tangent_networks(max_batch=3), data=st.data())
def test_t7_batched_equals_one_at_a_time(net: TangentNet, data):
    """A batch explained at once gives, per example, what explaining it alone gives
    (every field, every rule; to 1e-12 of the field's magnitude)."""
    _check_t7(net, data, "test_t7_batched")


@newer_settings
@given(net=tangent_networks(more=True, max_batch=3), data=st.data())
def test_t7_newer_ops_batched_equals_one_at_a_time(net: TangentNet, data):
    """Invariant 7 on networks of the newer ops (layout-0 recurrent ops move the batch
    axis; sizes and indices are expanded to the batch)."""
    _check_t7(net, data, "test_t7_newer_ops")


def _check_t7(net: TangentNet, data: st.DataObject, label: str) -> None:
    with failure_artifacts(label, net):
        model = bbp_ref.load(net.onnx())
        n = len(net.x)
        n_out = int(np.prod(model.forward(net.x[:1]).shape[1:]))
        targets = np.array(data.draw(st.lists(st.integers(0, n_out - 1), min_size=n,
                                              max_size=n), label="targets"))
        _, magnitude = _bias_magnitude(model, net.x, targets)
        for rule in RULES:
            batched = bbp_ref.explain(model, net.x, target=targets, rule=rule, check=False)
            for i in range(n):
                single = bbp_ref.explain(model, net.x[i], target=int(targets[i]), rule=rule,
                                         check=False)
                for name in ("output", "logits", "gradient", "bias", "bias_attribution"):
                    ours, theirs = getattr(single, name), getattr(batched, name)[i]
                    scale = float(np.abs(theirs).max(initial=0.0))
                    if name in ("bias", "bias_attribution"):
                        scale = max(scale, float(magnitude[i]))
                    _assert_close(ours, theirs, 1e-12 * scale + 1e-300, f"{rule}: {name}")


# -- invariant 8 ---------------------------------------------------------------------------
@pytest.mark.torch
@tangent_settings
@given(net=tangent_networks())
def test_t8_jacobian_equals_torch_autograd(net: TangentNet):
    """`W^x` equals the float64 Jacobian of the same network written in PyTorch from its
    description (`tangent_torch`), to 1e-12 of its rounding scale (the reverse pass with
    `|W|` and `|slope|`); `f(x)` too (scale: `sum |W^x x| + sum_v sum_p |e_v|`)."""
    _check_t8_torch(net, "test_t8_torch")


@pytest.mark.torch
@newer_settings
@given(net=tangent_networks(more=True))
def test_t8_newer_ops_jacobian_equals_torch_autograd(net: TangentNet):
    """Invariant 8 on networks of the newer ops, against PyTorch (`tangent_torch_more`:
    conv_transpose, gather, einsum, ...; Resize, Pad, DepthToSpace and the recurrent
    cells written from the operator pages). At Max/Min and ReduceMax/Min ties and at a
    HardSigmoid bound the PyTorch writing computes the documented convention."""
    _check_t8_torch(net, "test_t8_newer_ops_torch")


@pytest.mark.torch
@pytest.mark.parametrize("op", MORE_OPS)
@settings(max_examples=EACH_OP_EXAMPLES)
@given(data=st.data())
def test_t8_each_newer_op_first_against_torch_autograd(op: str, data):
    """Invariant 8 with each newer op as the first layer, on the (half of the time
    integer) input: every op is checked whatever the mixed draws give, and ties of
    Max/Min and ReduceMax/Min, gates at 0 and HardSigmoid at its bounds fall on the
    documented conventions."""
    net = data.draw(tangent_networks(more=True, first=op), label="net")
    _check_t8_torch(net, f"test_t8_each_newer_op_{op}")


@pytest.mark.parametrize("op", [o for o in MORE_OPS if o not in KINKED_OPS])
@settings(max_examples=EACH_OP_EXAMPLES)
@given(data=st.data(), seed=st.integers(0, 2**16))
def test_t8_each_newer_op_first_against_finite_differences(op: str, data, seed: int):
    """Without torch: invariant 8 with each kink-free newer op as the first layer,
    against central differences of `onnx.reference` (as
    `test_t8_newer_ops_jacobian_equals_finite_differences`)."""
    net = data.draw(tangent_networks(more=True, piecewise=False, max_batch=2, first=op),
                    label="net")
    _check_t8_differences(net, seed, f"test_t8_each_newer_op_{op}_differences")


def _check_t8_torch(net: TangentNet, label: str) -> None:
    torch = pytest.importorskip("torch")
    from tangent_torch import torch_forward, torch_jacobian
    with failure_artifacts(label, net):
        model = bbp_ref.load(net.onnx())
        n = len(net.x)
        ours = model.jacobian(net.x).reshape(n, -1, *net.x.shape[1:])
        theirs = torch_jacobian(net, net.x)
        xt, targets, n_out = _all_targets(model, net.x)
        # the rounding scale of every entry: the reverse pass with |W| and |slope| (entries
        # that cancel, as LayerNorm over two elements, keep rounding of that size)
        scale = _absolute_gradient(model, xt, targets).reshape(ours.shape)
        _assert_close(ours, theirs, AUTODIFF_TOL * scale + 1e-300, "W^x vs torch autograd")
        f = torch_forward(net, torch.tensor(net.x, dtype=torch.float64)).numpy()
        out = model.forward(net.x)
        _, magnitude = _bias_magnitude(model, xt, targets)
        f_scale = (np.abs(scale * net.x[:, None].astype(np.float64)).reshape(n, n_out, -1)
                   .sum(axis=2) + magnitude.reshape(n, n_out)).reshape(out.shape)
        _assert_close(out, f, AUTODIFF_TOL * f_scale + 1e-300, "f(x) vs torch")


@tangent_settings
@given(net=tangent_networks(piecewise=False, max_batch=2), seed=st.integers(0, 2**16))
def test_t8_jacobian_equals_finite_differences(net: TangentNet, seed: int):
    """Without torch: `W^x v` along a random direction `v` equals the Richardson
    extrapolation `(4 D(h/2) - D(h)) / 3` of central differences `D` of the float64 model
    run by `onnx.reference` (Erf in float64), on networks without kinks. Its error is
    O(h^4), far below `|D(h) - D(h/2)|` (O(h^2): the bound used, plus the rounding
    `1e3 u max|f| / h`). A coarse check (about 1e-5 of the third derivative); the torch
    property is the fine one."""
    _check_t8_differences(net, seed, "test_t8_finite_differences")


@newer_settings
@given(net=tangent_networks(more=True, piecewise=False, max_batch=2),
       seed=st.integers(0, 2**16))
def test_t8_newer_ops_jacobian_equals_finite_differences(net: TangentNet, seed: int):
    """Invariant 8 without torch on kink-free networks of the newer ops (no Max/Min,
    ReduceMax/Min, HardSigmoid or PL gates): ConvTranspose (grouped ones written per
    group for `onnx.reference`), Resize, Pad, the routes, Where, Einsum, LSTM/GRU/RNN
    against central differences of `onnx.reference` in float64."""
    _check_t8_differences(net, seed, "test_t8_newer_ops_finite_differences")


def _check_t8_differences(net: TangentNet, seed: int, label: str) -> None:
    from onnx.reference import ReferenceEvaluator
    from test_ops import Float64Erf

    reference = net.onnx(dtype=np.float64, reference=True)
    with failure_artifacts(label, net, reference=reference):
        model = bbp_ref.load(net.onnx())
        evaluator = ReferenceEvaluator(reference, new_ops=[Float64Erf, float64_resize()])
        x = net.x.astype(np.float64)
        n = len(x)
        v = np.random.default_rng(seed).normal(size=x.shape)
        v /= np.abs(v).reshape(n, -1).max(axis=1).reshape(n, *[1] * (x.ndim - 1))

        def difference(h: float) -> np.ndarray:
            plus, minus = (evaluator.run(None, {"x": x + s * h * v})[0] for s in (1, -1))
            return ((plus - minus) / (2 * h)).reshape(n, -1)

        h = 1e-2
        coarse, fine = difference(h), difference(h / 2)
        richardson = (4 * fine - coarse) / 3  # error O(h^4)
        jacobian = model.jacobian(net.x).reshape(n, coarse.shape[1], -1)
        jv = np.einsum("noq,nq->no", jacobian, v.reshape(n, -1))
        f = np.abs(evaluator.run(None, {"x": x})[0]).max()
        tol = np.abs(coarse - fine) + 1e3 * np.finfo(np.float64).eps * (f + 1) / (h / 2)
        _assert_close(jv, richardson, tol, "W^x v vs extrapolated central difference")


# -- invariant 9 ---------------------------------------------------------------------------
@tangent_settings
@given(net=tangent_networks())
def test_t9_fused_and_decomposed_composites_agree(net: TangentNet):
    """Gelu vs `0.5 x (1 + Erf(x / sqrt 2))`, HardSwish vs `x * HardSigmoid(x)`, Mish vs
    `x * Tanh(Softplus(x))`, Softmax vs `Exp / ReduceSum(Exp)`, LogSoftmax vs
    `x - Log(ReduceSum(Exp(x)))`, Div vs Mul by Reciprocal, LayerNormalization vs its
    ReduceMean/Sub/Pow/Sqrt/Div form: the same `f(x)`, `W^x`, `b^x`
    and `B(x)` for every rule and output (float64 writings, so both forms hold the same
    constants), to 1e-10 of each quantity's magnitude."""
    _check_t9(net, "test_t9_composites")


@newer_settings
@given(net=tangent_networks(more=True))
def test_t9_newer_ops_fused_and_decomposed_agree(net: TangentNet):
    """Invariant 9 for the newer ops that have a decomposition: HardSigmoid vs
    `Clip(alpha x + beta, 0, 1)`, Einsum `nik,njk->nij` vs Transpose + MatMul and
    `nrk,kj->nrj` vs MatMul, Split vs one Slice per part, Tile vs Concat of copies,
    DepthToSpace (DCR, CRD) and SpaceToDepth vs Reshape/Transpose/Reshape, a Max/Min of
    three operands vs two nested ones, ReduceMax/Min over several axes vs one axis at a
    time (the last first: the same ties)."""
    _check_t9(net, "test_t9_newer_ops")


def _reject_overflowing_writing(model: bbp_ref.Model, x: np.ndarray) -> None:
    """The decomposed Softmax is `Exp(x) / ReduceSum(Exp(x))` without a shift: chained
    products and powers can give it inputs beyond 700, where Exp overflows float64
    (`InputError`, docs/math.md §7.2 decision 3) or values near 1e300 whose products in
    the rules overflow. The fused writing is stable there; the example is rejected."""
    try:
        values = model.trace(x).values.values()
    except bbp_ref.BBpError as exc:
        if "overflow" not in str(exc):
            raise
        event("rejected: the decomposed writing overflows float64")
        reject()
    if max(float(np.abs(v).max(initial=0.0)) for v in values) > 1e100:
        event("rejected: the decomposed writing holds values above 1e100")
        reject()


def _check_t9(net: TangentNet, label: str) -> None:
    fused, decomposed = net.onnx("fused", np.float64), net.onnx("decomposed", np.float64)
    with failure_artifacts(label, net, decomposed=decomposed):
        a, b = bbp_ref.load(fused), bbp_ref.load(decomposed)
        event(f"nodes: fused {len(a.graph)}, decomposed {len(b.graph)}")
        x = net.x.astype(np.float64)
        _reject_overflowing_writing(b, x)
        xt, targets, _ = _all_targets(a, x)
        # rounding scales from both writings (one may cancel exactly where the other
        # leaves rounding, as LogSoftmax over one element: 0 against x - Log(Exp(x)))
        magnitude = np.maximum(*(_bias_magnitude(m, xt, targets)[1] for m in (a, b)))
        # the gradient's rounding scale: the reverse pass with |W| and |slope| (terms that
        # cancel, as Softmax over one element, leave rounding of their size)
        grad_scale = np.maximum(*(_absolute_gradient(m, xt, targets) for m in (a, b)))
        shape = (len(xt), *[1] * (x.ndim - 1))
        for rule in RULES:
            ea = bbp_ref.explain(a, xt, target=targets, rule=rule, check=False)
            eb = bbp_ref.explain(b, xt, target=targets, rule=rule, check=False)
            # f = W^x x + b^x: its rounding scale is that of the two parts
            f_scale = np.abs(grad_scale * xt).reshape(len(xt), -1).sum(axis=1) + magnitude
            _assert_close(eb.output, ea.output, SPEC_TOL * f_scale + 1e-300, f"{rule}: f(x)")
            _assert_close(eb.gradient, ea.gradient, SPEC_TOL * grad_scale + 1e-300,
                          f"{rule}: W^x")
            _assert_close(eb.bias, ea.bias, SPEC_TOL * magnitude + 1e-300, f"{rule}: b^x")
            _assert_close(eb.bias_attribution, ea.bias_attribution,
                          SPEC_TOL * magnitude.reshape(shape) + 1e-300, f"{rule}: B(x)")


def test_folded_bias_read_as_context_by_a_softmax_in_the_middle():
    """Found by this suite (thorough profile): `MatMul + Add -> LogSoftmax -> MatMul`. The
    Add is folded into the MatMul (canonicalisation), but the LogSoftmax's Log node, which
    reads the Add's output as a context operand (its row maximum), kept the Add's name:
    `explain` raised KeyError. Canonicalisation now renames context operands too."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in (
        ("w", rng.normal(size=(3, 4))), ("b", rng.normal(size=4)),
        ("w2", rng.normal(size=(4, 2))))]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]),
             helper.make_node("Add", ["h", "b"], ["a"]),
             helper.make_node("LogSoftmax", ["a"], ["s"], axis=-1),
             helper.make_node("MatMul", ["s", "w2"], ["y"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    x = rng.normal(size=(2, 3)).astype(np.float32)
    e = bbp_ref.explain(proto, x, check=True)
    assert e.checks.passed, e.checks.summary()


# -- invariant 10 --------------------------------------------------------------------------
def _product_of_branches(net, second: str) -> bbp_ref.Model:
    """`g(x) * h(x)` with `g` the bias-free piecewise-linear ``net`` (its Flatten + Gemm
    head included) and `h` = `g` (``"same"``) or a bias-free `Relu(Flatten(x) W)`."""
    proto = net.onnx(zero_bias=True)
    graph = proto.graph
    out = output_shape(net)
    (y,) = [o.name for o in graph.output]
    if second == "same":
        h = y
    else:
        rng = np.random.default_rng(net.seed)
        w = rng.normal(0, 1, (size(net.input_shape), size(out))).astype(np.float32)
        graph.initializer.append(numpy_helper.from_array(w, "product_w"))
        if proto.ir_version < 4:  # initializers are graph inputs too
            graph.input.append(helper.make_tensor_value_info("product_w", TensorProto.FLOAT,
                                                             list(w.shape)))
        graph.node.extend([
            helper.make_node("Flatten", ["x"], ["product_flat"], name="product_flatten"),
            helper.make_node("MatMul", ["product_flat", "product_w"], ["product_lin"],
                             name="product_matmul"),
            helper.make_node("Relu", ["product_lin"], ["product_h"], name="product_relu")])
        h = "product_h"
    graph.node.append(helper.make_node("Mul", [y, h], ["product"], name="product"))
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("product", TensorProto.FLOAT,
                                                      ["N", *out]))
    return bbp_ref.load(proto)


@tangent_settings
@given(net=networks(head=True), second=st.sampled_from(["same", "relu_linear"]))
def test_t10_bias_free_product_has_bias_minus_f(net, second: str):
    """A bias-free network of linear maps, ReLU-type gates and max-pools is positively
    homogeneous of degree 1 (`b^x = 0`, SPEC §5.6, checked by test_6), so the product of
    two such branches is of degree 2: `J x = 2 f`, `b^x = -f(x)` for every output, the
    product node's `e_v` is all of it and every other node's `e_v` is exactly 0."""
    with failure_artifacts("test_t10_bias_free_product", net):
        model = _product_of_branches(net, second)
        xt, targets, _ = _all_targets(model, net.x)
        f = model.forward(xt).reshape(len(xt), -1)[np.arange(len(xt)), targets]
        _, magnitude = _bias_magnitude(model, xt, targets)
        for rule in RULES:
            e = bbp_ref.explain(model, xt, target=targets, rule=rule, check=False)
            _assert_close(e.bias, -f, SPEC_TOL * (np.abs(f) + magnitude) + 1e-300,
                          f"{rule}: b^x vs -f(x)")
            _assert_close(e.layer_bias["product"], -f,
                          SPEC_TOL * (np.abs(f) + magnitude) + 1e-300,
                          f"{rule}: e_v of the product")
            for name, value in e.layer_bias.items():
                if name != "product":
                    np.testing.assert_array_equal(value, 0.0, err_msg=f"{rule}: e_v of {name}")


@newer_settings
@given(net=tangent_networks(more=True, homogeneous=True))
def test_t10_newer_ops_bias_free_product_has_bias_minus_f(net: TangentNet):
    """A bias-free body of the newer piecewise-linear ops (ConvTranspose, Resize, Pad with
    a zero border, the routes, Max/Min of data and zero constants, ReduceMax/Min, Where
    with data or zeros, Einsum with a constant) and Relu/LeakyRelu/Abs is positively
    homogeneous of degree 1; a product of two bias-free linear maps of it then a bias-free
    head is of degree 2: `b^x = -f(x)` for every output and rule, all of it in the
    product node's `e_v`, every other `e_v` exactly 0."""
    with failure_artifacts("test_t10_newer_ops", net):
        model = bbp_ref.load(net.onnx())
        products = {node.name for node in model.nodes if node.kind == "product"}
        assert len(products) == 1, products
        (product,) = products
        xt, targets, _ = _all_targets(model, net.x)
        f = model.forward(xt).reshape(len(xt), -1)[np.arange(len(xt)), targets]
        _, magnitude = _bias_magnitude(model, xt, targets)
        tol = SPEC_TOL * (np.abs(f) + magnitude) + 1e-300
        for rule in RULES:
            e = bbp_ref.explain(model, xt, target=targets, rule=rule, check=False)
            _assert_close(e.bias, -f, tol, f"{rule}: b^x vs -f(x)")
            _assert_close(e.layer_bias[product], -f, tol, f"{rule}: e_v of the product")
            for name, value in e.layer_bias.items():
                if name != product:
                    np.testing.assert_array_equal(value, 0.0, err_msg=f"{rule}: e_v of {name}")
