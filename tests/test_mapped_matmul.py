"""`engine.affine.MappedMatMul`: the rules' `|W|`, `W+`, `W-` of a large matrix applied block
by block of rows, never built whole, equal the products with the whole mapped matrix."""

import numpy as np
import pytest
from architectures import ARCHITECTURES

import bbp_ref
from bbp_ref.engine import affine
from bbp_ref.engine.affine import MappedMatMul, MatMul


def _positive(w):
    return np.maximum(w, 0.0)


def _negative(w):
    return np.maximum(-w, 0.0)


@pytest.fixture
def small_blocks(monkeypatch):
    """Every matrix mapped block by block, in blocks of a few rows."""
    monkeypatch.setattr(affine, "MAPPED_BLOCKWISE", 1)
    monkeypatch.setattr(affine, "MAPPED_BLOCK", 10)


# (side, weight shape, operand shape per example)
CASES = [("right", (7, 5), (7,)), ("right", (9, 4), (3, 9)), ("left", (6, 8), (8, 3)),
         ("left", (5, 7), (2, 7, 4))]


@pytest.mark.parametrize("side, weight_shape, operand_shape", CASES)
def test_blockwise_maps_equal_the_whole_mapped_matrix(small_blocks, side, weight_shape,
                                                       operand_shape):
    rng = np.random.default_rng(0)
    w = rng.normal(size=weight_shape)
    matmul = MatMul(w, None, (None, *operand_shape), side)
    fns = [np.abs, _positive, _negative]
    mapped = [matmul.map_coefficients(fn) for fn in fns]
    assert all(type(op) is MappedMatMul for op in mapped)
    u = rng.normal(size=(3, *operand_shape))

    def product(m, x):  # NumPy's matmul with the whole mapped matrix, independently
        return x @ m if side == "right" else m @ x

    for op, fn in zip(mapped, fns):
        np.testing.assert_allclose(op.linear([u]), product(fn(w), u), rtol=1e-13, atol=1e-13)
    for out, fn in zip(mapped[0].linear_many(mapped, [u]), fns):
        np.testing.assert_allclose(out, product(fn(w), u), rtol=1e-13, atol=1e-13)
    grads = [rng.normal(size=product(w, u).shape) for _ in fns]
    # the transpose from the dense matrix of each map: sum_i J_i^T g_i
    expected = 0.0
    for fn, g in zip(fns, grads):
        m = fn(w)
        expected = expected + (g @ m.T if side == "right" else m.T @ g)
    (back,) = mapped[0].vjp_sum(mapped, grads)
    np.testing.assert_allclose(back, expected, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(mapped[1].vjp(grads[0])[0],
                               grads[0] @ _positive(w).T if side == "right"
                               else _positive(w).T @ grads[0], rtol=1e-13, atol=1e-13)
    np.testing.assert_array_equal(mapped[2].coefficients[0], _negative(w))


@pytest.mark.parametrize("rule", ["abs", "signed", "uniform"])
@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_explanations_with_blockwise_maps_equal_the_whole_maps(monkeypatch, name, rule):
    rng = np.random.default_rng(1)
    proto, shape = ARCHITECTURES[name](rng)
    x = rng.normal(size=(3, *shape)).astype(np.float32)
    whole = bbp_ref.explain(proto, x, rule=rule, check=False)
    monkeypatch.setattr(affine, "MAPPED_BLOCKWISE", 1)
    monkeypatch.setattr(affine, "MAPPED_BLOCK", 3)
    blockwise = bbp_ref.explain(proto, x, target=whole.target, rule=rule, check=False)
    assert blockwise.checks.passed
    np.testing.assert_allclose(blockwise.bias_attribution, whole.bias_attribution,
                               rtol=1e-12, atol=1e-14)
