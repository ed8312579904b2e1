"""The gradient, gradient x input and DeepLIFT (Rescale) baselines on the exact engine."""

from __future__ import annotations

import numpy as np
import pytest
from architectures import ARCHITECTURES, OPSET
from builders import f32, model, node

import bbp_ref
from bbp_ref.attribution.baselines import Attribution, deeplift, gradient, gradient_x_input
from bbp_ref.errors import InputError


def _case(name, rng, n=3):
    proto, shape = ARCHITECTURES[name](np.random.default_rng(1))
    return bbp_ref.load(proto), rng.normal(size=(n, *shape)), 0.5 * rng.normal(size=shape)


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_gradient_is_the_jacobian_row(name, rng):
    m, x, _ = _case(name, rng)
    jac = m.jacobian(x)
    n = len(x)
    rows = jac.reshape(n, -1, *x.shape[1:])
    logits = m.forward(x).reshape(n, -1)
    g = gradient(m, x)
    assert isinstance(g, Attribution) and g.method == "gradient"
    np.testing.assert_array_equal(g.target, logits.argmax(axis=1))
    np.testing.assert_allclose(g.attribution, rows[np.arange(n), g.target], rtol=1e-13,
                               atol=1e-15)
    np.testing.assert_allclose(g.output, logits[np.arange(n), g.target])
    assert g.baseline_output is None and g.delta is None and g.n_pieces is None
    targets = np.arange(n) % logits.shape[1]
    gi = gradient_x_input(m, x, target=targets)
    assert gi.method == "gradient_x_input"
    np.testing.assert_allclose(gi.attribution, rows[np.arange(n), targets] * x, rtol=1e-13,
                               atol=1e-15)
    # gradient x input + the local bias is the output (the decomposition BBp completes)
    e = bbp_ref.explain(m, x, target=targets, check=False)
    np.testing.assert_allclose(gi.attribution.reshape(n, -1).sum(1) + e.bias, gi.output,
                               rtol=1e-10, atol=1e-12)


def test_one_example_is_unbatched(rng):
    m, x, b = _case("cnn", rng)
    for fn in (gradient, gradient_x_input, deeplift):
        batched = fn(m, x, target=1)
        for i in range(len(x)):
            single = fn(m, x[i], target=1)
            assert single.attribution.shape == x.shape[1:]
            assert single.target.shape == single.output.shape == ()
            assert single.logits.shape == batched.logits.shape[1:]
            np.testing.assert_allclose(single.attribution, batched.attribution[i], rtol=1e-12,
                                       atol=1e-15)
            if single.delta is not None:
                assert single.delta.shape == single.baseline_output.shape == ()


def test_target_errors(rng):
    m, x, _ = _case("mlp", rng)
    for bad in (4, -1, [0, 1], 1.5):
        with pytest.raises(InputError):
            gradient(m, x, target=bad)
    with pytest.raises(InputError):
        deeplift(m, x[0], target=[0])


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_deeplift_summation_to_delta(name, rng):
    m, x, b = _case(name, rng)
    n = len(x)
    for baselines in (b, 0.0, rng.normal(size=x.shape)):
        r = deeplift(m, x, baselines)
        assert r.method == "deeplift"
        fb = m.forward(np.broadcast_to(baselines, x.shape)).reshape(n, -1)[np.arange(n),
                                                                           r.target]
        np.testing.assert_allclose(r.baseline_output, fb, rtol=1e-12, atol=1e-14)
        total = r.attribution.reshape(n, -1).sum(axis=1)
        np.testing.assert_allclose(r.delta, total - (r.output - fb), atol=1e-14)
        magnitude = np.abs(r.attribution).reshape(n, -1).sum(1) + np.abs(r.output) + np.abs(fb)
        assert (np.abs(r.delta) <= 1e-10 * magnitude).all()


def _linear_model(rng):
    inits = {"C": f32(rng, 3, 2, 3, 3), "c": f32(rng, 3), "s": f32(rng, 3, 1, 1),
             "o": f32(rng, 3, 1, 1), "F": f32(rng, 4, 12), "f": f32(rng, 4)}
    nodes = [node("Conv", ["x", "C", "c"], "h", pads=[1, 1, 1, 1]),
             node("Mul", ["h", "s"], "hs"), node("Add", ["hs", "o"], "ho"),
             node("AveragePool", ["ho"], "p", kernel_shape=[2, 2], strides=[2, 2]),
             node("Flatten", ["p"], "v"), node("Gemm", ["v", "F", "f"], "y", transB=1)]
    return bbp_ref.load(model(nodes, ["N", 2, 4, 4], inits, opset=OPSET))


def test_deeplift_on_a_linear_network_is_gradient_times_difference(rng):
    m = _linear_model(rng)
    x, b = rng.normal(size=(3, 2, 4, 4)), rng.normal(size=(2, 4, 4))
    r = deeplift(m, x, b, target=2)
    g = gradient(m, x, target=2).attribution
    np.testing.assert_allclose(r.attribution, g * (x - b), rtol=1e-13, atol=1e-15)
    assert not deeplift(m, x, x, target=2).attribution.any()


