"""Several targets and several rules in one `explain` call (one forward trace, one batched
reverse pass) give what one call per target and per rule gives; the check modes run what
they say."""

from __future__ import annotations

import numpy as np
import pytest
from architectures import ARCHITECTURES
from builders import f32, model, node
from test_tangent_model import attention

import bbp_ref
from bbp_ref import Term
from bbp_ref.engine import trace as engine_trace

RULES = ("abs", "signed", "uniform")
RTOL = 1e-12


def setup(name, seed=0, batch=3):
    rng = np.random.default_rng(seed)
    proto, shape = ARCHITECTURES[name](rng)
    scale = 2.0 if name == "saturated_clip" else 1.0
    x = (rng.normal(size=(batch, *shape)) * scale).astype(np.float32)
    return bbp_ref.load(proto), x


def close(a, b, what):
    a, b = np.asarray(a), np.asarray(b)
    scale = np.max(np.abs(b)) if b.size else 0.0
    np.testing.assert_allclose(a, b, rtol=RTOL, atol=RTOL * scale + 1e-300, err_msg=what)


def my_abs(view):
    return [Term(np.abs, [np.abs(u) for u in view.operands])]


@pytest.mark.parametrize("rule", [*RULES, my_abs])
@pytest.mark.parametrize("name", ARCHITECTURES)
def test_several_targets_equal_one_call_per_target(name, rule):
    loaded, x = setup(name)
    n = len(x)
    size = int(np.prod(loaded.forward(x).shape[1:]))
    rng = np.random.default_rng(1)
    targets = np.stack([rng.permutation(size)[:3] for _ in range(n)])  # [N, 3], per example
    e = bbp_ref.explain(loaded, x, target=targets, rule=rule, check=False)
    assert e.gradient.shape == (n, 3, *x.shape[1:])
    assert e.bias_attribution.shape == (n, 3, *x.shape[1:])
    assert e.output.shape == e.bias.shape == e.target.shape == (n, 3)
    assert e.checks.decomposition.shape == e.checks.completeness.shape == (n, 3)
    jacobian = loaded.jacobian(x).reshape(n, size, -1)
    for k in range(3):
        one = bbp_ref.explain(loaded, x, target=targets[:, k], rule=rule, check=False)
        np.testing.assert_array_equal(e.target[:, k], targets[:, k])
        close(e.output[:, k], one.output, "f_t(x)")
        close(e.gradient[:, k].reshape(n, -1), jacobian[np.arange(n), targets[:, k]], "W^x[t]")
        close(e.bias[:, k], one.bias, "b^x")
        close(e.bias_attribution[:, k], one.bias_attribution, "B(x)")
        for layer, value in one.layer_bias.items():
            close(e.layer_bias[layer][:, k], value, f"layer_bias[{layer}]")
    assert np.max(e.checks.decomposition) <= 1e-10 and np.max(e.checks.completeness) <= 1e-10


def test_a_list_of_targets_for_one_example_and_all_targets():
    loaded, x = setup("cnn", batch=1)
    size = int(np.prod(loaded.forward(x).shape[1:]))
    single = x[0]
    e = bbp_ref.explain(loaded, single, target=[2, 0], rule="signed")
    assert e.gradient.shape == (2, *single.shape) and e.output.shape == (2,)
    assert e.checks.passed and e.checks.linear_passes is None
    for k, t in enumerate([2, 0]):
        one = bbp_ref.explain(loaded, single, target=t, rule="signed")
        close(e.bias_attribution[k], one.bias_attribution, "B(x)")
        close(e.gradient[k], one.gradient, "W^x[t]")
    every = bbp_ref.explain(loaded, x, target="all", rule="uniform", check=False)
    assert every.target.tolist() == [list(range(size))]
    logits = loaded.forward(x).reshape(1, -1)
    close(every.output, logits, "f(x) for every target")
    # completeness of the sum over all targets: sum_t B_t(x) sums to sum_t b^x_t
    close(every.bias_attribution.reshape(1, size, -1).sum(axis=2), every.bias, "sum B(x)")


def test_all_targets_refused_for_a_large_output():
    w = np.ones((101, 2), dtype=np.float32)
    big = model([node("Gemm", ["x", "W"], "y", name="fc", transB=1)], ["N", 2], {"W": w})
    with pytest.raises(bbp_ref.InputError, match="at most 100 elements; this one has 101"):
        bbp_ref.explain(big, np.ones(2), target="all")


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_several_rules_equal_one_call_per_rule(name):
    loaded, x = setup(name)
    several = bbp_ref.explain(loaded, x, target=[[0, 1]] * len(x), rule=[*RULES, my_abs],
                              check=False)
    assert isinstance(several, tuple) and [e.rule for e in several] == [*RULES, "my_abs"]
    for rule, e in zip([*RULES, my_abs], several):
        one = bbp_ref.explain(loaded, x, target=[[0, 1]] * len(x), rule=rule, check=False)
        np.testing.assert_array_equal(e.bias_attribution, one.bias_attribution)
        np.testing.assert_array_equal(e.gradient, one.gradient)
        np.testing.assert_array_equal(e.bias, one.bias)


