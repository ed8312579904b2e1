"""Small hand-written networks of the architectures docs/math.md §5 is checked on."""

from __future__ import annotations

import numpy as np
from builders import f32, node
from builders import model as _model

# Opset 14: onnx.reference (used for the finite differences) runs BatchNormalization
# 9-13 in training mode whenever the momentum attribute is present.
OPSET = 14


def model(*args, **kwargs):
    return _model(*args, opset=OPSET, **kwargs)


def mlp(rng, bias=True):
    w = {"W1": f32(rng, 8, 6, scale=0.5), "W2": f32(rng, 7, 8, scale=0.4),
         "W3": f32(rng, 4, 7, scale=0.4)}
    b = {"b1": f32(rng, 8, scale=0.3), "b2": f32(rng, 7, scale=0.3), "b3": f32(rng, 4, scale=0.3)}
    if not bias:
        b = {k: np.zeros_like(v) for k, v in b.items()}
    nodes = [node("Gemm", ["x", "W1", "b1"], "h1", name="fc1", transB=1),
             node("Relu", ["h1"], "a1", name="relu1"),
             node("Gemm", ["a1", "W2", "b2"], "h2", name="fc2", transB=1),
             node("LeakyRelu", ["h2"], "a2", name="leaky2", alpha=0.1),
             node("Gemm", ["a2", "W3", "b3"], "y", name="fc3", transB=1)]
    return model(nodes, ["N", 6], {**w, **b}), (6,)


def _bn_params(rng, c, prefix):
    return {f"{prefix}_s": (rng.uniform(0.5, 1.5, c) * rng.choice([-1, 1], c)).astype(np.float32),
            f"{prefix}_b": f32(rng, c, scale=0.2), f"{prefix}_m": f32(rng, c, scale=0.2),
            f"{prefix}_v": rng.uniform(0.5, 1.5, c).astype(np.float32)}


def _bn(x, y, prefix):
    return node("BatchNormalization", [x, f"{prefix}_s", f"{prefix}_b", f"{prefix}_m",
                                       f"{prefix}_v"], y, name=prefix, epsilon=1e-3)


