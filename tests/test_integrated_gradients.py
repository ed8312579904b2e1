"""Integrated gradients: the exact piecewise walk (completeness, against independent
references) and Captum's quadrature rules (their points and weights, convergence)."""

from __future__ import annotations

import numpy as np
import pytest
from architectures import ARCHITECTURES
from builders import f32, model, node

import bbp_ref
from bbp_ref.attribution.baselines import gradient_x_input
from bbp_ref.attribution.integrated_gradients import (
    approximation_parameters,
    integrated_gradients,
)
from bbp_ref.errors import BBpError, InputError

HOMOGENEOUS = [n for n in ARCHITECTURES if n != "saturated_clip"]  # bias-free: f(kx) = k f(x)
QUADRATURE = ("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid",
              "gausslegendre")


def _case(name, rng, n=3, bias=True):
    proto, shape = ARCHITECTURES[name](np.random.default_rng(1), bias=bias)
    m = bbp_ref.load(proto)
    return m, rng.normal(size=(n, *shape)), 0.5 * rng.normal(size=shape)


def _magnitude(r):
    n = r.attribution.shape[0]
    return (np.abs(r.attribution).reshape(n, -1).sum(axis=1) + np.abs(r.output)
            + np.abs(r.baseline_output))


def _reference_ig(m, x, b, target, min_length=2.0 ** -40):
    """IG by bisection of the path, from `Model.jacobian` only: an interval on whose
    ends, quarters and middle the gradient is bit-identical is taken as one linear piece
    (inside a piece the engine computes the same numbers)."""
    d = x - b
    total = np.zeros_like(x)
    todo = [(0.0, 1.0)]
    fractions = (0.0, 0.25, 0.5, 0.75, 1.0)
    while todo:
        t = np.array([[a + f * (c - a) for f in fractions] for a, c in todo]).reshape(-1)
        jac = m.jacobian(b[None] + t.reshape(-1, *([1] * x.ndim)) * d[None])
        grads = jac.reshape(len(todo), len(fractions), -1, *x.shape)[:, :, target]
        split = []
        for (a, c), g in zip(todo, grads):
            if all(np.array_equal(g[0], gk) for gk in g[1:]) or c - a < min_length:
                total += (c - a) * g[2]
            else:
                split += [(a, 0.5 * (a + c)), (0.5 * (a + c), c)]
        todo = split
    return d * total


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_exact_completeness(name, rng):
    m, x, b = _case(name, rng)
    r = integrated_gradients(m, x, b)
    assert r.method == "integrated_gradients" and r.integration == "exact"
    assert r.attribution.shape == x.shape and r.n_pieces.dtype.kind == "i"
    assert (r.n_pieces >= 1).all()
    np.testing.assert_allclose(r.output, m.forward(x).reshape(3, -1)[np.arange(3), r.target])
    fb = m.forward(b).reshape(-1)[r.target]
    np.testing.assert_allclose(r.baseline_output, fb, rtol=1e-12)
    np.testing.assert_allclose(r.delta, r.attribution.reshape(3, -1).sum(1) - (r.output - fb),
                               atol=1e-14)
    assert (np.abs(r.delta) <= 1e-9 * _magnitude(r)).all()


@pytest.mark.parametrize("name", ["mlp", "saturated_clip", "concat_branches"])
def test_exact_matches_bisection_reference(name, rng):
    m, x, b = _case(name, rng, n=1)
    r = integrated_gradients(m, x[0], b * 3)  # a longer path: more pieces
    reference = _reference_ig(m, x[0], b * 3, int(r.target))
    scale = np.abs(reference).max()
    np.testing.assert_allclose(r.attribution, reference, atol=1e-10 * scale)
    assert r.n_pieces > 3


def test_exact_matches_a_fine_riemann_sum(rng):
    m, x, b = _case("mlp", rng, n=1)
    x, target = x[0], 2
    r = integrated_gradients(m, x, b, target=target)
    n = 20000
    t = (np.arange(n) + 0.5) / n
    grads = m.jacobian(b[None] + t[:, None] * (x - b)[None])[:, target]
    fine = (x - b) * grads.mean(axis=0)
    # the midpoint rule errs only in the cells holding a kink: <= pieces * jump / n
    bound = r.n_pieces * 2 * np.abs(grads).max(axis=0) * np.abs(x - b) / n
    assert (np.abs(fine - r.attribution) <= bound).all()
    assert np.abs(fine - r.attribution).max() < 1e-4