def test_rule_axis_for_one_example_with_one_target():
    loaded, x = setup("residual", batch=1)
    abs_, signed = bbp_ref.explain(loaded, x[0], target=1, rule=("abs", "signed"))
    assert abs_.bias_attribution.shape == signed.bias_attribution.shape == x[0].shape
    assert abs_.checks.passed and signed.checks.passed
    assert not np.array_equal(abs_.bias_attribution, signed.bias_attribution)


# -- check modes ---------------------------------------------------------------------------


def test_check_modes_run_what_they_say(monkeypatch):
    loaded, x = setup("cnn")
    calls = []
    original = engine_trace.linear_pass

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(engine_trace, "linear_pass", counted)
    fast = bbp_ref.explain(loaded, x, check=False)
    assert fast.checks.linear_passes is None and fast.checks.onnxruntime is None and not calls
    default = bbp_ref.explain(loaded, x)
    assert default.checks.linear_passes is None and default.checks.onnxruntime.ok
    assert not calls and "skipped (check='full' runs it)" in default.checks.summary()
    full = bbp_ref.explain(loaded, x, check="full")
    assert len(calls) == 2 and full.checks.onnxruntime.ok
    assert full.checks.linear_passes.shape == (len(x),)
    assert np.max(full.checks.linear_passes) <= 1e-10 and full.checks.passed
    strict = bbp_ref.explain(loaded, x, check="strict")
    assert strict.checks.linear_passes is None and strict.checks.onnxruntime.ok
    assert len(calls) == 2
    np.testing.assert_array_equal(strict.bias_attribution, full.bias_attribution)


def test_full_check_catches_a_wrong_local_bias(monkeypatch):
    """The linear passes are independent of the nonlinear forward pass: a local bias that
    pass does not use (planted here) fails them."""
    rng = np.random.default_rng(0)
    proto = model([node("Gemm", ["x", "W", "b"], "h", name="fc", transB=1),
                   node("Relu", ["h"], "y", name="relu")], ["N", 3],
                  {"W": f32(rng, 2, 3), "b": f32(rng, 2)})
    loaded = bbp_ref.load(proto)
    x = np.array([[1.0, 2.0, 3.0]])
    fc = loaded.graph["fc"].operator
    real = fc.bias.copy()
    monkeypatch.setattr(fc, "bias", real + 1.0)  # the linear passes see a wrong b
    monkeypatch.setattr(type(fc), "forward", lambda self, u: self.linear(u) + real)
    e = bbp_ref.explain(loaded, x, check="full")
    assert np.max(e.checks.linear_passes) > 1e-3 and not e.checks.passed


def test_convolutions_and_matrices_are_shared_across_targets():
    """`repeat_trace` shares a convolution's and a Gemm's local map as it is (a kernel, or a
    matrix, has as many axes as a batched operand but is not per example), so that the
    rules' forward runs once per example: the operands keep the original batch."""
    from bbp_ref.engine.affine import Conv, MatMul
    from bbp_ref.engine.operator import AffineLocal
    from bbp_ref.engine.repeat import repeat_trace

    loaded, x = setup("conv_variants", batch=2)
    trace = loaded.trace(x.astype(np.float64))
    repeated = repeat_trace(trace, 4)
    shared = {name: type(local.operator) for name, local in trace.local.items()
              if isinstance(local, AffineLocal) and type(local.operator) in (Conv, MatMul)}
    assert set(shared.values()) == {Conv, MatMul}
    for name in shared:
        assert repeated.local[name] is trace.local[name]
        assert repeated.local[name].operands[0].shape[0] == 2


@pytest.mark.parametrize("rule", [*RULES, my_abs])
def test_several_targets_on_a_tangent_graph(rule):
    loaded = bbp_ref.load(attention())
    x = np.random.default_rng(0).normal(size=(2, 3, 4)).astype(np.float32)
    e = bbp_ref.explain(loaded, x, target="all", rule=rule, check=False)
    assert not e.piecewise_linear and e.bias_attribution.shape == (2, 6, 3, 4)
    jacobian = loaded.jacobian(x).reshape(2, 6, -1)
    for t in range(6):
        one = bbp_ref.explain(loaded, x, target=t, rule=rule, check=False)
        close(e.bias_attribution[:, t], one.bias_attribution, "B(x)")
        close(e.gradient[:, t].reshape(2, -1), jacobian[:, t], "J(x)[t]")
    assert np.max(e.checks.completeness) <= 1e-10 and np.max(e.checks.decomposition) <= 1e-10