def cnn(rng, bias=True):
    inits = {"C1": f32(rng, 4, 2, 3, 3, scale=0.4), "c1": f32(rng, 4, scale=0.2),
             "C2": f32(rng, 5, 4, 3, 3, scale=0.3), "c2": f32(rng, 5, scale=0.2),
             "F": f32(rng, 3, 20, scale=0.3), "f": f32(rng, 3, scale=0.2),
             **_bn_params(rng, 4, "bn1")}
    if not bias:
        inits = {k: (np.zeros_like(v) if k in ("c1", "c2", "f", "bn1_b", "bn1_m") else v)
                 for k, v in inits.items()}
    nodes = [node("Conv", ["x", "C1", "c1"], "h1", name="conv1", pads=[1, 1, 1, 1]),
             _bn("h1", "n1", "bn1"),
             node("Relu", ["n1"], "a1", name="relu1"),
             node("MaxPool", ["a1"], "p1", name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
             node("Conv", ["p1", "C2", "c2"], "h2", name="conv2", pads=[1, 1, 1, 1]),
             node("Relu", ["h2"], "a2", name="relu2"),
             node("AveragePool", ["a2"], "p2", name="pool2", kernel_shape=[2, 2],
                  strides=[2, 2]),
             node("Flatten", ["p2"], "v", name="flatten"),
             node("Gemm", ["v", "F", "f"], "y", name="fc", transB=1)]
    return model(nodes, ["N", 2, 8, 8], inits), (2, 8, 8)


def residual(rng, bias=True):
    inits = {"C0": f32(rng, 4, 3, 3, 3, scale=0.3), "c0": f32(rng, 4, scale=0.2),
             "C1": f32(rng, 4, 4, 3, 3, scale=0.2), "c1": f32(rng, 4, scale=0.2),
             "C2": f32(rng, 4, 4, 3, 3, scale=0.2), "c2": f32(rng, 4, scale=0.2),
             "S": f32(rng, 6, 4, 1, 1, scale=0.4),
             "C3": f32(rng, 6, 4, 3, 3, scale=0.2), "c3": f32(rng, 6, scale=0.2),
             "F": f32(rng, 5, 6, scale=0.5), "f": f32(rng, 5, scale=0.2),
             **_bn_params(rng, 4, "bn2")}
    if not bias:
        inits = {k: (np.zeros_like(v) if k in ("c0", "c1", "c2", "c3", "f", "bn2_b", "bn2_m")
                     else v) for k, v in inits.items()}
    nodes = [node("Conv", ["x", "C0", "c0"], "h0", name="stem", pads=[1, 1, 1, 1]),
             node("Relu", ["h0"], "a0", name="relu0"),
             node("Conv", ["a0", "C1", "c1"], "h1", name="block1_conv1", pads=[1, 1, 1, 1]),
             node("Relu", ["h1"], "a1", name="block1_relu1"),
             node("Conv", ["a1", "C2", "c2"], "h2", name="block1_conv2", pads=[1, 1, 1, 1]),
             _bn("h2", "n2", "bn2"),
             node("Add", ["n2", "a0"], "r1", name="block1_add"),
             node("Relu", ["r1"], "o1", name="block1_relu2"),
             node("Conv", ["o1", "C3", "c3"], "h3", name="block2_conv", pads=[1, 1, 1, 1],
                  strides=[2, 2]),
             node("Conv", ["o1", "S"], "s3", name="block2_shortcut", strides=[2, 2]),
             node("Add", ["h3", "s3"], "r2", name="block2_add"),
             node("Relu", ["r2"], "o2", name="block2_relu"),
             node("GlobalAveragePool", ["o2"], "g", name="gap"),
             node("Flatten", ["g"], "v", name="flatten"),
             node("Gemm", ["v", "F", "f"], "y", name="fc", transB=1)]
    return model(nodes, ["N", 3, 6, 6], inits), (3, 6, 6)


def conv_variants(rng, bias=True):
    inits = {"G": f32(rng, 4, 2, 3, 3, scale=0.4), "g": f32(rng, 4, scale=0.2),
             "D": f32(rng, 4, 1, 3, 3, scale=0.4), "d": f32(rng, 4, scale=0.2),
             "S": f32(rng, 6, 4, 3, 3, scale=0.3), "s": f32(rng, 6, scale=0.2),
             "slope": rng.uniform(0.05, 0.3, (4, 1, 1)).astype(np.float32),
             "F": f32(rng, 3, 24, scale=0.3), "f": f32(rng, 3, scale=0.2)}
    if not bias:
        inits.update({k: np.zeros_like(inits[k]) for k in ("g", "d", "s", "f")})
    nodes = [node("Conv", ["x", "G", "g"], "h1", name="grouped", group=2, pads=[1, 1, 1, 1]),
             node("PRelu", ["h1", "slope"], "a1", name="prelu"),
             node("Conv", ["a1", "D", "d"], "h2", name="dilated_depthwise", group=4,
                  dilations=[2, 2], pads=[2, 2, 2, 2]),
             node("Relu", ["h2"], "a2", name="relu2"),
             node("Conv", ["a2", "S", "s"], "h3", name="strided", strides=[2, 2],
                  pads=[1, 0, 1, 0]),
             node("Relu", ["h3"], "a3", name="relu3"),
             node("MaxPool", ["a3"], "p3", name="pool", kernel_shape=[2, 2], strides=[2, 2],
                  ceil_mode=1),
             node("Flatten", ["p3"], "v", name="flatten"),
             node("Gemm", ["v", "F", "f"], "y", name="fc", transB=1)]
    return model(nodes, ["N", 4, 7, 7], inits), (4, 7, 7)


def saturated_clip(rng, bias=True):
    inits = {"W1": f32(rng, 8, 5, scale=1.0), "b1": f32(rng, 8, scale=0.5),
             "W2": f32(rng, 8, 8, scale=1.5), "b2": f32(rng, 8, scale=0.5),
             "W3": f32(rng, 3, 8, scale=0.5), "b3": f32(rng, 3, scale=0.5),
             "lo": np.array(-0.5, np.float32), "hi": np.array(0.5, np.float32),
             "zero": np.array(0.0, np.float32), "one": np.array(1.0, np.float32)}
    if not bias:
        inits.update({k: np.zeros_like(inits[k]) for k in ("b1", "b2", "b3")})
    nodes = [node("Gemm", ["x", "W1", "b1"], "h1", name="fc1", transB=1),
             node("Clip", ["h1", "lo", "hi"], "a1", name="hardtanh"),
             node("Gemm", ["a1", "W2", "b2"], "h2", name="fc2", transB=1),
             node("Clip", ["h2", "zero", "one"], "a2", name="clip01"),
             node("Gemm", ["a2", "W3", "b3"], "y", name="fc3", transB=1)]
    return model(nodes, ["N", 5], inits), (5,)


def concat_branches(rng, bias=True):
    inits = {"A": f32(rng, 3, 2, 3, 3, scale=0.4), "a": f32(rng, 3, scale=0.2),
             "B": f32(rng, 2, 2, 1, 1, scale=0.4), "b": f32(rng, 2, scale=0.2),
             "F": f32(rng, 4, 5 * 16, scale=0.2), "f": f32(rng, 4, scale=0.2),
             "shape": np.array([0, -1], np.int64)}
    if not bias:
        inits.update({k: np.zeros_like(inits[k]) for k in ("a", "b", "f")})
    nodes = [node("Conv", ["x", "A", "a"], "ha", name="branch_a", pads=[1, 1, 1, 1]),
             node("Relu", ["ha"], "ra", name="relu_a"),
             node("Conv", ["x", "B", "b"], "hb", name="branch_b"),
             node("Relu", ["hb"], "rb", name="relu_b"),
             node("Concat", ["ra", "rb"], "c", name="concat", axis=1),
             node("Identity", ["c"], "ci", name="identity"),
             node("Reshape", ["ci", "shape"], "v", name="reshape"),
             node("Gemm", ["v", "F", "f"], "y", name="fc", transB=1)]
    return model(nodes, ["N", 2, 4, 4], inits), (2, 4, 4)


ARCHITECTURES = {f.__name__: f for f in (mlp, cnn, residual, conv_variants, saturated_clip,
                                         concat_branches)}
