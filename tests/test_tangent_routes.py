"""More affine ops and routes (docs/math.md §7.3) against onnxruntime and finite
differences: Pad in every mode, Split, Tile, Expand, Gather, GatherElements,
DepthToSpace/SpaceToDepth, Where, Resize/Upsample, ConvTranspose, Einsum, Max/Min,
ReduceMax/ReduceMin.

Each case puts the op between a biased element-wise layer and an affine head
(`_wrapped`), so bias mass flows through it; `test_ops.verify` checks the forward against
onnxruntime, the decomposition and completeness for every rule, and `W^x` against
central finite differences of the float64 model run by `onnx.reference` (or of an
equivalent ``reference`` model where onnx.reference cannot run the op form). Ties and
constant elements are tested against hand computations; refused forms must raise an
`UnsupportedOpError` that says why.
"""

from __future__ import annotations

import numpy as np
import pytest
from builders import f32, model, node
from test_ops import Case, float64_copy, verify

import bbp_ref
from bbp_ref.errors import UnsupportedOpError

SHAPE = (3, 4, 5)


def _wrapped(nodes: list, shape: tuple[int, ...], inits: dict | None = None, *,
             opset: int = 13, out_shape: tuple[int, ...] | None = None,
             seed: int = 0, out: str = "v") -> object:
    """`y = c1 * op(x + b0) + b1`: ``nodes`` read ``u`` and write ``out``; ``out_shape``
    (per example) sizes the head's constants (default: scalars)."""
    rng = np.random.default_rng(seed)
    head = out_shape if out_shape is not None else ()
    inits = {**(inits or {}), "b0": f32(rng, *shape), "c1": f32(rng, *head),
             "b1": f32(rng, *head)}
    graph = [node("Add", ["x", "b0"], "u"), *nodes, node("Mul", [out, "c1"], "w"),
             node("Add", ["w", "b1"], "y")]
    return model(graph, ["N", *shape], inits, opset=opset, initializers_as_inputs=opset < 9)


