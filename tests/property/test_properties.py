"""Property-based tests: docs/math.md §5's invariants and the rules' contracts on random
piecewise-linear ONNX networks (`strategies.networks`).

Every property runs inside `failure_artifacts`, which saves the shrunk failing model
under ``tests/property/failures/`` and names the files in the error. Tolerances are
rounding bounds derived from the model (`property_harness`), or the spec's own 1e-10.
"""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
from hypothesis import event, given
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from property_harness import (
    U32,
    U64,
    absolute_backward,
    bias_contributions,
    failure_artifacts,
    forward_magnitude,
    kink_distance,
    load_unfolded,
    open_gradient_bound,
    rounding_count,
    run_onnxruntime,
    run_reference,
)
from strategies import PASS_THROUGH, layer_shapes, networks, output_shape, with_pass_through

import bbp_ref
import bbp_ref.attribution.bbp as bbp_module
from bbp_ref.attribution import rules as rules_module
from bbp_ref.attribution.rules import RULES as RULE_OBJECTS
from bbp_ref.attribution.rules import NodeView
from bbp_ref.engine.gates import ElementwiseLocal, MaxPoolLocal
from bbp_ref.engine.operator import AffineLocal, RouteOperator
from bbp_ref.engine.trace import backward

RULES = ("abs", "signed", "uniform")
SPEC_TOL = 1e-10  # docs/math.md §5, invariant 1, §5.2