def test_deeplift_rescale_by_hand(rng):
    # y = v . relu(W x + c): the multiplier of unit j is (relu(u_j) - relu(u'_j)) / (u_j - u'_j)
    w, c, v = f32(rng, 5, 3), f32(rng, 5), f32(rng, 1, 5)
    nodes = [node("Gemm", ["x", "W", "c"], "u", transB=1), node("LeakyRelu", ["u"], "h",
                                                                  alpha=0.25),
             node("Gemm", ["h", "V"], "y", transB=1)]
    m = bbp_ref.load(model(nodes, ["N", 3], {"W": w, "c": c, "V": v}, opset=OPSET))
    x, b = rng.normal(size=3), rng.normal(size=3)
    w, c, v = (a.astype(np.float64) for a in (w, c, v))
    u, ub = w @ x + c, w @ b + c
    relu = lambda z: np.where(z > 0, z, 0.25 * z)  # noqa: E731
    multiplier = (relu(u) - relu(ub)) / (u - ub)
    expected = (x - b) * ((v[0] * multiplier) @ w)
    np.testing.assert_allclose(deeplift(m, x, b).attribution, expected, rtol=1e-12)
    # where u(x) == u(b) (here: every unit, x == b on the path of the first coordinate
    # only) the gate's gradient at x is used; the attribution is then 0
    assert not deeplift(m, x, x).attribution.any()


def test_deeplift_maxpool_rule_by_hand():
    # one window [a, c]: at x (3, 1) the max is a; at b (0, 5) it is c
    nodes = [node("MaxPool", ["x"], "p", kernel_shape=[2], strides=[2]),
             node("Flatten", ["p"], "y")]
    m = bbp_ref.load(model(nodes, ["N", 1, 2], opset=OPSET))
    x, b = np.array([[3.0, 1.0]]), np.array([[0.0, 5.0]])
    r = deeplift(m, x, b)
    # M = max(3, 5) = 5: a receives (M - y') = 0, c receives (y - M) = -2, divided by
    # du = (3, -4): multipliers (0, 1/2); attributions (0, -4 * 1/2) = (0, -2) = y - y'
    np.testing.assert_allclose(r.attribution, [[0.0, -2.0]])
    assert r.delta == 0.0
    # overlapping windows (kernel 3, stride 1): an input that is the arg-max of several
    # windows accumulates all their shares (Captum's max_unpool keeps only one)
    nodes = [node("MaxPool", ["x"], "p", kernel_shape=[3], strides=[1]),
             node("Flatten", ["p"], "q"), node("Gemm", ["q", "ones"], "y", transB=1)]
    m = bbp_ref.load(model(nodes, ["N", 1, 5], {"ones": np.ones((1, 3), np.float32)},
                           opset=OPSET))
    x, b = np.array([[0.0, 1.0, 9.0, 2.0, 0.5]]), np.array([[1.0, 0.0, 0.0, 3.0, 0.0]])
    r = deeplift(m, x, b)  # y = 9 + 9 + 9 from input 2, y' = 1 + 3 + 3
    assert r.output == 27.0 and r.baseline_output == 7.0
    np.testing.assert_allclose(r.attribution, [[0.0, 0.0, 20.0, 0.0, 0.0]], rtol=1e-15)


def test_deeplift_relu_feeding_maxpool(rng):
    # a Relu directly followed by a MaxPool (where Captum 0.9 reuses a stale gradient)
    inits = {"C": f32(rng, 3, 1, 3, 3), "c": f32(rng, 3), "F": f32(rng, 2, 27),
             "f": f32(rng, 2)}
    nodes = [node("Conv", ["x", "C", "c"], "h", pads=[1, 1, 1, 1]), node("Relu", ["h"], "a"),
             node("MaxPool", ["a"], "p", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
             node("Flatten", ["p"], "v"), node("Gemm", ["v", "F", "f"], "y", transB=1)]
    m = bbp_ref.load(model(nodes, ["N", 1, 6, 6], inits, opset=OPSET))
    x, b = rng.normal(size=(4, 1, 6, 6)), rng.normal(size=(4, 1, 6, 6))
    r = deeplift(m, x, b)
    assert (np.abs(r.delta) < 1e-13).all()


def test_baseline_shapes(rng):
    m, x, b = _case("mlp", rng)
    shared = deeplift(m, x, b)
    np.testing.assert_allclose(deeplift(m, x, np.broadcast_to(b, x.shape)).attribution,
                               shared.attribution)
    for bad in (np.zeros(5), np.zeros((2, 6)), [[np.inf] * 6] * 3, "zero"):
        with pytest.raises(InputError):
            deeplift(m, x, bad)