def affine_jacobian_by_onnxruntime(proto: object, x: np.ndarray) -> np.ndarray:
    """`W^x` of a graph that is affine in ``x``, from onnxruntime alone: column `q` is
    `f(x + e_q) - f(x)`, run on the float64 copy of the model where onnxruntime has
    double kernels (else in float32), on batches of the model's own batch size (for ops
    whose constants are shaped by the batch: GatherElements indices, Resize sizes)."""
    import onnxruntime as ort

    n, shape = x.shape[0], x.shape[1:]
    size = int(np.prod(shape))
    session, dtype = None, np.float64
    for candidate, candidate_dtype in ((float64_copy(proto), np.float64), (proto, np.float32)):
        try:
            session = ort.InferenceSession(candidate.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
        except Exception:  # noqa: BLE001 - no double kernel: use the float32 model
            continue
        dtype = candidate_dtype
        break
    assert session is not None
    name = session.get_inputs()[0].name
    base = x.astype(dtype)
    at_x = session.run(None, {name: base})[0].astype(np.float64)
    columns = []
    for q in range(size):
        step = np.zeros(size, dtype=dtype)
        step[q] = 1.0
        moved = session.run(None, {name: base + step.reshape(shape)})[0]
        columns.append(moved.astype(np.float64) - at_x)
    return np.stack(columns, axis=-1).reshape(n, *at_x.shape[1:], *shape)


def verify_affine(case: Case) -> tuple[bbp_ref.Model, list]:
    """`verify` without onnx.reference, the Jacobian from `affine_jacobian_by_onnxruntime`
    instead (exact up to rounding: the graph is affine in x)."""
    case.fd = False
    m, explanations = verify(case)
    expected = affine_jacobian_by_onnxruntime(case.reference or case.proto, case.x)
    jacobian = m.jacobian(case.x)
    scale = max(1.0, float(np.abs(jacobian).max()))
    np.testing.assert_allclose(jacobian, expected, rtol=0, atol=1e-5 * scale)
    return m, explanations


def _x(*shape: int, seed: int = 1) -> np.ndarray:
    return f32(np.random.default_rng(seed), 3, *shape)


def _ops(m: bbp_ref.Model) -> dict[str, str]:
    return {n.op: n.kind for n in m.nodes if n.kind != "input"}


# -- Pad ------------------------------------------------------------------------------------
PAD_CASES = [
    ("constant-zero", 13, "constant", [0, 0, 1, 2, 0, 1, 0, 1], 0.0),
    ("constant-value", 13, "constant", [0, 1, 0, 2, 0, 0, 1, 1], 1.5),
    ("reflect", 13, "reflect", [0, 0, 2, 1, 0, 0, 1, 3], None),
    ("edge", 13, "edge", [0, 1, 1, 0, 0, 2, 0, 4], None),
    ("wrap", 19, "wrap", [0, 0, 2, 3, 0, 1, 1, 2], None),
    ("attribute-opset7", 7, "constant", [0, 1, 1, 0, 0, 0, 1, 2], -0.5),
    ("attribute-opset7-reflect", 7, "reflect", [0, 0, 1, 1, 0, 0, 2, 1], None),
]


@pytest.mark.parametrize(("name", "opset", "mode", "pads", "value"), PAD_CASES,
                         ids=[c[0] for c in PAD_CASES])
def test_pad(name: str, opset: int, mode: str, pads: list, value: float | None) -> None:
    inits: dict = {}
    if opset < 11:
        pad = node("Pad", ["u"], "v", mode=mode, pads=pads,
                   **({} if value is None else {"value": value}))
    else:
        inits["pads"] = np.array(pads, dtype=np.int64)
        inputs = ["u", "pads"]
        if value is not None:
            inits["value"] = np.array(value, dtype=np.float32)
            inputs.append("value")
        pad = node("Pad", inputs, "v", mode=mode)
    m, _ = verify(Case(_wrapped([pad], SHAPE, inits, opset=opset), _x(*SHAPE)))
    assert _ops(m)["Pad"] == ("affine" if mode == "constant" else "route")


def test_pad_axes_input_and_negative_pads() -> None:
    """Opset 18 ``axes``; a negative pad crops (onnx.reference cannot, so the finite
    differences run an equivalent Pad + Slice)."""
    inits = {"pads": np.array([2, -1, 1, 1], dtype=np.int64), "axes": np.array([-1, 1]),
             "value": np.array(0.25, dtype=np.float32)}
    proto = _wrapped([node("Pad", ["u", "pads", "value", "axes"], "v")], SHAPE, inits,
                     opset=18)
    ref_inits = {"pads": np.array([0, 0, 0, 2, 0, 1, 0, 1]), "st": np.array([1]),
                 "en": np.array([2**31 - 1]), "ax": np.array([1]),
                 "value": np.array(0.25, dtype=np.float32)}
    reference = _wrapped([node("Pad", ["u", "pads", "value"], "p"),
                          node("Slice", ["p", "st", "en", "ax"], "v")], SHAPE, ref_inits)
    verify(Case(proto, _x(*SHAPE), reference))


def test_zero_pad_before_conv_still_folds_and_elsewhere_is_embedded() -> None:
    rng = np.random.default_rng(3)
    inits = {"pads": np.array([0, 0, 1, 1, 0, 0, 1, 1]), "k": f32(rng, 2, 3, 3, 3)}
    folded = _wrapped([node("Pad", ["u", "pads"], "p"), node("Conv", ["p", "k"], "v")],
                      SHAPE, inits)
    m, _ = verify(Case(folded, _x(*SHAPE)))
    assert "Pad" not in _ops(m)
    # the same Pad also read by an Add: it is an Embed node and the Conv reads it
    shared = _wrapped([node("Pad", ["u", "pads"], "p"), node("Conv", ["p", "k"], "q"),
                       node("ReduceMean", ["p"], "s", axes=[1, 2, 3], keepdims=1),
                       node("Add", ["q", "s"], "v")], SHAPE, inits)
    m, _ = verify(Case(shared, _x(*SHAPE)))
    assert _ops(m)["Pad"] == "affine"


def test_constant_pad_border_mass_by_rule_hand_computed() -> None:
    """y = sum(Pad(x, value=2)) for x = [1, -3, 0] padded by 1 and 2: the border holds
    bias 3 * 2 = 6, spread over x by |x| (abs), by the positive values (signed), evenly
    (uniform)."""
    proto = model([node("Pad", ["x", "pads", "value"], "p"),
                   node("ReduceSum", ["p"], "y", axes=[1], keepdims=0)], ["N", 3],
                  {"pads": np.array([0, 1, 0, 2]), "value": np.array(2.0, np.float32)},
                  opset=11)
    x = np.array([1.0, -3.0, 0.0], dtype=np.float32)
    expected = {"abs": [1.5, 4.5, 0.0], "signed": [6.0, 0.0, 0.0], "uniform": [2.0, 2.0, 2.0]}
    for rule, attribution in expected.items():
        e = bbp_ref.explain(proto, x, target=0, rule=rule, check=False)
        assert e.output == 4.0 and e.bias == 6.0
        np.testing.assert_allclose(e.bias_attribution, attribution, rtol=1e-15)


def test_pad_of_the_batch_axis_is_refused() -> None:
    proto = model([node("Pad", ["x", "pads"], "y", name="padder")], ["N", 3],
                  {"pads": np.array([1, 0, 0, 0])})
    with pytest.raises(UnsupportedOpError, match="padder.*batch axis"):
        bbp_ref.load(proto)


# -- Split ----------------------------------------------------------------------------------
SPLIT_CASES = [
    ("even-attr-opset11", 11, {"axis": 2}, None, False),
    ("sizes-attr-opset11", 11, {"axis": 1, "split": [1, 2]}, None, True),
    ("sizes-input-opset13", 13, {"axis": -1}, [3, 2], True),
    ("num-outputs-opset18", 18, {"axis": 3, "num_outputs": 2}, None, True),
]


@pytest.mark.parametrize(("name", "opset", "attributes", "sizes", "uneven"), SPLIT_CASES,
                         ids=[c[0] for c in SPLIT_CASES])
def test_split(name: str, opset: int, attributes: dict, sizes: list | None,
               uneven: bool) -> None:
    inits, inputs = {}, ["u"]
    if sizes is not None:
        inits["split"] = np.array(sizes, dtype=np.int64)
        inputs.append("split")
    axis = attributes["axis"] % 4
    nodes = [node("Split", inputs, ["a", "b"], **attributes)]
    # a tail that reads both outputs: the second first, so the parts swap places
    nodes.append(node("Concat", ["b", "a"], "v", axis=axis) if uneven
                 else node("Sub", ["b", "a"], "v"))
    m, _ = verify(Case(_wrapped(nodes, SHAPE, inits, opset=opset), _x(*SHAPE)))
    assert [n.name for n in m.nodes if n.op == "Split"] == ["split_a", "split_a:1"]


def test_split_of_the_batch_axis_is_refused() -> None:
    proto = model([node("Split", ["x"], ["a", "b"], axis=0), node("Add", ["a", "b"], "y")],
                  ["N", 3])
    with pytest.raises(UnsupportedOpError, match="batch axis"):
        bbp_ref.load(proto)


# -- Tile, Expand, Gather, GatherElements, DepthToSpace, SpaceToDepth, Where ----------------
def test_tile() -> None:
    inits = {"r": np.array([1, 2, 1, 3])}
    verify(Case(_wrapped([node("Tile", ["u", "r"], "v")], SHAPE, inits), _x(*SHAPE)))


def test_expand_of_data() -> None:
    inits = {"s": np.array([1, 2, 4, 5])}
    verify(Case(_wrapped([node("Expand", ["u", "s"], "v")], (1, 4, 1), inits),
                _x(1, 4, 1)))


@pytest.mark.parametrize(("axis", "indices"), [(1, [2, 0, 0]), (-1, [[4, -1], [0, 2]]),
                                               (2, 3)])
def test_gather_constant_indices(axis: int, indices: object) -> None:
    inits = {"i": np.array(indices, dtype=np.int64)}
    verify(Case(_wrapped([node("Gather", ["u", "i"], "v", axis=axis)], SHAPE, inits),
                _x(*SHAPE)))


def test_gather_elements_constant_indices() -> None:
    rng = np.random.default_rng(4)
    rows = rng.integers(-5, 5, size=(1, 3, 4, 7))
    inits = {"i": np.repeat(rows, 3, axis=0)}
    verify_affine(Case(_wrapped([node("GatherElements", ["u", "i"], "v", axis=3)], SHAPE,
                                inits), _x(*SHAPE)))


@pytest.mark.parametrize("mode", ["DCR", "CRD"])
def test_depth_to_space(mode: str) -> None:
    shape = (8, 2, 3)
    verify(Case(_wrapped([node("DepthToSpace", ["u"], "v", blocksize=2, mode=mode)], shape),
                _x(*shape)))


def test_space_to_depth() -> None:
    shape = (2, 4, 6)
    verify(Case(_wrapped([node("SpaceToDepth", ["u"], "v", blocksize=2)], shape),
                _x(*shape)))


@pytest.mark.parametrize("other", ["data", "constant", "constant-first"])
def test_where_constant_condition(other: str) -> None:
    rng = np.random.default_rng(5)
    inits = {"c": rng.random((4, 5)) > 0.4, "k": f32(rng, 1, 5)}
    nodes = [node("Neg", ["u"], "n")]
    branches = {"data": ["u", "n"], "constant": ["u", "k"], "constant-first": ["k", "n"]}
    nodes.append(node("Where", ["c", *branches[other]], "v"))
    m, _ = verify(Case(_wrapped(nodes, SHAPE, inits), _x(*SHAPE)))
    assert _ops(m)["Where"] == ("route" if other == "data" else "affine")


@pytest.mark.parametrize(("nodes", "inits", "message"), [
    ([node("Gather", ["x", "i"], "y", axis=0, name="g")], {"i": np.array([0])}, "batch axis"),
    ([node("Tile", ["x", "r"], "y", name="g")], {"r": np.array([2, 1])}, "mix examples"),
    ([node("Expand", ["x", "s"], "y", name="g")], {"s": np.array([2, 2, 3])},
     "before the batch axis"),
    ([node("Shape", ["x"], "s"), node("Gather", ["x", "s"], "y", axis=1, name="g")], {},
     "must be integers|out of range"),
])
def test_refused_route_forms(nodes: list, inits: dict, message: str) -> None:
    with pytest.raises(UnsupportedOpError, match=f"g.*({message})"):
        bbp_ref.load(model(nodes, ["N", 3], inits))


def test_data_dependent_indices_and_conditions_are_refused() -> None:
    inits = {"w": f32(np.random.default_rng(0), 3, 3)}
    gather = [node("MatMul", ["x", "w"], "f"), node("Cast", ["f"], "i", to=7),
              node("Gather", ["x", "i"], "y", axis=1, name="g")]
    with pytest.raises(UnsupportedOpError):
        bbp_ref.load(model(gather, ["N", 3], inits))
    where = [node("Greater", ["x", "x"], "c"), node("Where", ["c", "x", "x"], "y", name="g")]
    with pytest.raises(UnsupportedOpError, match="Greater|data-dependent"):
        bbp_ref.load(model(where, ["N", 3], inits))


# -- Resize / Upsample ----------------------------------------------------------------------
RESIZE_CASES = [
    # (id, opset, attributes, scales or None, sizes or None)
    ("nearest-default", 13, {"mode": "nearest"}, [1, 1, 2, 1.5], None),
    ("nearest-ceil-align", 13, {"mode": "nearest", "nearest_mode": "ceil",
                                "coordinate_transformation_mode": "align_corners"},
     None, [3, 3, 7, 3]),
    ("nearest-floor-asymmetric", 13, {"mode": "nearest", "nearest_mode": "floor",
                                      "coordinate_transformation_mode": "asymmetric"},
     [1, 1, 0.5, 2.5], None),
    ("nearest-prefer-ceil", 13, {"mode": "nearest", "nearest_mode": "round_prefer_ceil",
                                 "coordinate_transformation_mode": "pytorch_half_pixel"},
     [1, 1, 1.5, 0.75], None),
    ("nearest-tf-half-pixel-for-nn", 11, {"mode": "nearest",
                                          "coordinate_transformation_mode":
                                          "tf_half_pixel_for_nn"}, [1, 1, 2, 1.25], None),
    ("linear-half-pixel", 13, {"mode": "linear"}, [1, 1, 2, 1.5], None),
    ("linear-align-corners", 13, {"mode": "linear",
                                  "coordinate_transformation_mode": "align_corners"},
     None, [3, 3, 6, 9]),
    ("linear-align-corners-int-length", 13, {"mode": "linear",
                                             "coordinate_transformation_mode":
                                             "align_corners"}, [1, 1, 1.5, 1.25], None),
    ("linear-asymmetric-down", 13, {"mode": "linear",
                                    "coordinate_transformation_mode": "asymmetric"},
     [1, 1, 0.5, 0.75], None),
    ("linear-pytorch-half-pixel", 13, {"mode": "linear",
                                       "coordinate_transformation_mode":
                                       "pytorch_half_pixel"}, None, [3, 3, 1, 8]),
    ("linear-channels", 13, {"mode": "linear"}, [1, 2, 1, 1], None),
    ("linear-half-pixel-symmetric", 19, {"mode": "linear", "coordinate_transformation_mode":
                                         "half_pixel_symmetric"}, [1, 1, 1.75, 0.75], None),
    ("linear-antialias", 18, {"mode": "linear", "antialias": 1}, [1, 1, 0.5, 0.75], None),
    ("cubic", 13, {"mode": "cubic"}, [1, 1, 2, 1.5], None),
    ("cubic-a-exclude-outside", 13, {"mode": "cubic", "cubic_coeff_a": -0.5,
                                     "exclude_outside": 1}, [1, 1, 1.5, 0.75], None),
    ("cubic-antialias", 18, {"mode": "cubic", "antialias": 1}, [1, 1, 0.5, 0.5], None),
    ("cubic-align-corners-sizes", 13, {"mode": "cubic", "coordinate_transformation_mode":
                                       "align_corners"}, None, [3, 3, 5, 9]),
]


@pytest.mark.parametrize(("name", "opset", "attributes", "scales", "sizes"), RESIZE_CASES,
                         ids=[c[0] for c in RESIZE_CASES])
def test_resize(name: str, opset: int, attributes: dict, scales: list | None,
                sizes: list | None) -> None:
    # scales exact in binary: onnx.reference (the finite differences) computes source
    # coordinates partly in float32, so a scale like 0.6 would blur them by ~1e-7
    inits = {"roi": np.zeros(0, np.float32)}
    inputs = ["u", "roi"]
    if scales is not None:
        inits["scales"] = np.array(scales, dtype=np.float32)
        inputs.append("scales")
    else:
        inits["scales"] = np.zeros(0, np.float32)
        inits["sizes"] = np.array(sizes, dtype=np.int64)
        inputs += ["scales", "sizes"]
    if opset < 13 and scales is not None:
        inputs = inputs[:3]
    proto = _wrapped([node("Resize", inputs, "v", **attributes)], SHAPE, inits, opset=opset)
    # onnx.reference lacks tf_half_pixel_for_nn, runs sizes on its own batch of
    # perturbations, and takes align_corners' output length as `scale * size` where
    # onnxruntime takes the integer length: there the Jacobian comes from onnxruntime
    check = verify_affine if ("for-nn" in name or "int-length" in name
                              or sizes is not None) else verify
    m, _ = check(Case(proto, _x(*SHAPE)))
    expected = "route" if attributes["mode"] == "nearest" else "affine"
    assert _ops(m)["Resize"] == expected


def test_resize_axes_and_keep_aspect_ratio() -> None:
    inits = {"sizes": np.array([7, 7], dtype=np.int64)}
    proto = _wrapped([node("Resize", ["u", "", "", "sizes"], "v", mode="linear", axes=[3, 2],
                           keep_aspect_ratio_policy="not_larger")], SHAPE, inits, opset=18)
    m, _ = verify(Case(proto, _x(*SHAPE)))
    assert [n.shape for n in m.nodes if n.op == "Resize"] == [(3, 7, 9)] or \
        [n.shape for n in m.nodes if n.op == "Resize"][0][0] == 3


def test_resize_tf_crop_and_resize_extrapolates_constants() -> None:
    """Outputs outside the roi hold ``extrapolation_value``: local bias, connected to the
    whole input for the rules (completeness holds for every rule)."""
    inits = {"roi": np.array([0, 0, -0.25, 0.5, 1, 1, 0.75, 1.25], np.float32),
             "scales": np.array([1, 1, 1.5, 1.25], np.float32)}
    proto = _wrapped([node("Resize", ["u", "roi", "scales"], "v", mode="linear",
                           coordinate_transformation_mode="tf_crop_and_resize",
                           extrapolation_value=2.5)], SHAPE, inits)
    # onnx.reference maps coordinates with the untruncated length `scale * size`,
    # onnxruntime (and bbp_ref) with the integer output length
    verify_affine(Case(proto, _x(*SHAPE)))


def test_extrapolated_mass_goes_to_the_whole_input_by_hand() -> None:
    """tf_crop_and_resize of x = [1, -2, 1] to 4 outputs with roi [-0.5, 1]: the source
    coordinates are y - 1 = -1, 0, 1, 2, so the output is [3, x0, x1, x2] with
    extrapolation_value 3. The sum's bias 3 is spread over x by |x| (abs), evenly
    (uniform), not onto the clamped edge tap. (onnxruntime ignores the roi when the
    output has the input's shape, so the size changes here.)"""
    proto = model([node("Resize", ["x", "roi", "s"], "r", mode="linear",
                        coordinate_transformation_mode="tf_crop_and_resize",
                        extrapolation_value=3.0),
                   node("ReduceSum", ["r"], "y", axes=[1, 2, 3], keepdims=0)], ["N", 1, 1, 3],
                  {"roi": np.array([0, 0, 0, -0.5, 1, 1, 1, 1], np.float32),
                   "s": np.array([1, 1, 1, 4 / 3], np.float32)}, opset=11)
    x = np.array([[[1.0, -2.0, 1.0]]], np.float32)
    for rule, expected in (("abs", [0.75, 1.5, 0.75]), ("uniform", [1.0, 1.0, 1.0])):
        e = bbp_ref.explain(proto, x, target=0, rule=rule)
        assert e.output == 3.0 and e.bias == 3.0 and e.checks.passed
        np.testing.assert_allclose(e.bias_attribution.ravel(), expected, rtol=1e-15)


@pytest.mark.parametrize(("op", "opset", "mode"), [("Upsample", 7, "nearest"),
                                                   ("Upsample", 9, "linear"),
                                                   ("Resize", 10, "nearest"),
                                                   ("Resize", 10, "linear")])
def test_legacy_resize_and_upsample(op: str, opset: int, mode: str) -> None:
    scales = [1.0, 1.0, 2.0, 1.5]
    if opset < 9:
        proto = _wrapped([node(op, ["u"], "v", mode=mode, scales=scales)], SHAPE, opset=opset)
    else:
        proto = _wrapped([node(op, ["u", "s"], "v", mode=mode)], SHAPE,
                         {"s": np.array(scales, np.float32)}, opset=opset)
    reference = _wrapped([node("Resize", ["u", "", "s"], "v", mode=mode, nearest_mode="floor",
                               coordinate_transformation_mode="asymmetric")], SHAPE,
                         {"s": np.array(scales, np.float32)})
    verify(Case(proto, _x(*SHAPE), reference))


def test_resize_of_the_batch_axis_is_refused() -> None:
    proto = model([node("Resize", ["x", "", "s"], "y", name="rs")], ["N", 3, 4],
                  {"s": np.array([2, 1, 1], np.float32)})
    with pytest.raises(UnsupportedOpError, match="rs.*batch axis"):
        bbp_ref.load(proto)


# -- ConvTranspose --------------------------------------------------------------------------
CONV_TRANSPOSE_CASES = [
    ("basic", (3, 4, 5), (3, 2, 3, 3), {}),
    ("stride-output-padding", (3, 4, 5), (3, 2, 2, 3),
     {"strides": [2, 3], "output_padding": [1, 2], "pads": [1, 0, 0, 1]}),
    ("groups-dilations", (4, 4, 5), (4, 1, 2, 3), {"group": 2, "dilations": [2, 1],
                                                   "strides": [1, 2]}),
    ("stride-gaps", (2, 3, 3), (2, 2, 2, 1), {"strides": [3, 2]}),
    ("same-upper", (3, 4, 5), (3, 2, 3, 3), {"strides": [2, 2], "auto_pad": "SAME_UPPER"}),
    ("same-lower", (3, 4, 5), (3, 2, 4, 3), {"strides": [2, 1], "auto_pad": "SAME_LOWER"}),
    ("output-shape", (3, 4, 5), (3, 2, 3, 3), {"strides": [2, 2], "output_shape": [8, 10]}),
    ("1d", (3, 6), (3, 2, 3), {"strides": [2], "pads": [1, 2]}),
    ("3d", (2, 3, 2, 3), (2, 2, 2, 2, 2), {"strides": [2, 1, 2]}),
]


@pytest.mark.parametrize(("name", "shape", "kernel", "attributes"), CONV_TRANSPOSE_CASES,
                         ids=[c[0] for c in CONV_TRANSPOSE_CASES])
def test_conv_transpose(name: str, shape: tuple, kernel: tuple, attributes: dict) -> None:
    rng = np.random.default_rng(6)
    inits = {"k": f32(rng, *kernel), "kb": f32(rng, kernel[1] * attributes.get("group", 1))}
    proto = _wrapped([node("ConvTranspose", ["u", "k", "kb"], "v", **attributes)], shape,
                     inits)
    # onnx.reference's ConvTranspose fails with groups and output_shape
    check = verify_affine if name in ("groups-dilations", "output-shape") else verify
    m, _ = check(Case(proto, _x(*shape)))
    assert _ops(m)["ConvTranspose"] == "affine"


def test_conv_transpose_unreached_outputs_keep_completeness_by_hand() -> None:
    """Stride 3, kernel 1, bias 0.5 on x = [2, -1]: the output is [x0, 0, 0, x1] + 0.5;
    outputs 1 and 2 read no input. Of the bias 4 * 0.5 = 2 of y = sum(output), each read
    output hands its 0.5 to its input, the unreached 1.0 is spread over x by |x| (abs:
    2/3, 1/3) or evenly (uniform)."""
    proto = model([node("ConvTranspose", ["x", "k", "b"], "t", strides=[3]),
                   node("ReduceSum", ["t"], "y", axes=[1, 2], keepdims=0)], ["N", 1, 2],
                  {"k": np.ones((1, 1, 1), np.float32), "b": np.array([0.5], np.float32)},
                  opset=11)
    x = np.array([[2.0, -1.0]], dtype=np.float32)
    expected = {"abs": [[0.5 + 2 / 3, 0.5 + 1 / 3]], "uniform": [[1.0, 1.0]]}
    for rule, attribution in expected.items():
        e = bbp_ref.explain(proto, x, target=0, rule=rule, check=False)
        assert e.output == 3.0 and e.bias == 2.0
        np.testing.assert_allclose(e.bias_attribution, attribution, rtol=1e-14)


# -- Einsum ---------------------------------------------------------------------------------
EINSUM_CASES = [
    ("nchw,wk->nck", (3, 4, 5), [(5, 2)], False),
    ("kw,nchw->nkh", (3, 4, 5), [(2, 5)], True),
    ("...hw,cw", (3, 4, 5), [(2, 5)], False),
    ("nchw,c,hw->nh", (3, 4, 5), [(3,), (4, 5)], False),
]


@pytest.mark.parametrize(("equation", "shape", "constants", "constant_first"), EINSUM_CASES,
                         ids=[c[0] for c in EINSUM_CASES])
def test_einsum_with_constants(equation: str, shape: tuple, constants: list,
                               constant_first: bool) -> None:
    rng = np.random.default_rng(7)
    inits = {f"w{k}": f32(rng, *s) for k, s in enumerate(constants)}
    names = list(inits)
    inputs = [*names, "u"] if constant_first else ["u", *names]
    m, _ = verify(Case(_wrapped([node("Einsum", inputs, "v", equation=equation)], shape,
                                inits, opset=12), _x(*shape)))
    assert _ops(m)["Einsum"] == "affine"


@pytest.mark.parametrize("equation", ["bhqd,bhkd->bhqk", "bij,bj->bi", "...ij,...jk"])
def test_einsum_of_two_data_operands(equation: str) -> None:
    rng = np.random.default_rng(8)
    shape = (2, 3, 3)
    inits = {"wm": f32(rng, 3, 3)}
    right = "m"
    nodes = [node("MatMul", ["u", "wm"], "m")]
    if equation == "bij,bj->bi":
        nodes.append(node("ReduceSum", ["m"], "r", axes=[1], keepdims=0))
        shape, right = (3, 3), "r"
        nodes = [node("MatMul", ["u", "wm"], "m"),
                 node("ReduceSum", ["m"], "r", axes=[1], keepdims=0)]
    nodes.append(node("Einsum", ["u", right], "v", equation=equation))
    m, _ = verify(Case(_wrapped(nodes, shape, inits, opset=12), _x(*shape)))
    assert _ops(m)["Einsum"] == "product"


@pytest.mark.parametrize(("equation", "message"), [("bij->ij", "batch axis"),
                                                   ("bii->bi", "diagonal"),
                                                   ("bij,ij->j", "batch axis"),
                                                   ("bij,bj", "batch axis")])
def test_einsum_refused_forms(equation: str, message: str) -> None:
    inits = {"w": np.ones((3, 3), np.float32)}
    inputs = ["x", "w"] if "," in equation else ["x"]
    if equation == "bij,bj":
        inits = {"w": np.ones((1, 3), np.float32)}
    proto = model([node("Einsum", inputs, "y", equation=equation, name="es")], ["N", 3, 3],
                  inits, opset=12)
    with pytest.raises(UnsupportedOpError, match=f"es.*{message}"):
        bbp_ref.load(proto)


def test_gemm_of_two_data_operands_is_refused() -> None:
    proto = model([node("Relu", ["x"], "r"), node("Gemm", ["x", "r"], "y", transB=1,
                                                    name="gm")], ["N", 3])
    with pytest.raises(UnsupportedOpError, match="gm.*(batch|mix)"):
        bbp_ref.load(proto)


# -- Max / Min, ReduceMax / ReduceMin -------------------------------------------------------
@pytest.mark.parametrize("op", ["Max", "Min"])
def test_max_min_of_data_and_constants(op: str) -> None:
    rng = np.random.default_rng(9)
    inits = {"wm": f32(rng, 5, 5), "c": f32(rng, 1, 5)}
    nodes = [node("MatMul", ["u", "wm"], "m"), node(op, ["u", "m", "c"], "v")]
    m, _ = verify(Case(_wrapped(nodes, SHAPE, inits), _x(*SHAPE)))
    assert _ops(m)[op] == "gate"


@pytest.mark.parametrize("op", ["Max", "Min"])
def test_max_min_broadcast_of_two_data_tensors(op: str) -> None:
    nodes = [node("ReduceMean", ["u"], "r", axes=[2], keepdims=1), node(op, ["r", "u"], "v")]
    verify(Case(_wrapped(nodes, SHAPE), _x(*SHAPE)))


@pytest.mark.parametrize(("op", "axes", "keepdims", "opset"), [
    ("ReduceMax", [2, 3], 0, 13), ("ReduceMin", [1], 1, 13), ("ReduceMax", [-1], 1, 18),
    ("ReduceMin", [1, 3], 0, 18)])
def test_reduce_max_min(op: str, axes: list, keepdims: int, opset: int) -> None:
    if opset >= 18:
        reduce = node(op, ["u", "axes"], "v", keepdims=keepdims)
        inits = {"axes": np.array(axes, dtype=np.int64)}
    else:
        reduce, inits = node(op, ["u"], "v", axes=axes, keepdims=keepdims), {}
    m, _ = verify(Case(_wrapped([reduce], SHAPE, inits, opset=opset), _x(*SHAPE)))
    assert _ops(m)[op] == "gate"


def test_max_ties_go_to_the_first_operand_by_hand() -> None:
    """Max(x, -x) at x = 0 picks x (slope +1); Min(-x, x) picks -x (slope -1); with a
    constant first, Max(c, x) at x = c picks c (slope 0, the output is bias)."""
    pair = model([node("Neg", ["x"], "n"), node("Max", ["x", "n"], "a"),
                  node("Min", ["n", "x"], "b"), node("Sub", ["a", "b"], "y")], ["N", 2])
    e = bbp_ref.explain(pair, np.zeros(2, np.float32), target=0, check=False)
    np.testing.assert_array_equal(e.gradient, [2.0, 0.0])
    constant_first = model([node("Max", ["c", "x"], "y")], ["N", 2],
                           {"c": np.array([1.0, 1.0], np.float32)})
    e = bbp_ref.explain(constant_first, np.array([1.0, 2.0], np.float32), target=0,
                        check=False)
    np.testing.assert_array_equal(e.gradient, [0.0, 0.0])
    assert e.bias == 1.0
    np.testing.assert_array_equal(e.bias_attribution, [1.0, 0.0])
    data_first = model([node("Max", ["x", "c"], "y")], ["N", 2],
                       {"c": np.array([1.0, 1.0], np.float32)})
    e = bbp_ref.explain(data_first, np.array([1.0, 2.0], np.float32), target=0, check=False)
    np.testing.assert_array_equal(e.gradient, [1.0, 0.0])
    assert e.bias == 0.0


@pytest.mark.parametrize(("op", "x", "winner"), [
    ("ReduceMax", [3.0, 1.0, 3.0, -2.0], 0), ("ReduceMin", [0.0, -2.0, 5.0, -2.0], 1),
    ("ReduceMax", [-1.0, -1.0, -1.0, -1.0], 0)])
def test_reduce_ties_go_to_the_lowest_index_by_hand(op: str, x: list, winner: int) -> None:
    proto = model([node(op, ["x"], "y", axes=[1], keepdims=0)], ["N", 4])
    e = bbp_ref.explain(proto, np.array(x, np.float32), target=0, check=False)
    expected = np.zeros(4)
    expected[winner] = 1.0
    np.testing.assert_array_equal(e.gradient, expected)
    assert e.output == x[winner]


def test_reduce_max_over_the_batch_axis_is_refused() -> None:
    proto = model([node("ReduceMax", ["x"], "y", axes=[0], name="rm")], ["N", 3])
    with pytest.raises(UnsupportedOpError, match="rm.*batch axis"):
        bbp_ref.load(proto)


def test_exact_ig_and_deeplift_refuse_selection_gates_cleanly() -> None:
    proto = model([node("Neg", ["x"], "n"), node("Max", ["x", "n"], "y", name="mx")],
                  ["N", 2])
    x = np.array([1.0, -2.0], np.float32)
    with pytest.raises(bbp_ref.BBpError, match="mx"):
        bbp_ref.integrated_gradients(proto, x, target=0, method="exact")
    with pytest.raises(bbp_ref.BBpError, match="mx"):
        bbp_ref.deeplift(proto, x, target=0)


def test_deeplift_of_an_einsum_product_sums_to_the_difference() -> None:
    """DeepLIFT's multipliers of a bilinear Einsum (midpoint rule): the attributions sum
    to `f(x) - f(baseline)` exactly."""
    rng = np.random.default_rng(10)
    proto = model([node("MatMul", ["x", "w"], "m"),
                   node("Einsum", ["x", "m"], "y", equation="bij,bkj->bik")], ["N", 2, 3],
                  {"w": f32(rng, 3, 3)}, opset=12)
    x, baseline = f32(rng, 2, 2, 3), f32(rng, 2, 3)
    a = bbp_ref.deeplift(proto, x, baselines=baseline, target=1)
    m = bbp_ref.load(proto)
    expected = m.forward(x).reshape(2, -1)[:, 1] - m.forward(
        np.broadcast_to(baseline, x.shape).copy()).reshape(2, -1)[:, 1]
    np.testing.assert_allclose(a.attribution.reshape(2, -1).sum(axis=1), expected,
                               rtol=1e-12)


# -- Conv windows entirely in the padding ---------------------------------------------------
def test_conv_windows_entirely_in_padding_are_accepted() -> None:
    """Pads wider than the dilated kernel reaches: the border outputs are the bias alone,
    connected for the rules to the whole input (docs/math.md §7.3)."""
    rng = np.random.default_rng(11)
    inits = {"k": f32(rng, 2, 3, 2, 2), "kb": f32(rng, 2)}
    proto = _wrapped([node("Conv", ["u", "k", "kb"], "v", pads=[3, 0, 0, 2], strides=[2, 1])],
                     SHAPE, inits)
    m, _ = verify(Case(proto, _x(*SHAPE)))
    assert _ops(m)["Conv"] == "affine"


def test_exact_integrated_gradients_through_the_new_piecewise_linear_ops() -> None:
    """The exact walk treats the new affine nodes and routes like any other: its
    attributions sum to `f(x) - f(0)` (completeness) through Pad, Resize, ConvTranspose,
    Where and a Relu between them."""
    rng = np.random.default_rng(12)
    inits = {"pads": np.array([0, 0, 1, 1, 0, 0, 1, 0]), "s": np.array([1, 1, 2, 1.5],
                                                                       np.float32),
             "k": f32(rng, 3, 2, 2, 2), "kb": f32(rng, 2), "c": rng.random((1, 1, 18)) > 0.5,
             "z": np.zeros((1, 1, 1), np.float32)}
    nodes = [node("Pad", ["u", "pads"], "p", mode="reflect"),
             node("Resize", ["p", "", "s"], "r", mode="linear"), node("Relu", ["r"], "a"),
             node("ConvTranspose", ["a", "k", "kb"], "t", strides=[2, 2]),
             node("Where", ["c", "t", "z"], "w0"), node("Relu", ["w0"], "v")]
    proto = _wrapped(nodes, SHAPE, inits, opset=13)
    x = _x(*SHAPE)[:1]
    m = bbp_ref.load(proto)
    a = bbp_ref.integrated_gradients(proto, x, target=7, method="exact")
    expected = m.forward(x).reshape(-1)[7] - m.forward(np.zeros_like(x)).reshape(-1)[7]
    total = float(a.attribution.sum())
    assert abs(total - expected) <= 1e-9 * max(1.0, abs(expected)), (total, expected)


@pytest.mark.parametrize(("nodes", "inits"), [
    ([node("Tile", ["x", "r"], "y", name="big")], {"r": np.array([1, 10**6, 10**6])}),
    ([node("Resize", ["x", "", "s"], "y", name="big")],
     {"s": np.array([1, 1e5, 1e5], np.float32)}),
    ([node("Pad", ["x", "p"], "y", name="big")], {"p": np.array([0, 0, 0, 0, 10**7, 10**7])}),
    ([node("Expand", ["x", "s"], "y", name="big")], {"s": np.array([1, 10**6, 1, 10**6])}),
])
def test_huge_outputs_are_refused_before_they_are_built(nodes: list, inits: dict) -> None:
    shape = ["N", 1, 1, 1] if nodes[0].op_type == "Expand" else ["N", 1, 2]
    with pytest.raises(bbp_ref.ModelLoadError, match="big.*budget"):
        bbp_ref.load(model(nodes, shape, inits))
