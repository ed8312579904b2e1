"""Hand-built networks in old opsets (6 to 10), written with those opsets' op forms.

Each case is a small network of several ops written twice: ``legacy`` with the op forms of
its opset (opset-6 broadcasting with ``broadcast=1`` and ``axis``, BatchNormalization-6
with ``is_test``/``spatial``, Dropout with ``is_test``, attribute forms of Clip, Pad, Slice,
Squeeze and Unsqueeze, Gemm with ``broadcast``, Reshape with a shape input, a shape
subgraph, the initializers also listed as graph inputs as IR < 4 requires), and ``modern``,
the same network in opset 13 forms. For each case:

1. bbp_ref's forward pass of ``legacy`` against onnxruntime running ``legacy`` (where it has
   the kernels: it lacks opset-6 Add/Mul/Sub/Div/BatchNormalization/PRelu/Dropout and
   Gemm-6, so the opset-6 case is compared with onnxruntime running ``modern``), to float32
   rounding (1e-5 of each element plus 1e-5 of the largest; see test_onnx_backend.py);
2. ``legacy`` and ``modern`` give the same `f(x)`, `W^x` and, for every rule, the same
   `b^x` and `B(x)` in bbp_ref (float64; 1e-10 of each field's largest magnitude): an old
   op form is the same function and the same canonical graph as the new one;
3. the decomposition of ``legacy`` for every rule (`conformance_checks`).

The opset-6 `onnx.version_converter` cannot be used for ``modern``: it rejects the
models' symbolic batch axis and fails on the broadcast Add after a Conv.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
import pytest
from builders import f32, model, node
from conformance_checks import RULES, assert_close_to_scale, assert_decomposition

import bbp_ref

FORWARD_RTOL = 1e-5  # float32 rounding of onnxruntime's output
SAME_RTOL = 1e-10  # legacy vs modern, both bbp_ref in float64
N = 3


@dataclass
class Pair:
    legacy: onnx.ModelProto
    modern: onnx.ModelProto
    x: np.ndarray
    ort_runs_legacy: bool


def _legacy(nodes: list, shape: list, inits: dict, opset: int) -> onnx.ModelProto:
    return model(nodes, ["N", *shape], inits, opset=opset, initializers_as_inputs=True)


def _modern(nodes: list, shape: list, inits: dict) -> onnx.ModelProto:
    return model(nodes, ["N", *shape], inits, opset=13)


def _bn_stats(rng: np.random.Generator, *shape: int) -> dict[str, np.ndarray]:
    return {"s": f32(rng, *shape), "bb": f32(rng, *shape), "m": f32(rng, *shape),
            "v": rng.uniform(0.5, 2.0, shape).astype(np.float32)}


def _i64(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def opset6_cnn(rng: np.random.Generator) -> Pair:
    """Pad-2 (attributes) -> Conv -> Add-6 (broadcast, axis=1) -> BatchNormalization-6
    (is_test, spatial) -> PRelu-6 ([C] slope) -> residual Add-6 of two data tensors ->
    MaxPool -> Dropout-6 (is_test) -> Mul-6/Sub-6 (axis=1), Div-6 (suffix broadcast, no
    axis) -> Clip-6 (attributes) -> Reshape (shape input [0, -1]) -> Gemm-6 (broadcast) ->
    LeakyRelu -> Gemm-6."""
    c = 4
    inits = {"w": f32(rng, c, 3, 3, 3), "b": f32(rng, c), **_bn_stats(rng, c),
             "slope": f32(rng, c, scale=0.3), "w1": f32(rng, c, c, 1, 1),
             "k": f32(rng, c), "c": f32(rng, c),
             "d": rng.uniform(0.5, 2.0, 4).astype(np.float32), "shape": _i64(0, -1),
             "wg": f32(rng, c * 3 * 4, 6, scale=0.3), "bg": f32(rng, 6), "w2": f32(rng, 6, 3),
             "b2": f32(rng, 3)}
    legacy = [
        node("Pad", ["x"], "p", pads=[0, 0, 1, 1, 0, 0, 1, 1], mode="constant", value=0.0),
        node("Conv", ["p", "w"], "h"),
        node("Add", ["h", "b"], "hb", broadcast=1, axis=1),
        node("BatchNormalization", ["hb", "s", "bb", "m", "v"], "bn", is_test=1, spatial=1,
             epsilon=1e-3),
        node("PRelu", ["bn", "slope"], "r"),
        node("Conv", ["r", "w1"], "r1"),
        node("Add", ["r", "r1"], "res"),
        node("MaxPool", ["res"], "mp", kernel_shape=[2, 2], strides=[2, 2]),
        node("Dropout", ["mp"], "dr", is_test=1, ratio=0.3),
        node("Mul", ["dr", "k"], "mk", broadcast=1, axis=1),
        node("Sub", ["mk", "c"], "sc", broadcast=1, axis=1),
        node("Div", ["sc", "d"], "dv", broadcast=1),
        node("Clip", ["dv"], "cl", min=-1.0, max=1.5),
        node("Reshape", ["cl", "shape"], "f"),
        node("Gemm", ["f", "wg", "bg"], "g", broadcast=1),
        node("LeakyRelu", ["g"], "l", alpha=0.2),
        node("Gemm", ["l", "w2", "b2"], "y", broadcast=1),
    ]
    per_channel = {k: inits[k].reshape(c, 1, 1) for k in ("b", "slope", "k", "c")}
    modern_inits = {**inits, **per_channel, "pads": _i64(0, 0, 1, 1, 0, 0, 1, 1),
                    "lo": np.float32(-1.0), "hi": np.float32(1.5)}
    modern = [
        node("Pad", ["x", "pads"], "p"),
        node("Conv", ["p", "w"], "h"),
        node("Add", ["h", "b"], "hb"),
        node("BatchNormalization", ["hb", "s", "bb", "m", "v"], "bn", epsilon=1e-3),
        node("PRelu", ["bn", "slope"], "r"),
        node("Conv", ["r", "w1"], "r1"),
        node("Add", ["r", "r1"], "res"),
        node("MaxPool", ["res"], "mp", kernel_shape=[2, 2], strides=[2, 2]),
        node("Mul", ["mp", "k"], "mk"),
        node("Sub", ["mk", "c"], "sc"),
        node("Div", ["sc", "d"], "dv"),
        node("Clip", ["dv", "lo", "hi"], "cl"),
        node("Reshape", ["cl", "shape"], "f"),
        node("Gemm", ["f", "wg", "bg"], "g"),
        node("LeakyRelu", ["g"], "l", alpha=0.2),
        node("Gemm", ["l", "w2", "b2"], "y"),
    ]
    shape = [3, 6, 8]
    x = f32(rng, N, *shape)
    return Pair(_legacy(legacy, shape, inits, 6), _modern(modern, shape, modern_inits), x,
                ort_runs_legacy=False)


def opset7_branches(rng: np.random.Generator) -> Pair:
    """Conv -> numpy-broadcast Add -> BatchNormalization-7 (spatial=1, folds) -> Relu ->
    two branches: AveragePool-7 (pads, count_include_pad) and Conv -> PRelu-7
    (slope [C, 1, 1]); Concat-4; BatchNormalization-7 with spatial=0 ([C, H, W] stats) ->
    Dropout-7 (ratio, no is_test) -> Transpose -> Flatten -> two Gemm-7 -> Sum-6."""
    c = 3
    inits = {"w": f32(rng, c, 2, 3, 3), "b": f32(rng, c, 1, 1), **_bn_stats(rng, c),
             "w2": f32(rng, 2, c, 3, 3), "slope": f32(rng, 2, 1, 1, scale=0.3),
             "s0": f32(rng, 5, 4, 5), "bb0": f32(rng, 5, 4, 5), "m0": f32(rng, 5, 4, 5),
             "v0": rng.uniform(0.5, 2.0, (5, 4, 5)).astype(np.float32),
             "wg": f32(rng, 100, 4, scale=0.3), "bg": f32(rng, 4), "wg2": f32(rng, 100, 4),
             "bg2": f32(rng, 4)}
    head = [
        node("Transpose", ["dr"], "t", perm=[0, 2, 3, 1]),
        node("Flatten", ["t"], "f"),
        node("Gemm", ["f", "wg", "bg"], "g"),
        node("Gemm", ["f", "wg2", "bg2"], "g2"),
        node("Sum", ["g", "g2"], "y"),
    ]
    trunk = [
        node("Conv", ["x", "w"], "h", pads=[1, 1, 1, 1]),
        node("Add", ["h", "b"], "hb"),
        node("BatchNormalization", ["hb", "s", "bb", "m", "v"], "bn", epsilon=1e-3),
        node("Relu", ["bn"], "r"),
        node("AveragePool", ["r"], "ap", kernel_shape=[3, 3], pads=[1, 1, 1, 1],
             count_include_pad=1),
        node("Conv", ["r", "w2"], "h2", pads=[1, 1, 1, 1]),
        node("PRelu", ["h2", "slope"], "pr"),
        node("Concat", ["ap", "pr"], "cat", axis=1),
    ]
    legacy = [
        *trunk[:2],
        node("BatchNormalization", ["hb", "s", "bb", "m", "v"], "bn", epsilon=1e-3, spatial=1),
        *trunk[3:],
        node("BatchNormalization", ["cat", "s0", "bb0", "m0", "v0"], "bn0", epsilon=1e-3,
             spatial=0),
        node("Dropout", ["bn0"], "dr", ratio=0.25),
        *head,
    ]
    # spatial=0 as Mul and Add by [C, H, W] constants, in float64 so as not to round them
    scale = inits["s0"] / np.sqrt(inits["v0"].astype(np.float64) + np.float32(1e-3))
    modern_inits = {**inits, "k0": scale, "c0": inits["bb0"] - scale * inits["m0"]}
    modern = [
        *trunk,
        node("Cast", ["cat"], "cat64", to=onnx.TensorProto.DOUBLE),
        node("Mul", ["cat64", "k0"], "mul0"),
        node("Add", ["mul0", "c0"], "add0"),
        node("Cast", ["add0"], "dr", to=onnx.TensorProto.FLOAT),
        *head,
    ]
    shape = [2, 4, 5]
    x = f32(rng, N, *shape)
    return Pair(_legacy(legacy, shape, inits, 7), _modern(modern, shape, modern_inits), x,
                ort_runs_legacy=True)


def opset8_conv1d(rng: np.random.Generator) -> Pair:
    """1-D: Pad-2 (attributes) -> Conv -> Relu -> MaxPool-8 (storage_order, its Indices
    output declared but unused) -> Slice-1 (attributes) of each channel pair ->
    Squeeze-1/Unsqueeze-1 (attribute axes) -> Sum-8 of data tensors and a broadcast
    constant -> Flatten -> MatMul -> Add."""
    inits = {"w": f32(rng, 4, 1, 3), "b": f32(rng, 4), "k": f32(rng, 1, 1, 8),
             "wm": f32(rng, 16, 3), "bm": f32(rng, 3)}
    shape = [1, 15]

    def slice_(start: int, end: int, out: str, modern: bool) -> onnx.NodeProto:
        if modern:
            return node("Slice", ["mp", f"st{start}", f"en{end}", "ax1"], out)
        return node("Slice", ["mp"], out, starts=[start], ends=[end], axes=[1])

    def build(modern: bool) -> list:
        squeeze = (node("Squeeze", ["a", "ax1"], "sq") if modern
                   else node("Squeeze", ["a"], "sq", axes=[1]))
        unsqueeze = (node("Unsqueeze", ["sq", "ax1"], "us") if modern
                     else node("Unsqueeze", ["sq"], "us", axes=[1]))
        pad = (node("Pad", ["x", "pads"], "p") if modern
               else node("Pad", ["x"], "p", pads=[0, 0, 2, 0, 0, 1]))
        pool = (node("MaxPool", ["r"], "mp", kernel_shape=[2], strides=[2]) if modern
                else node("MaxPool", ["r"], ["mp", "idx"], kernel_shape=[2], strides=[2],
                          storage_order=0))
        return [pad, node("Conv", ["p", "w", "b"], "h"), node("Relu", ["h"], "r"), pool,
                slice_(0, 2, "a", modern), slice_(2, 4, "c", modern), squeeze, unsqueeze,
                node("Sum", ["us", "c", "k"], "s"), node("Flatten", ["s"], "f"),
                node("MatMul", ["f", "wm"], "mm"), node("Add", ["mm", "bm"], "y")]

    # Squeeze of axis 1 needs a size-1 axis: slice one channel for "a"
    legacy_nodes = build(modern=False)
    legacy_nodes[4] = node("Slice", ["mp"], "a", starts=[0], ends=[1], axes=[1])
    modern_nodes = build(modern=True)
    modern_nodes[4] = node("Slice", ["mp", "st0", "en1", "ax1"], "a")
    inits["wm"] = f32(rng, 16, 3)
    modern_inits = {**inits, "pads": _i64(0, 0, 2, 0, 0, 1), "ax1": _i64(1), "st0": _i64(0),
                    "en1": _i64(1), "st2": _i64(2), "en4": _i64(4)}
    x = f32(rng, N, *shape)
    return Pair(_legacy(legacy_nodes, shape, inits, 8),
                _modern(modern_nodes, shape, modern_inits), x, ort_runs_legacy=True)


def opset9_torchscript_style(rng: np.random.Generator) -> Pair:
    """As PyTorch's TorchScript exporter writes opset 9: Conv -> Relu ->
    BatchNormalization-9 (after a Relu: not folded) -> an all-zero Pad-2 before
    AveragePool -> the flatten subgraph Shape -> Gather -> Unsqueeze-1 -> Concat with a
    Constant [-1] -> Reshape -> Cast (to float) -> Gemm-9 -> Dropout-7 -> PRelu-9
    (scalar slope) -> MatMul -> Add."""
    c = 3
    inits = {"w": f32(rng, c, 2, 3, 3), "b": f32(rng, c), **_bn_stats(rng, c),
             "wg": f32(rng, c * 2 * 2, 5), "bg": f32(rng, 5), "slope": f32(rng, 1, scale=0.3),
             "wm": f32(rng, 5, 3), "bm": f32(rng, 3)}
    shape = [2, 6, 6]

    def build(modern: bool) -> list:
        if modern:
            pad = node("Pad", ["r_bn", "pads"], "pd")
            unsqueeze = node("Unsqueeze", ["n0", "ax0"], "n1")
            dropout = node("Dropout", ["g"], "dr")
        else:
            pad = node("Pad", ["r_bn"], "pd", pads=[0] * 8, mode="constant", value=0.0)
            unsqueeze = node("Unsqueeze", ["n0"], "n1", axes=[0])
            dropout = node("Dropout", ["g"], "dr", ratio=0.5)
        minus_one = onnx.helper.make_tensor("minus_one", onnx.TensorProto.INT64, [1], [-1])
        index = onnx.helper.make_tensor("index", onnx.TensorProto.INT64, [], [0])
        return [
            node("Conv", ["x", "w", "b"], "h", pads=[1, 1, 1, 1]), node("Relu", ["h"], "r"),
            node("BatchNormalization", ["r", "s", "bb", "m", "v"], "r_bn", epsilon=1e-3),
            pad, node("AveragePool", ["pd"], "ap", kernel_shape=[3, 3], strides=[3, 3]),
            node("Shape", ["ap"], "shp"),
            node("Constant", [], "i0", value=index),
            node("Gather", ["shp", "i0"], "n0", axis=0), unsqueeze,
            node("Constant", [], "m1", value=minus_one),
            node("Concat", ["n1", "m1"], "tgt", axis=0),
            node("Reshape", ["ap", "tgt"], "f"),
            node("Cast", ["f"], "fc", to=onnx.TensorProto.FLOAT),
            node("Gemm", ["fc", "wg", "bg"], "g"), dropout,
            node("PRelu", ["dr", "slope"], "pr"),
            node("MatMul", ["pr", "wm"], "mm"), node("Add", ["mm", "bm"], "y"),
        ]

    modern_inits = {**inits, "pads": _i64(*[0] * 8), "ax0": _i64(0)}
    x = f32(rng, N, *shape)
    return Pair(_legacy(build(False), shape, inits, 9),
                _modern(build(True), shape, modern_inits), x, ort_runs_legacy=True)


def opset10_slices(rng: np.random.Generator) -> Pair:
    """Conv -> MaxPool-10 (ceil_mode, dilations) -> Slice-10 (starts/ends/axes/steps
    inputs, a negative step) -> Clip-6 (attributes, still at opset 10) -> AveragePool-10
    (ceil_mode) -> Dropout-10 -> Squeeze-1 -> Gemm."""
    inits = {"w": f32(rng, 4, 2, 3, 3), "b": f32(rng, 4), "st": _i64(-1, 0),
             "en": _i64(-100, 7), "ax": _i64(3, 2), "sp": _i64(-1, 2),
             "wg": f32(rng, 4 * 2, 3), "bg": f32(rng, 3)}
    shape = [2, 9, 10]

    def build(modern: bool) -> list:
        clip = (node("Clip", ["sl", "lo", "hi"], "cl") if modern
                else node("Clip", ["sl"], "cl", min=-0.5, max=1.0))
        squeeze = (node("Squeeze", ["ap", "ax2"], "sq") if modern
                   else node("Squeeze", ["ap"], "sq", axes=[2]))
        dropout = node("Dropout", ["rs"], "dr") if modern else node("Dropout", ["rs"], "dr",
                                                                    ratio=0.1)
        return [
            node("Conv", ["x", "w", "b"], "h"),
            node("MaxPool", ["h"], "mp", kernel_shape=[2, 2], strides=[2, 2], dilations=[1, 2],
                 ceil_mode=1),
            node("Slice", ["mp", "st", "en", "ax", "sp"], "sl"), clip,
            node("AveragePool", ["cl"], "ap", kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1),
            squeeze,
            node("Reshape", ["sq", "shape2"], "rs"), dropout,
            node("Gemm", ["dr", "wg", "bg"], "y"),
        ]

    inits["shape2"] = _i64(0, -1)
    modern_inits = {**inits, "lo": np.float32(-0.5), "hi": np.float32(1.0), "ax2": _i64(2)}
    x = f32(rng, N, *shape)
    return Pair(_legacy(build(False), shape, inits, 10),
                _modern(build(True), shape, modern_inits), x, ort_runs_legacy=True)


CASES: dict[str, Callable[[np.random.Generator], Pair]] = {
    "opset6-cnn": opset6_cnn,
    "opset7-branches": opset7_branches,
    "opset8-conv1d": opset8_conv1d,
    "opset9-torchscript-style": opset9_torchscript_style,
    "opset10-slices": opset10_slices,
}


def ort_output(proto: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(proto.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    return session.run([proto.graph.output[0].name], {"x": x})[0]


@pytest.mark.parametrize("name", CASES)
def test_old_opset_network(name):
    pair = CASES[name](np.random.default_rng(sorted(CASES).index(name)))
    opset = pair.legacy.opset_import[0].version
    assert str(opset) in name and pair.modern.opset_import[0].version == 13
    onnx.checker.check_model(pair.legacy)
    legacy, modern = bbp_ref.load(pair.legacy), bbp_ref.load(pair.modern)
    out = legacy.forward(pair.x)

    # 1. the forward pass against onnxruntime
    reference = pair.legacy if pair.ort_runs_legacy else pair.modern
    assert_close_to_scale(out, ort_output(reference, pair.x), FORWARD_RTOL, name)

    # 2. the same function and the same explanation as the opset-13 forms
    def same(a: np.ndarray, b: np.ndarray, what: str) -> None:
        scale = max(float(np.abs(b).max()), 1e-300)
        np.testing.assert_allclose(a, b, rtol=0, atol=SAME_RTOL * scale, err_msg=what)

    same(out, modern.forward(pair.x), "forward")
    same(legacy.jacobian(pair.x), modern.jacobian(pair.x), "jacobian")
    for rule in RULES:
        a = bbp_ref.explain(legacy, pair.x, rule=rule, check=False)
        b = bbp_ref.explain(modern, pair.x, rule=rule, check=False)
        np.testing.assert_array_equal(a.target, b.target)
        same(a.bias, b.bias, f"{rule} bias")
        same(a.bias_attribution, b.bias_attribution, f"{rule} bias attribution")
        if rule == "abs":
            assert a.bias.std() > 0 and np.abs(a.bias_attribution).max() > 0

    # 3. the decomposition
    assert_decomposition(legacy, pair.x)
