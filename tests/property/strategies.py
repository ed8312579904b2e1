"""Hypothesis strategies for random piecewise-linear networks, written as ONNX graphs.

`networks()` draws a `Net`: a readable description (opset, input shape, the layers with
their attributes, the value styles) plus the float32 weights and an input batch made
from a seed. `Net.onnx()` writes it as an ONNX model; shrinking shrinks the description,
so a failing case ends up as a short list of layers such as
``Net(opset=13, input=(2, 4), layers=[Conv(...), MaxPool(...)])``.

What is generated: depth 1-8 (plus an optional Flatten + Gemm head); Gemm (transB,
alpha, beta, C of every shape, or none from opset 11) and its MatMul + Add form, MatMul on
the last axis; Conv 1-/2-/3-D with random kernel, stride, padding (explicit or auto_pad),
dilation and groups; MaxPool / AveragePool (pads, strides, ceil_mode from opset 10,
count_include_pad, dilations from opsets 10 / 19, auto_pad), the global pools, ReduceMean;
Relu, LeakyRelu, PRelu (per-channel, scalar, full and trailing slopes), Clip (attribute
form before opset 11, inputs from 11, either bound missing); BatchNormalization (negative
and zero scales) after a Conv/Gemm/MatMul (folded) or alone; Add/Sub/Mul/Div by
constants; residual Add/Sub/Sum and Concat branches; Flatten, Reshape, Transpose,
Squeeze, Unsqueeze in the form of the drawn opset. Value styles put exact zeros, ties
(integer-valued inputs and weights) and Clip-saturating magnitudes into weights and
inputs. Tensors stay at most `MAX_ELEMENTS` per example, so every example runs in
milliseconds.

Three writings of one `Net` (`variant`): ``"model"``, the graph under test;
``"ort"``, equivalent but avoiding what onnxruntime does not implement as the ONNX spec
says (auto_pad SAME with dilations, VALID with ceil_mode: written with explicit pads);
``"ref"``, a float64 copy for `onnx.reference` avoiding its bugs (auto_pad written out,
BatchNormalization before opset 14 as explicit arithmetic since the evaluator runs it in
training mode, GlobalMaxPool of a non-2-D input as ReduceMax).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import onnx
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

MIN_OPSET = 7
MAX_OPSET = onnx.defs.onnx_opset_version()
MAX_ELEMENTS = 96  # per-example elements of every tensor
MAX_OUTPUTS = 24  # per-example elements of the explained output
MAX_DEPTH = 8

VALUE_STYLES = ("normal", "integer", "sparse")
INPUT_STYLES = ("normal", "integer", "sparse", "wide")
GATES = ("Relu", "LeakyRelu", "PRelu", "Clip")
# A Conv output whose window reads only padding depends on no input: bbp_ref cannot hand
# its bias mass on (RuleError; see test_conv_window_in_padding_only in test_properties.py).
ALLOW_EMPTY_CONV_WINDOWS = False


# -- the description ----------------------------------------------------------------------
@dataclass(frozen=True)
class Layer:
    """One layer: an ONNX op (or a small pattern such as a residual block) with its
    attributes. ``key`` names its weights and ONNX nodes; ``branches`` are the layer
    lists of a residual or concat block."""

    op: str
    key: str
    params: tuple[tuple[str, object], ...] = ()
    branches: tuple[tuple[Layer, ...], ...] = ()

    def get(self, name: str, default: object = None) -> object:
        return dict(self.params).get(name, default)

    def __getitem__(self, name: str) -> object:
        return dict(self.params)[name]

    def with_params(self, **changes: object) -> Layer:
        params = dict(self.params)
        params.update(changes)
        return replace(self, params=tuple(params.items()))

    def __repr__(self) -> str:
        args = [f"{k}={v!r}" for k, v in self.params]
        for i, branch in enumerate(self.branches):
            args.append(f"branch{i}=[{', '.join(map(repr, branch))}]")
        return f"{self.op}({', '.join(args)})"

    def _repr_pretty_(self, printer: object, cycle: bool) -> None:  # Hypothesis's printer
        printer.text(repr(self))  # type: ignore[attr-defined]

    def walk(self) -> list[Layer]:
        """This layer and the layers of its branches."""
        return [self] + [inner for b in self.branches for layer in b for inner in layer.walk()]


@dataclass(frozen=True)
class Net:
    """A drawn network: the description (shown when a property fails) and, hidden from
    the repr, its float32 weights and input batch ``x`` of shape [batch, *input_shape]."""

    opset: int
    input_shape: tuple[int, ...]
    layers: tuple[Layer, ...]
    values: str
    inputs: str
    seed: int
    weights: dict[str, np.ndarray] = field(repr=False, compare=False)
    x: np.ndarray = field(repr=False, compare=False)

    def __repr__(self) -> str:
        layers = ",\n    ".join(map(repr, self.layers))
        return (f"Net(opset={self.opset}, input={self.input_shape}, batch={len(self.x)}, "
                f"values={self.values!r}, inputs={self.inputs!r}, seed={self.seed},\n"
                f"    layers=[{layers}])")

    def _repr_pretty_(self, printer: object, cycle: bool) -> None:  # Hypothesis's printer
        printer.text(repr(self))  # type: ignore[attr-defined]

    def all_layers(self) -> list[Layer]:
        return [inner for layer in self.layers for inner in layer.walk()]

    def onnx(self, variant: str = "model", *, zero_bias: bool = False) -> onnx.ModelProto:
        """The ONNX model (see the module docstring for ``variant``); ``zero_bias``:
        every bias and constant offset 0 and Clip reduced to Clip(min=0)."""
        return build(self, variant, zero_bias)

    def map_layers(self, fn: Callable[[Layer], Layer]) -> Net:
        def visit(layer: Layer) -> Layer:
            layer = fn(layer)
            return replace(layer, branches=tuple(tuple(visit(b) for b in branch)
                                                 for branch in layer.branches))
        return replace(self, layers=tuple(visit(layer) for layer in self.layers))

    def gemm_rewritten(self) -> Net:
        """Every Gemm with alpha = beta = 1 written in the other form (Gemm <-> MatMul +
        Add); the weights are the same arrays (transposing is exact)."""
        def flip(layer: Layer) -> Layer:
            if layer.op != "Gemm" or layer["alpha"] != 1.0 or layer["beta"] != 1.0:
                return layer
            return layer.with_params(form="MatMul+Add" if layer["form"] == "Gemm" else "Gemm")
        return self.map_layers(flip)

    @property
    def has_gemm_to_rewrite(self) -> bool:
        return any(layer.op == "Gemm" and layer["alpha"] == 1.0 and layer["beta"] == 1.0
                   for layer in self.all_layers())


# -- shapes --------------------------------------------------------------------------------
def size(shape: Sequence[int]) -> int:
    return int(np.prod(shape, dtype=np.int64)) if len(shape) else 1


def pool_out(n: int, k: int, s: int, d: int, begin: int, end: int, ceil_mode: bool) -> int:
    """ONNX output length of a window op along one axis (with ceil_mode the last window
    must start inside the input or its begin padding, as onnxruntime and PyTorch do)."""
    span = d * (k - 1) + 1
    room = n + begin + end - span
    if room < 0:
        return 0
    if ceil_mode:
        out = -(-room // s) + 1
        if (out - 1) * s >= n + begin:
            out -= 1
        return out
    return room // s + 1


def same_pads(auto_pad: str, n: int, k: int, s: int, d: int) -> tuple[int, int]:
    out = -(-n // s)
    total = max(0, (out - 1) * s + d * (k - 1) + 1 - n)
    small, large = total // 2, total - total // 2
    return (small, large) if auto_pad == "SAME_UPPER" else (large, small)


def empty_window(layer: Layer, spatial: Sequence[int]) -> bool:
    """Whether some output window of a Conv / pool reads only padding."""
    pads, out = window_geometry(layer, spatial)
    for axis, (n, k, s, d) in enumerate(zip(spatial, layer["kernel"], layer["strides"],
                                           layer["dilations"])):
        for o in range(out[axis]):
            start = o * s - pads[axis]
            if not any(0 <= start + j * d < n for j in range(k)):
                return True
    return False


def unclamped_same(layer: Layer, spatial: Sequence[int]) -> bool:
    """Whether auto_pad SAME needs a negative total padding on some axis before it is
    clamped to 0 (onnxruntime's pools fail: "padding values must be non-negative")."""
    return any((-(-n // s) - 1) * s + d * (k - 1) + 1 - n < 0
               for n, k, s, d in zip(spatial, layer["kernel"], layer["strides"],
                                     layer["dilations"]))


def window_geometry(layer: Layer, spatial: Sequence[int]) -> tuple[list[int], list[int]]:
    """(explicit pads [begin..., end...], output spatial shape) of a Conv / pool layer."""
    kernel, strides, dilations = layer["kernel"], layer["strides"], layer["dilations"]
    auto_pad = layer["auto_pad"]
    dims = len(kernel)
    if auto_pad.startswith("SAME"):
        pairs = [same_pads(auto_pad, n, k, s, d)
                 for n, k, s, d in zip(spatial, kernel, strides, dilations)]
        pads = [p[0] for p in pairs] + [p[1] for p in pairs]
    elif auto_pad == "VALID":
        pads = [0] * (2 * dims)
    else:
        pads = list(layer["pads"])
    ceil_mode = bool(layer.get("ceil_mode", 0)) and auto_pad == "NOTSET"
    out = [pool_out(n, k, s, d, pads[i], pads[i + dims], ceil_mode)
           for i, (n, k, s, d) in enumerate(zip(spatial, kernel, strides, dilations))]
    return pads, out


# -- values --------------------------------------------------------------------------------
def layer_rng(seed: int, key: str) -> np.random.Generator:
    """Each layer's values depend only on the seed and the layer's key, so shrinking
    one layer away leaves the others' weights as they were."""
    return np.random.default_rng([seed, zlib.crc32(key.encode())])


def weights(rng: np.random.Generator, shape: Sequence[int], style: str,
            fan_in: int) -> np.ndarray:
    """Weights of variance about 1 / fan_in; ``integer``: small integers times a power
    of two (exact arithmetic, ties, many zeros); ``sparse``: 40% exact zeros."""
    shape = tuple(shape)
    if style == "integer":
        scale = 2.0 ** -round(math.log2(math.sqrt(max(fan_in, 1))))
        return np.asarray(rng.integers(-2, 3, shape) * scale, dtype=np.float32)
    w = np.asarray(rng.normal(0.0, 1.0 / math.sqrt(max(fan_in, 1)), shape))
    if style == "sparse":
        w[rng.random(shape) < 0.4] = 0.0
    return w.astype(np.float32)


def biases(rng: np.random.Generator, shape: Sequence[int], style: str) -> np.ndarray:
    shape = tuple(shape)
    if style == "integer":
        return np.asarray(rng.integers(-2, 3, shape) * 0.25, dtype=np.float32)
    b = np.asarray(rng.normal(0.0, 0.5, shape))
    if style == "sparse":
        b[rng.random(shape) < 0.4] = 0.0
    return b.astype(np.float32)


def input_batch(rng: np.random.Generator, shape: Sequence[int], style: str) -> np.ndarray:
    shape = tuple(shape)
    if style == "integer":
        return rng.integers(-2, 3, shape).astype(np.float32)
    scale = 3.0 if style == "wide" else 1.0
    x = rng.normal(0.0, scale, shape)
    if style == "sparse":
        x[rng.random(shape) < 0.5] = 0.0
    return x.astype(np.float32)


# -- drawing -------------------------------------------------------------------------------
class Drawer:
    """Draws layers for a running tensor shape; records every weight array."""

    def __init__(self, draw: Callable, opset: int, seed: int, style: str,
                 zero_scales: bool = True, batchnorm: bool | None = None) -> None:
        self.draw = draw
        self.opset = opset
        self.seed = seed
        self.style = style
        self.zero_scales = zero_scales
        self.batchnorm = batchnorm  # None: drawn; True/False: always/never after a layer
        self.weights: dict[str, np.ndarray] = {}

    def pick(self, options: Sequence[object]) -> object:
        return self.draw(st.sampled_from(list(options)))

    def int_(self, low: int, high: int) -> int:
        return self.draw(st.integers(low, max(low, high)))

    def bool_(self) -> bool:
        return self.draw(st.booleans())

    # -- layer choice ----------------------------------------------------------------------
    def candidates(self, shape: tuple[int, ...]) -> list[str]:
        """The layers that fit a tensor of per-example ``shape`` (repeats weight the
        draw towards layers with weights)."""
        rank = len(shape)
        ops = ["Relu", "LeakyRelu", "PRelu", "Clip", "BatchNormalization", "Arith"]
        if rank == 1:
            ops += ["Gemm"] * 4 + ["Residual", "Concat", "ReduceMean", "Flatten"]
            if shape[0] > 1:
                ops += ["Reshape"]
            ops += ["Unsqueeze"]
        else:
            ops += ["Conv"] * 4 + ["MaxPool", "AveragePool", "GlobalMaxPool", "GlobalAveragePool",
                    "Flatten", "Reshape", "Transpose", "MatMul", "ReduceMean", "Residual",
                    "Concat"]
            if rank < 4:
                ops.append("Unsqueeze")
            if any(n == 1 for n in shape):
                ops.append("Squeeze")
        return ops

    def layer(self, shape: tuple[int, ...], key: str,
              ops: Sequence[str] | None = None) -> tuple[Layer, tuple[int, ...]]:
        op = self.pick(ops or self.candidates(shape))
        return getattr(self, "draw_" + op)(shape, key)

    # -- affine ----------------------------------------------------------------------------
    def draw_Gemm(self, shape, key, out=None):
        (width,) = shape
        out = out or self.int_(1, 8)
        trans_b = self.bool_()
        alpha = self.pick([1.0, 1.0, 1.0, 0.5, -2.0])
        beta = self.pick([1.0, 1.0, 1.0, 0.5, -1.5])
        c_shapes = ["M", "1M", "scalar", "1"] + (["none"] if self.opset >= 11 else [])
        c_shape = self.pick(c_shapes)
        form = "Gemm"
        if alpha == 1.0 and beta == 1.0 and self.bool_():
            form = "MatMul+Add"
        bn = self.bool_() if self.batchnorm is None else self.batchnorm
        rng = layer_rng(self.seed, key)
        w = weights(rng, (width, out), self.style, width)
        self.weights[key + "_W"] = w.T.copy() if trans_b else w
        if c_shape != "none":
            dims = {"M": (out,), "1M": (1, out), "scalar": (), "1": (1,)}[c_shape]
            self.weights[key + "_C"] = biases(rng, dims, self.style)
        if bn:
            self.bn_weights(rng, key + "_bn", out)
        layer = Layer("Gemm", key, (("out", out), ("transB", int(trans_b)), ("alpha", alpha),
                                    ("beta", beta), ("C", c_shape), ("form", form),
                                    ("bn", bn)))
        return layer, (out,)

    def draw_MatMul(self, shape, key):
        last = shape[-1]
        budget = MAX_ELEMENTS // size(shape[:-1])
        out = self.int_(1, min(4, budget))
        add = self.bool_()
        bn = self.bool_() if self.batchnorm is None else self.batchnorm
        rng = layer_rng(self.seed, key)
        self.weights[key + "_W"] = weights(rng, (last, out), self.style, last)
        if add:
            self.weights[key + "_B"] = biases(rng, (out,), self.style)
        if bn:
            self.bn_weights(rng, key + "_bn", shape[0])
        layer = Layer("MatMul", key, (("out", out), ("add", add), ("bn", bn)))
        return layer, (*shape[:-1], out)

    def conv_params(self, shape, same=False, out=None):
        channels, spatial = shape[0], shape[1:]
        dims = len(spatial)
        groups = [g for g in range(1, channels + 1) if channels % g == 0]
        if out is not None:
            groups = [g for g in groups if out % g == 0]
        group = self.pick(groups)
        dilations = tuple(self.int_(1, 2) for _ in spatial)
        if same:
            kernel = tuple(self.pick([1, 3]) for _ in spatial)
            strides = (1,) * dims
            pads = tuple(d * (k - 1) // 2 for k, d in zip(kernel, dilations)) * 2
            auto_pad = "NOTSET"
        else:
            auto_pad = self.pick(["NOTSET", "NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"])
            strides = tuple(self.int_(1, 2) for _ in spatial)
            begin = tuple(self.int_(0, 2) if auto_pad == "NOTSET" else 0 for _ in spatial)
            end = tuple(self.int_(0, 2) if auto_pad == "NOTSET" else 0 for _ in spatial)
            kernel = []
            for n, b, e, d in zip(spatial, begin, end, dilations):
                room = n + b + e if auto_pad != "SAME_UPPER" and auto_pad != "SAME_LOWER" else 9
                kernel.append(self.int_(1, min(3, (room - 1) // d + 1)))
            kernel = tuple(kernel)
            pads = begin + end
        return dict(kernel=kernel, strides=strides, dilations=dilations, pads=pads,
                    auto_pad=auto_pad, group=group)

    def draw_Conv(self, shape, key, same=False, out=None):
        channels = shape[0]
        params = self.conv_params(shape, same, out)
        layer = Layer("Conv", key, tuple(params.items()))
        _, out_spatial = window_geometry(layer, shape[1:])
        if (size(out_spatial) * params["group"] > MAX_ELEMENTS  # too big: no padding
                or (not ALLOW_EMPTY_CONV_WINDOWS and empty_window(layer, shape[1:]))):
            params["pads"] = (0,) * len(params["pads"])
            params["auto_pad"] = "NOTSET"
            params["kernel"] = tuple(min(k, (n - 1) // d + 1) for k, n, d in
                                     zip(params["kernel"], shape[1:], params["dilations"]))
            layer = Layer("Conv", key, tuple(params.items()))
            _, out_spatial = window_geometry(layer, shape[1:])
        group = params["group"]
        if out is None:
            most = max(1, min(6 // group, MAX_ELEMENTS // (group * size(out_spatial))))
            out = group * self.int_(1, most)
        bias = self.bool_()
        bn = self.bool_() if self.batchnorm is None else self.batchnorm
        rng = layer_rng(self.seed, key)
        fan_in = channels // group * size(params["kernel"])
        self.weights[key + "_W"] = weights(rng, (out, channels // group, *params["kernel"]),
                                           self.style, fan_in)
        if bias:
            self.weights[key + "_B"] = biases(rng, (out,), self.style)
        if bn:
            self.bn_weights(rng, key + "_bn", out)
        layer = Layer("Conv", key, (("out", out), *params.items(), ("bias", bias), ("bn", bn)))
        return layer, (out, *out_spatial)

    def bn_weights(self, rng, prefix, channels):
        if self.style == "integer":
            scale = rng.choice([-1.0, -0.5, 0.0, 0.5, 1.0, 2.0], channels)
        else:
            scale = rng.uniform(0.5, 1.5, channels) * rng.choice([-1.0, 1.0], channels)
            if self.style == "sparse":
                scale[rng.random(channels) < 0.25] = 0.0
        if not self.zero_scales:
            scale[scale == 0] = 0.5
        self.weights[prefix + "_scale"] = scale.astype(np.float32)
        self.weights[prefix + "_bias"] = biases(rng, (channels,), self.style)
        self.weights[prefix + "_mean"] = biases(rng, (channels,), self.style)
        self.weights[prefix + "_var"] = rng.uniform(0.25, 2.0, channels).astype(np.float32)

    def draw_BatchNormalization(self, shape, key):
        epsilon = self.pick([1e-5, 1e-3, 0.1])
        self.bn_weights(layer_rng(self.seed, key), key, shape[0])
        return Layer("BatchNormalization", key, (("epsilon", epsilon),)), shape

    def const_shape(self, shape):
        choices = {"scalar": (), "one": (1,), "full": shape}
        if len(shape) > 1:
            choices["channel"] = (shape[0],) + (1,) * (len(shape) - 1)
            choices["last"] = (shape[-1],)
        name = self.pick(sorted(choices))
        return name, choices[name]

    def draw_Arith(self, shape, key):
        op = self.pick(["Add", "Sub", "Mul", "Div"])
        name, dims = self.const_shape(shape)
        const_first = op != "Div" and self.bool_()
        rng = layer_rng(self.seed, key)
        if op in ("Add", "Sub"):
            value = biases(rng, dims, self.style)
        elif op == "Mul":
            value = weights(rng, dims, self.style, 1)
            if not self.zero_scales:
                value[value == 0] = 0.5
        else:
            value = (rng.choice([-1.0, 1.0], dims) * rng.choice([0.5, 1.0, 2.0, 0.75], dims))
            value = np.asarray(value, dtype=np.float32)
        self.weights[key + "_c"] = value
        layer = Layer("Arith", key, (("op", op), ("const", name), ("const_first", const_first)))
        return layer, shape

    # -- pools -----------------------------------------------------------------------------
    def pool_params(self, op, shape, same=False):
        spatial = shape[1:]
        dims = len(spatial)
        has_dilations = self.opset >= (10 if op == "MaxPool" else 19)
        if same:
            kernel = tuple(self.pick([1, 3]) for _ in spatial)
            params = dict(kernel=kernel, strides=(1,) * dims, dilations=(1,) * dims,
                          pads=tuple((k - 1) // 2 for k in kernel) * 2, auto_pad="NOTSET",
                          ceil_mode=0)
        else:
            auto_pad = self.pick(["NOTSET", "NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"])
            ceil_mode = int(self.opset >= 10 and auto_pad in ("NOTSET", "VALID")
                            and self.bool_())
            strides = tuple(self.int_(1, 2) for _ in spatial)
            dilations = tuple(self.int_(1, 2) if has_dilations else 1 for _ in spatial)
            kernel, begin, end = [], [], []
            for n, d in zip(spatial, dilations):
                k = self.int_(1, 3)
                if auto_pad == "VALID":
                    k = min(k, (n - 1) // d + 1)
                span = d * (k - 1) + 1
                low = max(0, span - n - (k - 1))  # so that the window fits
                b = self.int_(low, k - 1) if auto_pad == "NOTSET" else 0
                e = self.int_(max(0, span - n - b), k - 1) if auto_pad == "NOTSET" else 0
                kernel.append(k)
                begin.append(b)
                end.append(e)
            params = dict(kernel=tuple(kernel), strides=strides, dilations=dilations,
                          pads=tuple(begin + end), auto_pad=auto_pad, ceil_mode=ceil_mode)
            trial = Layer(op, "", tuple(params.items()))
            pads, _ = window_geometry(trial, spatial)
            # onnxruntime needs every pad < kernel; no window may read only padding
            if any(p >= k for p, k in zip(pads, kernel * 2)) or empty_window(trial, spatial):
                params["auto_pad"] = "VALID"
                params["pads"] = (0,) * (2 * dims)
                params["kernel"] = tuple(min(k, (n - 1) // d + 1)
                                         for k, n, d in zip(kernel, spatial, dilations))
        if op == "AveragePool":
            params["count_include_pad"] = int(self.bool_())
        return params

    def draw_pool(self, op, shape, key, same=False):
        params = self.pool_params(op, shape, same)
        layer = Layer(op, key, tuple(params.items()))
        _, out_spatial = window_geometry(layer, shape[1:])
        return layer, (shape[0], *out_spatial)

    def draw_MaxPool(self, shape, key, same=False):
        return self.draw_pool("MaxPool", shape, key, same)

    def draw_AveragePool(self, shape, key, same=False):
        return self.draw_pool("AveragePool", shape, key, same)

    def draw_GlobalMaxPool(self, shape, key):
        return Layer("GlobalMaxPool", key), (shape[0],) + (1,) * (len(shape) - 1)

    def draw_GlobalAveragePool(self, shape, key):
        return Layer("GlobalAveragePool", key), (shape[0],) + (1,) * (len(shape) - 1)

    def draw_ReduceMean(self, shape, key):
        rank = len(shape)
        axes = sorted(self.draw(st.sets(st.integers(0, rank - 1), min_size=1, max_size=rank)))
        keepdims = int(len(axes) == rank or self.bool_())
        negative = self.bool_()
        onnx_axes = tuple(a - rank if negative else a + 1 for a in axes)
        if keepdims:
            out = tuple(1 if a in axes else n for a, n in enumerate(shape))
        else:
            out = tuple(n for a, n in enumerate(shape) if a not in axes)
        return Layer("ReduceMean", key, (("axes", onnx_axes), ("keepdims", keepdims))), out

    # -- gates -----------------------------------------------------------------------------
    def draw_Relu(self, shape, key):
        return Layer("Relu", key), shape

    def draw_LeakyRelu(self, shape, key):
        return Layer("LeakyRelu", key, (("alpha", self.pick([0.01, 0.2, 0.5, -0.25, 0.0])),)), shape

    def draw_PRelu(self, shape, key):
        name, dims = self.const_shape(shape)
        rng = layer_rng(self.seed, key)
        if self.style == "integer":
            slope = rng.integers(-2, 3, dims) * 0.25
        else:
            slope = rng.uniform(-0.5, 0.5, dims)
        self.weights[key + "_slope"] = np.asarray(slope, dtype=np.float32)
        return Layer("PRelu", key, (("slope", name),)), shape

    def draw_Clip(self, shape, key):
        low = self.pick([None, -1.0, -0.5, 0.0])
        high = self.pick([None, 0.5, 1.0, 2.0])
        return Layer("Clip", key, (("min", low), ("max", high))), shape

    # -- routes ----------------------------------------------------------------------------
    def draw_Flatten(self, shape, key):
        return Layer("Flatten", key), (size(shape),)

    def draw_Reshape(self, shape, key):
        n = size(shape)
        targets = [(n,)]
        for a in range(2, n):
            if n % a == 0:
                targets.append((a, n // a))
                for b in range(2, n // a):
                    if (n // a) % b == 0:
                        targets.append((a, b, n // a // b))
        target = self.pick(targets)
        spec = list(target)
        if self.bool_():
            spec[self.int_(0, len(spec) - 1)] = -1
        if spec[0] == shape[0] and len(shape) > 0 and self.bool_():
            spec[0] = 0  # copy the input's dim
        return Layer("Reshape", key, (("shape", tuple(spec)),)), tuple(target)

    def draw_Transpose(self, shape, key):
        perm = tuple(self.draw(st.permutations(list(range(len(shape))))))
        return Layer("Transpose", key, (("perm", perm),)), tuple(shape[p] for p in perm)

    def draw_Unsqueeze(self, shape, key):
        position = self.int_(0, len(shape))
        out = shape[:position] + (1,) + shape[position:]
        return Layer("Unsqueeze", key, (("axis", position + 1),)), out

    def draw_Squeeze(self, shape, key):
        axis = self.pick([a for a, n in enumerate(shape) if n == 1])
        out = shape[:axis] + shape[axis + 1:]
        return Layer("Squeeze", key, (("axis", axis + 1),)), out

    # -- blocks ----------------------------------------------------------------------------
    def shape_preserving(self, shape, key):
        if len(shape) == 1:
            ops = ["Relu", "LeakyRelu", "PRelu", "Clip", "BatchNormalization", "Arith"]
            if shape[0] <= 16:  # a square Gemm of at most 256 weights
                ops.insert(1, "Gemm")
        else:
            ops = ["Relu", "Conv", "LeakyRelu", "PRelu", "Clip", "BatchNormalization", "Arith",
                   "MaxPool", "AveragePool"]
        op = self.pick(ops)
        if op == "Gemm":
            return self.draw_Gemm(shape, key, out=shape[0])
        if op == "Conv":
            return self.draw_Conv(shape, key, same=True, out=shape[0])
        if op in ("MaxPool", "AveragePool"):
            return self.draw_pool(op, shape, key, same=True)
        return getattr(self, "draw_" + op)(shape, key)

    def branch(self, shape, key, length):
        layers = []
        for i in range(length):
            layer, out = self.shape_preserving(shape, f"{key}_{i}")
            assert out == shape, (layer, shape, out)
            layers.append(layer)
        return tuple(layers)

    def draw_Residual(self, shape, key):
        branch = self.branch(shape, key + "b", self.int_(1, 3))
        combine = self.pick(["Add", "Sub", "Sum"])
        swap = self.bool_()
        layer = Layer("Residual", key, (("combine", combine), ("branch_first", not swap)),
                      (branch,))
        return layer, shape

    def draw_Concat(self, shape, key):
        rank = len(shape)
        axis = self.int_(0, rank - 1)
        branches, sizes = [], []
        for i in range(2):
            bkey = f"{key}b{i}"
            first: list[Layer] = []
            width = shape[axis]
            if axis == 0 and self.bool_():  # change the channel / feature count
                width = self.int_(1, 3)
                if rank == 1:
                    layer, _ = self.draw_Gemm(shape, bkey + "_p", out=width)
                else:
                    layer, _ = self.draw_Conv(shape, bkey + "_p", same=True, out=width)
                first.append(layer)
            inner = (width,) + shape[1:] if axis == 0 else shape
            rest = self.branch(inner, bkey, self.int_(0, 1))
            branches.append(tuple(first) + rest)
            sizes.append(width)
        out = list(shape)
        out[axis] = sum(sizes)
        if size(out) > MAX_ELEMENTS:  # too big: both branches the identity
            branches, out = [(), ()], list(shape)
            out[axis] = 2 * shape[axis]
        negative = self.bool_()
        layer = Layer("Concat", key, (("axis", axis - rank if negative else axis + 1),),
                      tuple(branches))
        return layer, tuple(out)


def input_shapes() -> st.SearchStrategy[tuple[int, ...]]:
    flat = st.tuples(st.integers(1, 12))
    one = st.tuples(st.integers(1, 4), st.integers(1, 8))
    two = st.tuples(st.integers(1, 3), st.integers(1, 5), st.integers(1, 5))
    three = st.tuples(st.integers(1, 2), st.integers(1, 3), st.integers(1, 3), st.integers(1, 3))
    return st.one_of(flat, one, two, three)


@st.composite
def networks(draw: Callable, max_depth: int = MAX_DEPTH, min_opset: int = MIN_OPSET,
             max_batch: int = 3, zero_scales: bool = True, batchnorm: bool | None = None,
             head: bool | None = None) -> Net:
    """A random piecewise-linear network with its weights and an input batch.

    ``zero_scales=False``: no exact zeros in BatchNormalization scales and Mul
    constants (bbp_ref's folding is not invariant there, see
    test_folding_a_zero_scale_changes_the_attribution); ``batchnorm``: whether every
    Conv/Gemm/MatMul is followed by a BatchNormalization (None: drawn for each);
    ``head``: whether the net ends in Flatten + Gemm (None: drawn)."""
    opset = draw(st.integers(min_opset, MAX_OPSET))
    input_shape = draw(input_shapes())
    values = draw(st.sampled_from(VALUE_STYLES))
    inputs = draw(st.sampled_from(INPUT_STYLES))
    seed = draw(st.integers(0, 2**16))
    drawer = Drawer(draw, opset, seed, values, zero_scales, batchnorm)
    depth = draw(st.integers(1, max_depth))
    shape, layers = input_shape, []
    for i in range(depth):
        layer, out = drawer.layer(shape, f"L{i}")
        if size(out) > MAX_ELEMENTS:
            continue
        layers.append(layer)
        shape = out
    if size(shape) > MAX_OUTPUTS or (draw(st.booleans()) if head is None else head):
        if len(shape) > 1:
            layers.append(Layer("Flatten", "head_flatten"))
        flat = (size(shape),)
        layer, shape = drawer.draw_Gemm(flat, "head", out=draw(st.integers(1, 4)))
        layers.append(layer)
    batch = draw(st.integers(1, max_batch))
    x = input_batch(layer_rng(seed, "input"), (batch, *input_shape), inputs)
    return Net(opset, tuple(input_shape), tuple(layers), values, inputs, seed,
               drawer.weights, x)


# -- writing ONNX --------------------------------------------------------------------------
def ir_version(opset: int) -> int:
    """An IR version old enough for onnxruntime and new enough for the opset."""
    for version, ir in ((8, 3), (9, 4), (10, 5), (11, 6), (14, 7), (18, 8), (21, 10)):
        if opset < version:
            return ir
    return 10


class Emitter:
    """Writes the layers of a `Net` as ONNX nodes."""

    def __init__(self, net: Net, variant: str, zero_bias: bool) -> None:
        assert variant in ("model", "ort", "ref"), variant
        self.net = net
        self.variant = variant
        self.zero_bias = zero_bias
        self.opset = net.opset
        self.dtype = np.float64 if variant == "ref" else np.float32
        self.nodes: list[onnx.NodeProto] = []
        self.inits: dict[str, np.ndarray] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}  # per-example shapes of layer outputs
        self.count = 0

    # -- helpers ---------------------------------------------------------------------------
    def tensor(self, hint: str) -> str:
        self.count += 1
        return f"{hint}_t{self.count}"

    def node(self, op: str, inputs: Sequence[str], name: str, **attrs: object) -> str:
        out = self.tensor(name)
        self.nodes.append(helper.make_node(op, list(inputs), [out], name=name, **attrs))
        return out

    def const(self, name: str, value: np.ndarray) -> str:
        value = np.asarray(value)
        if value.dtype.kind == "f":
            value = value.astype(self.dtype)
        self.inits[name] = value
        return name

    def weight(self, name: str, *, is_bias: bool = False) -> str:
        value = self.net.weights[name]
        if is_bias and self.zero_bias:
            value = np.zeros_like(value)
        return self.const(name, value)

    def int64(self, name: str, values: Sequence[int]) -> str:
        return self.const(name, np.asarray(values, dtype=np.int64))

    def axes_op(self, op: str, x: str, axes: Sequence[int], name: str, since: int,
                **attrs: object) -> str:
        """An op whose ``axes`` is an attribute before opset ``since`` and an input from it."""
        if self.opset >= since:
            return self.node(op, [x, self.int64(name + "_axes", axes)], name, **attrs)
        return self.node(op, [x], name, axes=list(axes), **attrs)

    # -- layers ----------------------------------------------------------------------------
    def layers(self, layers: Sequence[Layer], x: str, shape: tuple[int, ...]) -> tuple[str, tuple]:
        self.shapes[x] = shape
        for layer in layers:
            x, shape = getattr(self, "emit_" + layer.op)(layer, x, shape)
            self.shapes[x] = shape
        return x, shape

    def emit_Gemm(self, layer, x, shape):
        key, out = layer.key, layer["out"]
        c = None if layer["C"] == "none" else self.weight(key + "_C", is_bias=True)
        if layer["form"] == "MatMul+Add":
            weight = self.net.weights[key + "_W"]
            w = self.const(key + "_W", weight.T.copy() if layer["transB"] else weight)
            y = self.node("MatMul", [x, w], key + "_matmul")
            if c is not None:
                y = self.node("Add", [y, c], key + "_add")
        else:
            inputs = [x, self.weight(key + "_W")] + ([c] if c is not None else [])
            attrs = {"transB": layer["transB"]}
            if layer["alpha"] != 1.0:
                attrs["alpha"] = layer["alpha"]
            if layer["beta"] != 1.0:
                attrs["beta"] = layer["beta"]
            y = self.node("Gemm", inputs, key, **attrs)
        if layer["bn"]:
            y = self.batchnorm(key + "_bn", y, (out,), 1e-3)
        return y, (out,)

    def emit_MatMul(self, layer, x, shape):
        key = layer.key
        y = self.node("MatMul", [x, self.weight(key + "_W")], key)
        if layer["add"]:
            y = self.node("Add", [y, self.weight(key + "_B", is_bias=True)], key + "_add")
        out = (*shape[:-1], layer["out"])
        if layer["bn"]:
            y = self.batchnorm(key + "_bn", y, out, 1e-3)
        return y, out

    def window_attrs(self, layer, spatial, conv):
        """Attributes of a Conv / pool; where the variant needs it, auto_pad written
        out as the explicit pads it stands for."""
        pads, out = window_geometry(layer, spatial)
        auto_pad = layer["auto_pad"]
        dilated = any(d != 1 for d in layer["dilations"])
        ceil_mode = layer.get("ceil_mode", 0)
        explicit = auto_pad == "NOTSET"
        if self.variant == "ref" and auto_pad != "NOTSET":
            explicit = True  # onnx.reference: MaxPool SAME_LOWER, ceil_mode with auto_pad
        if self.variant == "ort" and (
                (auto_pad.startswith("SAME") and dilated)  # not implemented
                or (auto_pad.startswith("SAME") and not conv and unclamped_same(layer, spatial))
                or (auto_pad == "VALID" and ceil_mode)):  # onnxruntime adds a window
            explicit = True
        attrs: dict[str, object] = {"kernel_shape": list(layer["kernel"]),
                                    "strides": list(layer["strides"])}
        if conv or any(d != 1 for d in layer["dilations"]):
            attrs["dilations"] = list(layer["dilations"])
        if explicit:
            attrs["pads"] = pads
            if auto_pad != "NOTSET":
                ceil_mode = 0  # auto_pad's output size, written out
        else:
            attrs["auto_pad"] = auto_pad
        if ceil_mode:
            attrs["ceil_mode"] = ceil_mode
        return attrs, out

    def emit_Conv(self, layer, x, shape):
        key = layer.key
        attrs, out_spatial = self.window_attrs(layer, shape[1:], conv=True)
        if layer["group"] != 1:
            attrs["group"] = layer["group"]
        inputs = [x, self.weight(key + "_W")]
        if layer["bias"]:
            inputs.append(self.weight(key + "_B", is_bias=True))
        y = self.node("Conv", inputs, key, **attrs)
        out = (layer["out"], *out_spatial)
        if layer["bn"]:
            y = self.batchnorm(key + "_bn", y, out, 1e-3)
        return y, out

    def batchnorm(self, key, x, shape, epsilon):
        names = [self.weight(key + "_scale"), self.weight(key + "_bias", is_bias=True),
                 self.weight(key + "_mean", is_bias=True), self.weight(key + "_var")]
        if self.variant == "ref" and self.opset < 14:
            # onnx.reference runs BatchNormalization 7-13 in training mode: write the
            # inference formula s * (x - mean) / sqrt(var + eps) + b out
            per_channel = (-1,) + (1,) * (len(shape) - 1)
            scale, bias, mean, var = (self.inits.pop(n).reshape(per_channel) for n in names)
            eps = float(np.float32(epsilon))
            y = self.node("Sub", [x, self.const(key + "_m", mean)], key + "_sub")
            y = self.node("Div", [y, self.const(key + "_sd", np.sqrt(var + eps))], key + "_div")
            y = self.node("Mul", [y, self.const(key + "_s", scale)], key + "_mul")
            return self.node("Add", [y, self.const(key + "_b", bias)], key)
        return self.node("BatchNormalization", [x, *names], key, epsilon=epsilon)

    def emit_BatchNormalization(self, layer, x, shape):
        return self.batchnorm(layer.key, x, shape, layer["epsilon"]), shape

    def emit_Arith(self, layer, x, shape):
        key, op = layer.key, layer["op"]
        c = self.weight(key + "_c", is_bias=op in ("Add", "Sub"))
        inputs = [c, x] if layer["const_first"] else [x, c]
        return self.node(op, inputs, key), shape

    def emit_MaxPool(self, layer, x, shape):
        attrs, out = self.window_attrs(layer, shape[1:], conv=False)
        pads = attrs.get("pads", [0])
        if (self.variant == "ref" and any(pads) and set(attrs["strides"]) == {1}
                and set(attrs.get("dilations", [1])) == {1}):
            # onnx.reference's MaxPool with unit strides and dilations reads pads in the
            # wrong layout (2-D) or ignores them (1-D, 3-D): pad with -inf first
            dims = len(pads) // 2
            pads = [0, 0, *pads[:dims], 0, 0, *pads[dims:]]
            if self.opset < 11:
                x = self.node("Pad", [x], layer.key + "_pad", pads=pads, value=-np.inf)
            else:
                inputs = [x, self.int64(layer.key + "_pads", pads),
                          self.const(layer.key + "_inf", np.array(-np.inf))]
                x = self.node("Pad", inputs, layer.key + "_pad")
            del attrs["pads"]
        y = self.node("MaxPool", [x], layer.key, **attrs)
        return self.cut_ceil_windows(y, attrs, shape, out), (shape[0], *out)

    def cut_ceil_windows(self, y, attrs, shape, out):
        """onnxruntime: ONNX shape inference keeps a ceil_mode window that starts past the
        input and its begin padding (the kernels drop it, as the spec says), so a model
        with such a pool followed by a Gemm fails to load; a Slice of the true output
        size reconciles the two."""
        if self.variant != "ort" or not attrs.get("ceil_mode"):
            return y
        dims = len(out)
        pads = attrs.get("pads", [0] * 2 * dims)
        kept = [-(-(n + pads[i] + pads[i + dims] - attrs.get("dilations", [1] * dims)[i]
                    * (k - 1) - 1) // s) + 1
                for i, (n, k, s) in enumerate(zip(shape[1:], attrs["kernel_shape"],
                                                  attrs["strides"]))]
        if kept == list(out):
            return y
        axes = list(range(2, 2 + dims))
        inputs = [y, self.int64(y + "_starts", [0] * dims), self.int64(y + "_ends", list(out)),
                  self.int64(y + "_axes", axes)]
        return self.node("Slice", inputs, y + "_cut")

    def emit_AveragePool(self, layer, x, shape):
        attrs, out = self.window_attrs(layer, shape[1:], conv=False)
        if layer["count_include_pad"]:
            attrs["count_include_pad"] = 1
        y = self.node("AveragePool", [x], layer.key, **attrs)
        return self.cut_ceil_windows(y, attrs, shape, out), (shape[0], *out)

    def emit_GlobalMaxPool(self, layer, x, shape):
        out = (shape[0],) + (1,) * (len(shape) - 1)
        if self.variant == "ref" and len(shape) != 3:
            # onnx.reference's GlobalMaxPool reduces the wrong axes unless 2-D
            axes = list(range(2, len(shape) + 1))
            return self.axes_op("ReduceMax", x, axes, layer.key, 18, keepdims=1), out
        return self.node("GlobalMaxPool", [x], layer.key), out

    def emit_GlobalAveragePool(self, layer, x, shape):
        return self.node("GlobalAveragePool", [x], layer.key), (shape[0],) + (1,) * (len(shape) - 1)

    def emit_ReduceMean(self, layer, x, shape):
        axes, keepdims = layer["axes"], layer["keepdims"]
        rank = len(shape)
        per_example = {a - 1 if a > 0 else a + rank for a in axes}
        y = self.axes_op("ReduceMean", x, axes, layer.key, 18, keepdims=keepdims)
        if keepdims:
            out = tuple(1 if a in per_example else n for a, n in enumerate(shape))
        else:
            out = tuple(n for a, n in enumerate(shape) if a not in per_example)
        return y, out

    def emit_Relu(self, layer, x, shape):
        return self.node("Relu", [x], layer.key), shape

    def emit_LeakyRelu(self, layer, x, shape):
        return self.node("LeakyRelu", [x], layer.key, alpha=layer["alpha"]), shape

    def emit_PRelu(self, layer, x, shape):
        return self.node("PRelu", [x, self.weight(layer.key + "_slope")], layer.key), shape

    def emit_Clip(self, layer, x, shape):
        low, high = layer["min"], layer["max"]
        if self.zero_bias and (low is not None or high is not None):
            low, high = 0.0, None  # saturates at 0: no bias
        if self.opset < 11:
            attrs = {k: v for k, v in (("min", low), ("max", high)) if v is not None}
            return self.node("Clip", [x], layer.key, **attrs), shape
        inputs = [x]
        for name, value in (("min", low), ("max", high)):
            inputs.append("" if value is None else
                          self.const(f"{layer.key}_{name}", np.asarray(value, np.float32)))
        while inputs[-1] == "":
            inputs.pop()
        return self.node("Clip", inputs, layer.key), shape

    def emit_Flatten(self, layer, x, shape):
        return self.node("Flatten", [x], layer.key, axis=1), (size(shape),)

    def emit_Reshape(self, layer, x, shape):
        spec = list(layer["shape"])
        target = self.int64(layer.key + "_shape", [0, *spec])
        n = size(shape)
        out = [shape[0] if v == 0 else v for v in spec]
        if -1 in out:
            known = size([v for v in out if v != -1])
            out[out.index(-1)] = n // known
        return self.node("Reshape", [x, target], layer.key), tuple(out)

    def emit_Transpose(self, layer, x, shape):
        perm = layer["perm"]
        y = self.node("Transpose", [x], layer.key, perm=[0] + [p + 1 for p in perm])
        return y, tuple(shape[p] for p in perm)

    def emit_Unsqueeze(self, layer, x, shape):
        axis = layer["axis"]
        y = self.axes_op("Unsqueeze", x, [axis], layer.key, 13)
        return y, shape[:axis - 1] + (1,) + shape[axis - 1:]

    def emit_Squeeze(self, layer, x, shape):
        axis = layer["axis"]
        y = self.axes_op("Squeeze", x, [axis], layer.key, 13)
        return y, shape[:axis - 1] + shape[axis:]

    def emit_Residual(self, layer, x, shape):
        (branch,) = layer.branches
        y, out = self.layers(branch, x, shape)
        assert out == shape, (layer, shape, out)
        inputs = [y, x] if layer["branch_first"] else [x, y]
        return self.node(layer["combine"], inputs, layer.key), shape

    def emit_Concat(self, layer, x, shape):
        outs, shapes = [], []
        for branch in layer.branches:
            y, out = self.layers(branch, x, shape)
            outs.append(y)
            shapes.append(out)
        axis = layer["axis"]
        per_example = axis - 1 if axis > 0 else axis + len(shape)
        out = list(shapes[0])
        out[per_example] = sum(s[per_example] for s in shapes)
        return self.node("Concat", outs, layer.key, axis=axis), tuple(out)


def build(net: Net, variant: str = "model", zero_bias: bool = False) -> onnx.ModelProto:
    emitter = Emitter(net, variant, zero_bias)
    y, shape = emitter.layers(net.layers, "x", net.input_shape)
    elem = TensorProto.DOUBLE if variant == "ref" else TensorProto.FLOAT
    emitter.nodes.append(helper.make_node("Identity", [y], ["y"], name="output"))
    inits = [numpy_helper.from_array(v, name=k) for k, v in emitter.inits.items()]
    inputs = [helper.make_tensor_value_info("x", elem, ["N", *net.input_shape])]
    ir = ir_version(net.opset)
    if ir < 4:  # initializers must be graph inputs too
        inputs += [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                   for t in inits]
    outputs = [helper.make_tensor_value_info("y", elem, ["N", *shape])]
    graph = helper.make_graph(emitter.nodes, "net", inputs, outputs, inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", net.opset)],
                              producer_name="bbp_ref property tests")
    proto.ir_version = ir
    return proto


def output_shape(net: Net) -> tuple[int, ...]:
    """The per-example output shape the generator computed (ONNX shape inference is
    not used: it keeps ceil_mode windows that start past the input)."""
    emitter = Emitter(net, "model", False)
    return emitter.layers(net.layers, "x", net.input_shape)[1]


def layer_shapes(net: Net) -> dict[str, tuple[int, ...]]:
    """The per-example shape of the input and of every layer's output tensor."""
    emitter = Emitter(net, "model", False)
    emitter.layers(net.layers, "x", net.input_shape)
    return emitter.shapes


# -- graph rewrites (docs/math.md §5, invariant 4) ---------------------------------------
PASS_THROUGH = ("Identity", "Dropout", "Reshape", "FlattenReshape")


def with_pass_through(proto: onnx.ModelProto, shapes: dict[str, tuple[int, ...]],
                      inserts: Sequence[tuple[int, str]]) -> onnx.ModelProto:
    """``proto`` with pass-through nodes inserted: each ``(k, kind)`` puts ``kind``
    (one of `PASS_THROUGH`) after the k-th tensor of ``shapes`` (modulo its length;
    `layer_shapes` gives the input and every layer's output)."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    graph = out.graph
    tensors = list(shapes)
    nodes = list(graph.node)
    extra_inits = []
    for index, (k, kind) in enumerate(inserts):
        tensor = tensors[k % len(tensors)]
        shape = shapes[tensor]
        fresh = f"{tensor}_pass{index}"
        prefix = f"pass{index}_{kind}"
        if kind in ("Identity", "Dropout"):
            chain = [helper.make_node(kind, [tensor], [fresh], name=prefix)]
        else:
            target = numpy_helper.from_array(np.array([0, *shape], np.int64), prefix + "_shape")
            extra_inits.append(target)
            source = tensor
            chain = []
            if kind == "FlattenReshape":
                source = fresh + "_flat"
                chain.append(helper.make_node("Flatten", [tensor], [source], name=prefix + "_f",
                                              axis=1))
            chain.append(helper.make_node("Reshape", [source, target.name], [fresh],
                                          name=prefix))
        for n in nodes:  # every consumer now reads the pass-through's output
            for i, name in enumerate(n.input):
                if name == tensor:
                    n.input[i] = fresh
        position = 0 if tensor == "x" else next(
            i for i, n in enumerate(nodes) if tensor in n.output) + 1
        nodes[position:position] = chain
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(extra_inits)
    if out.ir_version < 4:
        graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                           for t in extra_inits)
    return out
