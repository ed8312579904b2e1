"""Composite ops expanded into primitives (docs/math.md §7.4).

* Every op through `test_ops.verify`: forward against onnxruntime (epsilon, axis,
  stash_type, keepdims, opset variants), the decomposition and completeness for every
  rule, the Jacobian against central finite differences of a float64 model run by
  `onnx.reference` (the op itself, or a hand-written decomposed equivalent where
  onnx.reference computes the op in float32).
* Invariant 9: the fused op and a hand-written graph of the primitives an exporter writes
  give the same `W^x`, `b^x` and `B(x)` for every rule, to 1e-12 relative.
* Numerics: a constant row (variance 0, only epsilon left), rows far from 0, and the
  inputs where the op has no derivative (refused, naming the node).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from builders import f32, model, node
from hypothesis import given, settings
from hypothesis import strategies as st
from test_ops import RULES, Case, assert_forward_close, ort_output, verify

import bbp_ref
from bbp_ref.engine.orphans import WithEmptyOutputs
from bbp_ref.errors import InputError, UnsupportedOpError

SAME_RTOL = 1e-12


# -- invariant 9: two graphs, one function, the same explanation ---------------------------
def assert_same_explanations(first: onnx.ModelProto, second: onnx.ModelProto,
                             x: np.ndarray) -> None:
    """`W^x`, `f(x)`, `b^x` and `B(x)` of every rule and output agree to 1e-12 of
    their magnitude."""
    m1, m2 = bbp_ref.load(first), bbp_ref.load(second)
    j1, j2 = m1.jacobian(x), m2.jacobian(x)
    np.testing.assert_allclose(j1, j2, rtol=0, atol=SAME_RTOL * np.abs(j1).max())
    out = m1.forward(x)
    np.testing.assert_allclose(out, m2.forward(x), rtol=0, atol=SAME_RTOL * np.abs(out).max())
    n, outputs = x.shape[0], out[0].size
    for rule in RULES:
        for target in range(outputs):
            targets = np.full(n, target)
            e1 = bbp_ref.explain(m1, x, target=targets, rule=rule, check=False)
            e2 = bbp_ref.explain(m2, x, target=targets, rule=rule, check=False)
            magnitude = sum(np.abs(v) for v in e1.layer_bias.values())
            np.testing.assert_allclose(e1.bias, e2.bias, rtol=0, atol=SAME_RTOL * magnitude.max())
            scale = np.abs(e1.bias_attribution).max()
            np.testing.assert_allclose(e1.bias_attribution, e2.bias_attribution, rtol=0,
                                       atol=SAME_RTOL * scale, err_msg=f"{rule}, output {target}")


def _pair_models(core_fused: list, core_decomposed: list, inits_fused: dict,
                 inits_decomposed: dict, input_shape: list, fused_opset: int,
                 decomposed_opset: int = 13, prefix: list | None = None,
                 suffix: list | None = None, shared: dict | None = None,
                 ) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """The same affine layers around a fused op and around its decomposition (input
    ``h``, output ``n``)."""
    prefix, suffix, shared = prefix or [], suffix or [], shared or {}
    fused = model(prefix + core_fused + suffix, input_shape, {**shared, **inits_fused},
                  opset=fused_opset)
    decomposed = model(prefix + core_decomposed + suffix, input_shape,
                       {**shared, **inits_decomposed}, opset=decomposed_opset)
    return fused, decomposed


def decomposed_normalization(axes: list[int], epsilon: float, source: str = "h",
                             out: str = "normalized") -> tuple[list, dict]:
    """What PyTorch's TorchScript exporter writes for LayerNorm (opset 13): ReduceMean,
    Sub, Pow 2, ReduceMean, Add eps, Sqrt, Div."""
    nodes = [node("ReduceMean", [source], "mean", axes=axes),
             node("Sub", [source, "mean"], "centered"),
             node("Pow", ["centered", "two"], "square"),
             node("ReduceMean", ["square"], "variance", axes=axes),
             node("Add", ["variance", "eps"], "shifted"),
             node("Sqrt", ["shifted"], "std"),
             node("Div", ["centered", "std"], out)]
    return nodes, {"two": np.float32(2.0), "eps": np.float32(epsilon)}


def _conv_around(rng: np.random.Generator, channels: int, hidden: int, spatial: int,
                 outputs: int) -> tuple:
    prefix = [node("Conv", ["x", "wc", "bc"], "h", pads=[1, 1, 1, 1])]
    suffix = [node("Flatten", ["n"], "flat"), node("Gemm", ["flat", "w2", "b2"], "y")]
    shared = {"wc": f32(rng, hidden, channels, 3, 3, scale=0.5), "bc": f32(rng, hidden),
              "w2": f32(rng, hidden * spatial * spatial, outputs, scale=0.3),
              "b2": f32(rng, outputs)}
    return prefix, suffix, shared


# -- LayerNormalization --------------------------------------------------------------------
def _layer_norm_pair(axis: int, epsilon: float, with_bias: bool = True,
                     seed: int = 0) -> tuple[onnx.ModelProto, onnx.ModelProto, np.ndarray]:
    """x [N, 12] -> Gemm -> [N, 3, 4] (Reshape) -> LayerNorm(axis) -> Flatten -> Gemm."""
    rng = np.random.default_rng(seed)
    normalized_shape = [3, 4][axis % 3 - 1:]  # the axes from `axis` on, batch axis aside
    scale = f32(rng, *normalized_shape) + np.float32(1.0)
    bias = f32(rng, *normalized_shape)
    prefix = [node("Gemm", ["x", "w1", "b1"], "g"), node("Reshape", ["g", "shape"], "h")]
    suffix = [node("Flatten", ["n"], "flat"), node("Gemm", ["flat", "w2", "b2"], "y")]
    shared = {"w1": f32(rng, 6, 12), "b1": f32(rng, 12), "shape": np.array([-1, 3, 4]),
              "w2": f32(rng, 12, 3), "b2": f32(rng, 3), "scale": scale}
    inputs = ["h", "scale", "bias"] if with_bias else ["h", "scale"]
    fused_core = [node("LayerNormalization", inputs, "n", axis=axis, epsilon=epsilon)]
    core, consts = decomposed_normalization(list(range(axis % 3, 3)), epsilon)
    core.append(node("Mul", ["normalized", "scale"], "scaled"))
    core.append(node("Add", ["scaled", "bias"], "n") if with_bias
                else node("Identity", ["scaled"], "n"))
    extra = {"bias": bias} if with_bias else {}
    fused, decomposed = _pair_models(fused_core, core, extra, {**consts, **extra}, ["N", 6],
                                     17, prefix=prefix, suffix=suffix, shared=shared)
    x = f32(rng, 3, 6)
    return fused, decomposed, x


@pytest.mark.parametrize(("axis", "epsilon", "with_bias"),
                         [(-1, 1e-5, True), (1, 1e-3, True), (-2, 1e-5, False)])
def test_layer_normalization(axis: int, epsilon: float, with_bias: bool) -> None:
    fused, decomposed, x = _layer_norm_pair(axis, epsilon, with_bias)
    m, _ = verify(Case(fused, x, reference=decomposed))
    kinds = {n.op: n.kind for n in m.nodes}
    assert kinds["LayerNormalization/normalized"] == "product"
    assert kinds["LayerNormalization/std"] == "smooth"
    assert_same_explanations(fused, decomposed, x)


def test_layer_normalization_stash_type_and_extra_outputs() -> None:
    """stash_type=1 (the default) and the Mean / InvStdDev outputs: each against
    onnxruntime; the engine computes in float64 whatever the stash type."""
    rng = np.random.default_rng(3)
    x = f32(rng, 2, 5)
    inits = {"scale": f32(rng, 5), "bias": f32(rng, 5)}
    for output, index in (("y", 0), ("mean", 1), ("inv", 2)):
        outs = ["y", "mean", "inv"]
        proto = model([node("LayerNormalization", ["x", "scale", "bias"], outs, axis=1,
                            stash_type=1)], ["N", 5], inits, opset=17, output_name=output)
        proto.graph.output[0].name = output
        m = bbp_ref.load(proto)
        assert_forward_close(m.forward(x), ort_output(proto, x))
        x64 = x.astype(np.float64)
        mean = x64.mean(axis=1, keepdims=True)
        epsilon = float(np.float32(1e-5))  # the default, a float32 attribute
        inverse = 1 / np.sqrt(((x64 - mean) ** 2).mean(axis=1, keepdims=True) + epsilon)
        expected = [(x64 - mean) * inverse * inits["scale"] + inits["bias"], mean, inverse]
        np.testing.assert_allclose(m.forward(x), expected[index], rtol=1e-14)


def test_layer_normalization_of_a_constant_row_is_epsilon_only() -> None:
    """A constant row: variance 0, `y = B` exactly, and `W^x = scale / sqrt(eps)
    (I - 1/n)` (hand computation); the decomposition holds for every rule."""
    n_features, epsilon = 6, 1e-3
    rng = np.random.default_rng(4)
    scale, bias = f32(rng, n_features), f32(rng, n_features)
    proto = model([node("LayerNormalization", ["x", "scale", "bias"], "y", epsilon=epsilon)],
                  ["N", n_features], {"scale": scale, "bias": bias}, opset=17)
    x = np.full((2, n_features), 2.5, dtype=np.float32)
    x[1] = -7.0
    m, explanations = verify(Case(proto, x, fd=False))
    np.testing.assert_array_equal(m.forward(x), np.broadcast_to(bias.astype(np.float64), x.shape))
    centering = np.eye(n_features) - 1.0 / n_features
    expected = (scale.astype(np.float64)[:, None] / np.sqrt(np.float32(epsilon).astype(
        np.float64))) * centering
    for jacobian in m.jacobian(x):
        np.testing.assert_allclose(jacobian, expected, rtol=1e-12, atol=1e-12)
    # the output is all bias: b^x = f(x) - W^x x
    for e in explanations:
        np.testing.assert_allclose(e.bias, e.output - (e.gradient * x).sum(axis=1), rtol=1e-12)


def test_layer_normalization_with_zero_epsilon_at_a_constant_row_is_refused() -> None:
    proto = model([node("LayerNormalization", ["x", "scale"], "y", epsilon=0.0, name="ln")],
                  ["N", 4], {"scale": np.ones(4, np.float32)}, opset=17)
    m = bbp_ref.load(proto)
    with pytest.raises(InputError, match="ln/std"):
        m.forward(np.ones((1, 4), np.float32))


def test_layer_normalization_is_stable_far_from_zero() -> None:
    """Rows at 1e8 with unit spread: `E[(x - m)^2]` keeps full precision where the
    function body's `E[x^2] - E[x]^2` loses all of it (1e16 * 2^-52 ~ 2)."""
    rng = np.random.default_rng(5)
    offsets = np.array([[1e8], [-3e7]])
    x = offsets + rng.normal(size=(2, 8))
    proto = model([node("LayerNormalization", ["x", "scale"], "y", epsilon=1e-5)],
                  ["N", 8], {"scale": np.ones(8, np.float64)}, opset=17,
                  elem_type=onnx.TensorProto.DOUBLE)
    m = bbp_ref.load(proto)
    centered = x - x.mean(axis=1, keepdims=True)
    expected = centered / np.sqrt((centered ** 2).mean(axis=1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(m.forward(x), expected, rtol=0, atol=1e-7)
    e = bbp_ref.explain(m, x, rule="abs", check=False)
    assert e.checks.decomposition.max() < 1e-10 and e.checks.completeness.max() < 1e-10


def test_function_body_form_gives_the_same_tangent_model_but_another_attribution() -> None:
    """LayerNormalization's function body (`E[x^2] - E[x]^2`) is the same function:
    `W^x` and `b^x` agree (they are the function's), but `B(x)` depends on where the
    expansion puts its sums and products, and differs: the reason the expansion
    follows the exporters' `E[(x - m)^2]` (docs/math.md §7.4)."""
    fused, _, x = _layer_norm_pair(-1, 1e-5, seed=6)
    prefix = [node("Gemm", ["x", "w1", "b1"], "g"), node("Reshape", ["g", "shape"], "h")]
    body = [node("ReduceMean", ["h"], "mean", axes=[2]),
            node("Mul", ["h", "h"], "square"),
            node("ReduceMean", ["square"], "mean_of_square", axes=[2]),
            node("Mul", ["mean", "mean"], "square_of_mean"),
            node("Sub", ["mean_of_square", "square_of_mean"], "variance"),
            node("Add", ["variance", "eps"], "shifted"), node("Sqrt", ["shifted"], "std"),
            node("Sub", ["h", "mean"], "centered"), node("Div", ["centered", "std"], "nd"),
            node("Mul", ["nd", "scale"], "scaled"), node("Add", ["scaled", "bias"], "n"),
            node("Flatten", ["n"], "flat"), node("Gemm", ["flat", "w2", "b2"], "y")]
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in fused.graph.initializer}
    inits["eps"] = np.float32(1e-5)
    function_body = model(prefix + body, ["N", 6], inits, opset=13)
    m1, m2 = bbp_ref.load(fused), bbp_ref.load(function_body)
    np.testing.assert_allclose(m1.jacobian(x), m2.jacobian(x), rtol=0,
                               atol=1e-9 * np.abs(m1.jacobian(x)).max())
    e1 = bbp_ref.explain(m1, x, rule="abs", check=False)
    e2 = bbp_ref.explain(m2, x, rule="abs", check=False)
    np.testing.assert_allclose(e1.bias, e2.bias, rtol=1e-9)
    difference = np.abs(e1.bias_attribution - e2.bias_attribution).max()
    assert difference > 1e-3 * np.abs(e1.bias_attribution).max()


# -- InstanceNormalization and GroupNormalization -------------------------------------------
def _instance_norm_pair(epsilon: float, seed: int = 0
                        ) -> tuple[onnx.ModelProto, onnx.ModelProto, np.ndarray]:
    rng = np.random.default_rng(seed)
    prefix, suffix, shared = _conv_around(rng, 2, 4, 3, 3)
    scale, bias = f32(rng, 4) + np.float32(1), f32(rng, 4)
    fused_core = [node("InstanceNormalization", ["h", "scale", "bias"], "n", epsilon=epsilon)]
    core, consts = decomposed_normalization([2, 3], epsilon)
    core += [node("Mul", ["normalized", "scale_c"], "scaled"),
             node("Add", ["scaled", "bias_c"], "n")]
    fused, decomposed = _pair_models(
        fused_core, core, {"scale": scale, "bias": bias},
        {**consts, "scale_c": scale.reshape(4, 1, 1), "bias_c": bias.reshape(4, 1, 1)},
        ["N", 2, 3, 3], 13, prefix=prefix, suffix=suffix, shared=shared)
    return fused, decomposed, f32(rng, 3, 2, 3, 3)


@pytest.mark.parametrize("epsilon", [1e-5, 0.25])
def test_instance_normalization(epsilon: float) -> None:
    fused, decomposed, x = _instance_norm_pair(epsilon)
    verify(Case(fused, x))
    assert_same_explanations(fused, decomposed, x)


def _group_norm_pair(opset: int, groups: int, epsilon: float = 1e-5, seed: int = 1
                     ) -> tuple[onnx.ModelProto, onnx.ModelProto, np.ndarray]:
    """GroupNormalization against what PyTorch's exporters write for nn.GroupNorm:
    Reshape [N, G, -1], InstanceNormalization (scale 1, bias 0), Reshape back, Mul, Add
    (the InstanceNormalization itself decomposed too: the pair checks both)."""
    rng = np.random.default_rng(seed)
    channels = 4
    prefix, suffix, shared = _conv_around(rng, 2, channels, 3, 3)
    count = channels if opset >= 21 else groups
    scale, bias = f32(rng, count) + np.float32(1), f32(rng, count)
    fused_core = [node("GroupNormalization", ["h", "scale", "bias"], "n", num_groups=groups,
                       epsilon=epsilon)]
    core, consts = decomposed_normalization([2], epsilon, source="grouped")
    per_channel = (np.repeat(scale, channels // groups) if count == groups else scale,
                   np.repeat(bias, channels // groups) if count == groups else bias)
    core = ([node("Reshape", ["h", "group_shape"], "grouped")] + core
            + [node("Reshape", ["normalized", "back"], "ungrouped"),
               node("Mul", ["ungrouped", "scale_c"], "scaled"),
               node("Add", ["scaled", "bias_c"], "n")])
    decomposed_inits = {**consts, "group_shape": np.array([0, groups, -1]),
                        "back": np.array([0, channels, 3, 3]),
                        "scale_c": per_channel[0].reshape(channels, 1, 1),
                        "bias_c": per_channel[1].reshape(channels, 1, 1)}
    fused, decomposed = _pair_models(fused_core, core, {"scale": scale, "bias": bias},
                                     decomposed_inits, ["N", 2, 3, 3], opset, prefix=prefix,
                                     suffix=suffix, shared=shared)
    return fused, decomposed, f32(rng, 3, 2, 3, 3)


@pytest.mark.parametrize(("opset", "groups"), [(21, 2), (21, 4), (21, 1)])
def test_group_normalization(opset: int, groups: int) -> None:
    fused, decomposed, x = _group_norm_pair(opset, groups)
    # onnx.reference runs the function body in float32: finite differences of the
    # decomposed float64 model instead (the same function: onnxruntime checks both)
    verify(Case(fused, x, reference=decomposed))
    assert_same_explanations(fused, decomposed, x)


def test_group_normalization_needs_groups_dividing_the_channels() -> None:
    proto = model([node("GroupNormalization", ["x", "s", "b"], "y", num_groups=3, name="gn")],
                  ["N", 4, 2], {"s": np.ones(4, np.float32), "b": np.zeros(4, np.float32)},
                  opset=21)
    with pytest.raises(UnsupportedOpError, match="'gn'.*num_groups=3"):
        bbp_ref.load(proto)


# -- MeanVarianceNormalization ---------------------------------------------------------------
def test_mean_variance_normalization() -> None:
    rng = np.random.default_rng(7)
    prefix, suffix, shared = _conv_around(rng, 2, 4, 3, 3)
    fused_core = [node("MeanVarianceNormalization", ["h"], "n", axes=[2, 3])]
    core = [node("ReduceMean", ["h"], "mean", axes=[2, 3]),
            node("Sub", ["h", "mean"], "centered"),
            node("Pow", ["centered", "two"], "square"),
            node("ReduceMean", ["square"], "variance", axes=[2, 3]),
            node("Sqrt", ["variance"], "std"), node("Add", ["std", "eps"], "shifted"),
            node("Div", ["centered", "shifted"], "n")]
    consts = {"two": np.float32(2.0), "eps": np.float32(1e-9)}
    fused, decomposed = _pair_models(fused_core, core, {}, consts, ["N", 2, 3, 3], 13,
                                     prefix=prefix, suffix=suffix, shared=shared)
    x = f32(rng, 3, 2, 3, 3)
    verify(Case(fused, x, reference=decomposed))
    assert_same_explanations(fused, decomposed, x)


def test_mean_variance_normalization_over_the_batch_axis_is_refused() -> None:
    proto = model([node("MeanVarianceNormalization", ["x"], "y", name="mvn")], ["N", 2, 3, 3])
    with pytest.raises(UnsupportedOpError, match="'mvn'.*batch axis"):
        bbp_ref.load(proto)


def test_mean_variance_normalization_of_a_constant_row_is_refused() -> None:
    """`Sqrt(v)` at `v = 0` has no derivative (epsilon comes after the root)."""
    proto = model([node("MeanVarianceNormalization", ["x"], "y", axes=[2, 3], name="mvn")],
                  ["N", 2, 3, 3])
    x = np.ones((1, 2, 3, 3), np.float32)
    with pytest.raises(InputError, match="mvn/std"):
        bbp_ref.load(proto).forward(x)


# -- LpNormalization, ReduceL1/L2/SumSquare/LogSum -------------------------------------------
@pytest.mark.parametrize(("p", "axis"), [(2, -1), (1, -1), (2, 1), (1, 2)])
def test_lp_normalization(p: int, axis: int) -> None:
    rng = np.random.default_rng(8)
    prefix, suffix, shared = _conv_around(rng, 2, 4, 3, 3)
    fused_core = [node("LpNormalization", ["h"], "n", p=p, axis=axis)]
    axes = [axis % 4]
    if p == 2:  # F.normalize's graph (its Expand left out: Div broadcasts)
        core = [node("ReduceL2", ["h"], "norm", axes=axes),
                node("Clip", ["norm", "eps"], "clipped"), node("Div", ["h", "clipped"], "n")]
    else:
        core = [node("Abs", ["h"], "abs"), node("ReduceSum", ["abs", "axes"], "norm"),
                node("Div", ["h", "norm"], "n")]
    fused, decomposed = _pair_models(fused_core, core, {},
                                     {"eps": np.float32(1e-12), "axes": np.array(axes)},
                                     ["N", 2, 3, 3], 13, prefix=prefix, suffix=suffix,
                                     shared=shared)
    x = f32(rng, 3, 2, 3, 3)
    verify(Case(fused, x, reference=decomposed))
    assert_same_explanations(fused, decomposed, x)


def test_lp_normalization_of_a_zero_vector_is_refused() -> None:
    proto = model([node("LpNormalization", ["x"], "y", p=1, name="lp")], ["N", 3])
    with pytest.raises(InputError, match="lp/reciprocal"):
        bbp_ref.load(proto).forward(np.array([[1, 2, 3], [0, 0, 0]], np.float32))


REDUCTIONS = [(op, opset, keepdims) for op in ("ReduceL1", "ReduceL2", "ReduceSumSquare",
                                               "ReduceLogSum")
              for opset, keepdims in ((13, 1), (18, 0))]


@pytest.mark.parametrize(("op", "opset", "keepdims"), REDUCTIONS,
                         ids=[f"{o}-{s}-{k}" for o, s, k in REDUCTIONS])
def test_norm_reductions(op: str, opset: int, keepdims: int) -> None:
    """Over axes [1, 3] of [N, 3, 2, 4], between a Conv and a Gemm; ReduceLogSum reads
    `exp` of the Conv so that its sums are positive."""
    rng = np.random.default_rng(9)
    axes = [1, 3]
    nodes = [node("Conv", ["x", "wc", "bc"], "c")]
    source = "c"
    if op == "ReduceLogSum":
        nodes.append(node("Exp", ["c"], "e"))
        source = "e"
    if opset >= 18:
        nodes.append(node(op, [source, "axes"], "r", keepdims=keepdims))
    else:
        nodes.append(node(op, [source], "r", axes=axes, keepdims=keepdims))
    nodes += [node("Flatten", ["r"], "flat"), node("Gemm", ["flat", "w", "b"], "y")]
    inits = {"wc": f32(rng, 3, 2, 1, 1), "bc": f32(rng, 3), "axes": np.array(axes),
             "w": f32(rng, 2, 2), "b": f32(rng, 2)}
    proto = model(nodes, ["N", 2, 2, 4], inits, opset=opset)
    x = f32(rng, 3, 2, 2, 4)
    m, explanations = verify(Case(proto, x))
    assert explanations[0].piecewise_linear == (op == "ReduceL1")


def test_reduce_l2_equals_its_function_body() -> None:
    """ReduceL2 against its ONNX function body, `Sqrt(ReduceSum(Mul(x, x)))`: the body's
    product of `x` with itself gives the same `B(x)` as the expansion's `Pow` gate."""
    rng = np.random.default_rng(10)
    prefix = [node("Gemm", ["x", "w1", "b1"], "h")]
    suffix = [node("Gemm", ["n", "w2", "b2"], "y")]
    shared = {"w1": f32(rng, 4, 6), "b1": f32(rng, 6), "w2": f32(rng, 1, 2), "b2": f32(rng, 2)}
    fused_core = [node("ReduceL2", ["h"], "n", axes=[1])]
    core = [node("Mul", ["h", "h"], "square"), node("ReduceSum", ["square", "axes"], "sum"),
            node("Sqrt", ["sum"], "n")]
    fused, decomposed = _pair_models(fused_core, core, {}, {"axes": np.array([1])},
                                     ["N", 4], 13, prefix=prefix, suffix=suffix,
                                     shared=shared)
    assert_same_explanations(fused, decomposed, f32(rng, 3, 4))


@pytest.mark.parametrize("attributes", [{"noop_with_empty_axes": 1}, {}])
def test_norm_reduction_without_axes_is_refused(attributes: dict) -> None:
    proto = model([node("ReduceL2", ["x"], "y", name="l2", **attributes)], ["N", 3], opset=18)
    with pytest.raises(UnsupportedOpError, match="'l2'"):
        bbp_ref.load(proto)


# -- LRN ------------------------------------------------------------------------------------
def _lrn_pair(size: int, seed: int = 11, **attributes: float
              ) -> tuple[onnx.ModelProto, onnx.ModelProto, np.ndarray]:
    """LRN against PyTorch's decomposition of nn.LocalResponseNorm (Mul, the channel
    window average as an AveragePool over [N, 1, C, H*W] counting the padding, Mul
    alpha, Add bias, Pow beta, Div), with the pads ONNX's LRN takes (the zero Pad before
    the pool written as its pads)."""
    rng = np.random.default_rng(seed)
    channels = 5
    prefix, suffix, shared = _conv_around(rng, 2, channels, 3, 3)
    alpha = attributes.get("alpha", 1e-4)
    beta = attributes.get("beta", 0.75)
    bias = attributes.get("bias", 1.0)
    fused_core = [node("LRN", ["h"], "n", size=size, **attributes)]
    before = (size - 1) // 2
    core = [node("Mul", ["h", "h"], "square"),
            node("Reshape", ["square", "rows"], "channel_rows"),
            node("AveragePool", ["channel_rows"], "average", kernel_shape=[size, 1],
                 pads=[before, 0, size - 1 - before, 0], count_include_pad=1),
            node("Reshape", ["average", "back"], "restored"),
            node("Mul", ["restored", "alpha"], "scaled"), node("Add", ["scaled", "k"], "base"),
            node("Pow", ["base", "beta"], "power"), node("Div", ["h", "power"], "n")]
    consts = {"rows": np.array([0, 1, channels, 9]), "back": np.array([0, channels, 3, 3]),
              "alpha": np.float32(alpha), "k": np.float32(bias), "beta": np.float32(beta)}
    fused, decomposed = _pair_models(fused_core, core, {}, consts, ["N", 2, 3, 3], 13,
                                     prefix=prefix, suffix=suffix, shared=shared)
    return fused, decomposed, f32(rng, 3, 2, 3, 3)


def lrn_by_the_definition(x: np.ndarray, size: int, alpha: float, beta: float,
                          bias: float) -> np.ndarray:
    """ONNX's LRN written out: channels `c - floor((size-1)/2)` to
    `c + ceil((size-1)/2)` (float64, one channel at a time)."""
    x = x.astype(np.float64)
    channels = x.shape[1]
    square_sum = np.zeros_like(x)
    for c in range(channels):
        first = max(0, c - (size - 1) // 2)
        last = min(channels - 1, c + size // 2)
        square_sum[:, c] = (x[:, first:last + 1] ** 2).sum(axis=1)
    return x / (bias + alpha / size * square_sum) ** beta


LRN_CASES = [(3, {}), (4, {"alpha": 0.5, "beta": 0.6, "bias": 2.0}), (1, {"alpha": 0.3}),
             (7, {"alpha": 2.0, "beta": 1.5})]


@pytest.mark.parametrize(("size", "attributes"), LRN_CASES)
def test_lrn(size: int, attributes: dict) -> None:
    """onnxruntime runs odd sizes only (and onnx.reference's LRN loops over the batch
    instead of the channels): even sizes are checked against the decomposed model in
    onnxruntime, and every size against the definition written out here; the finite
    differences run on the decomposed float64 model."""
    fused, decomposed, x = _lrn_pair(size, **attributes)
    verify(Case(fused, x, reference=decomposed, ort_runs_proto=size % 2 == 1))
    assert_same_explanations(fused, decomposed, x)


@pytest.mark.parametrize(("size", "attributes"), LRN_CASES)
def test_lrn_alone_against_its_definition(size: int, attributes: dict) -> None:
    rng = np.random.default_rng(12)
    proto = model([node("LRN", ["x"], "y", size=size, **attributes)], ["N", 5, 2, 3])
    x = f32(rng, 2, 5, 2, 3, scale=2.0)
    # attributes are float32
    alpha, beta, bias = (float(np.float32(attributes.get(name, default))) for name, default
                         in (("alpha", 1e-4), ("beta", 0.75), ("bias", 1.0)))
    expected = lrn_by_the_definition(x, size, alpha, beta, bias)
    np.testing.assert_allclose(bbp_ref.load(proto).forward(x), expected, rtol=1e-13)


def test_lrn_refuses_a_non_positive_base() -> None:
    """`(bias + ...)^(-beta)` of a non-positive base to a fractional power has no real
    value: refused at the `power` node."""
    proto = model([node("LRN", ["x"], "y", size=3, bias=-1.0, name="lrn")], ["N", 3, 2])
    with pytest.raises(InputError, match="lrn/power"):
        bbp_ref.load(proto).forward(np.zeros((1, 3, 2), np.float32))


def test_expansions_name_their_nodes() -> None:
    """The intermediate nodes are `<node>/<part>`, the last carries the ONNX output."""
    proto = model([node("LayerNormalization", ["x", "s"], "y", name="ln")], ["N", 4],
                  {"s": np.ones(4, np.float32)}, opset=17)
    names = [n.name for n in bbp_ref.load(proto).nodes]
    assert names == ["x", "ln/mean", "ln/centered", "ln/square", "ln/variance",
                     "ln/variance_epsilon", "ln/std", "ln/reciprocal", "ln/normalized", "ln"]


REFUSED = [
    ("LayerNormalization", ["x", "s"], {"axis": 0}, {"s": np.ones((2, 3), np.float32)}, 17,
     "batch axis"),
    ("LayerNormalization", ["x", "s"], {}, {"s": np.ones(4, np.float32)}, 17,
     "does not broadcast"),
    ("LayerNormalization", ["x", "x"], {}, {}, 17, "must be a constant"),
    ("InstanceNormalization", ["x", "s", "b"], {},
     {"s": np.ones(2, np.float32), "b": np.ones(2, np.float32)}, 13, r"\[N, C, D1"),
    ("InstanceNormalization", ["x", "s", "b"], {},
     {"s": np.ones(3, np.float32), "b": np.ones(2, np.float32)}, 13, "must have shape"),
    ("LpNormalization", ["x"], {"p": 3}, {}, 13, "p must be 1 or 2"),
    ("LRN", ["x"], {"size": 0}, {}, 13, "size must be a positive integer"),
]


@pytest.mark.parametrize(("op", "inputs", "attributes", "inits", "opset", "message"), REFUSED,
                         ids=[f"{r[0]}-{i}" for i, r in enumerate(REFUSED)])
def test_refused_configurations_name_the_node(op: str, inputs: list, attributes: dict,
                                              inits: dict, opset: int, message: str) -> None:
    """Each refused at load with `UnsupportedOpError` naming the op, the node and why
    (x is [N, 2, 3]: channels 2, one spatial axis of 3; for InstanceNormalization [N, 2])."""
    shape = ["N", 2] if op == "InstanceNormalization" and message.startswith(r"\[") else \
        ["N", 2, 3]
    proto = model([node(op, inputs, "y", name="composite", **attributes)], shape, inits,
                  opset=opset)
    with pytest.raises(UnsupportedOpError, match=f"{op} in node 'composite'.*{message}"):
        bbp_ref.load(proto)


# -- RMSNormalization -----------------------------------------------------------------------
@pytest.mark.parametrize(("axis", "epsilon"), [(-1, 1e-5), (1, 0.125)])
def test_rms_normalization(axis: int, epsilon: float) -> None:
    """Against what the dynamo exporter writes for nn.RMSNorm below opset 23: Pow,
    ReduceMean, Add, Sqrt, Reciprocal, Mul, Mul."""
    rng = np.random.default_rng(13)
    prefix = [node("Gemm", ["x", "w1", "b1"], "g"), node("Reshape", ["g", "shape"], "h")]
    suffix = [node("Flatten", ["n"], "flat"), node("Gemm", ["flat", "w2", "b2"], "y")]
    normalized_shape = [3, 4][axis % 3 - 1:]
    scale = f32(rng, *normalized_shape)
    shared = {"w1": f32(rng, 6, 12), "b1": f32(rng, 12), "shape": np.array([-1, 3, 4]),
              "w2": f32(rng, 12, 3), "b2": f32(rng, 3), "scale": scale}
    axes = list(range(axis % 3, 3))
    fused_core = [node("RMSNormalization", ["h", "scale"], "n", axis=axis, epsilon=epsilon)]
    core = [node("Pow", ["h", "two"], "square"),
            node("ReduceMean", ["square"], "mean_square", axes=axes),
            node("Add", ["mean_square", "eps"], "shifted"), node("Sqrt", ["shifted"], "rms"),
            node("Reciprocal", ["rms"], "inverse"), node("Mul", ["h", "inverse"], "normalized"),
            node("Mul", ["normalized", "scale"], "n")]
    fused, decomposed = _pair_models(fused_core, core, {},
                                     {"two": np.float32(2.0), "eps": np.float32(epsilon)},
                                     ["N", 6], 23, prefix=prefix, suffix=suffix, shared=shared)
    x = f32(rng, 3, 6)
    verify(Case(fused, x, reference=decomposed))
    assert_same_explanations(fused, decomposed, x)


# -- the tangent model on composite graphs --------------------------------------------------
def test_layer_normalization_without_epsilon_is_scale_invariant() -> None:
    """With `eps = 0` and no `B`, LayerNorm is homogeneous of degree 0 (`f(k x) = f(x)`) and
    invariant under adding a constant to a row: by Euler's theorem `W^x x = 0`, so all of
    `f(x)` is bias (`b^x = f(x)`), and `W^x 1 = 0`."""
    rng = np.random.default_rng(14)
    proto = model([node("LayerNormalization", ["x", "scale"], "y", epsilon=0.0)], ["N", 7],
                  {"scale": f32(rng, 7)}, opset=17)
    m = bbp_ref.load(proto)
    x = f32(rng, 3, 7)
    jacobian = m.jacobian(x)  # [N, 7, 7]
    scale = np.abs(jacobian).max() * np.abs(x).max()
    np.testing.assert_allclose(np.einsum("npq,nq->np", jacobian, x), 0.0, atol=1e-13 * scale)
    np.testing.assert_allclose(jacobian.sum(axis=2), 0.0, atol=1e-13 * np.abs(jacobian).max())
    for rule in RULES:
        e = bbp_ref.explain(m, x, rule=rule)
        np.testing.assert_allclose(e.bias, e.output, rtol=1e-12)
        np.testing.assert_allclose(e.bias_attribution.sum(axis=1), e.output, rtol=1e-12)


@pytest.mark.parametrize("pair", ["layer", "group", "lrn", "lp"])
def test_batched_and_single_explanations_agree(pair: str) -> None:
    """Invariant 7 on the expansions: a batch explains each example as alone."""
    if pair == "layer":
        proto, _, x = _layer_norm_pair(-1, 1e-5)
    elif pair == "group":
        proto, _, x = _group_norm_pair(21, 2)
    elif pair == "lrn":
        proto, _, x = _lrn_pair(3)
    else:
        proto = model([node("LpNormalization", ["x"], "y", p=2, axis=1)], ["N", 4])
        x = f32(np.random.default_rng(15), 3, 4)
    m = bbp_ref.load(proto)
    for rule in RULES:
        batched = bbp_ref.explain(m, x, rule=rule, check=False)
        for i in range(x.shape[0]):
            single = bbp_ref.explain(m, x[i], rule=rule, check=False)
            np.testing.assert_allclose(single.bias_attribution, batched.bias_attribution[i],
                                       rtol=0, atol=1e-13 * np.abs(batched.bias_attribution).max())
            np.testing.assert_allclose(single.gradient, batched.gradient[i], rtol=0,
                                       atol=1e-13 * np.abs(batched.gradient).max())


def test_baselines_on_an_expansion() -> None:
    """DeepLIFT (Rescale on the tangent gates, midpoint multipliers on the products) and
    quadrature integrated gradients are complete on LayerNorm's expansion; exact
    integrated gradients refuses it, naming a node of the expansion."""
    fused, _, x = _layer_norm_pair(-1, 1e-5)
    m = bbp_ref.load(fused)
    for attribution in (bbp_ref.deeplift(m, x),
                        bbp_ref.integrated_gradients(m, x, method="gausslegendre", n_steps=64)):
        np.testing.assert_allclose(attribution.delta, 0.0,
                                   atol=1e-10 * np.abs(attribution.attribution).sum())
    with pytest.raises(UnsupportedOpError, match="layernormalization_n/"):
        bbp_ref.integrated_gradients(m, x)


@pytest.mark.parametrize("shape", [(3, 5), (2, 2, 2, 3)], ids=["1d", "3d"])
def test_instance_normalization_other_spatial_ranks(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(16)
    channels = shape[0]
    proto = model([node("InstanceNormalization", ["x", "s", "b"], "h", epsilon=0.01),
                   node("Flatten", ["h"], "f"), node("Gemm", ["f", "w", "c"], "y")],
                  ["N", *shape], {"s": f32(rng, channels), "b": f32(rng, channels),
                                  "w": f32(rng, int(np.prod(shape)), 2), "c": f32(rng, 2)})
    verify(Case(proto, f32(rng, 2, *shape)))


# -- invariant 9 as a property ----------------------------------------------------------------
PROPERTY = settings(max_examples=30, derandomize=True, database=None, deadline=None)


@PROPERTY
@given(shape=st.lists(st.integers(1, 4), min_size=1, max_size=3),
       data=st.data(), epsilon=st.sampled_from([1e-5, 1e-3, 0.5]),
       offset=st.sampled_from([0.0, 3.0, -1e3]), spread=st.sampled_from([1e-2, 1.0, 30.0]),
       seed=st.integers(0, 2**16))
def test_layer_normalization_pairs_agree(shape: list[int], data: st.DataObject,
                                         epsilon: float, offset: float, spread: float,
                                         seed: int) -> None:
    """Random shapes, axes, epsilons and rows (far from 0, nearly constant, constant
    where a normalized size is 1): fused and exporter-decomposed LayerNorm agree."""
    rank = len(shape) + 1
    axis = data.draw(st.integers(1, rank - 1)) - data.draw(st.sampled_from([0, rank]))
    rng = np.random.default_rng(seed)
    normalized = shape[axis % rank - 1:]
    inits = {"scale": f32(rng, *normalized), "bias": f32(rng, *normalized),
             "w": f32(rng, int(np.prod(shape)), 2), "c": f32(rng, 2)}
    tail = [node("Flatten", ["n"], "flat"), node("Gemm", ["flat", "w", "c"], "y")]
    fused = model([node("LayerNormalization", ["x", "scale", "bias"], "n", axis=axis,
                        epsilon=epsilon)] + tail, ["N", *shape], inits, opset=17)
    core, consts = decomposed_normalization(list(range(axis % rank, rank)), epsilon, "x")
    core += [node("Mul", ["normalized", "scale"], "scaled"), node("Add", ["scaled", "bias"], "n")]
    decomposed = model(core + tail, ["N", *shape], {**inits, **consts}, opset=13)
    x = (offset + spread * rng.normal(size=(2, *shape))).astype(np.float32)
    assert_same_explanations(fused, decomposed, x)


@PROPERTY
@given(channels=st.integers(1, 6), size=st.integers(1, 7),
       alpha=st.sampled_from([1e-4, 0.5, 3.0]), beta=st.sampled_from([0.75, 0.5, 2.0]),
       bias=st.sampled_from([1.0, 2.0, 0.25]), seed=st.integers(0, 2**16))
def test_lrn_pairs_agree(channels: int, size: int, alpha: float, beta: float, bias: float,
                         seed: int) -> None:
    """Random channel counts (also fewer than the window), sizes and parameters: fused
    LRN and PyTorch's decomposition (with its zero Pad as the pool's pads) agree."""
    rng = np.random.default_rng(seed)
    before = (size - 1) // 2
    inits = {"w": f32(rng, channels * 6, 2), "c": f32(rng, 2),
             "rows": np.array([0, 1, channels, 6]), "back": np.array([0, channels, 2, 3]),
             "alpha": np.float32(alpha), "k": np.float32(bias), "beta": np.float32(beta)}
    tail = [node("Flatten", ["n"], "flat"), node("Gemm", ["flat", "w", "c"], "y")]
    fused = model([node("LRN", ["x"], "n", size=size, alpha=alpha, beta=beta, bias=bias)]
                  + tail, ["N", channels, 2, 3], inits)
    core = [node("Mul", ["x", "x"], "square"),
            node("Reshape", ["square", "rows"], "channel_rows"),
            node("AveragePool", ["channel_rows"], "average", kernel_shape=[size, 1],
                 pads=[before, 0, size - 1 - before, 0], count_include_pad=1),
            node("Reshape", ["average", "back"], "restored"),
            node("Mul", ["restored", "alpha"], "scaled"), node("Add", ["scaled", "k"], "base"),
            node("Pow", ["base", "beta"], "power"), node("Div", ["x", "power"], "n")]
    decomposed = model(core + tail, ["N", channels, 2, 3], inits)
    assert_same_explanations(fused, decomposed, f32(rng, 2, channels, 2, 3, scale=2.0))


# -- a zero Pad before an AveragePool folds into its padding (LRN's exported form) ----------
def _pad_pool(pads: list[int], own_pads: list[int], count_include_pad: int, kernel: int,
              stride: int, seed: int = 17, also_read: bool = False) -> tuple:
    """x [N, 2, 5, 5] -> Conv 3x3 -> Pad(zeros, ``pads`` on H, W) -> AveragePool ->
    Flatten -> Gemm (``also_read``: a Relu reads the padded tensor too, added to the
    pool's output by a global average)."""
    rng = np.random.default_rng(seed)
    spatial = [3 + pads[0] + pads[2] + own_pads[0] + own_pads[2],
               3 + pads[1] + pads[3] + own_pads[1] + own_pads[3]]
    out = [(n - kernel) // stride + 1 for n in spatial]
    nodes = [node("Conv", ["x", "wc", "bc"], "c"),
             node("Pad", ["c", "pads"], "p", mode="constant"),
             node("AveragePool", ["p"], "a", kernel_shape=[kernel, kernel],
                  strides=[stride, stride], pads=own_pads, count_include_pad=count_include_pad)]
    if also_read:
        nodes += [node("Relu", ["p"], "r"), node("GlobalAveragePool", ["r"], "g"),
                  node("Add", ["a", "g"], "s")]
    nodes += [node("Flatten", ["s" if also_read else "a"], "f"), node("Gemm", ["f", "w", "b"], "y")]
    inits = {"wc": f32(rng, 3, 2, 3, 3), "bc": f32(rng, 3),
             "pads": np.array([0, 0, pads[0], pads[1], 0, 0, pads[2], pads[3]]),
             "w": f32(rng, 3 * out[0] * out[1], 2), "b": f32(rng, 2)}
    return model(nodes, ["N", 2, 5, 5], inits), f32(rng, 3, 2, 5, 5)


# pads, the pool's own pads, count_include_pad, kernel, stride, windows in padding alone
PAD_POOLS = [([1, 1, 1, 1], [0, 0, 0, 0], 1, 3, 1, False),
             ([2, 0, 1, 1], [0, 0, 0, 0], 0, 3, 1, False),
             ([1, 1, 1, 1], [1, 0, 0, 1], 0, 3, 2, False),
             ([1, 2, 0, 1], [1, 1, 0, 0], 1, 2, 1, True),
             ([3, 3, 3, 3], [0, 0, 0, 0], 1, 2, 2, True)]


@pytest.mark.parametrize(("pads", "own_pads", "count_include_pad", "kernel", "stride",
                          "empty"), PAD_POOLS, ids=[f"case{i}" for i in range(len(PAD_POOLS))])
def test_zero_pad_before_an_average_pool_folds(pads: list[int], own_pads: list[int],
                                               count_include_pad: int, kernel: int,
                                               stride: int, empty: bool) -> None:
    """Against onnxruntime and finite differences; the Pad is no node of its own; where
    the pool counts every padded element, the same as one AveragePool with both pads
    (the form exporters write at opset >= 11) for every rule. Windows in the padding
    alone read no input (connected to the whole input, as a Conv's): accepted after a
    folded Pad, as they were with the Pad a node of its own; a plain AveragePool with
    such windows is refused (docs/math.md §7.3), so there is nothing to compare with."""
    proto, x = _pad_pool(pads, own_pads, count_include_pad, kernel, stride)
    m, _ = verify(Case(proto, x))
    assert "Pad" not in {n.op for n in m.nodes}
    pool = next(n for n in m.graph if n.op == "AveragePool")
    assert isinstance(pool.operator, WithEmptyOutputs) == empty
    if not empty and (count_include_pad or not any(own_pads)):
        merged = onnx.ModelProto()
        merged.CopyFrom(proto)
        graph = merged.graph
        pool = next(n for n in graph.node if n.op_type == "AveragePool")
        total = [p + o for p, o in zip(pads, own_pads)]
        for attribute in pool.attribute:
            if attribute.name == "pads":
                attribute.ints[:] = total
            if attribute.name == "count_include_pad":
                attribute.i = 1
        pool.input[0] = "c"
        graph.node.remove(next(n for n in graph.node if n.op_type == "Pad"))
        assert_same_explanations(proto, merged, x)


def test_zero_pad_read_by_more_than_pools_stays_a_node() -> None:
    proto, x = _pad_pool([1, 1, 1, 1], [0, 0, 0, 0], 1, 3, 1, also_read=True)
    m, _ = verify(Case(proto, x))
    assert "Pad" in {n.op for n in m.nodes}


def test_zero_pad_before_a_ceil_mode_pool_stays_a_node() -> None:
    """With ceil_mode a pool drops a last window starting in its end padding, which the
    Pad's zeros are not: onnxruntime keeps that window (5 + 2 elements, kernel 2,
    stride 3: 3 windows, the last starting at element 6), so the Pad is not folded."""
    rng = np.random.default_rng(18)
    nodes = [node("Conv", ["x", "wc", "bc"], "c"),
             node("Pad", ["c", "pads"], "p", mode="constant"),
             node("AveragePool", ["p"], "a", kernel_shape=[2, 2], strides=[3, 3],
                  ceil_mode=1),
             node("Flatten", ["a"], "f"), node("Gemm", ["f", "w", "b"], "y")]
    inits = {"wc": f32(rng, 3, 2, 1, 1), "bc": f32(rng, 3),
             "pads": np.array([0, 0, 0, 0, 0, 0, 2, 2]), "w": f32(rng, 27, 2),
             "b": f32(rng, 2)}
    m, _ = verify(Case(model(nodes, ["N", 2, 5, 5], inits), f32(rng, 3, 2, 5, 5)))
    assert "Pad" in {n.op for n in m.nodes}