@pytest.mark.parametrize("name", HOMOGENEOUS)
def test_bias_free_network_from_zero_is_one_piece(name, rng):
    # f(t x) = t f(x): every unit keeps its state along the ray, and IG = gradient * x
    m, x, _ = _case(name, rng, bias=False)
    r = integrated_gradients(m, x)
    assert (r.n_pieces == 1).all()
    np.testing.assert_allclose(r.attribution, gradient_x_input(m, x).attribution, atol=1e-14)


@pytest.mark.parametrize("name", HOMOGENEOUS)
def test_simultaneous_kinks(name, rng):
    # bias-free, from -1 to +1: every unit reaches its kink at t = 1/2 at once
    m, x, _ = _case(name, rng, n=1, bias=False)
    ones = np.ones(x.shape[1:])
    r = integrated_gradients(m, ones, baselines=-ones)
    assert r.n_pieces == 2
    magnitude = np.abs(r.attribution).sum() + abs(r.output) + abs(r.baseline_output)
    assert abs(r.delta) <= 1e-12 * magnitude


def test_maxpool_ties_along_the_path():
    # x and the baseline are constant, so every MaxPool window is a tie along the whole
    # path; the walk must still end, with completeness
    proto, shape = ARCHITECTURES["cnn"](np.random.default_rng(1))
    m = bbp_ref.load(proto)
    r = integrated_gradients(m, np.full(shape, 2.0), baselines=np.full(shape, -1.0))
    assert abs(r.delta) <= 1e-9 * (np.abs(r.attribution).sum() + abs(r.output))


def test_zero_path(rng):
    m, x, _ = _case("cnn", rng)
    r = integrated_gradients(m, x, baselines=x)
    assert (r.n_pieces == 1).all() and not r.attribution.any() and not r.delta.any()


@pytest.mark.parametrize("method", ["exact", "riemann_middle", "gausslegendre"])
def test_batch_equals_single(method, rng):
    # the examples' walks have different lengths: they leave the lock-step batch apart
    m, x, b = _case("concat_branches" if method == "exact" else "conv_variants", rng)
    batched = integrated_gradients(m, x, b, target=np.array([0, 2, 1]), method=method,
                                   n_steps=7)
    for i in range(3):
        single = integrated_gradients(m, x[i], b, target=[0, 2, 1][i], method=method,
                                      n_steps=7)
        assert single.attribution.shape == x.shape[1:] and single.target.shape == ()
        np.testing.assert_allclose(single.attribution, batched.attribution[i], rtol=1e-10,
                                   atol=1e-13)
        np.testing.assert_allclose(single.delta, batched.delta[i], atol=1e-12)
        if method == "exact":
            assert single.n_pieces == batched.n_pieces[i]
            assert len(set(batched.n_pieces)) > 1
        else:
            assert single.n_pieces is None and single.n_steps == 7


def test_baseline_forms(rng):
    m, x, b = _case("mlp", rng)
    per_example = integrated_gradients(m, x, np.broadcast_to(b, x.shape))
    shared = integrated_gradients(m, x, b)
    np.testing.assert_allclose(per_example.attribution, shared.attribution, atol=1e-14)
    scalar = integrated_gradients(m, x, 0.3)
    np.testing.assert_allclose(scalar.attribution,
                               integrated_gradients(m, x, np.full(x.shape[1:], 0.3)).attribution)
    default = integrated_gradients(m, x)
    np.testing.assert_allclose(default.baseline_output,
                               m.forward(np.zeros(x.shape)).reshape(3, -1)[np.arange(3),
                                                                           default.target])
    for bad in (np.zeros(4), np.zeros((2, 6)), np.zeros((3, 1, 6)), np.full(6, np.nan)):
        with pytest.raises(InputError):
            integrated_gradients(m, x, bad)
    with pytest.raises(InputError):  # a batch of baselines for a single example
        integrated_gradients(m, x[0], np.zeros((1, 6)))


def test_max_pieces(rng):
    m, x, b = _case("cnn", rng, n=1)
    with pytest.raises(BBpError, match="more than 5 linear pieces"):
        integrated_gradients(m, x, b, max_pieces=5)


def test_bad_arguments(rng):
    m, x, b = _case("mlp", rng, n=1)
    with pytest.raises(InputError, match="unknown integration method"):
        integrated_gradients(m, x, b, method="simpson")
    with pytest.raises(InputError, match="n_steps > 1"):
        integrated_gradients(m, x, b, method="riemann_left", n_steps=1)
    with pytest.raises(InputError, match="n_steps must be an integer"):
        integrated_gradients(m, x, b, method="riemann_left", n_steps=2.5)
    with pytest.raises(InputError, match="target"):
        integrated_gradients(m, x, b, target=7)


# -- the quadrature rules ---------------------------------------------------------


