"""Hypothesis strategies for random networks with the tangent model's ops (docs/math.md §7).

`tangent_networks()` draws a `TangentNet`: per-example input shape ``(k,)`` or ``(r, k)``,
1-5 layers and always a final `Linear` head (so a Softmax drawn last is still *in the
middle*, not a stripped output head), float32 weights and an input batch. The layers:

- ``Linear`` (MatMul on the last axis, optional bias Add) and ``Residual`` (a branch
  added to its input);
- ``Gate``: Relu, LeakyRelu, Abs (piecewise-linear gates);
- ``Smooth``: a smooth gate from bbp_ref's function table (`SMOOTH_FUNCTIONS`); Exp, Sinh and
  Cosh read a Tanh first so that no value overflows;
- ``Positive``: Log, Sqrt, Reciprocal or Pow with a constant exponent of ``u * u + c``
  (a product, then a domain-limited gate that never leaves its domain);
- ``Product``: Mul of two data branches (the second may have width 1: broadcast);
- ``MatMulProduct`` (rank 2): `q @ k^T` of two data branches (attention scores);
- ``Divide``: a branch divided by ``Softplus(branch) + 1/2``;
- ``SoftmaxMid``: Softmax or LogSoftmax over the last axis;
- ``ConcatConst``: Concat of the data with a constant (expanded to the batch as exporters
  write it) along a per-example axis;
- ``Composite``: Gelu, HardSwish, Mish;
- ``LayerNorm``: LayerNormalization over the last axis (constant scale and bias).

``more=True`` draws the newer ops of docs/math.md §7.3 and §7.7 instead
(`tangent_more_ops`: ConvTranspose, Resize, Pad, Split, Gather, GatherElements, Tile,
Expand, DepthToSpace, SpaceToDepth, Max/Min, ReduceMax/Min, Where, Einsum, HardSigmoid,
LSTM/GRU/RNN), with per-example inputs ``(c, h, w)`` too and, half of the time, integers.

Composites have two writings (`TangentNet.onnx(form=...)`): ``"fused"`` (Gelu, HardSwish,
Mish, Softmax, LogSoftmax, Div as single ONNX ops) and ``"decomposed"`` (as exporters write
them: ``0.5 x (1 + Erf(x / sqrt 2))``, ``x * Clip(x / 6 + 1/2, 0, 1)`` (HardSigmoid's),
``x * Tanh(Softplus(x))``, ``Exp / ReduceSum(Exp)``, ``x - Log(ReduceSum(Exp(x)))``,
``Mul(a, Reciprocal(b))``, LayerNormalization as ReduceMean, Sub, Pow, ReduceMean, Add,
Sqrt, Div, Mul, Add): invariant 9 says both give the same `W^x`, `b^x`, `B(x)`. It is
compared on the float64 writing (``dtype=np.float64``), where the constants `sqrt 2` and
`1/6` of the two forms are the same numbers (in float32 they would differ by rounding).
``reference=True`` writes Gelu out for `onnx.reference`. `torch_forward` (in
``tangent_torch.py``) computes the same network with PyTorch from the description,
independently of the ONNX writing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from hypothesis import strategies as st
from onnx import helper, numpy_helper
from strategies import Layer, layer_rng, size
from tangent_more_ops import (
    HOMOGENEOUS_OPS,
    KINKED_OPS,
    MORE_OPS,
    SHAPE_BOUND_OPS,
    MoreOpsEmitter,
    draw_more,
    fits,
)

OPSET = 20  # Gelu
MAX_ELEMENTS = 24
MAX_LAYERS = 5
PIECEWISE_LINEAR_GATES = ("Relu", "LeakyRelu", "Abs")
# bbp_ref's smooth table rows, with attributes; Exp/Sinh/Cosh get a Tanh before them
SMOOTH_FUNCTIONS: dict[str, dict[str, object]] = {
    "Sigmoid": {}, "Tanh": {}, "Softplus": {}, "Softsign": {}, "Elu": {"alpha": 0.75},
    "Selu": {}, "Celu": {"alpha": 1.25}, "Erf": {}, "Exp": {}, "Sin": {}, "Cos": {},
    "Atan": {}, "Sinh": {}, "Cosh": {}, "Asinh": {}, "Gelu": {}, "GeluTanh": {},
}
BOUNDED_FIRST = ("Exp", "Sinh", "Cosh")
# a jump in a derivative: Elu/Selu at 0 (slopes alpha and 1), Celu's second derivative at 0,
# HardSwish at -3 and 3; left out of the kink-free networks (finite differences)
KINKED = ("Elu", "Selu", "Celu", "HardSwish")
# DEGENERATE: Softmax, LogSoftmax and LayerNorm over a single element are constants (1, 0,
# the bias): one writing computes `g = 0` exactly where the other leaves a rounding residue,
# and the signed rule's `sigma = sign(beta g)` then splits mass differently (docs/math.md
# §7.9 decision 4). They are not drawn over an axis of length 1.
POSITIVE_FUNCTIONS = ("Log", "Sqrt", "Reciprocal", "Pow")
COMPOSITES = ("Gelu", "HardSwish", "Mish")
SQRT_2 = math.sqrt(2.0)
LAYER_NORM_EPSILON = 2.0 ** -10  # a float32 attribute: exact, so both forms hold the same eps


@dataclass(frozen=True)
class TangentNet:
    """A drawn network (the description is the repr) with its float32 weights and input
    batch ``x`` of shape [batch, *input_shape]."""

    input_shape: tuple[int, ...]
    layers: tuple[Layer, ...]
    seed: int
    weights: dict[str, np.ndarray] = field(repr=False, compare=False)
    x: np.ndarray = field(repr=False, compare=False)
    # each layer's per-example input shape, by key (the writing of some newer ops needs it)
    shapes: dict[str, tuple[int, ...]] = field(repr=False, compare=False,
                                               default_factory=dict)

    def __repr__(self) -> str:
        layers = ",\n    ".join(map(repr, self.layers))
        return (f"TangentNet(input={self.input_shape}, batch={len(self.x)}, seed={self.seed},"
                f"\n    layers=[{layers}])")

    def _repr_pretty_(self, printer: object, cycle: bool) -> None:  # Hypothesis's printer
        printer.text(repr(self))  # type: ignore[attr-defined]

    def all_layers(self) -> list[Layer]:
        return [inner for layer in self.layers for inner in layer.walk()]

    def onnx(self, form: str = "fused", dtype: type = np.float32,
             reference: bool = False) -> onnx.ModelProto:
        """``reference``: for `onnx.reference` (Gelu, exact and tanh, written out: its Gelu
        computes with float32 constants)."""
        return TangentEmitter(self, form, dtype, reference).model()


# -- drawing -------------------------------------------------------------------------------
class TangentDrawer:
    """Draws layers for a running per-example shape; records every weight array."""

    def __init__(self, draw: Callable, seed: int, piecewise: bool, more: bool = False,
                 homogeneous: bool = False, integer: bool = False) -> None:
        self.integer = integer
        self.draw = draw
        self.seed = seed
        self.piecewise = piecewise
        self.more = more
        self.homogeneous = homogeneous
        self.weights: dict[str, np.ndarray] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}

    def pick(self, options: Sequence[object]) -> object:
        return self.draw(st.sampled_from(list(options)))

    def linear(self, shape: tuple[int, ...], key: str, out: int,
               bias: bool | None = None) -> tuple[Layer, tuple[int, ...]]:
        rng = layer_rng(self.seed, key)
        k = shape[-1]
        bias = self.draw(st.booleans()) if bias is None else bias
        self.weights[key + "_W"] = (rng.normal(0, 1 / math.sqrt(k), (k, out))).astype(np.float32)
        if bias:
            self.weights[key + "_B"] = rng.normal(0, 0.5, out).astype(np.float32)
        return Layer("Linear", key, (("out", out), ("bias", bias))), (*shape[:-1], out)

    def same_width(self, shape: tuple[int, ...], key: str) -> Layer:
        return self.linear(shape, key, shape[-1])[0]

    def layer(self, shape: tuple[int, ...], key: str) -> tuple[Layer, tuple[int, ...]]:
        self.shapes[key] = shape
        if self.more:
            return self.more_layer(shape, key)
        ops = ["Linear", "Smooth", "Smooth", "Positive", "Product", "Divide", "SoftmaxMid",
               "ConcatConst", "Composite", "Residual", "LayerNorm"]
        if self.piecewise:
            ops.append("Gate")
        if len(shape) == 2:
            ops.append("MatMulProduct")
        if shape[-1] == 1:  # over one element Softmax and LayerNorm are constants (see
            ops = [o for o in ops if o not in ("SoftmaxMid", "LayerNorm")]  # DEGENERATE)
        op = self.pick(ops)
        if op == "Linear":
            return self.linear(shape, key, self.draw(st.integers(1, 4)))
        if op == "Gate":
            gate = self.pick(PIECEWISE_LINEAR_GATES)
            return Layer("Gate", key, (("gate", gate),)), shape
        if op == "Smooth":
            return Layer("Smooth", key, (("fn", self.pick(self.smooth_functions())),)), shape
        if op == "Positive":
            fn = self.pick(POSITIVE_FUNCTIONS)
            exponent = self.pick([0.5, -1.5, 2.0, 3.0]) if fn == "Pow" else None
            return Layer("Positive", key, (("fn", fn), ("exponent", exponent))), shape
        if op == "Product":
            broadcast = shape[-1] > 1 and self.draw(st.booleans())
            first = (self.same_width(shape, key + "a"),)
            second = (self.linear(shape, key + "b", 1 if broadcast else shape[-1])[0],)
            return Layer("Product", key, (("broadcast", broadcast),), (first, second)), shape
        if op == "MatMulProduct":
            width = self.draw(st.integers(1, 3))
            q = (self.linear(shape, key + "q", width)[0],)
            k = (self.linear(shape, key + "k", width)[0],)
            return Layer("MatMulProduct", key, (), (q, k)), (shape[0], shape[0])
        if op == "Divide":
            broadcast = shape[-1] > 1 and self.draw(st.booleans())
            numerator = (self.same_width(shape, key + "n"),)
            denominator = (self.linear(shape, key + "d", 1 if broadcast else shape[-1])[0],)
            return Layer("Divide", key, (("broadcast", broadcast),),
                         (numerator, denominator)), shape
        if op == "SoftmaxMid":
            return Layer("SoftmaxMid", key, (("log", self.draw(st.booleans())),)), shape
        if op == "ConcatConst":
            axis = self.draw(st.integers(0, len(shape) - 1))
            width = self.draw(st.integers(1, 2))
            const_shape = tuple(width if a == axis else n for a, n in enumerate(shape))
            rng = layer_rng(self.seed, key)
            self.weights[key + "_c"] = rng.normal(0, 1, (1, *const_shape)).astype(np.float32)
            out = tuple(n + width if a == axis else n for a, n in enumerate(shape))
            first = self.draw(st.booleans())
            return Layer("ConcatConst", key, (("axis", axis), ("const_first", first))), out
        if op == "Composite":
            return Layer("Composite", key, (("kind", self.pick(self.composites())),)), shape
        if op == "LayerNorm":
            rng = layer_rng(self.seed, key)
            self.weights[key + "_scale"] = rng.normal(1, 0.5, shape[-1]).astype(np.float32)
            self.weights[key + "_bias"] = rng.normal(0, 0.5, shape[-1]).astype(np.float32)
            return Layer("LayerNorm", key), shape
        # Residual: x + branch(x)
        inner = self.pick(["Smooth", "Composite", "Product"])
        branch_layer, _ = self.layer_of(inner, shape, key + "r")
        branch = (self.same_width(shape, key + "w"), branch_layer)
        return Layer("Residual", key, (), (branch,)), shape

    def more_layer(self, shape: tuple[int, ...], key: str) -> tuple[Layer, tuple[int, ...]]:
        """A newer op (`tangent_more_ops`), or a Linear, gate or smooth layer between
        them; ``homogeneous``: bias-free, degree-1 homogeneous layers only."""
        if self.homogeneous:
            ops = [*HOMOGENEOUS_OPS, "Linear", "Gate"]
        else:
            ops = [*MORE_OPS, "Linear", "Smooth"] + (["Gate"] if self.piecewise else [])
        if not self.piecewise:
            ops = [o for o in ops if o not in KINKED_OPS]
        if self.integer and key == "L0":  # ties on the integer input itself
            ops += ["ReduceExtremum", "MaxMin"] * 4 if self.piecewise else []
        # the ops that fit few shapes, three times as likely where they fit
        ops += [o for o in ops if o in SHAPE_BOUND_OPS] * 2
        op = self.pick([o for o in ops if fits(o, shape)])
        if op == "Linear":
            bias = False if self.homogeneous else None
            return self.linear(shape, key, self.draw(st.integers(1, 4)), bias)
        if op == "Gate":
            return Layer("Gate", key, (("gate", self.pick(PIECEWISE_LINEAR_GATES)),)), shape
        if op == "Smooth":
            return Layer("Smooth", key, (("fn", self.pick(self.smooth_functions())),)), shape
        drawn = draw_more(self, op, shape, key)
        if drawn is None:  # the op does not fit this shape: a linear map instead
            return self.linear(shape, key, self.draw(st.integers(1, 4)),
                               False if self.homogeneous else None)
        return drawn

    def smooth_functions(self) -> list[str]:
        return [f for f in sorted(SMOOTH_FUNCTIONS) if self.piecewise or f not in KINKED]

    def composites(self) -> list[str]:
        return [c for c in COMPOSITES if self.piecewise or c not in KINKED]

    def layer_of(self, op: str, shape: tuple[int, ...], key: str) -> tuple[Layer, tuple]:
        """A layer of a given op (the inner layer of a residual block)."""
        if op == "Smooth":
            return Layer("Smooth", key, (("fn", self.pick(self.smooth_functions())),)), shape
        if op == "Composite":
            return Layer("Composite", key, (("kind", self.pick(self.composites())),)), shape
        first = (self.same_width(shape, key + "a"),)
        second = (self.same_width(shape, key + "b"),)
        return Layer("Product", key, (("broadcast", False),), (first, second)), shape


# per-example input shapes that fit a first layer of this op (`tangent_networks(first=)`)
FIRST_SHAPES = {
    "ConvTranspose": st.one_of(st.tuples(st.integers(1, 4), st.integers(1, 4)),
                               st.tuples(st.sampled_from([1, 2, 4]), st.integers(1, 3),
                                         st.integers(1, 3))),
    "DepthToSpace": st.tuples(st.just(4), st.integers(1, 3), st.integers(1, 3)),
    "SpaceToDepth": st.tuples(st.integers(1, 2), st.sampled_from([2]), st.sampled_from([2])),
    "Recurrent": st.tuples(st.integers(1, 3), st.integers(1, 4)),
    "Einsum": st.one_of(st.tuples(st.integers(1, 6)),
                        st.tuples(st.integers(1, 3), st.integers(1, 4))),
    "Split": st.one_of(st.tuples(st.integers(2, 6)),
                       st.tuples(st.integers(1, 3), st.integers(2, 4))),
}


def input_shapes(more: bool = False) -> st.SearchStrategy[tuple[int, ...]]:
    shapes = [st.tuples(st.integers(1, 6)), st.tuples(st.integers(1, 3), st.integers(1, 4))]
    if more:  # [C, H, W] for the image ops (ConvTranspose, Resize, DepthToSpace, ...)
        shapes.append(st.tuples(st.sampled_from([1, 2, 4]), st.integers(1, 4), st.integers(1, 3)))
    return st.one_of(*shapes)


@st.composite
def tangent_networks(draw: Callable, piecewise: bool = True, max_batch: int = 3,
                     more: bool = False, homogeneous: bool = False,
                     first: str | None = None) -> TangentNet:
    """A random network with smooth gates, products, Div of data, Softmax in the middle,
    Concat with constants and composites; ``piecewise=False``: no kinks at all, in values
    or derivatives (no PL gates, Elu, Selu, Celu, HardSwish: for finite differences).
    ``more``: the newer ops of `tangent_more_ops` instead (with linear maps, gates and
    smooth gates between them; ``piecewise=False`` leaves out Max/Min, ReduceMax/Min and
    HardSigmoid too). ``homogeneous`` (with ``more``): a bias-free degree-1 homogeneous
    body followed by a product of two bias-free linear maps of it, so `f` is of degree 2
    (invariant 10). ``first``: a newer op drawn as the first layer (on the input)."""
    input_shape = draw(FIRST_SHAPES.get(first, input_shapes(more)) if first else
                       input_shapes(more))
    seed = draw(st.integers(0, 2**16))
    # small integer inputs (with ``more``): ties in Max/Min and ReduceMax/Min, gates at
    # their kinks, HardSigmoid at its bounds (the documented conventions)
    integer = more and draw(st.booleans())
    drawer = TangentDrawer(draw, seed, piecewise, more, homogeneous, integer)
    shape, layers = input_shape, []
    for i in range(draw(st.integers(1, MAX_LAYERS))):
        if first and i == 0:  # this op first, on the input (integer ties included)
            drawer.shapes["L0"] = shape
            drawn = draw_more(drawer, first, shape, "L0")
            assert drawn is not None, (first, shape)
            layer, out = drawn
        else:
            layer, out = drawer.layer(shape, f"L{i}")
        if size(out) > MAX_ELEMENTS:
            continue
        layers.append(layer)
        shape = out
    if homogeneous:
        branches = tuple((drawer.linear(shape, "product" + s, shape[-1], bias=False)[0],)
                         for s in "ab")
        layers.append(Layer("Product", "product", (("broadcast", False),), branches))
    head, shape = drawer.linear(shape, "head", draw(st.integers(1, 3)),
                                False if homogeneous else None)
    layers.append(head)
    batch = draw(st.integers(1, max_batch))
    rng = layer_rng(seed, "input")
    if integer:
        x = rng.integers(-2, 3, (batch, *input_shape)).astype(np.float32)
    else:
        x = rng.normal(0, 1, (batch, *input_shape)).astype(np.float32)
    return TangentNet(tuple(input_shape), tuple(layers), seed, drawer.weights, x,
                      drawer.shapes)


def with_inferred_output(proto: onnx.ModelProto) -> onnx.ModelProto:
    """``proto`` with its output's type (a rank is required) from ONNX shape inference."""
    inferred = onnx.shape_inference.infer_shapes(proto)
    proto.graph.output[0].CopyFrom(inferred.graph.output[0])
    return proto