# -- helpers -------------------------------------------------------------------------------
def all_targets(x: np.ndarray, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """The batch repeated once per output, and the matching targets: one explain call
    covers every (example, target) pair."""
    return np.repeat(x, n_out, axis=0), np.tile(np.arange(n_out), len(x))


def one_hot(n: int, shape: tuple[int, ...], targets: np.ndarray) -> np.ndarray:
    seed = np.zeros((n, int(np.prod(shape))))
    seed[np.arange(n), targets] = 1.0
    return seed.reshape(n, *shape)


class Scales:
    """Rounding scales of a net at a batch with one target per example, from the
    unfolded graph (see `property_harness`)."""

    def __init__(self, unfolded: bbp_ref.Model, x: np.ndarray, targets: np.ndarray) -> None:
        trace = unfolded.trace(np.asarray(x, np.float64))
        self.count = rounding_count(trace)
        self.forward = forward_magnitude(trace)
        seed = one_hot(len(x), trace.output.shape[1:], targets)
        self.gradient, self.bias = absolute_backward(trace, seed)

    def tolerance(self, scale: np.ndarray, u: float = U64) -> np.ndarray:
        return 2 * (self.count + 1) * u * scale + 1e-300


def assert_close(actual, expected, tol, what: str) -> None:
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shapes {actual.shape} != {expected.shape}"
    diff = np.abs(actual - expected)
    tol = np.broadcast_to(tol, diff.shape)
    bad = diff > tol
    assert not bad.any(), (f"{what}: |diff| {diff[bad].max():.3g} exceeds the rounding "
                           f"bound {tol[bad].min():.3g} at {np.argwhere(bad)[:3].tolist()}")


def biased_names(model: bbp_ref.Model) -> list[str]:
    """Names of nodes with a bias, and the aliases (folded ONNX nodes) that resolve to one."""
    graph = model.graph
    names = [n.name for n in graph if n.has_bias]
    return names + sorted(a for a, target in graph.aliases.items() if graph[target].has_bias)


def same_explanations(a: bbp_ref.Model, b: bbp_ref.Model, x: np.ndarray, targets: np.ndarray,
                      scales: Scales) -> None:
    """``a`` and ``b`` explain ``x`` identically up to rounding, for every rule."""
    n = len(x)
    grad_tol = scales.tolerance(scales.gradient)
    bias_tol = scales.tolerance(scales.bias)
    out_tol = scales.tolerance(scales.forward)
    np.testing.assert_array_equal(a.forward(x).shape, b.forward(x).shape)
    assert_close(b.forward(x), a.forward(x), out_tol, "f(x)")
    for rule in RULES:
        ea = bbp_ref.explain(a, x, target=targets, rule=rule, check=False)
        eb = bbp_ref.explain(b, x, target=targets, rule=rule, check=False)
        assert_close(eb.gradient, ea.gradient, grad_tol, f"{rule}: W^x")
        assert_close(eb.bias, ea.bias, bias_tol, f"{rule}: b^x")
        assert_close(eb.bias_attribution, ea.bias_attribution,
                     bias_tol.reshape(n, *([1] * (x.ndim - 1))), f"{rule}: B(x)")


# -- docs/math.md §5, invariant 1 ---------------------------------------------------------
@given(net=networks())
def test_1_local_linear_model_reproduces_every_output(net):
    """`W^x x + b^x = f(x)` for every output, to 1e-10 of the sum of magnitudes."""
    with failure_artifacts("test_1_local_linear_model", net):
        model = bbp_ref.load(net.onnx())
        x = net.x
        n = len(x)
        logits = model.forward(x).reshape(n, -1)
        assert logits.shape[1:] == (int(np.prod(output_shape(net))),)
        n_out = logits.shape[1]
        jacobian = model.jacobian(x).reshape(n * n_out, -1)
        xt, targets = all_targets(x, n_out)
        e = bbp_ref.explain(model, xt, target=targets, rule="abs", check=False)
        scales = Scales(load_unfolded(net.onnx()), xt, targets)
        assert_close(e.gradient.reshape(n * n_out, -1), jacobian,
                     scales.tolerance(scales.gradient.reshape(n * n_out, -1)),
                     "explain's gradient vs the Jacobian's row")
        trace = model.trace(xt.astype(np.float64))
        bias, bias_magnitude = bias_contributions(trace, one_hot(len(xt), trace.output.shape[1:],
                                                                 targets))
        assert_close(e.bias, bias, 1e-12 * bias_magnitude + 1e-300, "b^x vs sum of e_v")
        wx = jacobian * xt.reshape(n * n_out, -1).astype(np.float64)
        magnitude = np.abs(wx).sum(axis=1) + bias_magnitude
        assert_close(wx.sum(axis=1) + e.bias, logits.reshape(-1), SPEC_TOL * magnitude + 1e-300,
                     "W^x x + b^x vs f(x)")
        assert np.max(e.checks.decomposition) <= SPEC_TOL
        # SPEC §3's two linear passes (explain runs them with check="full", which also runs
        # onnxruntime; Model.decompose runs them alone)
        weights_times_x, local_bias = (a.reshape(n, -1) for a in model.decompose(x))
        assert_close(weights_times_x + local_bias, logits,
                     SPEC_TOL * (np.abs(weights_times_x) + np.abs(local_bias)) + 1e-300,
                     "the linear passes vs f(x)")


# -- docs/math.md §5, invariant 2 ---------------------------------------------------------
@given(net=networks(), data=st.data())
def test_2_bias_attribution_is_complete(net, data):
    """`sum B(x) = sum of the injected e_v` for every rule, every target and a random
    layer selection (canonical names and folded aliases)."""
    with failure_artifacts("test_2_completeness", net):
        model = bbp_ref.load(net.onnx())
        n_out = int(np.prod(model.forward(net.x[:1]).shape[1:]))
        xt, targets = all_targets(net.x, n_out)
        names = biased_names(model)
        chosen = data.draw(st.lists(st.sampled_from(names), unique=True) if names
                           else st.just([]), label="layers")
        expected_layers = {model.graph.resolve(name) for name in chosen}
        trace = model.trace(xt.astype(np.float64))
        _, bias_magnitude = bias_contributions(trace, one_hot(len(xt), trace.output.shape[1:],
                                                              targets))
        for rule in RULES:
            for layers in (None, chosen):
                e = bbp_ref.explain(model, xt, target=targets, rule=rule, layers=layers,
                                    check=False)
                if layers is None:
                    injected = e.bias
                else:
                    assert set(e.layers) == expected_layers, (e.layers, chosen)
                    injected = sum((e.layer_bias[v] for v in e.layers), np.zeros(len(xt)))
                total = e.bias_attribution.reshape(len(xt), -1).sum(axis=1)
                assert_close(total, injected, SPEC_TOL * bias_magnitude + 1e-300,
                             f"{rule}, layers={layers}: sum B(x)")
                assert np.max(e.checks.completeness) <= SPEC_TOL


# -- docs/math.md §5.3 -----------------------------------------------------------------------------
@given(net=networks())
def test_3_forward_agrees_with_onnxruntime(net):
    """The float64 forward pass equals onnxruntime's float32 one to the float32 rounding
    bound; where onnxruntime runs the model itself, `explain`'s own check passes too."""
    proto, ort_proto = net.onnx(), net.onnx("ort")
    with failure_artifacts("test_3_onnxruntime", net, ort=ort_proto):
        model = bbp_ref.load(proto)
        ours = model.forward(net.x)
        theirs = run_onnxruntime(ort_proto, net.x)
        assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
        unfolded = load_unfolded(proto)
        trace = unfolded.trace(net.x.astype(np.float64))
        tol = 2 * (rounding_count(trace) + 1) * U32 * forward_magnitude(trace) + 1e-30
        assert_close(ours, theirs, tol, "engine vs onnxruntime")
        if proto.SerializeToString() == ort_proto.SerializeToString():
            e = bbp_ref.explain(model, net.x, check=True)
            assert e.checks.onnxruntime.ok, str(e.checks.onnxruntime)
        else:
            event("onnxruntime ran an equivalent model")


@given(net=networks())
def test_forward_agrees_with_onnx_reference(net):
    """The forward pass equals `onnx.reference` on a float64 copy to float64 rounding."""
    proto, ref_proto = net.onnx(), net.onnx("ref")
    with failure_artifacts("test_onnx_reference", net, ref=ref_proto):
        model = bbp_ref.load(proto)
        ours = model.forward(net.x)
        theirs = run_reference(ref_proto, net.x)
        assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
        unfolded = load_unfolded(proto)
        trace = unfolded.trace(net.x.astype(np.float64))
        tol = 2 * (rounding_count(trace) + 1) * U64 * forward_magnitude(trace) + 1e-300
        assert_close(ours, theirs, tol, "engine vs onnx.reference")


# -- docs/math.md §5, invariant 4 ---------------------------------------------------------
def _targets(model: bbp_ref.Model, x: np.ndarray) -> np.ndarray:
    return model.forward(x).reshape(len(x), -1).argmax(axis=1)


@given(net=networks(zero_scales=False, batchnorm=True))
def test_4a_batchnorm_folding_changes_nothing(net):
    """Folding BatchNormalization (and constant Add/Mul) into the layer before changes
    none of `W^x`, `b^x`, `B(x)`. (Scales with exact zeros are left out: a known bug,
    see test_folding_a_zero_scale_changes_the_attribution.)"""
    with failure_artifacts("test_4a_folding", net):
        proto = net.onnx()
        folded, unfolded = bbp_ref.load(proto), load_unfolded(proto)
        event(f"folded nodes: {len(unfolded.graph) - len(folded.graph)}")
        targets = _targets(folded, net.x)
        same_explanations(folded, unfolded, net.x, targets, Scales(unfolded, net.x, targets))


@given(net=networks(head=True))
def test_4b_gemm_as_matmul_add_changes_nothing(net):
    """Writing a Gemm as MatMul + Add (and back) changes none of `W^x`, `b^x`, `B(x)`."""
    rewritten = net.gemm_rewritten()
    with failure_artifacts("test_4b_gemm_matmul", net, rewritten=rewritten.onnx()):
        event(f"Gemm rewritten: {net.has_gemm_to_rewrite}")
        a, b = bbp_ref.load(net.onnx()), bbp_ref.load(rewritten.onnx())
        targets = _targets(a, net.x)
        scales = Scales(load_unfolded(net.onnx()), net.x, targets)
        same_explanations(a, b, net.x, targets, scales)


@given(net=networks(), inserts=st.lists(st.tuples(st.integers(0, 40), st.sampled_from(
    PASS_THROUGH)), min_size=1, max_size=4))
def test_4c_pass_through_nodes_change_nothing(net, inserts):
    """Inserting Identity, Dropout, Reshape or Flatten + Reshape nodes changes none of
    `W^x`, `b^x`, `B(x)`."""
    proto = net.onnx()
    inserted = with_pass_through(proto, layer_shapes(net), inserts)
    with failure_artifacts("test_4c_pass_through", net, inserted=inserted):
        a, b = bbp_ref.load(proto), bbp_ref.load(inserted)
        targets = _targets(a, net.x)
        same_explanations(a, b, net.x, targets, Scales(load_unfolded(proto), net.x, targets))


# -- docs/math.md §5.5 -----------------------------------------------------------------------------
@given(net=networks(), kind=st.sampled_from(["dense", "basis", "sparse"]),
       seed=st.integers(0, 2**16))
def test_5_gradient_equals_finite_differences(net, kind, seed):
    """`W^x v` equals the central difference of the float64 reference model along a
    direction `v`, with a step a quarter of the distance to the nearest kink (computed
    from every gate's pre-activation and its directional derivative)."""
    proto, ref_proto = net.onnx(), net.onnx("ref")
    with failure_artifacts("test_5_finite_differences", net, ref=ref_proto):
        model = bbp_ref.load(proto)
        x = net.x.astype(np.float64)
        n = len(x)
        rng = np.random.default_rng(seed)
        v = rng.normal(size=x.shape)
        if kind == "basis":
            v = np.zeros(x.shape)
            v.reshape(n, -1)[:, rng.integers(0, x[0].size)] = 1.0
        elif kind == "sparse":
            v[rng.random(x.shape) < 0.7] = 0.0
        largest = np.abs(v).reshape(n, -1).max(axis=1)
        v /= np.maximum(largest, 1e-300).reshape(n, *[1] * (x.ndim - 1))
        radius = kink_distance(model.trace(x), v)
        inside = radius > 0
        event(f"examples off every kink along v: {int(inside.sum())}/{n}")
        if not inside.any():
            return
        x, v, radius = x[inside], v[inside], radius[inside]
        n = len(x)
        step = np.where(np.isfinite(radius), radius / 4, 1.0)
        shaped = step.reshape(n, *[1] * (x.ndim - 1))
        plus, minus = x + shaped * v, x - shaped * v
        slope = (run_reference(ref_proto, plus) - run_reference(ref_proto, minus)).reshape(n, -1)
        slope /= 2 * step[:, None]
        jacobian = model.jacobian(x).reshape(n, slope.shape[1], -1)
        jv = np.einsum("noq,nq->no", jacobian, v.reshape(n, -1))
        unfolded = load_unfolded(proto)
        count = rounding_count(unfolded.trace(x))
        evaluations = forward_magnitude(unfolded.trace(plus)) + forward_magnitude(
            unfolded.trace(minus))
        per_step = evaluations.reshape(n, -1) / (2 * step[:, None])
        jv_scale = np.einsum("noq,nq->no", np.abs(jacobian), np.abs(v.reshape(n, -1)))
        tol = 2 * (count + 1) * U64 * (per_step + jv_scale) + 1e-300
        assert_close(jv, slope, tol, f"W^x v vs central difference (steps {step.tolist()})")


# -- docs/math.md §5.6 -----------------------------------------------------------------------------
@given(net=networks(), k=st.floats(0.05, 20.0))
def test_6_bias_free_network_has_no_bias_and_is_homogeneous(net, k):
    """With every bias 0 (and Clips reduced to Clip(min=0)) `b^x = 0` and `B(x) = 0`
    exactly, for every rule and target; and `f(k x) = k f(x)` for `k > 0` (exactly
    for powers of two)."""
    proto = net.onnx(zero_bias=True)
    with failure_artifacts("test_6_bias_free", net, bias_free=proto):
        model = bbp_ref.load(proto)
        n_out = int(np.prod(model.forward(net.x[:1]).shape[1:]))
        xt, targets = all_targets(net.x, n_out)
        for rule in RULES:
            e = bbp_ref.explain(model, xt, target=targets, rule=rule, check=False)
            np.testing.assert_array_equal(e.bias, 0.0, err_msg=f"{rule}: b^x")
            np.testing.assert_array_equal(e.bias_attribution, 0.0, err_msg=f"{rule}: B(x)")
            for name, value in e.layer_bias.items():
                np.testing.assert_array_equal(value, 0.0, err_msg=f"{rule}: e_v of {name}")
        x = net.x.astype(np.float64)
        fx = model.forward(x)
        for power in (0.25, 2.0, 8.0):
            np.testing.assert_array_equal(model.forward(power * x), power * fx,
                                          err_msg=f"f({power} x) != {power} f(x)")
        unfolded = load_unfolded(proto)
        count = rounding_count(unfolded.trace(x))
        magnitude = forward_magnitude(unfolded.trace(k * x)) + k * forward_magnitude(
            unfolded.trace(x))
        assert_close(model.forward(k * x), k * fx, 2 * (count + 1) * U64 * magnitude + 1e-300,
                     f"f({k} x) vs {k} f(x)")


# -- docs/math.md §5.7 -----------------------------------------------------------------------------
@given(net=networks(max_batch=4), data=st.data())
def test_7_batched_equals_one_at_a_time(net, data):
    """Explaining a batch gives, per example, what explaining it alone gives."""
    with failure_artifacts("test_7_batched", net):
        model = bbp_ref.load(net.onnx())
        n = len(net.x)
        n_out = int(np.prod(model.forward(net.x[:1]).shape[1:]))
        targets = np.array(data.draw(st.lists(st.integers(0, n_out - 1), min_size=n,
                                              max_size=n), label="targets"))
        scales = Scales(load_unfolded(net.onnx()), net.x, targets)
        exact = True
        for rule in RULES:
            batched = bbp_ref.explain(model, net.x, target=targets, rule=rule, check=False)
            for i in range(n):
                single = bbp_ref.explain(model, net.x[i], target=int(targets[i]), rule=rule,
                                         check=False)
                for name, scale in (("output", scales.forward.reshape(n, -1)[i, targets[i]]),
                                    ("logits", scales.forward[i]),
                                    ("gradient", scales.gradient[i]), ("bias", scales.bias[i]),
                                    ("bias_attribution", scales.bias[i])):
                    ours, theirs = getattr(single, name), getattr(batched, name)[i]
                    exact &= bool(np.array_equal(ours, theirs))
                    assert_close(ours, theirs, scales.tolerance(scale), f"{rule}: {name}")
                assert single.layer_bias.keys() == batched.layer_bias.keys()
                for layer, value in single.layer_bias.items():
                    assert_close(value, batched.layer_bias[layer][i],
                                 scales.tolerance(scales.bias[i]), f"{rule}: e_v of {layer}")
        event(f"batched == single exactly: {exact}")


# -- the rules' contract (docs/math.md §4) ---------------------------------------------------------
class Spy:
    """Records every hand-over of bias mass during `bias_backpropagation`: the rule-based
    `distribute` of affine nodes and `hand_back` of gates and routes."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.original_distribute = rules_module.distribute

    def distribute(self, local, view, rule):
        shares = self.original_distribute(local, view, rule)
        self.calls.append(("affine", local, view, rule, shares))
        return shares

    def hand_back(self, cls):
        original = cls.hand_back

        def wrapped(local, mass):
            shares = original(local, mass)
            self.calls.append(("single", local, mass, original, shares))
            return shares
        return wrapped

    def __enter__(self):
        self.patches = [mock.patch.object(bbp_module, "distribute", self.distribute)]
        for cls in (ElementwiseLocal, MaxPoolLocal, RouteOperator):
            self.patches.append(mock.patch.object(cls, "hand_back", self.hand_back(cls)))
        for patch in self.patches:
            patch.start()
        return self

    def __exit__(self, *exc):
        for patch in reversed(self.patches):
            patch.stop()


def _split(mass: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.maximum(mass, 0.0), np.minimum(mass, 0.0)


def _sums(arrays, n):
    return sum(a.reshape(n, -1).sum(axis=1) for a in arrays)


@given(net=networks(), data=st.data())
def test_mass_is_conserved_and_never_changes_sign_at_any_node(net, data):
    """At every node and for every rule: what a node hands on is what it holds (all of
    it); each output element's share to each input has the sign of its mass (so mass
    that is non-negative everywhere is handed on as non-negative shares); and shares add
    over output elements (handing on the positive and negative parts of the mass
    separately gives the same shares)."""
    with failure_artifacts("test_mass_conservation", net):
        model = bbp_ref.load(net.onnx())
        names = biased_names(model)
        chosen = data.draw(st.lists(st.sampled_from(names), unique=True) if names
                           else st.just([]), label="layers")
        n = len(net.x)
        n_out = int(np.prod(model.forward(net.x[:1]).shape[1:]))
        targets = np.array(data.draw(st.lists(st.integers(0, n_out - 1), min_size=n,
                                              max_size=n), label="targets"))
        for rule in RULES:
            for layers in (None, chosen):
                with Spy() as spy:
                    bbp_ref.explain(model, net.x, target=targets, rule=rule, layers=layers,
                                    check=False)
                for call in spy.calls:
                    if call[0] == "affine":
                        _, local, view, rule_object, shares = call
                        mass = np.asarray(view.mass)
                        parts = [spy.original_distribute(local, NodeView(
                            view.name, view.op, view.operands, view.gradient, m), rule_object)
                            for m in _split(mass)]
                        where = f"{rule}: node {view.name} ({view.op})"
                    else:
                        _, local, mass, original, shares = call
                        parts = [original(local, np.ascontiguousarray(m)) for m in _split(mass)]
                        where = f"{rule}: {type(local).__name__}"
                    scale = np.abs(mass).reshape(n, -1).sum(axis=1)
                    assert_close(_sums(shares, n), mass.reshape(n, -1).sum(axis=1),
                                 1e-12 * scale + 1e-300, f"{where}: mass handed on")
                    for share in parts[0]:
                        assert (share >= 0).all(), f"{where}: negative share of positive mass"
                    for share in parts[1]:
                        assert (share <= 0).all(), f"{where}: positive share of negative mass"
                    for whole, pos, neg in zip(shares, *parts):
                        assert_close(pos + neg, whole,
                                     1e-12 * (np.abs(pos) + np.abs(neg)) + 1e-300,
                                     f"{where}: shares add over output elements")


def _expected_scores(rule: str, z: np.ndarray, connected: np.ndarray,
                     sigma: np.ndarray) -> np.ndarray:
    """docs/math.md §4.1 for one output row per example: ``z`` [N, Q] the contributions
    `W[p, q] u[q]`, ``connected`` [N, Q] the structural inputs `RF(p)`, ``sigma`` [N]."""
    uniform = connected / connected.sum(axis=1, keepdims=True)
    absolute = np.abs(z)
    den = absolute.sum(axis=1, keepdims=True)
    scores = np.where(den > 0, absolute / np.where(den > 0, den, 1.0), uniform)
    if rule == "signed":
        positive = np.maximum(sigma[:, None] * z, 0.0)
        den = positive.sum(axis=1, keepdims=True)
        scores = np.where(den > 0, positive / np.where(den > 0, den, 1.0), scores)
    elif rule == "uniform":
        scores = uniform
    return scores


@given(net=networks(), data=st.data())
def test_rule_scores_follow_their_definitions(net, data):
    """For sampled output elements `p` of every affine node: handing on a unit mass
    at `p` alone gives `alpha[p, q]` as defined in docs/math.md §4.1 (abs: `|z| / sum |z|`,
    signed: `max(0, sigma z) / sum max(0, sigma z)` with `sigma = sign(beta g)`,
    uniform: `1 / |RF(p)|`, with the fallbacks), non-zero only on `RF(p)`."""
    with failure_artifacts("test_rule_definitions", net):
        model = bbp_ref.load(net.onnx())
        x = net.x.astype(np.float64)
        n = len(x)
        trace = model.trace(x)
        n_out = int(np.prod(trace.output.shape[1:]))
        targets = np.array(data.draw(st.lists(st.integers(0, n_out - 1), min_size=n,
                                              max_size=n), label="targets"))
        rng = np.random.default_rng(data.draw(st.integers(0, 2**16), label="rows"))
        seed = one_hot(n, trace.output.shape[1:], targets)
        for node, grad in backward(trace, seed):
            local = trace.local.get(node.name)
            if not isinstance(local, AffineLocal):
                continue
            connectivity = local.operator.map_coefficients(lambda c: np.ones(np.shape(c)))
            size = int(np.prod(node.shape))
            for p in rng.choice(size, min(size, 3), replace=False):
                row = np.zeros((n, size))
                row[:, p] = 1.0
                row = row.reshape(n, *node.shape)
                weights = local.vjp(row)
                z = np.concatenate([(w * u).reshape(n, -1) for w, u in
                                    zip(weights, local.operands)], axis=1)
                connected = np.concatenate([(c != 0).reshape(n, -1).astype(float) for c in
                                            connectivity.vjp(row)], axis=1)
                mass = rng.choice([-1.5, 2.0], n)
                beta = row * mass.reshape(n, *[1] * len(node.shape))
                sigma = np.sign(mass * grad.reshape(n, -1)[:, p])
                view = NodeView(node.name, node.op, local.operands, grad, beta)
                for rule in RULES:
                    shares = rules_module.distribute(local, view, RULE_OBJECTS[rule])
                    got = np.concatenate([s.reshape(n, -1) for s in shares], axis=1)
                    expected = _expected_scores(rule, z, connected, sigma) * mass[:, None]
                    assert_close(got, expected, 1e-12 * np.abs(mass)[:, None],
                                 f"{rule}: node {node.name} ({node.op}), output element {p}")
                    assert (got[connected == 0] == 0).all(), f"{rule}: share outside RF(p)"


@given(net=networks(), data=st.data())
def test_abs_and_uniform_are_linear_in_the_injected_biases(net, data):
    """For abs and uniform, the attribution of a set of layers' biases is the sum of
    the attributions of the parts of any partition of the set."""
    with failure_artifacts("test_linearity", net):
        model = bbp_ref.load(net.onnx())
        names = [node.name for node in model.graph if node.has_bias]
        groups = data.draw(st.lists(st.integers(0, 2), min_size=len(names),
                                    max_size=len(names)), label="partition")
        parts = [[name for name, g in zip(names, groups) if g == k] for k in range(3)]
        n = len(net.x)
        targets = _targets(model, net.x)
        scales = Scales(load_unfolded(net.onnx()), net.x, targets)
        tol = scales.tolerance(scales.bias).reshape(n, *[1] * (net.x.ndim - 1))
        for rule in ("abs", "uniform"):
            def attribution(layers, rule=rule):
                return bbp_ref.explain(model, net.x, target=targets, rule=rule, layers=layers,
                                       check=False).bias_attribution
            whole = attribution(None)
            pieces = [attribution(part) for part in parts]
            assert_close(sum(pieces), whole, tol, f"{rule}: sum over a partition")
            singles = [attribution([name]) for name in names]
            assert_close(sum(singles, np.zeros_like(whole)), whole, tol,
                         f"{rule}: sum over single layers")
            pair = attribution(parts[0] + parts[1])
            assert_close(pieces[0] + pieces[1], pair, tol, f"{rule}: B(S1 + S2)")


# -- library bugs found by the properties, as minimal reproductions -----------------------
def test_conv_window_in_padding_only():
    w = numpy_helper.from_array(np.ones((1, 1, 1), np.float32), "w")
    b = numpy_helper.from_array(np.array([0.5], np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 0])], "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1, 3])], [w, b])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    # output 0 is the bias alone (found by this suite; it once raised RuleError in
    # explain, then was refused at load): now its mass is spread over the whole input
    # (docs/math.md §7.3), by |x| for abs, evenly for uniform
    x = np.array([[[1.0, -3.0]]], np.float32)
    for rule, expected in (("abs", [0.125, 0.375]), ("uniform", [0.25, 0.25])):
        e = bbp_ref.explain(proto, x, target=0, rule=rule)
        assert e.output == 0.5 and e.bias == 0.5 and e.checks.passed
        np.testing.assert_allclose(e.bias_attribution.ravel(), expected, rtol=1e-15)


@pytest.mark.parametrize("rule", ["abs", "signed"])
def test_folding_a_zero_scale_changes_nothing(rule):
    """Found by this suite: a zero scale folded into a Gemm once made abs fall back to
    uniform; zero scales are no longer folded."""
    inits = [numpy_helper.from_array(np.array(v, np.float32), name) for name, v in (
        ("w", [[1.0], [1.0]]), ("s", [0.0]), ("b", [1.0]), ("m", [0.0]), ("v", [1.0]))]
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w"], ["h"]),
         helper.make_node("BatchNormalization", ["h", "s", "b", "m", "v"], ["y"])], "bn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    x = np.array([1.0, 3.0], np.float32)
    folded = bbp_ref.explain(bbp_ref.load(proto), x, rule=rule, check=False)
    unfolded = bbp_ref.explain(load_unfolded(proto), x, rule=rule, check=False)
    assert folded.bias == unfolded.bias == 1.0
    np.testing.assert_allclose(folded.bias_attribution, unfolded.bias_attribution)


# -- exact integrated gradients ---------------------------------------------------------------
@given(net=networks(), data=st.data())
def test_exact_ig_event_walk_equals_path_walk(net, data):
    """The event walk (sparse updates per kink) and the path walk (two full passes per
    piece) give the same integrated gradients, and completeness holds, on
    random networks with ties, zeros and saturated gates; the baseline is another
    example of the batch, 0, or the example reflected through 0 (the path then crosses
    the most kinks)."""
    from bbp_ref.attribution.baselines import setup
    from bbp_ref.attribution.event_walk import EventWalk
    from bbp_ref.attribution.path_walk import BOUNDARY_RTOL, PathWalk
    with failure_artifacts("test_exact_ig_walks", net):
        model = bbp_ref.load(net.onnx())
        x = net.x.astype(np.float64)
        n_out = int(np.prod(output_shape(net)))
        i = data.draw(st.integers(0, len(x) - 1), label="example")
        j = data.draw(st.integers(-2, len(x) - 1), label="baseline (-1: zeros, -2: -x)")
        target = data.draw(st.integers(0, n_out - 1), label="target")
        s = setup(model, x[i:i + 1], target, linearize=False)
        base = {-1: np.zeros_like(s.batch), -2: -s.batch}.get(j, x[j:j + 1])
        events = EventWalk(s.graph, base, s.batch, s.seed, rtol=BOUNDARY_RTOL)
        events.run(10**5)
        pieces = PathWalk(s.graph, base, s.batch, s.seed, rtol=BOUNDARY_RTOL)
        pieces.run(10**5)
        event(f"pieces: {int(pieces.pieces[0])} (events {events.pieces})")
        # compared as attributions (where `x = b` the integral is path noise that IG
        # multiplies by 0); a piece shorter than the tolerance, which one walk merges into
        # a neighbour, differs by its length times a gradient no larger than the bound
        # with every gate open
        d = s.batch - base
        bound = open_gradient_bound(model.trace(s.batch), one_hot(1, output_shape(net),
                                                                  np.array([target])))
        assert_close(d * events.total_gradient, d * pieces.total_gradient,
                     1e-10 * np.abs(d) * bound + 1e-300, "event walk vs path walk: IG")
        logits = model.forward(np.concatenate([s.batch, base])).reshape(2, -1)[:, target]
        ig = d * events.total_gradient
        magnitude = np.abs(ig).sum() + np.abs(logits).sum() + (np.abs(d) * bound).sum()
        assert_close(ig.sum(), logits[0] - logits[1], 1e-9 * magnitude + 1e-300,
                     "completeness of the event walk")
