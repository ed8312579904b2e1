"""The newer ops of docs/math.md §7.3 and §7.7 for the tangent property strategies:
how `TangentDrawer` draws them (`draw_more`) and how `TangentEmitter` writes them
(`MoreOpsEmitter`).

- ``ConvTranspose`` (1-/2-D: groups, kernel, strides, dilations, pads, output_padding,
  bias or none);
- ``Resize`` (nearest with each ``nearest_mode``, linear, cubic with ``cubic_coeff_a``
  -0.75 or -0.5 and ``exclude_outside``; coordinate modes half_pixel, pytorch_half_pixel,
  align_corners, asymmetric; constant scales or sizes);
- ``Pad`` (constant with a value, also negative pads that crop; reflect, edge, wrap);
- ``Split`` (sizes as an input or ``num_outputs``) whose parts are concatenated again,
  some left out or reordered; ``Gather`` (1-D or scalar indices, negatives included) and
  ``GatherElements`` (indices expanded to the batch as exporters write them); ``Tile``;
  ``Expand`` of a width-1 branch; ``DepthToSpace`` (DCR, CRD) and ``SpaceToDepth``;
- ``MaxMin``: Max or Min of two data branches (or of the data and its reverse along the
  last axis: ties between elements with integer inputs) and maybe a constant, in any order;
  ``ReduceExtremum``: ReduceMax/ReduceMin over non-batch axes;
- ``Where`` with a constant condition choosing between data branches or a constant;
- ``Einsum``: one data operand and a constant, two data operands, or two data operands
  and a constant;
- ``HardSigmoid`` (``Abs`` is a `Gate`, HardSwish a `Composite`);
- ``Recurrent``: LSTM, GRU (both ``linear_before_reset``), RNN over the per-example
  ``(steps, features)``; forward, reverse or bidirectional; layout 0 (Transposes around
  the op, as exporters write it) or 1; output Y (reshaped to ``(steps, directions *
  hidden)``), Y_h or (LSTM) Y_c.

Kinks (docs/math.md §7.3 decision 8, §7.2 decision 2): a Max/Min or ReduceMax/Min tie and
a HardSigmoid at a bound are *not* avoided; the PyTorch writing (``tangent_torch.py``)
computes the documented convention there (the first operand, the lowest flat index, the
saturated side), and the finite-difference property draws none of these ops
(`KINKED_OPS`). The linear ops have no kink.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
from hypothesis import strategies as st
from onnx import helper
from strategies import Layer, layer_rng

if TYPE_CHECKING:
    from tangent_strategies import TangentDrawer, TangentNet

MORE_OPS = ("ConvTranspose", "Resize", "Pad", "Split", "Gather", "GatherElements", "Tile",
            "Expand", "DepthToSpace", "SpaceToDepth", "MaxMin", "ReduceExtremum", "Where",
            "Einsum", "HardSigmoid", "Recurrent")
KINKED_OPS = ("MaxMin", "ReduceExtremum", "HardSigmoid")
SHAPE_BOUND_OPS = ("ConvTranspose", "DepthToSpace", "SpaceToDepth", "Recurrent", "Einsum")
# degree-1 positively homogeneous when bias-free (invariant 10's bodies)
HOMOGENEOUS_OPS = tuple(o for o in MORE_OPS if o not in ("HardSigmoid", "Recurrent"))
RESIZE_TRANSFORMS = ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric")
NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")
PAD_MODES = ("constant", "reflect", "edge", "wrap")
HARD_SIGMOID_ALPHAS = (0.2, 0.25, 0.5)
RECURRENT_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
# Einsum equations by per-example rank: (equation, data operands, constant shape maker)
EINSUM_FORMS = {
    1: ("ni,ij->nj", "ni,nj->nij"),
    2: ("nrk,kj->nrj", "nrk,rk->nr", "nik,njk->nij", "nik,nil->nkl"),
}


def fits(op: str, shape: tuple[int, ...]) -> bool:
    """Whether ``op`` can be drawn for the per-example ``shape``."""
    rank = len(shape)
    if op == "ConvTranspose":
        return rank in (2, 3)
    if op == "DepthToSpace":
        return rank == 3 and shape[0] % 4 == 0
    if op == "SpaceToDepth":
        return rank == 3 and shape[1] % 2 == 0 and shape[2] % 2 == 0
    if op == "Einsum":
        return rank in EINSUM_FORMS
    if op == "Recurrent":
        return rank == 2 and shape[0] <= 3
    if op == "Split":
        return max(shape) > 1
    return True


def draw_more(drawer: TangentDrawer, op: str, shape: tuple[int, ...],
              key: str) -> tuple[Layer, tuple[int, ...]] | None:
    """A layer of the newer op ``op`` for the per-example ``shape``, or None where the op
    does not apply to that shape. ``drawer`` is a `TangentDrawer`."""
    d: Callable = drawer.draw
    homogeneous = drawer.homogeneous
    rng = layer_rng(drawer.seed, key)
    weights = drawer.weights
    rank = len(shape)
    axes_st = st.integers(0, rank - 1)

    if op == "ConvTranspose":
        if rank not in (2, 3):
            return None
        channels, spatial = shape[0], shape[1:]
        group = d(st.sampled_from([g for g in (1, 2, 3) if channels % g == 0]))
        per_group = d(st.integers(1, 2))
        kernel = tuple(d(st.integers(1, 3)) for _ in spatial)
        strides = tuple(d(st.integers(1, 3)) for _ in spatial)
        dilations = tuple(d(st.integers(1, 2)) for _ in spatial)
        output_padding = tuple(d(st.integers(0, s - 1)) for s in strides)
        natural = [s * (n - 1) + p + (k - 1) * dl + 1 for s, n, p, k, dl in
                   zip(strides, spatial, output_padding, kernel, dilations)]
        begin = tuple(d(st.integers(0, min(2, (n - 1) // 2))) for n in natural)
        end = tuple(d(st.integers(0, min(2, n - 1 - b))) for n, b in zip(natural, begin))
        bias = not homogeneous and d(st.booleans())
        fan_in = channels // group * math.prod(kernel)
        weights[key + "_W"] = rng.normal(0, 1 / math.sqrt(fan_in),
                                         (channels, per_group, *kernel)).astype(np.float32)
        if bias:
            weights[key + "_B"] = rng.normal(0, 0.5, group * per_group).astype(np.float32)
        out = (group * per_group, *(n - b - e for n, b, e in zip(natural, begin, end)))
        return Layer("ConvTranspose", key, (
            ("group", group), ("kernel", kernel), ("strides", strides),
            ("dilations", dilations), ("pads", begin + end),
            ("output_padding", output_padding), ("bias", bias))), out

    if op == "Resize":
        mode = d(st.sampled_from(["linear", "nearest", "cubic"]))
        transform = d(st.sampled_from(RESIZE_TRANSFORMS))
        by_sizes = d(st.booleans())
        resized = d(st.sets(axes_st, min_size=1))  # a scale of 1 on the others
        out = []
        for a, n in enumerate(shape):  # integer output lengths (no doubt about `scale * n`)
            options = [2 * n, 3 * n] + ([n // 2, 3 * n // 2] if n % 2 == 0 else [])
            if transform in ("align_corners", "pytorch_half_pixel"):
                options = [m for m in options if m > 1]  # 1: spec and onnxruntime differ
            out.append(d(st.sampled_from(options)) if a in resized and options else n)
        params: list[tuple[str, object]] = [
            ("mode", mode), ("transform", transform), ("sizes", by_sizes),
            ("out", tuple(out))]
        if mode == "nearest":
            params.append(("nearest_mode", d(st.sampled_from(NEAREST_MODES))))
        if mode == "cubic":
            params += [("cubic_coeff_a", d(st.sampled_from([-0.75, -0.5]))),
                       ("exclude_outside", d(st.integers(0, 1)))]
        return Layer("Resize", key, tuple(params)), tuple(out)

    if op == "Pad":
        mode = d(st.sampled_from(PAD_MODES))
        if mode == "reflect" and max(shape) < 2:  # reflect needs two elements
            mode = "edge"
        if homogeneous and mode == "constant":
            value = 0.0
        else:
            value = float(d(st.sampled_from([0.0, 1.5, -0.75])))
        pads = []
        for n in shape:
            low = 0  # negative pads (crops): onnx.reference's Pad refuses them
            high = {"constant": 2, "reflect": min(2, n - 1), "edge": 2, "wrap": min(2, n)}[mode]
            pads.append((d(st.integers(low, high)), d(st.integers(low, high))))
        if not any(b or e for b, e in pads):  # pad the last axis that can be padded
            axis = max(a for a, n in enumerate(shape) if mode != "reflect" or n > 1)
            pads[axis] = (0, 1)
        out = tuple(n + b + e for n, (b, e) in zip(shape, pads))
        if min(out) < 1:
            return None
        begin, end = zip(*pads)
        return Layer("Pad", key, (("mode", mode), ("pads", begin + end),
                                  ("value", value if mode == "constant" else None))), out

    if op == "Split":
        axis = d(st.sampled_from([a for a, n in enumerate(shape) if n > 1]))
        n = shape[axis]
        equal = n % 2 == 0 and d(st.booleans())
        if equal:  # opset 18's num_outputs
            parts = (n // 2, n // 2)
        else:
            first = d(st.integers(1, n - 1))
            rest = n - first
            second = d(st.integers(1, rest)) if rest > 1 else 1
            parts = (first, second) + ((rest - second,) if rest > second else ())
        order = d(st.permutations(range(len(parts))))
        keep = d(st.integers(1, len(parts)))
        order = tuple(order[:keep])
        out = tuple(sum(parts[i] for i in order) if a == axis else m
                    for a, m in enumerate(shape))
        return Layer("Split", key, (("axis", axis), ("parts", parts), ("num_outputs", equal),
                                    ("order", order))), out

    if op == "Gather":
        axis = d(axes_st)
        n = shape[axis]
        scalar = rank > 1 and d(st.booleans())
        count = 1 if scalar else d(st.integers(1, 3))
        indices = tuple(d(st.integers(-n, n - 1)) for _ in range(count))
        out = (shape[:axis] + (() if scalar else (count,)) + shape[axis + 1:])
        return Layer("Gather", key, (("axis", axis), ("indices", indices),
                                     ("scalar", scalar))), out

    if op == "GatherElements":
        axis = d(axes_st)
        # off the axis as long as the data (onnx.reference's GatherElements wants that)
        index_shape = tuple(d(st.integers(1, 3)) if a == axis else m
                            for a, m in enumerate(shape))
        weights[key + "_idx"] = rng.integers(0, shape[axis], (1, *index_shape))
        return Layer("GatherElements", key, (("axis", axis),)), index_shape

    if op == "Tile":
        repeats = tuple(d(st.integers(1, 3)) for _ in shape)
        if max(repeats) == 1:
            repeats = (*repeats[:-1], 2)
        return Layer("Tile", key, (("repeats", repeats),)), tuple(
            n * r for n, r in zip(shape, repeats))

    if op == "Expand":
        width = d(st.integers(2, 3))
        branch = (drawer.linear(shape, key + "w", 1, bias=False if homogeneous else None)[0],)
        return Layer("Expand", key, (("width", width),), (branch,)), (*shape[:-1], width)

    if op in ("DepthToSpace", "SpaceToDepth"):
        if rank != 3:
            return None
        c, h, w = shape
        if op == "DepthToSpace":
            if c % 4:
                return None
            mode = d(st.sampled_from(["DCR", "CRD"]))
            return Layer(op, key, (("mode", mode),)), (c // 4, 2 * h, 2 * w)
        if h % 2 or w % 2:
            return None
        return Layer(op, key), (4 * c, h // 2, w // 2)

    if op == "MaxMin":
        largest = d(st.booleans())
        # "mirror": the data and its reverse along the last axis (ties with integer
        # inputs between elements of different slopes: the tie rule decides `W^x`)
        mirror = shape[-1] > 1 and d(st.booleans())
        branches = () if mirror else tuple(
            (drawer.linear(shape, key + s, shape[-1],
                           bias=False if homogeneous else None)[0],) for s in "ab")
        constant = d(st.sampled_from([None, "scalar", "last"]))
        if constant is not None:
            const_shape = () if constant == "scalar" else (1,) * (rank - 1) + (shape[-1],)
            value = np.zeros(const_shape) if homogeneous else rng.normal(0, 1, const_shape)
            weights[key + "_c"] = value.astype(np.float32)
        position = d(st.integers(0, 2)) if constant else 2
        return Layer("MaxMin", key, (("largest", largest), ("mirror", mirror),
                                     ("constant", constant), ("position", position)),
                     branches), shape

    if op == "ReduceExtremum":
        axes = tuple(sorted(d(st.sets(axes_st, min_size=1))))
        keepdims = d(st.booleans())
        if not keepdims and len(axes) == rank:
            keepdims = True  # a per-example scalar has no last axis for the head
        out = tuple(1 if a in axes else n for a, n in enumerate(shape) if keepdims or
                    a not in axes)
        return Layer("ReduceExtremum", key, (("largest", d(st.booleans())), ("axes", axes),
                                             ("keepdims", keepdims))), out

    if op == "Where":
        sides = d(st.sampled_from([("x", "branch"), ("branch", "x"), ("x", "const"),
                                   ("const", "branch")]))
        branch = (drawer.linear(shape, key + "w", shape[-1],
                                bias=False if homogeneous else None)[0],)
        cond_shape = d(st.sampled_from([shape, (1,) * (rank - 1) + (shape[-1],)]))
        weights[key + "_cond"] = rng.random((1, *cond_shape)) < 0.5
        if "const" in sides:
            value = np.zeros(shape) if homogeneous else rng.normal(0, 1, shape)
            weights[key + "_c"] = value[None].astype(np.float32)
        return Layer("Where", key, (("sides", sides),), (branch,)), shape

    if op == "Einsum":
        if rank not in EINSUM_FORMS:
            return None
        forms = EINSUM_FORMS[rank]
        if homogeneous:  # a product of data operands is of degree 2
            forms = tuple(f for f in forms if f.split("->")[0].count("n") == 1)
        equation = d(st.sampled_from(forms))
        inputs, output = equation.split("->")
        terms = inputs.split(",")
        labels = {}
        data_terms = [t for t in terms if t.startswith("n")]
        for t in data_terms:
            for label, length in zip(t[1:], shape):
                labels.setdefault(label, length)
        for label in "jl":  # free lengths of a constant's new labels
            if any(label in t for t in terms) and label not in labels:
                labels[label] = d(st.integers(1, 3))
        for i, t in enumerate(terms):
            if not t.startswith("n"):
                w = rng.normal(0, 1 / math.sqrt(max(1, labels[t[0]])), [labels[c] for c in t])
                weights[f"{key}_c{i}"] = w.astype(np.float32)
        branches = tuple((drawer.linear(shape, f"{key}d{i}", shape[-1],
                                        bias=False if homogeneous else None)[0],)
                         for i in range(1, len(data_terms)))
        out = tuple(labels[c] for c in output[1:])
        return Layer("Einsum", key, (("equation", equation),), branches), out

    if op == "HardSigmoid":
        return Layer("HardSigmoid", key, (("alpha", d(st.sampled_from(HARD_SIGMOID_ALPHAS))),
                                          ("beta", 0.5))), shape

    if op == "Recurrent":
        if rank != 2 or shape[0] > 3:
            return None
        cell = d(st.sampled_from(sorted(RECURRENT_GATES)))
        steps, features = shape
        hidden = d(st.integers(1, 3))
        direction = d(st.sampled_from(["forward", "reverse", "bidirectional"]))
        directions = 2 if direction == "bidirectional" else 1
        gates = RECURRENT_GATES[cell]
        outputs = ["Y", "Y_h"] + (["Y_c"] if cell == "LSTM" else [])
        output = d(st.sampled_from(outputs))
        bias = d(st.booleans())
        weights[key + "_W"] = rng.normal(0, 1 / math.sqrt(features), (
            directions, gates * hidden, features)).astype(np.float32)
        weights[key + "_R"] = rng.normal(0, 1 / math.sqrt(hidden), (
            directions, gates * hidden, hidden)).astype(np.float32)
        if bias:
            weights[key + "_B"] = rng.normal(0, 0.5, (directions, 2 * gates * hidden)
                                             ).astype(np.float32)
        params = [("cell", cell), ("hidden", hidden), ("direction", direction),
                  ("layout", d(st.integers(0, 1))), ("output", output), ("bias", bias)]
        if cell == "GRU":
            params.append(("linear_before_reset", d(st.integers(0, 1))))
        out = (steps, directions * hidden) if output == "Y" else (directions, hidden)
        return Layer("Recurrent", key, tuple(params)), out
    raise AssertionError(op)


class MoreOpsEmitter:
    """`TangentEmitter`'s writing of the newer ops (mixed in)."""

    net: TangentNet
    form: str
    dtype: type
    reference: bool
    nodes: list
    inits: dict[str, np.ndarray]
    shapes: dict[str, tuple[int, ...]]
    node: Callable[..., str]
    const: Callable[..., str]
    scalar: Callable[..., str]
    layers: Callable[..., str]

    def make_node(self, op: str, inputs: list[str], outputs: list[str], name: str,
                  **attrs: object) -> object:
        return helper.make_node(op, inputs, outputs, name=name, **attrs)

    def raw(self, name: str, value: np.ndarray) -> str:
        """A constant kept in its own dtype (int64 indices, float32 Resize scales)."""
        self.inits[name] = np.asarray(value)
        return name

    def weight(self, name: str) -> str:
        return self.const(name, self.net.weights[name])

    def batch_expanded(self, x: str, key: str, value: np.ndarray) -> str:
        """The constant ``value`` [1, ...] expanded to ``x``'s batch size, as exporters
        write per-example constants (Shape -> Gather -> Concat -> Expand)."""
        shape = self.node("Shape", [x], key + "_shape")
        n = self.node("Gather", [shape, self.raw(key + "_zero", np.array([0]))], key + "_n")
        target = self.node("Concat", [n, self.raw(key + "_rest", np.array(value.shape[1:]))],
                           key + "_target", axis=0)
        holder = self.raw(key + "_value", value) if value.dtype.kind != "f" else \
            self.const(key + "_value", value)
        return self.node("Expand", [holder, target], key + "_expand")

    def emit_ConvTranspose(self, layer: Layer, x: str) -> str:
        """With ``reference`` and groups, one ConvTranspose per group, concatenated:
        onnx.reference's grouped ConvTranspose is wrong (onnx 1.23; onnxruntime and
        bbp_ref agree)."""
        key, group = layer.key, layer["group"]
        attrs = dict(kernel_shape=list(layer["kernel"]), strides=list(layer["strides"]),
                     dilations=list(layer["dilations"]), pads=list(layer["pads"]),
                     output_padding=list(layer["output_padding"]))
        w = self.net.weights[key + "_W"]
        b = self.net.weights.get(key + "_B")
        if self.reference and group > 1:
            names = [f"{key}_in{g}" for g in range(group)]
            self.nodes.append(self.make_node("Split", [x], names, key + "#split", axis=1,
                                             num_outputs=group))
            c, m = len(w) // group, w.shape[1]
            parts = []
            for g, name in enumerate(names):
                inputs = [name, self.const(f"{key}_W{g}", w[g * c:(g + 1) * c])]
                if b is not None:
                    inputs.append(self.const(f"{key}_B{g}", b[g * m:(g + 1) * m]))
                parts.append(self.node("ConvTranspose", inputs, f"{key}_g{g}", **attrs))
            return self.node("Concat", parts, key, axis=1)
        inputs = [x, self.weight(key + "_W")] + ([self.weight(key + "_B")] if b is not None
                                                  else [])
        return self.node("ConvTranspose", inputs, key, group=group, **attrs)

    def emit_Resize(self, layer: Layer, x: str) -> str:
        key = layer.key
        attrs: dict[str, object] = {"mode": layer["mode"],
                                    "coordinate_transformation_mode": layer["transform"]}
        if layer["mode"] == "nearest":
            attrs["nearest_mode"] = layer["nearest_mode"]
        if layer["mode"] == "cubic":
            attrs.update(cubic_coeff_a=layer["cubic_coeff_a"],
                         exclude_outside=layer["exclude_outside"])
        # for onnx.reference always sizes: with float32 scales it interpolates in float32
        if layer["sizes"] or self.reference:
            # the batch entry from the input's shape, as exporters write it
            shape = self.node("Shape", [x], key + "_shape")
            n = self.node("Gather", [shape, self.raw(key + "_zero", np.array([0]))], key + "_n")
            sizes = self.node("Concat", [n, self.raw(key + "_sizes", np.array(layer["out"]))],
                              key + "_sizes", axis=0)
            inputs = [x, "", "", sizes]
        else:
            shape = self.input_shape_of(layer)
            scales = np.array([1.0, *(m / n for m, n in zip(layer["out"], shape))], np.float32)
            inputs = [x, "", self.raw(key + "_scales", scales)]
        return self.node("Resize", inputs, key, **attrs)

    def input_shape_of(self, layer: Layer) -> tuple[int, ...]:
        return self.shapes[layer.key]

    def emit_Pad(self, layer: Layer, x: str) -> str:
        key = layer.key
        pads = list(layer["pads"])
        rank = len(pads) // 2
        full = np.array([0, *pads[:rank], 0, *pads[rank:]], dtype=np.int64)
        inputs = [x, self.raw(key + "_pads", full)]
        if layer["mode"] == "constant":
            inputs.append(self.const(key + "_value", np.array(layer["value"])))
        return self.node("Pad", inputs, key, mode=layer["mode"])

    def emit_Split(self, layer: Layer, x: str) -> str:
        key, axis, parts = layer.key, layer["axis"] + 1, layer["parts"]
        names = [f"{key}_part{i}" for i in range(len(parts))]
        if self.form == "decomposed":  # one Slice per part
            start = 0
            for name, length in zip(names, parts):
                self.nodes.append(self.make_node("Slice", [
                    x, self.raw(name + "_starts", np.array([start])),
                    self.raw(name + "_ends", np.array([start + length])),
                    self.raw(name + "_axes", np.array([axis]))], [name], name + "#slice"))
                start += length
        elif layer["num_outputs"]:
            self.nodes.append(self.make_node(
                "Split", [x], names, key + "#split", axis=axis, num_outputs=len(parts)))
        else:
            self.nodes.append(self.make_node(
                "Split", [x, self.raw(key + "_split", np.array(parts))], names,
                key + "#split", axis=axis))
        chosen = [names[i] for i in layer["order"]]
        if len(chosen) == 1:
            return self.node("Identity", chosen, key)
        return self.node("Concat", chosen, key, axis=axis)

    def emit_Gather(self, layer: Layer, x: str) -> str:
        indices = np.array(layer["indices"][0] if layer["scalar"] else layer["indices"])
        return self.node("Gather", [x, self.raw(layer.key + "_idx", indices)], layer.key,
                         axis=layer["axis"] + 1)

    def emit_GatherElements(self, layer: Layer, x: str) -> str:
        key = layer.key
        indices = self.batch_expanded(x, key + "_idx", self.net.weights[key + "_idx"])
        return self.node("GatherElements", [x, indices], key, axis=layer["axis"] + 1)

    def emit_Tile(self, layer: Layer, x: str) -> str:
        repeats = layer["repeats"]
        if self.form == "decomposed":  # a Concat of copies per axis
            for axis, r in enumerate(repeats):
                if r > 1:
                    x = self.node("Concat", [x] * r, f"{layer.key}_a{axis}", axis=axis + 1)
            return x
        return self.node("Tile", [x, self.raw(layer.key + "_rep",
                                              np.array([1, *repeats]))], layer.key)

    def emit_Expand(self, layer: Layer, x: str) -> str:
        (branch,) = layer.branches
        narrow = self.layers(branch, x)
        shape = (1, *self.shapes[layer.key][:-1], layer["width"])
        return self.node("Expand", [narrow, self.raw(layer.key + "_shape", np.array(shape))],
                         layer.key)

    def emit_DepthToSpace(self, layer: Layer, x: str) -> str:
        key, mode = layer.key, layer["mode"]
        if self.form == "fused":
            return self.node("DepthToSpace", [x], key, blocksize=2, mode=mode)
        c, h, w = self.shapes[key]
        if mode == "DCR":
            split, perm = [0, 2, 2, c // 4, h, w], [0, 3, 4, 1, 5, 2]
        else:
            split, perm = [0, c // 4, 2, 2, h, w], [0, 1, 4, 2, 5, 3]
        y = self.node("Reshape", [x, self.raw(key + "_s1", np.array(split))], key + "_r1")
        y = self.node("Transpose", [y], key + "_t", perm=perm)
        return self.node("Reshape", [y, self.raw(key + "_s2", np.array([0, c // 4, 2 * h,
                                                                         2 * w]))], key)

    def emit_SpaceToDepth(self, layer: Layer, x: str) -> str:
        key = layer.key
        if self.form == "fused":
            return self.node("SpaceToDepth", [x], key, blocksize=2)
        c, h, w = self.shapes[key]
        y = self.node("Reshape", [x, self.raw(key + "_s1", np.array([0, c, h // 2, 2, w // 2,
                                                                      2]))], key + "_r1")
        y = self.node("Transpose", [y], key + "_t", perm=[0, 3, 5, 1, 2, 4])
        return self.node("Reshape", [y, self.raw(key + "_s2", np.array([0, 4 * c, h // 2,
                                                                         w // 2]))], key)

    def max_min_operands(self, layer: Layer, x: str) -> list[str]:
        operands = [self.layers(branch, x) for branch in layer.branches]
        if layer["mirror"]:
            n = self.shapes[layer.key][-1]
            reverse = self.raw(layer.key + "_rev", np.arange(n - 1, -1, -1))
            operands = [x, self.node("Gather", [x, reverse], layer.key + "_mirror", axis=-1)]
        if layer["constant"] is not None:
            operands.insert(layer["position"], self.weight(layer.key + "_c"))
        return operands

    def emit_MaxMin(self, layer: Layer, x: str) -> str:
        op = "Max" if layer["largest"] else "Min"
        operands = self.max_min_operands(layer, x)
        # nested with the constant in the inner node: the same ties, and a winning
        # constant's mass still goes to the first data operand (nesting it outside would
        # send it to the inner winner instead: the same W^x and b^x, another B(x))
        if self.form == "decomposed" and len(operands) == 3 and layer["position"] < 2:
            inner = self.node(op, operands[:2], layer.key + "_inner")
            return self.node(op, [inner, operands[2]], layer.key)
        return self.node(op, operands, layer.key)

    def emit_ReduceExtremum(self, layer: Layer, x: str) -> str:
        key = layer.key
        op = "ReduceMax" if layer["largest"] else "ReduceMin"
        axes = [a + 1 for a in layer["axes"]]
        keepdims = int(layer["keepdims"])
        if self.form == "decomposed" and len(axes) > 1:  # the last axis first: same ties
            for i, axis in enumerate(sorted(axes, reverse=True)):
                x = self.node(op, [x, self.raw(f"{key}_ax{i}", np.array([axis]))],
                              f"{key}_{i}" if i < len(axes) - 1 else key, keepdims=keepdims)
            return x
        return self.node(op, [x, self.raw(key + "_axes", np.array(axes))], key,
                         keepdims=keepdims)

    def emit_Where(self, layer: Layer, x: str) -> str:
        key = layer.key
        (branch,) = layer.branches
        values = {"x": x}
        sides = layer["sides"]
        if "branch" in sides:
            values["branch"] = self.layers(branch, x)
        if "const" in sides:
            values["const"] = self.weight(key + "_c")
        cond = self.raw(key + "_cond", self.net.weights[key + "_cond"])
        return self.node("Where", [cond, values[sides[0]], values[sides[1]]], key)

    def emit_Einsum(self, layer: Layer, x: str) -> str:
        key, equation = layer.key, layer["equation"]
        terms = equation.split("->")[0].split(",")
        data = iter([x] + [self.layers(branch, x) for branch in layer.branches])
        operands = [next(data) if t.startswith("n") else self.weight(f"{key}_c{i}")
                    for i, t in enumerate(terms)]
        if self.form == "decomposed" and equation in ("nik,njk->nij", "nrk,kj->nrj"):
            if equation == "nrk,kj->nrj":
                return self.node("MatMul", operands, key)
            kt = self.node("Transpose", [operands[1]], key + "_kt", perm=[0, 2, 1])
            return self.node("MatMul", [operands[0], kt], key)
        return self.node("Einsum", operands, key, equation=equation)

    def emit_HardSigmoid(self, layer: Layer, x: str) -> str:
        key, alpha, beta = layer.key, layer["alpha"], layer["beta"]
        if self.form == "fused":
            return self.node("HardSigmoid", [x], key, alpha=alpha, beta=beta)
        # the attribute's float32 value, so that both writings hold the same numbers
        scaled = self.node("Mul", [x, self.scalar(float(np.float32(alpha)))], key + "_mul")
        shifted = self.node("Add", [scaled, self.scalar(float(np.float32(beta)))], key + "_add")
        return self.node("Clip", [shifted, self.scalar(0.0), self.scalar(1.0)], key)

    def emit_Recurrent(self, layer: Layer, x: str) -> str:
        key, cell, layout = layer.key, layer["cell"], layer["layout"]
        inputs = [x if layout else self.node("Transpose", [x], key + "_in", perm=[1, 0, 2]),
                  self.weight(key + "_W"), self.weight(key + "_R")]
        if layer["bias"]:
            inputs.append(self.weight(key + "_B"))
        attrs: dict[str, object] = {"hidden_size": layer["hidden"],
                                    "direction": layer["direction"], "layout": layout}
        if cell == "GRU":
            attrs["linear_before_reset"] = layer["linear_before_reset"]
        outputs = {"Y": 0, "Y_h": 1, "Y_c": 2}
        names = [f"{key}_{name}" for name in outputs][:3 if cell == "LSTM" else 2]
        self.nodes.append(self.make_node(cell, inputs, names, key + "#rnn", **attrs))
        y = names[outputs[layer["output"]]]
        if layer["output"] == "Y":  # [T, D, N, H] (layout 0) or [N, T, D, H]
            if not layout:
                y = self.node("Transpose", [y], key + "_out", perm=[2, 0, 1, 3])
            return self.node("Reshape", [y, self.raw(key + "_flat", np.array([0, 0, -1]))],
                             key)
        if not layout:  # [D, N, H]
            return self.node("Transpose", [y], key, perm=[1, 0, 2])
        return self.node("Identity", [y], key)


# -- the independent writing of Resize (for tangent_torch) ---------------------------------
def resize_matrix(n: int, m: int, layer: Layer) -> np.ndarray:
    """[m, n]: output `o` of a resized axis as a combination of the `n` inputs, written
    from the ONNX operator page (coordinate transform, then nearest rounding, or linear /
    cubic weights over edge-clamped neighbours)."""
    scale = m / n
    o = np.arange(m, dtype=np.float64)
    transform = layer["transform"]
    if transform == "align_corners":
        x = o * (n - 1) / (m - 1) if m > 1 else np.zeros(m)
    elif transform == "asymmetric":
        x = o / scale
    elif transform == "pytorch_half_pixel":
        x = (o + 0.5) / scale - 0.5 if m > 1 else np.zeros(m)
    else:
        x = (o + 0.5) / scale - 0.5
    matrix = np.zeros((m, n))
    rows = np.arange(m)
    if layer["mode"] == "nearest":
        rounding = {"round_prefer_floor": lambda v: np.ceil(v - 0.5),
                    "round_prefer_ceil": lambda v: np.floor(v + 0.5),
                    "floor": np.floor, "ceil": np.ceil}[layer["nearest_mode"]]
        matrix[rows, np.clip(rounding(x), 0, n - 1).astype(int)] = 1.0
        return matrix
    base = np.floor(x)
    r = x - base
    if layer["mode"] == "linear":
        taps, weights = [base, base + 1], [1 - r, r]
    else:
        a = layer["cubic_coeff_a"]

        def keys(t: np.ndarray) -> np.ndarray:
            t = np.abs(t)
            return np.where(t <= 1, ((a + 2) * t - (a + 3)) * t * t + 1,
                            np.where(t < 2, ((a * t - 5 * a) * t + 8 * a) * t - 4 * a, 0.0))
        taps = [base - 1, base, base + 1, base + 2]
        weights = [keys(1 + r), keys(r), keys(1 - r), keys(2 - r)]
        if layer["exclude_outside"]:
            weights = [np.where((t >= 0) & (t <= n - 1), w, 0.0) for t, w in zip(taps, weights)]
            total = sum(weights)
            weights = [w / total for w in weights]
    for t, w in zip(taps, weights):
        np.add.at(matrix, (rows, np.clip(t, 0, n - 1).astype(int)), w)
    return matrix


def gathered(layer: Layer, n: int) -> np.ndarray:
    return np.array([i % n for i in layer["indices"]])


def pad_index(n: int, begin: int, end: int, mode: str) -> np.ndarray:
    """Which input index each output position of a reflect/edge/wrap Pad copies, from
    the operator page's definitions (not `np.pad`)."""
    i = np.arange(-begin, n + end)
    if mode == "edge":
        return np.clip(i, 0, n - 1)
    if mode == "wrap":
        return i % n
    period = 2 * (n - 1)  # reflect (no edge repeated)
    j = i % period if period else np.zeros_like(i)
    return np.where(j < n, j, period - j)




def float64_resize() -> type:
    """onnx.reference's Resize with ``cubic_coeff_a`` as a Python float: it holds the
    attribute as a float32 scalar, which makes NumPy compute the cubic weights in
    float32 (onnx 1.23), far too coarse for finite differences."""
    from onnx.reference.ops.op_resize import Resize

    class Float64Resize(Resize):
        def _run(self, *args: object, cubic_coeff_a: object = None,
                 **kwargs: object) -> tuple:
            coeff = None if cubic_coeff_a is None else float(cubic_coeff_a)
            return super()._run(*args, cubic_coeff_a=coeff, **kwargs)

    Float64Resize.__name__ = "Resize"
    Float64Resize.op_domain = ""
    return Float64Resize