# -- writing ONNX --------------------------------------------------------------------------
class TangentEmitter(MoreOpsEmitter):
    """Writes a `TangentNet` as ONNX nodes, composites in the given ``form``."""

    def __init__(self, net: TangentNet, form: str, dtype: type, reference: bool) -> None:
        assert form in ("fused", "decomposed"), form
        self.net, self.form, self.dtype, self.reference = net, form, dtype, reference
        self.shapes = net.shapes
        self.nodes: list[onnx.NodeProto] = []
        self.inits: dict[str, np.ndarray] = {}
        self.count = 0

    def node(self, op: str, inputs: Sequence[str], name: str, **attrs: object) -> str:
        self.count += 1
        out = f"{name}_t{self.count}"
        self.nodes.append(helper.make_node(op, list(inputs), [out], name=f"{name}#{self.count}",
                                           **attrs))
        return out

    def const(self, name: str, value: object) -> str:
        value = np.asarray(value)
        self.inits[name] = value.astype(self.dtype) if value.dtype.kind == "f" else value
        return name

    def scalar(self, value: float) -> str:
        return self.const(f"c{len(self.inits)}", np.array(value))

    def model(self) -> onnx.ModelProto:
        y = self.layers(self.net.layers, "x")
        elem = helper.np_dtype_to_tensor_dtype(np.dtype(self.dtype))
        self.nodes.append(helper.make_node("Identity", [y], ["y"], name="output"))
        inits = [numpy_helper.from_array(v, name=k) for k, v in self.inits.items()]
        graph = helper.make_graph(
            self.nodes, "tangent",
            [helper.make_tensor_value_info("x", elem, ["N", *self.net.input_shape])],
            [helper.make_tensor_value_info("y", elem, None)], inits)
        proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="bbp_ref tangent property tests")
        proto.ir_version = 9
        return with_inferred_output(proto)

    def layers(self, layers: Sequence[Layer], x: str) -> str:
        for layer in layers:
            x = getattr(self, "emit_" + layer.op)(layer, x)
        return x

    def emit_Linear(self, layer: Layer, x: str) -> str:
        key = layer.key
        y = self.node("MatMul", [x, self.const(key + "_W", self.net.weights[key + "_W"])], key)
        if layer["bias"]:
            y = self.node("Add", [y, self.const(key + "_B", self.net.weights[key + "_B"])],
                          key + "_add")
        return y

    def emit_Gate(self, layer: Layer, x: str) -> str:
        attrs = {"alpha": 0.25} if layer["gate"] == "LeakyRelu" else {}
        return self.node(layer["gate"], [x], layer.key, **attrs)

    def smooth(self, fn: str, x: str, key: str) -> str:
        if fn in BOUNDED_FIRST:
            x = self.node("Tanh", [x], key + "_bound")
        if fn == "GeluTanh" and self.reference:  # its function body's constants are float32
            return self.gelu_tanh_written_out(x, key)
        if fn == "GeluTanh":
            return self.node("Gelu", [x], key, approximate="tanh")
        if fn == "Gelu" and (self.form == "decomposed" or self.reference):
            return self.gelu_decomposed(x, key)  # onnx.reference's Gelu is float32
        return self.node(fn, [x], key, **SMOOTH_FUNCTIONS.get(fn, {}))

    def emit_Smooth(self, layer: Layer, x: str) -> str:
        return self.smooth(layer["fn"], x, layer.key)

    def emit_Positive(self, layer: Layer, x: str) -> str:
        key, fn = layer.key, layer["fn"]
        square = self.node("Mul", [x, x], key + "_square")
        positive = self.node("Add", [square, self.scalar(0.5)], key + "_shift")
        if fn == "Pow":
            return self.node("Pow", [positive, self.scalar(layer["exponent"])], key)
        return self.node(fn, [positive], key)

    def emit_Product(self, layer: Layer, x: str) -> str:
        a, b = (self.layers(branch, x) for branch in layer.branches)
        return self.node("Mul", [a, b], layer.key)

    def emit_MatMulProduct(self, layer: Layer, x: str) -> str:
        q, k = (self.layers(branch, x) for branch in layer.branches)
        kt = self.node("Transpose", [k], layer.key + "_kt", perm=[0, 2, 1])
        return self.node("MatMul", [q, kt], layer.key)

    def emit_Divide(self, layer: Layer, x: str) -> str:
        key = layer.key
        numerator = self.layers(layer.branches[0], x)
        d = self.layers(layer.branches[1], x)
        d = self.node("Softplus", [d], key + "_softplus")
        d = self.node("Add", [d, self.scalar(0.5)], key + "_shift")
        if self.form == "fused":
            return self.node("Div", [numerator, d], key)
        return self.node("Mul", [numerator, self.node("Reciprocal", [d], key + "_reciprocal")],
                         key)

    def emit_SoftmaxMid(self, layer: Layer, x: str) -> str:
        key, log = layer.key, layer["log"]
        if self.form == "fused":
            return self.node("LogSoftmax" if log else "Softmax", [x], key, axis=-1)
        e = self.node("Exp", [x], key + "_exp")
        s = self.node("ReduceSum", [e, self.const(key + "_axes", np.array([-1]))], key + "_sum",
                      keepdims=1)
        if log:
            return self.node("Sub", [x, self.node("Log", [s], key + "_log")], key)
        return self.node("Div", [e, s], key)

    def emit_ConcatConst(self, layer: Layer, x: str) -> str:
        """The constant [1, *shape] expanded to the batch size as exporters write it
        (Shape -> Gather -> Concat -> Expand)."""
        key = layer.key
        c = self.net.weights[key + "_c"]
        shape = self.node("Shape", [x], key + "_shape")
        n = self.node("Gather", [shape, self.const(key + "_zero", np.array([0]))], key + "_n")
        target = self.node("Concat", [n, self.const(key + "_rest", np.array(c.shape[1:]))],
                           key + "_target", axis=0)
        tokens = self.node("Expand", [self.const(key + "_c", c), target], key + "_expand")
        inputs = [tokens, x] if layer["const_first"] else [x, tokens]
        return self.node("Concat", inputs, key, axis=layer["axis"] + 1)

    def gelu_decomposed(self, x: str, key: str) -> str:
        """`0.5 x (1 + Erf(x / sqrt 2))`, as PyTorch's exporters write Gelu."""
        scaled = self.node("Div", [x, self.scalar(SQRT_2)], key + "_div")
        erf = self.node("Erf", [scaled], key + "_erf")
        one_plus = self.node("Add", [erf, self.scalar(1.0)], key + "_add")
        product = self.node("Mul", [x, one_plus], key + "_mul")
        return self.node("Mul", [product, self.scalar(0.5)], key)

    def gelu_tanh_written_out(self, x: str, key: str) -> str:
        """`0.5 x (1 + Tanh(sqrt(2 / pi) (x + 0.044715 x^3)))` in the model's dtype, for
        `onnx.reference` (which runs Gelu's function body, whose constants are float32)."""
        cube = self.node("Mul", [self.node("Mul", [x, x], key + "_sq"), x], key + "_cube")
        inner = self.node("Add", [x, self.node("Mul", [cube, self.scalar(0.044715)],
                                               key + "_c")], key + "_inner")
        scaled = self.node("Mul", [inner, self.scalar(math.sqrt(2 / math.pi))], key + "_s")
        one_plus = self.node("Add", [self.node("Tanh", [scaled], key + "_tanh"),
                                     self.scalar(1.0)], key + "_add")
        return self.node("Mul", [self.node("Mul", [x, one_plus], key + "_mul"),
                                 self.scalar(0.5)], key)

    def emit_Composite(self, layer: Layer, x: str) -> str:
        key, kind = layer.key, layer["kind"]
        if self.form == "fused" and not (kind == "Gelu" and self.reference):
            return self.node(kind, [x], key)
        if kind == "Gelu":
            return self.gelu_decomposed(x, key)
        if kind == "HardSwish":  # x * HardSigmoid(x) with alpha = 1/6 written as x / 6
            # (a float32 attribute alpha would be 1/6 rounded, a different function)
            sixth = self.node("Div", [x, self.scalar(6.0)], key + "_div")
            shifted = self.node("Add", [sixth, self.scalar(0.5)], key + "_add")
            gate = self.node("Clip", [shifted, self.scalar(0.0), self.scalar(1.0)],
                             key + "_clip")
            return self.node("Mul", [x, gate], key)
        softplus = self.node("Softplus", [x], key + "_softplus")  # Mish
        return self.node("Mul", [x, self.node("Tanh", [softplus], key + "_tanh")], key)

    def emit_LayerNorm(self, layer: Layer, x: str) -> str:
        """LayerNormalization over the last axis, or as PyTorch's exporters decompose it:
        `(x - m) / Sqrt(ReduceMean((x - m)^2) + eps) * scale + bias`."""
        key = layer.key
        scale = self.const(key + "_scale", self.net.weights[key + "_scale"])
        bias = self.const(key + "_bias", self.net.weights[key + "_bias"])
        if self.form == "fused":
            return self.node("LayerNormalization", [x, scale, bias], key, axis=-1,
                             epsilon=LAYER_NORM_EPSILON)
        axes = self.const(key + "_axes", np.array([-1]))
        mean = self.node("ReduceMean", [x, axes], key + "_mean", keepdims=1)
        centred = self.node("Sub", [x, mean], key + "_sub")
        square = self.node("Pow", [centred, self.scalar(2.0)], key + "_pow")
        variance = self.node("ReduceMean", [square, axes], key + "_var", keepdims=1)
        shifted = self.node("Add", [variance, self.scalar(LAYER_NORM_EPSILON)], key + "_eps")
        normed = self.node("Div", [centred, self.node("Sqrt", [shifted], key + "_sqrt")],
                           key + "_div")
        return self.node("Add", [self.node("Mul", [normed, scale], key + "_mul"), bias], key)

    def emit_Residual(self, layer: Layer, x: str) -> str:
        (branch,) = layer.branches
        return self.node("Add", [x, self.layers(branch, x)], layer.key)
