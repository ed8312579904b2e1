"""The tangent model at the API level (docs/math.md §7): which model an explanation is
of, the CLI's wording, and the baselines on graphs that are not piecewise linear."""

from __future__ import annotations

import numpy as np
import pytest
from builders import f32, model, node

import bbp_ref
from bbp_ref.cli import main
from bbp_ref.errors import UnsupportedOpError


def _mlp(activation: str) -> object:
    rng = np.random.default_rng(3)
    inits = {"w1": f32(rng, 4, 6), "b1": f32(rng, 6), "w2": f32(rng, 6, 3), "b2": f32(rng, 3)}
    return model([node("Gemm", ["x", "w1", "b1"], "h"), node(activation, ["h"], "a",
                                                             name="act"),
                  node("Gemm", ["a", "w2", "b2"], "y")], ["N", 4], inits)


def attention() -> object:
    """softmax(q k^T) v: products of data tensors, a Softmax in the middle."""
    rng = np.random.default_rng(4)
    inits = {"wq": f32(rng, 4, 4), "wk": f32(rng, 4, 4), "wv": f32(rng, 4, 4),
             "wo": f32(rng, 4, 2)}
    nodes = [node("MatMul", ["x", "wq"], "q"), node("MatMul", ["x", "wk"], "k"),
             node("MatMul", ["x", "wv"], "v"), node("Transpose", ["k"], "kt", perm=[0, 2, 1]),
             node("MatMul", ["q", "kt"], "s", name="scores"),
             node("Softmax", ["s"], "p", axis=-1, name="attn"),
             node("MatMul", ["p", "v"], "o", name="mix"), node("MatMul", ["o", "wo"], "y")]
    return model(nodes, ["N", 3, 4], inits)


def test_explanation_says_which_model() -> None:
    x = f32(np.random.default_rng(0), 4)
    relu = bbp_ref.explain(_mlp("Relu"), x)
    assert relu.piecewise_linear and relu.tangent_nodes == ()
    tanh = bbp_ref.explain(_mlp("Tanh"), x)
    assert not tanh.piecewise_linear and tanh.tangent_nodes == ("act",)
    batch = bbp_ref.explain(_mlp("Tanh"), np.stack([x, x]))
    assert batch.tangent_nodes == ("act",)
    explained = bbp_ref.explain(attention(), f32(np.random.default_rng(1), 3, 4))
    assert set(explained.tangent_nodes) == {"scores", "attn/exp", "attn/reciprocal", "attn",
                                            "mix"}
    kinds = {n.name: n.kind for n in bbp_ref.load(attention()).nodes}
    assert kinds["scores"] == "product" and kinds["attn/exp"] == "smooth"
    assert kinds["attn/sum"] == "affine"


def test_cli_summary_names_the_model_kind(tmp_path, capsys) -> None:
    x = f32(np.random.default_rng(0), 4)
    np.save(tmp_path / "x.npy", x)
    for activation, words in (("Relu", "piecewise linear"), ("Tanh", "tangent model at x")):
        path = tmp_path / f"{activation}.onnx"
        path.write_bytes(_mlp(activation).SerializeToString())
        assert main(["explain", str(path), str(tmp_path / "x.npy"), "--no-check"]) == 0
        out = capsys.readouterr().out
        assert words in out
    assert "(act)" in out


def test_exact_integrated_gradients_refuses_a_tangent_graph() -> None:
    x = f32(np.random.default_rng(0), 4)
    with pytest.raises(UnsupportedOpError, match="act.*not piecewise linear.*quadrature"):
        bbp_ref.integrated_gradients(_mlp("Sigmoid"), x)
    with pytest.raises(UnsupportedOpError, match="act.*does not know"):
        bbp_ref.integrated_gradients(_mlp("Abs"), x)


@pytest.mark.parametrize("activation", ["Tanh", "Sigmoid", "Gelu"])
def test_quadrature_integrated_gradients_converge_on_a_smooth_graph(activation: str) -> None:
    """Gauss-Legendre on a smooth path converges fast: completeness to ~1e-12."""
    x = f32(np.random.default_rng(0), 4)
    proto = _mlp(activation)
    if activation == "Gelu":
        proto.opset_import[0].version = 20
    a = bbp_ref.integrated_gradients(proto, x, method="gausslegendre", n_steps=64)
    assert abs(a.delta) < 1e-12 * max(1.0, abs(a.output))


@pytest.mark.parametrize("which", ["mlp-Tanh", "mlp-Sigmoid", "mlp-Abs", "attention"])
def test_deeplift_keeps_summation_to_delta(which: str) -> None:
    """Rescale on smooth gates, midpoints on products: the attribution sums to
    `f_t(x) - f_t(b)` computed by onnxruntime-independent forward passes."""
    proto = attention() if which == "attention" else _mlp(which.split("-")[1])
    m = bbp_ref.load(proto)
    rng = np.random.default_rng(5)
    shape = (3, 4) if which == "attention" else (4,)
    x, base = f32(rng, *shape), f32(rng, *shape, scale=0.3)
    a = bbp_ref.deeplift(proto, x, baselines=base)
    t = int(a.target)
    expected = m.forward(x).ravel()[t] - m.forward(base).ravel()[t]
    assert abs(a.attribution.sum() - expected) <= 1e-12 * max(1.0, abs(expected))


def test_product_multipliers_by_hand() -> None:
    """y = x0 * x1 from b = (1, 2) to x = (3, 5): the midpoint rule gives
    (3 - 1) * (5 + 2) / 2 = 7 and (5 - 2) * (3 + 1) / 2 = 6; 7 + 6 = 15 - 2."""
    proto = model([node("Slice", ["x", "s0", "e0", "ax"], "a"),
                   node("Slice", ["x", "s1", "e1", "ax"], "b"), node("Mul", ["a", "b"], "y")],
                  ["N", 2], {"s0": np.array([0]), "e0": np.array([1]), "s1": np.array([1]),
                             "e1": np.array([2]), "ax": np.array([1])})
    a = bbp_ref.deeplift(proto, np.array([3.0, 5.0], dtype=np.float32),
                         baselines=np.array([1.0, 2.0]))
    np.testing.assert_array_equal(a.attribution, [7.0, 6.0])