def test_approximation_parameters():
    n = 8
    k = np.arange(n)
    for method, alphas in (("riemann_left", k / n), ("riemann_right", (k + 1) / n),
                           ("riemann_middle", (k + 0.5) / n)):
        steps, a = approximation_parameters(method, n)
        np.testing.assert_allclose(a, alphas, rtol=0, atol=1e-15)
        np.testing.assert_allclose(steps, np.full(n, 1 / n))
    steps, a = approximation_parameters("riemann_trapezoid", n)
    np.testing.assert_allclose(a, np.linspace(0, 1, n), atol=1e-15)
    assert steps[0] == steps[-1] == 1 / (2 * n) and np.isclose(steps.sum(), 1 - 1 / n)
    steps, a = approximation_parameters("gausslegendre", 5)
    assert np.isclose(steps.sum(), 1) and np.isclose((steps * a ** 9).sum(), 1 / 10)
    assert approximation_parameters("gausslegendre", 1)[1].tolist() == [0.5]


@pytest.mark.parametrize("name", ["mlp", "cnn", "saturated_clip"])
def test_quadrature_converges_to_exact(name, rng):
    m, x, b = _case(name, rng)
    exact = integrated_gradients(m, x, b)
    scale = np.abs(exact.attribution).sum()
    for method in QUADRATURE:
        errors = []
        for n_steps in (16, 128, 1024):
            r = integrated_gradients(m, x, b, method=method, n_steps=n_steps)
            assert r.integration == method and r.n_steps == n_steps
            fb = r.baseline_output
            np.testing.assert_allclose(r.delta, r.attribution.reshape(3, -1).sum(1)
                                       - (r.output - fb), atol=1e-13)
            errors.append(np.abs(r.attribution - exact.attribution).sum() / scale)
        # a piecewise-constant integrand: every rule converges like 1/n (8x per step)
        assert errors[1] < errors[0] / 2.5 and errors[2] < errors[1] / 2.5, (method, errors)
        assert errors[2] < 1e-2, (method, errors)


def test_internal_batch_size(rng):
    m, x, b = _case("cnn", rng)
    whole = integrated_gradients(m, x, b, method="riemann_trapezoid", n_steps=10)
    for size in (1, 4, 7, 100):
        part = integrated_gradients(m, x, b, method="riemann_trapezoid", n_steps=10,
                                    internal_batch_size=size)
        np.testing.assert_allclose(part.attribution, whole.attribution, rtol=1e-12, atol=1e-15)


def test_clip_bounds_and_prelu_kinks(rng):
    # Clip with one bound, Clip with min > max (constant) and PRelu, by bisection
    slope = np.array([0.2, -0.3, 0.5], np.float32)
    inits = {"W": f32(rng, 3, 4), "b": f32(rng, 3), "V": f32(rng, 2, 9), "c": f32(rng, 2),
             "lo": np.array(-0.2, np.float32), "hi": np.array(0.3, np.float32),
             "big": np.array(1.0, np.float32), "small": np.array(-1.0, np.float32),
             "slope": slope}
    nodes = [node("Gemm", ["x", "W", "b"], "h", transB=1),
             node("Clip", ["h", "lo"], "a1"), node("Clip", ["h", "", "hi"], "a2"),
             node("Clip", ["h", "big", "small"], "a3"), node("PRelu", ["h", "slope"], "a4"),
             node("Sum", ["a1", "a2", "a4"], "s"),
             node("Concat", ["s", "a3", "h"], "cat", axis=1),
             node("Gemm", ["cat", "V", "c"], "y", transB=1)]
    m = bbp_ref.load(model(nodes, ["N", 4], inits))
    x, b = 2 * rng.normal(size=4), 2 * rng.normal(size=4)
    r = integrated_gradients(m, x, b, target=1)
    np.testing.assert_allclose(r.attribution, _reference_ig(m, x, b, 1), atol=1e-10)
    assert abs(r.delta) < 1e-12 and r.n_pieces > 2


def test_maxpool_tie_at_the_baseline_is_broken_by_the_direction(rng):
    # from b = 0 every window is a tie at t = 0; the winner along the path is the element
    # with the largest directional derivative, which then wins for every t > 0
    nodes = [node("MaxPool", ["x"], "p", kernel_shape=[2, 2], strides=[2, 2]),
             node("Flatten", ["p"], "v"), node("Gemm", ["v", "F"], "y", transB=1)]
    m = bbp_ref.load(model(nodes, ["N", 2, 4, 4], {"F": f32(rng, 3, 8)}))
    x = rng.normal(size=(2, 2, 4, 4))
    r = integrated_gradients(m, x, target=1)
    assert (r.n_pieces == 1).all()
    np.testing.assert_allclose(r.attribution, gradient_x_input(m, x, target=1).attribution,
                               atol=1e-15)
