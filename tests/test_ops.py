"""Every op handler against onnxruntime, and the bias decomposition on it.

Each case is a tiny hand-written ONNX model with seeded random float32 weights and a
batch of 2-3 inputs. For every case (`verify`):

1. ``load(m).forward(x)`` equals onnxruntime's output to float32 rounding;
2. for the rules abs, signed and uniform, ``explain(..., check=True)`` passes its own
   checks, and the test recomputes `sum_q g[q] x[q] + b = f_t(x)` and
   `sum_q B(x)[q] = b` itself (float64, 1e-10 of the sum of magnitudes);
3. ``load(m).jacobian(x)`` equals central finite differences (step 1e-6) of the same
   model in float64 run by ``onnx.reference.ReferenceEvaluator`` (inputs chosen away
   from the kinks; cases with ties in a max check the arg-max explicitly instead).

Where onnxruntime cannot run a model (opset-6 Add/Mul/BatchNormalization/PRelu/Dropout,
Conv with auto_pad SAME and dilations) or onnx.reference gets an op wrong (see the
comments at BatchNormalization, GlobalMaxPool, MaxPool SAME_LOWER), an equivalent model
(``reference``) stands in for it.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import onnx
import pytest
from builders import f32, model, node
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

import bbp_ref

RULES = ("abs", "signed", "uniform")
FORWARD_RTOL = 1e-6  # of each element, plus the same times the output's largest magnitude
RESIDUAL_TOL = 1e-10
FD_STEP = 1e-6
FD_TOL = 1e-7  # of max(1, |f|, |W^x| |x|)
KINK_MARGIN = 0.05


# -- the harness ---------------------------------------------------------------------------
@dataclass
class Case:
    """A model, its input batch, and how to check it.

    ``reference``: an equivalent model, compared in onnxruntime too and used for the
    finite differences, where onnxruntime or onnx.reference cannot run ``proto`` itself;
    ``ort_runs_proto``: onnxruntime runs ``proto`` (then ``explain(check=True)`` compares
    with it); ``fd``: compare the Jacobian with finite differences (off where the input
    sits on a kink, e.g. ties in a max)."""

    proto: onnx.ModelProto
    x: np.ndarray
    reference: onnx.ModelProto | None = None
    ort_runs_proto: bool = True
    fd: bool = True


def ort_outputs(proto: onnx.ModelProto, x: np.ndarray) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(proto.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    values = session.run(names, {session.get_inputs()[0].name: x.astype(np.float32)})
    return dict(zip(names, values))


def ort_output(proto: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ort_outputs(proto, x)[proto.graph.output[0].name]


def assert_forward_close(actual: np.ndarray, expected: np.ndarray) -> None:
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = max(float(np.abs(expected).max()), 1e-30)
    diff = np.abs(actual - expected)
    bound = FORWARD_RTOL * (np.abs(expected) + scale)
    assert (diff <= bound).all(), f"max |diff| {diff.max():.3g} (output scale {scale:.3g})"


def float64_copy(proto: onnx.ModelProto) -> onnx.ModelProto:
    """The same model computing in float64: float initializers, float constants, the
    graph's float inputs/outputs and Casts to float become double."""
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    graph = copy.graph

    def to_double(tensor: onnx.TensorProto) -> None:
        if tensor.data_type == TensorProto.FLOAT:
            array = numpy_helper.to_array(tensor).astype(np.float64)
            tensor.CopyFrom(numpy_helper.from_array(array, tensor.name))

    for tensor in graph.initializer:
        to_double(tensor)
    for info in [*graph.input, *graph.output, *graph.value_info]:
        if info.type.tensor_type.elem_type == TensorProto.FLOAT:
            info.type.tensor_type.elem_type = TensorProto.DOUBLE
    for n in graph.node:
        for attribute in n.attribute:
            if n.op_type == "Cast" and attribute.name == "to" and attribute.i == TensorProto.FLOAT:
                attribute.i = TensorProto.DOUBLE
            if attribute.type == onnx.AttributeProto.TENSOR:
                to_double(attribute.t)
    return copy


class Float64Erf(OpRun):
    """`Erf` in float64: onnx.reference's computes in float32 (``otypes=["f"]``), too
    coarse for finite differences (Gelu's function body uses it too)."""

    op_domain = ""

    def _run(self, x: np.ndarray) -> tuple[np.ndarray]:
        return (np.vectorize(math.erf, otypes=[np.float64])(x).astype(x.dtype),)


Float64Erf.__name__ = "Erf"


def finite_difference_jacobian(proto: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """Central differences of the float64 model, all perturbations in one batch:
    shape [N, *output, *input]."""
    evaluator = ReferenceEvaluator(float64_copy(proto), new_ops=[Float64Erf])
    x = x.astype(np.float64)
    n, shape = x.shape[0], x.shape[1:]
    size = int(np.prod(shape))
    steps = (np.eye(size) * FD_STEP).reshape(1, size, *shape)
    batch = np.stack([x[:, None] + steps, x[:, None] - steps], axis=2)  # [N, Q, 2, *S]
    (out,) = evaluator.run(None, {proto.graph.input[0].name: batch.reshape(-1, *shape)})
    out_shape = out.shape[1:]
    out = out.reshape(n, size, 2, -1)
    slope = (out[:, :, 0] - out[:, :, 1]) / (2 * FD_STEP)  # [N, Q, O]
    return slope.transpose(0, 2, 1).reshape(n, *out_shape, *shape)


def check_decomposition(m: bbp_ref.Model, x: np.ndarray, check: bool) -> list:
    """Explain with every rule; assert the decomposition with sums computed here."""
    x64 = x.astype(np.float64)
    n = x.shape[0]
    logits = m.forward(x).reshape(n, -1)
    explanations = []
    for rule in RULES:
        e = bbp_ref.explain(m, x, rule=rule, check=check)
        assert e.checks.passed, e.checks.summary()
        assert e.rule == rule
        np.testing.assert_array_equal(e.output, logits[np.arange(n), e.target])
        gradient_x_input = (e.gradient * x64).reshape(n, -1)
        layer_magnitude = sum((np.abs(v) for v in e.layer_bias.values()), np.zeros(n))
        total = gradient_x_input.sum(axis=1) + e.bias
        scale = np.abs(gradient_x_input).sum(axis=1) + layer_magnitude + 1e-300
        assert (np.abs(total - e.output) <= RESIDUAL_TOL * scale).all(), (total, e.output)
        attribution = e.bias_attribution.reshape(n, -1)
        assert e.bias_attribution.shape == x.shape
        scale = np.abs(attribution).sum(axis=1) + layer_magnitude + 1e-300
        assert (np.abs(attribution.sum(axis=1) - e.bias) <= RESIDUAL_TOL * scale).all()
        explanations.append(e)
    return explanations


def verify(case: Case) -> tuple[bbp_ref.Model, list]:
    """Forward vs onnxruntime, the decomposition for every rule, and the Jacobian vs
    finite differences; returns the model and the explanations (abs, signed, uniform)."""
    reference = case.reference or case.proto
    m = bbp_ref.load(case.proto)
    out = m.forward(case.x)
    if case.ort_runs_proto:
        assert_forward_close(out, ort_output(case.proto, case.x))
    if case.reference is not None:
        assert_forward_close(out, ort_output(case.reference, case.x))
    explanations = check_decomposition(m, case.x, check=case.ort_runs_proto)
    jacobian = m.jacobian(case.x)
    n = case.x.shape[0]
    rows = jacobian.reshape(n, -1, *case.x.shape[1:])
    for e in explanations:
        np.testing.assert_allclose(e.gradient, rows[np.arange(n), e.target], rtol=0, atol=0)
    if case.fd:
        expected = finite_difference_jacobian(reference, case.x)
        assert jacobian.shape == expected.shape
        scale = max(1.0, float(np.abs(out).max()),
                    float(np.abs(jacobian).max() * np.abs(case.x).max()))
        np.testing.assert_allclose(jacobian, expected, rtol=0, atol=FD_TOL * scale)
    return m, explanations


def away_from(x: np.ndarray, points: tuple[float, ...] = (0.0,),
              margin: float = KINK_MARGIN) -> np.ndarray:
    """``x`` with every value within ``margin`` of a kink pushed to ``margin`` away."""
    x = x.copy()
    for point in points:
        near = np.abs(x - point) < margin
        x[near] = np.where(x[near] >= point, point + margin, point - margin)
    return x.astype(np.float32)


def batch(rng: np.random.Generator, *shape: int, n: int = 3, scale: float = 1.0) -> np.ndarray:
    return f32(rng, n, *shape, scale=scale)


def dyn(*shape: int) -> list[object]:
    """An input shape with a dynamic batch axis."""
    return ["N", *shape]


def op_list(m: bbp_ref.Model) -> list[str]:
    return [n.op for n in m.nodes if n.kind != "input"]


def param(values: dict, id_: str) -> object:
    return pytest.param(values, id=id_)


# -- Gemm and MatMul -----------------------------------------------------------------------
@pytest.mark.parametrize("cfg", [
    param(dict(c_shape=(4,)), "C[M]"),
    param(dict(c_shape=(1, 4)), "C[1,M]"),
    param(dict(c_shape=()), "C-scalar"),
    param(dict(c_shape=(1,)), "C[1]"),
    param(dict(c_shape=None), "no-C"),
    param(dict(c_shape=(4,), trans_b=1), "transB"),
    param(dict(c_shape=(1, 4), alpha=0.7, beta=-1.3), "alpha-beta"),
    param(dict(c_shape=(4,), alpha=2.5, beta=0.5, trans_b=1), "alpha-beta-transB"),
    param(dict(c_shape=None, alpha=-0.5, trans_b=1), "alpha-no-C"),
])
def test_gemm(rng, cfg):
    trans_b = cfg.get("trans_b", 0)
    inits = {"b": f32(rng, 4, 5) if trans_b else f32(rng, 5, 4)}
    inputs = ["x", "b"]
    if cfg["c_shape"] is not None:
        inits["c"] = f32(rng, *cfg["c_shape"])
        inputs.append("c")
    attrs = {k: v for k, v in (("alpha", cfg.get("alpha")), ("beta", cfg.get("beta")))
             if v is not None}
    proto = model([node("Gemm", inputs, transB=trans_b, **attrs)], dyn(5), inits)
    m, _ = verify(Case(proto, batch(rng, 5)))
    assert op_list(m) == ["Gemm"]


def test_gemm_relu_gemm(rng):
    inits = {"w1": f32(rng, 6, 8), "b1": f32(rng, 8), "w2": f32(rng, 3, 8), "b2": f32(rng, 3)}
    proto = model([node("Gemm", ["x", "w1", "b1"], "h"), node("Relu", ["h"], "r"),
                   node("Gemm", ["r", "w2", "b2"], transB=1)], dyn(6), inits)
    verify(Case(proto, batch(rng, 6)))


def test_gemm_then_batchnorm_folds(rng):
    inits = {"w": f32(rng, 5, 4), "c": f32(rng, 4), "s": f32(rng, 4), "b": f32(rng, 4),
             "m": f32(rng, 4), "v": rng.uniform(0.5, 2.0, 4).astype(np.float32)}
    proto = model([node("Gemm", ["x", "w", "c"], "h"),
                   node("BatchNormalization", ["h", "s", "b", "m", "v"])], dyn(5), inits,
                  opset=14)
    m, _ = verify(Case(proto, batch(rng, 5)))
    assert op_list(m) == ["Gemm+BatchNormalization"]


@pytest.mark.parametrize("cfg", [
    param(dict(data=(5,), weight=(5, 4), side="right"), "2d-data-right"),
    param(dict(data=(3, 5), weight=(5, 4), side="right"), "3d-data-right"),
    param(dict(data=(2, 3, 5), weight=(5, 4), side="right"), "4d-data-right"),
    param(dict(data=(3, 5), weight=(1, 5, 4), side="right"), "3d-weight-right"),
    param(dict(data=(3, 5), weight=(4, 3), side="left"), "3d-data-left"),
    param(dict(data=(2, 3, 5), weight=(2, 4, 3), side="left"), "4d-data-batched-left"),
])
def test_matmul(rng, cfg):
    weight = f32(rng, *cfg["weight"])
    inputs = ["x", "w"] if cfg["side"] == "right" else ["w", "x"]
    proto = model([node("MatMul", inputs)], dyn(*cfg["data"]), {"w": weight})
    verify(Case(proto, batch(rng, *cfg["data"])))


@pytest.mark.parametrize("cfg", [
    param(dict(data=(5,), bias=(4,)), "2d-bias[M]"),
    param(dict(data=(3, 5), bias=(4,)), "3d-bias[M]"),
    param(dict(data=(3, 5), bias=(3, 4)), "3d-bias[T,M]"),
    param(dict(data=(5,), bias=(4,), reversed=True), "bias-first"),
])
def test_matmul_add(rng, cfg):
    inits = {"w": f32(rng, 5, 4), "b": f32(rng, *cfg["bias"])}
    add = ["b", "h"] if cfg.get("reversed") else ["h", "b"]
    proto = model([node("MatMul", ["x", "w"], "h"), node("Add", add)], dyn(*cfg["data"]),
                  inits)
    m, _ = verify(Case(proto, batch(rng, *cfg["data"])))
    assert op_list(m) == ["MatMul+Add"]


# -- Conv and Pad --------------------------------------------------------------------------
CONV_CASES = [
    param(dict(spatial=(11,), kernel=(3,)), "1d"),
    param(dict(spatial=(11,), kernel=(3,), strides=[2], pads=[2, 1], dilations=[2]),
          "1d-stride-pad-dilation"),
    param(dict(spatial=(11,), kernel=(4,), auto_pad="SAME_UPPER", strides=[2]),
          "1d-same-upper"),
    param(dict(spatial=(7, 6), kernel=(3, 3)), "2d"),
    param(dict(spatial=(7, 6), kernel=(3, 3), bias=False), "2d-no-bias"),
    param(dict(spatial=(7, 6), kernel=(3, 2), strides=[2, 1], pads=[1, 0, 2, 1]),
          "2d-stride-asym-pads"),
    param(dict(spatial=(7, 6), kernel=(2, 3), dilations=[2, 1], pads=[1, 2, 0, 1]),
          "2d-dilation"),
    param(dict(spatial=(7, 6), kernel=(3, 3), strides=[2, 3], dilations=[1, 2], pads=[1, 1, 1, 1],
               bias=False), "2d-stride-dilation-pads-no-bias"),
    param(dict(spatial=(7, 6), kernel=(3, 3), groups=2, out=6), "2d-groups2"),
    param(dict(spatial=(7, 6), kernel=(3, 3), groups=2, out=6, pads=[0, 1, 1, 0], bias=False),
          "2d-groups2-pads-no-bias"),
    param(dict(spatial=(7, 6), kernel=(3, 3), groups=4, out=4, pads=[1, 1, 1, 1]),
          "2d-depthwise"),
    param(dict(spatial=(7, 6), kernel=(3, 3), groups=4, out=8, strides=[2, 2]),
          "2d-depthwise-multiplier"),
    param(dict(spatial=(7, 6), kernel=(4, 3), auto_pad="SAME_UPPER", strides=[2, 1]),
          "2d-same-upper"),
    param(dict(spatial=(7, 6), kernel=(4, 3), auto_pad="SAME_LOWER", strides=[2, 1]),
          "2d-same-lower"),
    param(dict(spatial=(7, 6), kernel=(2, 2), auto_pad="SAME_LOWER", strides=[3, 2]),
          "2d-same-lower-stride3"),
    param(dict(spatial=(7, 6), kernel=(2, 3), auto_pad="SAME_LOWER", dilations=[2, 2]),
          "2d-same-lower-dilation"),
    param(dict(spatial=(7, 6), kernel=(2, 3), auto_pad="SAME_UPPER", dilations=[3, 1],
               strides=[2, 2]), "2d-same-upper-dilation-stride"),
    param(dict(spatial=(7, 6), kernel=(3, 3), auto_pad="VALID", strides=[2, 2]), "2d-valid"),
    param(dict(spatial=(7, 6), kernel=(1, 1), out=5), "2d-1x1"),
    param(dict(spatial=(5, 4, 6), kernel=(3, 2, 3)), "3d"),
    param(dict(spatial=(5, 4, 6), kernel=(3, 2, 3), strides=[1, 2, 2], pads=[1, 0, 1, 0, 1, 2],
               dilations=[1, 1, 2], groups=2, out=4), "3d-all"),
    param(dict(spatial=(5, 4, 6), kernel=(2, 2, 2), auto_pad="SAME_UPPER", bias=False),
          "3d-same-upper-no-bias"),
]


def conv_node(cfg: dict) -> onnx.NodeProto:
    """The Conv node of a CONV_CASES entry (weight "w", bias "b")."""
    inputs = ["x", "w", "b"] if cfg.get("bias", True) else ["x", "w"]
    attrs = {k: cfg[k] for k in ("strides", "pads", "dilations", "auto_pad") if k in cfg}
    if cfg.get("groups", 1) != 1:
        attrs["group"] = cfg["groups"]
    return node("Conv", inputs, **attrs)


@pytest.mark.parametrize("cfg", CONV_CASES)
def test_conv(rng, cfg):
    channels = 4 if len(cfg["spatial"]) == 2 else 2
    out = cfg.get("out", 3)
    inits = {"w": f32(rng, out, channels // cfg.get("groups", 1), *cfg["kernel"]),
             "b": f32(rng, out)}
    if not cfg.get("bias", True):
        del inits["b"]
    shape = dyn(channels, *cfg["spatial"])
    proto = model([conv_node(cfg)], shape, inits)
    reference = None
    if "auto_pad" in cfg:  # the pads it stands for, written out
        reference = model([conv_node(explicit_pads(cfg))], shape, inits)
    # onnxruntime: "Dilation not supported for AutoPadType::SAME_UPPER or SAME_LOWER"
    ort_runs_proto = not (cfg.get("auto_pad", "").startswith("SAME") and "dilations" in cfg)
    n = 2 if len(cfg["spatial"]) == 3 else 3
    m, _ = verify(Case(proto, batch(rng, channels, *cfg["spatial"], n=n), reference,
                       ort_runs_proto))
    assert op_list(m) == ["Conv"]


def test_conv_relu_conv(rng):
    inits = {"w1": f32(rng, 5, 3, 3, 3), "b1": f32(rng, 5), "w2": f32(rng, 2, 5, 2, 2),
             "b2": f32(rng, 2)}
    proto = model([node("Conv", ["x", "w1", "b1"], "h", pads=[1, 1, 1, 1]),
                   node("Relu", ["h"], "r"),
                   node("Conv", ["r", "w2", "b2"], strides=[2, 2])], dyn(3, 6, 6), inits)
    verify(Case(proto, batch(rng, 3, 6, 6)))


PAD_CASES = [
    param(dict(opset=13, pads=[0, 0, 1, 2, 0, 0, 2, 0]), "opset13-input"),
    param(dict(opset=11, pads=[0, 0, 0, 1, 0, 0, 2, 1], value=True), "opset11-input-value0"),
    param(dict(opset=13, pads=[0, 0, 1, 1, 0, 0, 1, 1], conv_pads=[1, 0, 0, 1]),
          "opset13-plus-conv-pads"),
    param(dict(opset=18, pads=[2, 1, 0, 1], axes=[2, 3]), "opset18-axes"),
    param(dict(opset=18, pads=[1, 2], axes=[-1]), "opset18-negative-axis"),
    param(dict(opset=9, pads=[0, 0, 1, 2, 0, 0, 2, 0]), "opset9-attribute"),
    param(dict(opset=9, pads=[0, 0, 1, 1, 0, 0, 0, 1], conv_pads=[1, 1, 1, 1], strides=[2, 2]),
          "opset9-attribute-conv-pads-stride"),
    param(dict(opset=13, pads=[0, 0, 1, 0, 0, 0, 1, 1], auto_pad="SAME_UPPER", strides=[2, 2]),
          "opset13-conv-same-upper"),
    param(dict(opset=13, pads=[0, 0, 1, 0, 0, 0, 1, 1], auto_pad="SAME_LOWER", strides=[2, 2]),
          "opset13-conv-same-lower"),
    param(dict(opset=13, pads=[0, 0, 1, 0, 0, 0, 2, 1], auto_pad="VALID", strides=[2, 1]),
          "opset13-conv-valid"),
]


@pytest.mark.parametrize("cfg", PAD_CASES)
def test_pad_before_conv(rng, cfg):
    opset = cfg["opset"]
    inits = {"w": f32(rng, 3, 4, 3, 3), "b": f32(rng, 3)}  # pads < kernel: no empty window
    if opset < 11:
        pad = node("Pad", ["x"], "p", pads=cfg["pads"], mode="constant", value=0.0)
    else:
        inits["pads"] = np.array(cfg["pads"], dtype=np.int64)
        inputs = ["x", "pads"]
        if cfg.get("value") or "axes" in cfg:
            inits["value"] = np.array(0.0, dtype=np.float32)
            inputs.append("value")
        if "axes" in cfg:
            inits["axes"] = np.array(cfg["axes"], dtype=np.int64)
            inputs.append("axes")
        pad = node("Pad", inputs, "p", mode="constant")
    attrs = {k: cfg[k] for k in ("strides", "auto_pad") if k in cfg}
    if "conv_pads" in cfg:
        attrs["pads"] = cfg["conv_pads"]
    conv = node("Conv", ["p", "w", "b"], **attrs)
    proto = model([pad, conv], dyn(4, 6, 5), inits, opset=opset)
    m, _ = verify(Case(proto, batch(rng, 4, 6, 5)))
    assert op_list(m) == ["Conv"]


# -- BatchNormalization --------------------------------------------------------------------
def bn_stats(rng: np.random.Generator, *shape: int) -> dict[str, np.ndarray]:
    return {"s": f32(rng, *shape), "bb": f32(rng, *shape), "m": f32(rng, *shape),
            "v": rng.uniform(0.5, 2.0, shape).astype(np.float32)}


def bn_node(opset: int, data: str, output: str = "y", **attrs: object) -> onnx.NodeProto:
    if opset < 7:
        attrs.setdefault("is_test", 1)
    return node("BatchNormalization", [data, "s", "bb", "m", "v"], output, epsilon=1e-3,
                **attrs)


# onnx.reference runs BatchNormalization-6 (is_test=1) into a TypeError and runs
# BatchNormalization-9 in training mode (its momentum default makes it use the batch
# statistics), so models of opsets < 14 are differentiated through an equivalent
# BatchNormalization-14 model; onnxruntime has no BatchNormalization-6.


def legacy(nodes: list, shape: list, inits: dict, opset: int) -> onnx.ModelProto:
    return model(nodes, shape, inits, opset=opset, initializers_as_inputs=opset < 9)


@pytest.mark.parametrize("opset", [6, 7, 9, 14, 15])
def test_batchnorm_after_conv_folds(rng, opset):
    inits = {"w": f32(rng, 3, 2, 3, 3), "b": f32(rng, 3), **bn_stats(rng, 3)}
    extra = dict(spatial=1) if opset < 9 else {}
    nodes = [node("Conv", ["x", "w", "b"], "h", pads=[1, 1, 1, 1]), bn_node(opset, "h", **extra)]
    proto = legacy(nodes, dyn(2, 5, 4), inits, opset)
    reference = None
    if opset < 14:
        reference = model([nodes[0], bn_node(14, "h")], dyn(2, 5, 4), inits, opset=14)
    m, _ = verify(Case(proto, batch(rng, 2, 5, 4), reference, ort_runs_proto=opset >= 7))
    assert op_list(m) == ["Conv+BatchNormalization"]
    assert [n.kind for n in m.nodes] == ["input", "affine"]


@pytest.mark.parametrize("cfg", [
    param(dict(opset=6), "opset6"),
    param(dict(opset=7), "opset7"),
    param(dict(opset=7, spatial=0), "opset7-spatial0"),
    param(dict(opset=9), "opset9"),
    param(dict(opset=14), "opset14"),
    param(dict(opset=14, rank=2), "opset14-2d-input"),
])
def test_batchnorm_after_relu(rng, cfg):
    opset, spatial = cfg["opset"], cfg.get("spatial", 1)
    shape = (3, 4, 5) if cfg.get("rank", 4) == 4 else (3,)
    inits = bn_stats(rng, *(shape if not spatial else shape[:1]))
    attrs = dict(spatial=spatial) if opset < 9 else {}
    nodes = [node("Relu", ["x"], "r"), bn_node(opset, "r", **attrs)]
    proto = legacy(nodes, dyn(*shape), inits, opset)
    reference = None
    if not spatial:  # as Mul and Add by [C, H, W] constants (onnx.reference lacks spatial=0)
        s = inits["s"] / np.sqrt(inits["v"].astype(np.float64) + np.float32(1e-3))
        consts = {"k": s.astype(np.float32),
                  "c": (inits["bb"] - s * inits["m"]).astype(np.float32)}
        reference = model([node("Relu", ["x"], "r"), node("Mul", ["r", "k"], "t"),
                           node("Add", ["t", "c"])], dyn(*shape), consts)
    elif opset < 14:
        reference = model([nodes[0], bn_node(14, "r")], dyn(*shape), inits, opset=14)
    m, _ = verify(Case(proto, away_from(batch(rng, *shape)), reference,
                       ort_runs_proto=opset >= 7))
    assert op_list(m) == ["Relu", "BatchNormalization"]


# -- gates ---------------------------------------------------------------------------------
def gate_case(rng: np.random.Generator, gate: list, inits: dict, x: np.ndarray,
              opset: int = 13, reference: tuple[list, dict] | None = None) -> Case:
    """x -> gate (writing "g") -> Flatten -> MatMul, so every gate element feeds the
    explained output (MatMul, not Gemm: onnxruntime runs MatMul-1 in opset-6 models).
    ``reference``: an equivalent opset-13 gate and its initializers, for onnxruntime."""
    shape = dyn(*x.shape[1:])
    head_inits = {"wh": f32(rng, int(np.prod(x.shape[1:])), 3)}
    head = [node("Flatten", ["g"], "f"), node("MatMul", ["f", "wh"])]
    proto = legacy([*gate, *head], shape, {**inits, **head_inits}, opset)
    if reference is None:
        return Case(proto, x)
    gate, inits = reference
    return Case(proto, x, model([*gate, *head], shape, {**inits, **head_inits}),
                ort_runs_proto=False)


GATE_SHAPE = (3, 4, 5)


@pytest.mark.parametrize("cfg", [
    param(dict(op="Relu"), "Relu"),
    param(dict(op="Relu", opset=6), "Relu-opset6"),
    param(dict(op="LeakyRelu"), "LeakyRelu-default-alpha"),
    param(dict(op="LeakyRelu", alpha=0.2), "LeakyRelu-alpha0.2"),
    param(dict(op="LeakyRelu", alpha=-1.5), "LeakyRelu-alpha-negative"),
    param(dict(op="PRelu", slope=(3, 1, 1)), "PRelu-per-channel"),
    param(dict(op="PRelu", slope=(3, 1, 1), opset=7), "PRelu-per-channel-opset7"),
    param(dict(op="PRelu", slope=(1,)), "PRelu-scalar[1]"),
    param(dict(op="PRelu", slope=()), "PRelu-scalar"),
    param(dict(op="PRelu", slope=(4, 5)), "PRelu-spatial"),
    param(dict(op="PRelu", slope=(3,), opset=6), "PRelu-opset6-per-channel"),
])
def test_activation(rng, cfg):
    op, opset = cfg["op"], cfg.get("opset", 13)
    inits, inputs, reference = {}, ["x"], None
    attrs = {"alpha": cfg["alpha"]} if "alpha" in cfg else {}
    if op == "PRelu":
        inits["slope"] = f32(rng, *cfg["slope"])
        inputs.append("slope")
        if opset < 7:  # onnxruntime has no PRelu-6: compare with a [C, 1, 1] slope
            reference = ([node("PRelu", inputs, "g")], {"slope": inits["slope"].reshape(3, 1, 1)})
    x = away_from(batch(rng, *GATE_SHAPE, scale=2.0))
    m, _ = verify(gate_case(rng, [node(op, inputs, "g", **attrs)], inits, x, opset, reference))
    assert op_list(m) == [op, "Flatten", "MatMul"] and m.nodes[1].kind == "gate"


CLIP_CASES = [
    param(dict(opset=6, low=-1.0, high=1.5), "opset6-both"),
    param(dict(opset=6, low=-1.0), "opset6-min"),
    param(dict(opset=6, high=1.5), "opset6-max"),
    param(dict(opset=11, low=-1.0, high=1.5), "opset11-both"),
    param(dict(opset=11, low=-1.0), "opset11-min"),
    param(dict(opset=11, high=1.5), "opset11-max"),
    param(dict(opset=13, low=0.0, high=6.0, scale=4.0), "opset13-relu6"),
    param(dict(opset=13, low=-0.5, high=0.5), "opset13-both"),
    param(dict(opset=12, high=-0.25), "opset12-max-negative"),
]


@pytest.mark.parametrize("cfg", CLIP_CASES)
def test_clip(rng, cfg):
    opset, low, high = cfg["opset"], cfg.get("low"), cfg.get("high")
    inits = {}
    if opset < 11:
        attrs = {k: v for k, v in (("min", low), ("max", high)) if v is not None}
        gate = [node("Clip", ["x"], "g", **attrs)]
    else:
        names = []
        for name, value in (("lo", low), ("hi", high)):
            if value is not None:
                inits[name] = np.array(value, dtype=np.float32)
            names.append(name if value is not None else "")
        gate = [node("Clip", ["x", *names], "g")]
    bounds = tuple(v for v in (low, high) if v is not None)
    x = away_from(batch(rng, *GATE_SHAPE, scale=cfg.get("scale", 2.0)), bounds)
    if low is not None:  # every example saturates on each bounded side
        assert (x < low).any(axis=(1, 2, 3)).all()
    if high is not None:
        assert (x > high).any(axis=(1, 2, 3)).all()
    m, explanations = verify(gate_case(rng, gate, inits, x, opset))
    assert op_list(m) == ["Clip", "Flatten", "MatMul"]
    clip = m.nodes[1].name
    for e in explanations:
        assert (e.layer_bias[clip] != 0).all()  # saturated elements carry the bound as bias


def test_clip_without_bounds_is_identity(rng):
    proto = model([node("Clip", ["x"])], dyn(3, 4), {}, opset=13)
    m, _ = verify(Case(proto, batch(rng, 3, 4)))
    assert op_list(m) == []


# -- MaxPool -------------------------------------------------------------------------------
POOL_CASES = [
    param(dict(spatial=(10,), kernel=[3]), "1d"),
    param(dict(spatial=(10,), kernel=[3], strides=[2], pads=[1, 1]), "1d-stride-pads"),
    param(dict(spatial=(10,), kernel=[3], strides=[2], pads=[1, 0], ceil_mode=1), "1d-ceil"),
    param(dict(spatial=(10,), kernel=[2], dilations=[3], strides=[2]), "1d-dilation"),
    param(dict(spatial=(10,), kernel=[2], strides=[2], pads=[0, 1], ceil_mode=1),
          "1d-ceil-last-window-in-pad"),
    param(dict(spatial=(7, 6), kernel=[2, 2], strides=[2, 2]), "2d"),
    param(dict(spatial=(7, 6), kernel=[2, 2], strides=[2, 2], ceil_mode=1), "2d-ceil"),
    param(dict(spatial=(7, 6), kernel=[3, 2], strides=[2, 1], pads=[1, 0, 1, 1]),
          "2d-asym-pads"),
    param(dict(spatial=(7, 6), kernel=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1),
          "2d-pads-ceil"),
    param(dict(spatial=(7, 6), kernel=[2, 3], strides=[3, 2], pads=[0, 1, 1, 0], ceil_mode=1),
          "2d-asym-pads-ceil"),
    param(dict(spatial=(7, 6), kernel=[2, 2], dilations=[2, 2], pads=[1, 1, 0, 0]),
          "2d-dilation"),
    param(dict(spatial=(7, 6), kernel=[2, 3], auto_pad="SAME_UPPER", strides=[2, 2]),
          "2d-same-upper"),
    param(dict(spatial=(7, 6), kernel=[2, 3], auto_pad="SAME_LOWER", strides=[2, 2]),
          "2d-same-lower"),
    param(dict(spatial=(7, 6), kernel=[3, 3], auto_pad="VALID", strides=[2, 2], ceil_mode=1),
          "2d-valid-ceil"),
    param(dict(spatial=(5, 4, 5), kernel=[2, 2, 3], strides=[2, 1, 2]), "3d"),
    param(dict(spatial=(5, 4, 5), kernel=[2, 2, 2], strides=[2, 2, 2], pads=[1, 0, 0, 0, 1, 1],
               ceil_mode=1), "3d-pads-ceil"),
    param(dict(spatial=(5, 4, 5), kernel=[2, 2, 2], dilations=[2, 1, 2], pads=[0, 1, 1, 1, 0, 0]),
          "3d-dilation"),
]


def pool_node(op: str, cfg: dict, **extra: object) -> onnx.NodeProto:
    keys = ("kernel", "strides", "pads", "dilations", "ceil_mode", "auto_pad",
            "count_include_pad")
    attrs = {("kernel_shape" if k == "kernel" else k): cfg[k] for k in keys if k in cfg}
    return node(op, ["x"], **attrs, **extra)


def pool_opset(cfg: dict) -> int:
    return 19 if "dilations" in cfg else 12 if cfg.get("ceil_mode") else 11


def explicit_pads(cfg: dict) -> dict:
    """``cfg`` with auto_pad replaced by the pads it stands for (ONNX: SAME_* gives an
    output of ceil(n / s), the odd padding at the end for UPPER, the start for LOWER;
    VALID has no padding and only windows inside the input, whatever ceil_mode says)."""
    if cfg.get("auto_pad") == "VALID":
        return {k: v for k, v in cfg.items() if k not in ("auto_pad", "ceil_mode")}
    if not cfg.get("auto_pad", "NOTSET").startswith("SAME"):
        return cfg
    dims = len(cfg["spatial"])
    strides = cfg.get("strides", [1] * dims)
    dilations = cfg.get("dilations", [1] * dims)
    begin, end = [], []
    for n, k, s, d in zip(cfg["spatial"], cfg["kernel"], strides, dilations):
        total = max(0, (-(-n // s) - 1) * s + d * (k - 1) + 1 - n)
        small, large = total // 2, total - total // 2
        begin.append(small if cfg["auto_pad"] == "SAME_UPPER" else large)
        end.append(large if cfg["auto_pad"] == "SAME_UPPER" else small)
    explicit = {k: v for k, v in cfg.items() if k != "auto_pad"}
    explicit["pads"] = begin + end
    return explicit


def pool_case(op: str, cfg: dict, x: np.ndarray, fd: bool = True) -> Case:
    """A pooling model; with auto_pad also an equivalent model with explicit pads
    (onnx.reference gets SAME_LOWER's MaxPool output shape wrong). With VALID and
    ceil_mode, onnxruntime adds a window that reaches past the input, against the ONNX
    spec; bbp_ref follows the spec, so onnxruntime only runs the explicit model."""
    shape = dyn(*x.shape[1:])
    proto = model([pool_node(op, cfg)], shape, {}, opset=pool_opset(cfg))
    reference = None
    if "auto_pad" in cfg:
        reference = model([pool_node(op, explicit_pads(cfg))], shape, {}, opset=pool_opset(cfg))
    ort_runs_proto = not (cfg.get("auto_pad") == "VALID" and cfg.get("ceil_mode"))
    return Case(proto, x, reference, ort_runs_proto, fd=fd)


def expected_argmax(x: np.ndarray, cfg: dict, out_spatial: tuple[int, ...]) -> np.ndarray:
    """The flat spatial index of each window's maximum, ties to the lowest index (brute
    force over the windows): shape [N, C, *out]."""
    spatial = x.shape[2:]
    dims = len(spatial)
    strides = cfg.get("strides", [1] * dims)
    dilations = cfg.get("dilations", [1] * dims)
    begin = explicit_pads(cfg).get("pads", [0] * (2 * dims))[:dims]
    flat = x.reshape(*x.shape[:2], -1)
    result = np.zeros(x.shape[:2] + tuple(out_spatial), dtype=np.int64)
    for position in itertools.product(*(range(o) for o in out_spatial)):
        coordinates = [
            [p * s - b + k * d for k in range(size)
             if 0 <= p * s - b + k * d < n]
            for p, s, b, d, size, n in zip(position, strides, begin, dilations, cfg["kernel"],
                                           spatial)]
        indices = sorted(np.ravel_multi_index(c, spatial)
                         for c in itertools.product(*coordinates))
        values = flat[:, :, indices]
        result[(slice(None), slice(None), *position)] = np.asarray(indices)[values.argmax(-1)]
    return result


def check_argmax_gradient(m: bbp_ref.Model, x: np.ndarray, cfg: dict) -> None:
    """Each output's Jacobian row is one-hot at the expected arg-max of its window."""
    jacobian = m.jacobian(x)
    n, c = x.shape[:2]
    out_spatial = jacobian.shape[2:x.ndim]
    out_size = int(np.prod(out_spatial))
    source = expected_argmax(x, cfg, out_spatial).reshape(n, c, out_size)
    expected = np.zeros((n, c, out_size, c, int(np.prod(x.shape[2:]))))
    nn, cc, oo = np.meshgrid(range(n), range(c), range(out_size), indexing="ij")
    expected[nn, cc, oo, cc, source] = 1.0
    np.testing.assert_array_equal(jacobian.reshape(expected.shape), expected)


@pytest.mark.parametrize("ties", [False, True], ids=["random", "ties"])
@pytest.mark.parametrize("cfg", POOL_CASES)
def test_maxpool(rng, cfg, ties):
    shape = (3 if len(cfg["spatial"]) < 3 else 2, *cfg["spatial"])
    x = (rng.integers(-2, 2, (3, *shape)).astype(np.float32) if ties
         else batch(rng, *shape))
    m, _ = verify(pool_case("MaxPool", cfg, x, fd=not ties))
    assert op_list(m) == ["MaxPool"]
    check_argmax_gradient(m, x, cfg)


@pytest.mark.parametrize("ties", [False, True], ids=["random", "ties"])
@pytest.mark.parametrize("spatial", [(7,), (4, 5), (3, 2, 4)], ids=["1d", "2d", "3d"])
def test_global_maxpool(rng, spatial, ties):
    proto = model([node("GlobalMaxPool", ["x"])], dyn(3, *spatial), {})
    # onnx.reference's GlobalMaxPool reduces the wrong axes unless there are 2 spatial axes
    axes = list(range(2, 2 + len(spatial)))
    reference = model([node("ReduceMax", ["x"], axes=axes, keepdims=1)], dyn(3, *spatial), {})
    x = (rng.integers(-1, 2, (3, 3, *spatial)).astype(np.float32) if ties
         else batch(rng, 3, *spatial))
    m, _ = verify(Case(proto, x, reference, fd=not ties))
    check_argmax_gradient(m, x, dict(kernel=list(spatial)))


def test_maxpool_after_conv(rng):
    inits = {"w": f32(rng, 4, 2, 3, 3), "b": f32(rng, 4)}
    proto = model([node("Conv", ["x", "w", "b"], "h", pads=[1, 1, 1, 1]),
                   node("MaxPool", ["h"], "p", kernel_shape=[2, 2], strides=[2, 2]),
                   node("Relu", ["p"])], dyn(2, 6, 6), inits)
    verify(Case(proto, batch(rng, 2, 6, 6)))


# -- AveragePool, reductions ---------------------------------------------------------------
AVERAGE_CASES = [
    param(dict(spatial=(10,), kernel=[3], strides=[2], pads=[1, 1]), "1d-pads"),
    param(dict(spatial=(10,), kernel=[3], strides=[2], pads=[1, 1], count_include_pad=1),
          "1d-pads-count-pad"),
    param(dict(spatial=(10,), kernel=[3], strides=[2], pads=[1, 0], ceil_mode=1), "1d-ceil"),
    param(dict(spatial=(10,), kernel=[2], strides=[2], pads=[0, 1], ceil_mode=1,
               count_include_pad=1), "1d-ceil-last-window-in-pad-count-pad"),
    param(dict(spatial=(10,), kernel=[3], strides=[2], pads=[2, 1], dilations=[2],
               count_include_pad=1), "1d-dilation-count-pad"),
    param(dict(spatial=(7, 6), kernel=[2, 2], strides=[2, 2]), "2d"),
    param(dict(spatial=(7, 6), kernel=[3, 3], pads=[1, 1, 1, 1]), "2d-pads"),
    param(dict(spatial=(7, 6), kernel=[2, 2], pads=[1, 0, 0, 1], dilations=[2, 2],
               ceil_mode=1, strides=[2, 2]), "2d-dilation-ceil"),
    param(dict(spatial=(7, 6), kernel=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1),
          "2d-pads-count-pad"),
    param(dict(spatial=(7, 6), kernel=[3, 2], strides=[2, 1], pads=[1, 0, 2, 1]),
          "2d-asym-pads"),
    param(dict(spatial=(7, 6), kernel=[3, 2], strides=[2, 1], pads=[1, 0, 2, 1],
               count_include_pad=1), "2d-asym-pads-count-pad"),
    param(dict(spatial=(7, 6), kernel=[2, 2], strides=[2, 2], ceil_mode=1), "2d-ceil"),
    param(dict(spatial=(7, 6), kernel=[2, 2], strides=[2, 2], ceil_mode=1, count_include_pad=1),
          "2d-ceil-count-pad"),
    param(dict(spatial=(7, 6), kernel=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1),
          "2d-pads-ceil"),
    param(dict(spatial=(7, 6), kernel=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1,
               count_include_pad=1), "2d-pads-ceil-count-pad"),
    param(dict(spatial=(7, 6), kernel=[2, 3], auto_pad="SAME_UPPER", strides=[2, 2]),
          "2d-same-upper"),
    param(dict(spatial=(7, 6), kernel=[2, 3], auto_pad="SAME_LOWER", strides=[2, 2],
               count_include_pad=1), "2d-same-lower-count-pad"),
    param(dict(spatial=(7, 6), kernel=[2, 3], auto_pad="SAME_LOWER", strides=[2, 2]),
          "2d-same-lower"),
    param(dict(spatial=(7, 6), kernel=[3, 3], auto_pad="VALID", strides=[2, 2], ceil_mode=1),
          "2d-valid-ceil"),
    param(dict(spatial=(5, 4, 5), kernel=[2, 2, 3], strides=[2, 1, 2], pads=[1, 0, 1, 0, 1, 1]),
          "3d-pads"),
    param(dict(spatial=(5, 4, 5), kernel=[2, 2, 3], strides=[2, 1, 2], pads=[1, 0, 1, 0, 1, 1],
               count_include_pad=1, ceil_mode=1), "3d-pads-ceil-count-pad"),
]


@pytest.mark.parametrize("cfg", AVERAGE_CASES)
def test_average_pool(rng, cfg):
    x = batch(rng, 3 if len(cfg["spatial"]) < 3 else 2, *cfg["spatial"])
    m, _ = verify(pool_case("AveragePool", cfg, x))
    assert op_list(m) == ["AveragePool"]


def test_average_pool_after_relu_with_bias(rng):
    inits = {"c": f32(rng, 3, 1, 1)}
    proto = model([node("Add", ["x", "c"], "a"), node("Relu", ["a"], "r"),
                   node("AveragePool", ["r"], "p", kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                        strides=[2, 2]),
                   node("Flatten", ["p"])], dyn(3, 5, 5), inits)
    x = batch(rng, 3, 5, 5)
    x = away_from(x + inits["c"], (0.0,)) - inits["c"]
    verify(Case(proto, x.astype(np.float32)))


@pytest.mark.parametrize("spatial", [(7,), (4, 5), (3, 2, 4)], ids=["1d", "2d", "3d"])
def test_global_average_pool(rng, spatial):
    proto = model([node("GlobalAveragePool", ["x"])], dyn(3, *spatial), {})
    verify(Case(proto, batch(rng, 3, *spatial)))


@pytest.mark.parametrize("cfg", [
    param(dict(op="ReduceMean", opset=13, axes=[2, 3], keepdims=1), "mean-attr-keepdims"),
    param(dict(op="ReduceMean", opset=13, axes=[2, 3], keepdims=0), "mean-attr-no-keepdims"),
    param(dict(op="ReduceMean", opset=11, axes=[-1], keepdims=0), "mean-attr-negative-axis"),
    param(dict(op="ReduceMean", opset=13, axes=[1]), "mean-attr-default-keepdims"),
    param(dict(op="ReduceMean", opset=18, axes=[2, 3], keepdims=1, as_input=True),
          "mean-input-keepdims"),
    param(dict(op="ReduceMean", opset=18, axes=[1, -1], keepdims=0, as_input=True),
          "mean-input-no-keepdims"),
    param(dict(op="ReduceMean", opset=18, keepdims=0, noop=1), "mean-input-noop"),
    param(dict(op="ReduceSum", opset=11, axes=[2, 3], keepdims=1), "sum-attr-keepdims"),
    param(dict(op="ReduceSum", opset=11, axes=[1], keepdims=0), "sum-attr-no-keepdims"),
    param(dict(op="ReduceSum", opset=13, axes=[-2], keepdims=1, as_input=True),
          "sum-input-keepdims"),
    param(dict(op="ReduceSum", opset=13, axes=[1, 3], keepdims=0, as_input=True),
          "sum-input-no-keepdims"),
])
def test_reduce(rng, cfg):
    inits, inputs, attrs = {}, ["x"], {}
    if "keepdims" in cfg:
        attrs["keepdims"] = cfg["keepdims"]
    if cfg.get("as_input"):
        inits["axes"] = np.array(cfg["axes"], dtype=np.int64)
        inputs.append("axes")
    elif "axes" in cfg:
        attrs["axes"] = cfg["axes"]
    if "noop" in cfg:
        attrs["noop_with_empty_axes"] = cfg["noop"]
    proto = model([node(cfg["op"], inputs, **attrs)], dyn(3, 4, 5), inits, opset=cfg["opset"])
    m, _ = verify(Case(proto, batch(rng, 3, 4, 5)))
    assert op_list(m) == ([] if cfg.get("noop") else [cfg["op"]])


# -- element-wise affine ops ---------------------------------------------------------------
ELEMENTWISE_SHAPE = (3, 4, 5)


@pytest.mark.parametrize("cfg", [
    param(dict(op="Add", const=()), "Add-scalar"),
    param(dict(op="Add", const=(3, 1, 1)), "Add-per-channel"),
    param(dict(op="Add", const=(3, 4, 5)), "Add-full"),
    param(dict(op="Add", const=(5,)), "Add-last-axis"),
    param(dict(op="Add", const=(3, 1, 1), const_first=True), "Add-const-first"),
    param(dict(op="Sub", const=()), "Sub-scalar"),
    param(dict(op="Sub", const=(3, 1, 1)), "Sub-per-channel"),
    param(dict(op="Sub", const=(3, 1, 1), const_first=True), "Sub-const-first"),
    param(dict(op="Mul", const=()), "Mul-scalar"),
    param(dict(op="Mul", const=(3, 1, 1)), "Mul-per-channel"),
    param(dict(op="Mul", const=(1, 4, 5), const_first=True), "Mul-const-first"),
    param(dict(op="Div", const=()), "Div-scalar"),
    param(dict(op="Div", const=(3, 1, 1)), "Div-per-channel"),
    param(dict(op="Div", const=(1, 3, 1, 1)), "Div-rank4-const"),
])
def test_constant_operand(rng, cfg):
    value = f32(rng, *cfg["const"])
    if cfg["op"] == "Div":
        value = (np.sign(value) * (np.abs(value) + 0.5)).astype(np.float32)
    inputs = ["c", "x"] if cfg.get("const_first") else ["x", "c"]
    proto = model([node(cfg["op"], inputs)], dyn(*ELEMENTWISE_SHAPE), {"c": value})
    m, explanations = verify(Case(proto, batch(rng, *ELEMENTWISE_SHAPE)))
    assert op_list(m) == [cfg["op"]]
    if cfg["op"] in ("Mul", "Div"):
        assert all((e.bias == 0).all() for e in explanations)


def test_neg(rng):
    proto = model([node("Neg", ["x"])], dyn(*ELEMENTWISE_SHAPE), {})
    verify(Case(proto, batch(rng, *ELEMENTWISE_SHAPE)))


@pytest.mark.parametrize("op", ["Add", "Mul", "Sub", "Div"])
def test_legacy_broadcast_axis(rng, op):
    """Opset 6 ``broadcast=1, axis=1``: B of shape [C] aligns with the channel axis."""
    value = (rng.uniform(0.5, 2.0, 3) * rng.choice([-1, 1], 3)).astype(np.float32)
    proto = legacy([node(op, ["x", "c"], broadcast=1, axis=1)], dyn(*ELEMENTWISE_SHAPE),
                   {"c": value}, opset=6)
    reference = model([node(op, ["x", "c"])], dyn(*ELEMENTWISE_SHAPE),
                      {"c": value.reshape(3, 1, 1)}, opset=7)
    verify(Case(proto, batch(rng, *ELEMENTWISE_SHAPE), reference, ort_runs_proto=False))


def test_legacy_broadcast_trailing(rng):
    """Opset 6 ``broadcast=1`` without axis: B aligns with the trailing axes."""
    value = f32(rng, 4, 5)
    proto = legacy([node("Add", ["x", "c"], broadcast=1)], dyn(*ELEMENTWISE_SHAPE),
                   {"c": value}, opset=6)
    reference = model([node("Add", ["x", "c"])], dyn(*ELEMENTWISE_SHAPE), {"c": value}, opset=7)
    verify(Case(proto, batch(rng, *ELEMENTWISE_SHAPE), reference, ort_runs_proto=False))


def branches(rng: np.random.Generator) -> tuple[list, dict]:
    """Three data tensors of shape [N, 3, 4, 5] from x: a = x + c, r = Relu(x),
    h = Conv(x) (same padding)."""
    inits = {"c": f32(rng, 3, 1, 1), "w": f32(rng, 3, 3, 3, 3), "b": f32(rng, 3)}
    nodes = [node("Add", ["x", "c"], "a"), node("Relu", ["x"], "r"),
             node("Conv", ["x", "w", "b"], "h", pads=[1, 1, 1, 1])]
    return nodes, inits


@pytest.mark.parametrize("cfg", [
    param(dict(op="Add", inputs=["h", "x"]), "Add-residual"),
    param(dict(op="Add", inputs=["x", "x"]), "Add-same-tensor"),
    param(dict(op="Sub", inputs=["r", "h"]), "Sub"),
    param(dict(op="Sum", inputs=["a", "r", "h"]), "Sum-3"),
    param(dict(op="Sum", inputs=["h", "k", "r"]), "Sum-with-constant"),
    param(dict(op="Sum", inputs=["x"], opset=8), "Sum-1-opset8"),
    param(dict(op="Add", inputs=["h", "gap"]), "Add-broadcast-data"),
    param(dict(op="Sub", inputs=["gap", "a"]), "Sub-broadcast-data-first"),
    param(dict(op="Add", inputs=["h", "row"]), "Add-broadcast-last-axes"),
    param(dict(op="Add", inputs=["gap", "k"]), "Add-constant-broadcasts-data-up"),
    param(dict(op="Mul", inputs=["k", "row"]), "Mul-constant-broadcasts-data-up"),
    param(dict(op="Sum", inputs=["gap", "k", "gap"]), "Sum-constant-broadcasts-data-up"),
    param(dict(op="Sub", inputs=["k", "row"]), "Sub-constant-broadcasts-data-up"),
])
def test_data_operands(rng, cfg):
    nodes, inits = branches(rng)
    inits["k"] = f32(rng, 3, 4, 5)
    nodes += [node("GlobalAveragePool", ["r"], "gap"),
              node("ReduceMean", ["a"], "row", axes=[1, 2], keepdims=1)]
    proto = model([*nodes, node(cfg["op"], cfg["inputs"])], dyn(3, 4, 5), inits,
                  opset=cfg.get("opset", 13))
    verify(Case(proto, away_from(batch(rng, 3, 4, 5))))


# -- routes --------------------------------------------------------------------------------
def route_case(rng: np.random.Generator, nodes: list, shape: tuple[int, ...], inits=None,
               opset: int = 13) -> Case:
    """x -> Add(x, c) (a bias to route) -> the nodes (reading "a", writing "y")."""
    bias = {"c": f32(rng, *shape[:1], *([1] * (len(shape) - 1)))}
    proto = model([node("Add", ["x", "c"], "a"), *nodes], dyn(*shape),
                  {**bias, **(inits or {})}, opset=opset)
    return Case(proto, batch(rng, *shape))


@pytest.mark.parametrize("cfg", [
    param(dict(axis=1, inputs=["a", "r", "h"]), "channels-3"),
    param(dict(axis=-1, inputs=["h", "a"]), "last-axis"),
    param(dict(axis=2, inputs=["a", "a"]), "same-tensor-twice"),
    param(dict(axis=1, inputs=["first", "h", "r"]), "uneven-sizes"),
])
def test_concat(rng, cfg):
    nodes, inits = branches(rng)
    inits.update(s0=np.array([0], dtype=np.int64), s1=np.array([1], dtype=np.int64))
    nodes.append(node("Slice", ["a", "s0", "s1", "s1"], "first"))
    proto = model([*nodes, node("Concat", cfg["inputs"], axis=cfg["axis"])], dyn(3, 4, 5),
                  inits)
    m, _ = verify(Case(proto, away_from(batch(rng, 3, 4, 5))))
    assert op_list(m)[-1] == "Concat"


@pytest.mark.parametrize("cfg", [
    param(dict(shape=(3, 4, 5), axis=1), "axis1"),
    param(dict(shape=(3, 4, 5), axis=None), "default-axis"),
    param(dict(shape=(1, 4, 5), axis=2), "axis2-leading-1"),
    param(dict(shape=(1, 1, 5), axis=3), "axis3-leading-1"),
    param(dict(shape=(1, 1, 5), axis=-1), "axis-negative"),
    param(dict(shape=(1, 4, 5), axis=2, opset=9), "axis2-opset9"),
])
def test_flatten(rng, cfg):
    attrs = {} if cfg["axis"] is None else {"axis": cfg["axis"]}
    case = route_case(rng, [node("Flatten", ["a"], **attrs)], cfg["shape"],
                      opset=cfg.get("opset", 13))
    m, _ = verify(case)
    assert op_list(m) == ["Add", "Flatten"]


@pytest.mark.parametrize("target", [[0, -1], [0, 3, -1], [-1, 60], [0, 4, 15], [0, 0, 20],
                                    [0, 3, 2, 2, 5]])
def test_reshape_constant(rng, target):
    inits = {"shape": np.array(target, dtype=np.int64)}
    case = route_case(rng, [node("Reshape", ["a", "shape"])], (3, 4, 5), inits)
    verify(case)


@pytest.mark.parametrize("opset", [9, 11, 13])
def test_reshape_shape_subgraph(rng, opset):
    """The target computed from the input's shape, as old PyTorch exports do:
    Shape -> Gather(0) -> Unsqueeze -> Concat with [-1]."""
    inits = {"zero": np.array(0, dtype=np.int64), "rest": np.array([-1], dtype=np.int64)}
    if opset >= 13:
        inits["ax"] = np.array([0], dtype=np.int64)
        unsqueeze = node("Unsqueeze", ["n", "ax"], "n1")
    else:
        unsqueeze = node("Unsqueeze", ["n"], "n1", axes=[0])
    nodes = [node("Shape", ["a"], "s"), node("Gather", ["s", "zero"], "n", axis=0), unsqueeze,
             node("Concat", ["n1", "rest"], "target", axis=0),
             node("Reshape", ["a", "target"])]
    m, _ = verify(route_case(rng, nodes, (3, 4, 5), inits, opset=opset))
    assert op_list(m) == ["Add", "Reshape"]


@pytest.mark.parametrize("perm", [[0, 2, 3, 1], [0, 3, 1, 2], [0, 1, 3, 2], [0, 1, 2, 3]])
def test_transpose(rng, perm):
    verify(route_case(rng, [node("Transpose", ["a"], perm=perm)], (3, 4, 5)))


@pytest.mark.parametrize("cfg", [
    param(dict(op="Squeeze", opset=11, axes=[2]), "Squeeze-attr"),
    param(dict(op="Squeeze", opset=11, axes=[-1, 2]), "Squeeze-attr-2-axes"),
    param(dict(op="Squeeze", opset=13, axes=[2], as_input=True), "Squeeze-input"),
    param(dict(op="Squeeze", opset=13), "Squeeze-all"),
    param(dict(op="Unsqueeze", opset=11, axes=[1, 4]), "Unsqueeze-attr"),
    param(dict(op="Unsqueeze", opset=13, axes=[-1], as_input=True), "Unsqueeze-input"),
    param(dict(op="Unsqueeze", opset=13, axes=[2, 1], as_input=True), "Unsqueeze-input-2-axes"),
])
def test_squeeze_unsqueeze(rng, cfg):
    inits, inputs, attrs = {}, ["a"], {}
    if "axes" in cfg and cfg.get("as_input"):
        inits["axes"] = np.array(cfg["axes"], dtype=np.int64)
        inputs.append("axes")
    elif "axes" in cfg:
        attrs["axes"] = cfg["axes"]
    shape = (3, 1, 5, 1) if cfg["op"] == "Squeeze" else (3, 5)
    if cfg.get("axes") == [2]:
        shape = (3, 1, 5)
    verify(route_case(rng, [node(cfg["op"], inputs, **attrs)], shape, inits, opset=cfg["opset"]))


@pytest.mark.parametrize("cfg", [
    param(dict(op="Identity"), "Identity"),
    param(dict(op="Dropout", opset=7, attrs=dict(ratio=0.3)), "Dropout-opset7"),
    param(dict(op="Dropout", opset=10, attrs=dict(ratio=0.3), mask=True), "Dropout-opset10"),
    param(dict(op="Dropout", opset=12, ratio=True, training=True), "Dropout-opset12-inputs"),
    param(dict(op="Dropout", opset=13), "Dropout-opset13"),
    param(dict(op="Cast", attrs=dict(to=TensorProto.FLOAT)), "Cast-float"),
    param(dict(op="Cast", opset=9, attrs=dict(to=TensorProto.FLOAT)), "Cast-float-opset9"),
    param(dict(op="CastLike", opset=15, like=True), "CastLike-float"),
    param(dict(op="Dropout", opset=6, attrs=dict(is_test=1, ratio=0.3)), "Dropout-opset6"),
])
def test_pass_through(rng, cfg):
    opset = cfg.get("opset", 13)
    inits, inputs = {}, ["a"]
    if cfg.get("ratio"):
        inits["ratio"] = np.array(0.3, dtype=np.float32)
        inputs.append("ratio")
    if cfg.get("like"):
        inits["like"] = np.zeros(1, dtype=np.float32)
        inputs.append("like")
    if cfg.get("training"):
        inits["training"] = np.array(False)
        inputs.append("training")
    outputs = ["y", "mask"] if cfg.get("mask") else "y"
    nodes = [node("Add", ["x", "c"], "a"), node(cfg["op"], inputs, outputs, **cfg.get("attrs", {}))]
    bias = {"c": f32(rng, 3, 1)}
    proto = legacy(nodes, dyn(3, 4), {**bias, **inits}, opset)
    reference = None
    if opset < 7:  # onnxruntime runs neither Add-6 nor Dropout-6
        reference = model([nodes[0], node("Identity", ["a"])], dyn(3, 4), bias, opset=7)
    m, _ = verify(Case(proto, batch(rng, 3, 4), reference, ort_runs_proto=opset >= 7))
    assert op_list(m) == ["Add"]


SLICE_CASES = [
    param(dict(opset=9, starts=[1], ends=[3], axes=[1]), "opset9-axes"),
    param(dict(opset=9, starts=[0, 1, 1], ends=[2**62, 100, -1]), "opset9-no-axes"),
    param(dict(opset=9, starts=[-3], ends=[-1], axes=[-1]), "opset9-negative"),
    param(dict(opset=10, starts=[0], ends=[5], axes=[3], steps=[2]), "opset10-steps"),
    param(dict(opset=10, starts=[-1], ends=[-100], axes=[3], steps=[-1]), "opset10-reverse"),
    param(dict(opset=11, starts=[3, 2], ends=[0, 0], axes=[-1, 2], steps=[-2, -1]),
          "opset11-negative-steps"),
    param(dict(opset=13, starts=[0, 1], ends=[2**62, 3]), "opset13-no-axes"),
    param(dict(opset=13, starts=[0, 1], ends=[2**62, 2**62], axes=[0, 1], steps=[1, 1]),
          "opset13-whole-batch"),
    param(dict(opset=13, starts=[2**62], ends=[-2**62], axes=[2], steps=[-3]),
          "opset13-huge-bounds"),
]


@pytest.mark.parametrize("cfg", SLICE_CASES)
def test_slice(rng, cfg):
    inits, inputs, attrs = {}, ["a"], {}
    names = ("starts", "ends", "axes", "steps")
    if cfg["opset"] < 10:
        attrs = {k: cfg[k] for k in names if k in cfg}
    else:
        for k in names:
            if k in cfg:
                inits[k] = np.array(cfg[k], dtype=np.int64)
                inputs.append(k)
            elif k == "axes" and "steps" in cfg:
                inputs.append("")
    verify(route_case(rng, [node("Slice", inputs, **attrs)], (3, 4, 5), inits, opset=cfg["opset"]))


# -- output heads --------------------------------------------------------------------------
@pytest.mark.parametrize("cfg", [
    param(dict(op="Softmax", opset=13), "Softmax-13"),
    param(dict(op="Softmax", opset=11, axis=1), "Softmax-11"),
    param(dict(op="LogSoftmax", opset=13, axis=-1), "LogSoftmax-13"),
    param(dict(op="LogSoftmax", opset=9), "LogSoftmax-9"),
    param(dict(op="Softmax", opset=13, identity=True), "Softmax-then-Identity"),
])
def test_output_head(rng, cfg):
    inits = {"w": f32(rng, 6, 4), "b": f32(rng, 4)}
    attrs = {"axis": cfg["axis"]} if "axis" in cfg else {}
    nodes = [node("Gemm", ["x", "w", "b"], "logits"), node("Relu", ["logits"], "r"),
             node("Gemm", ["r", "w2", "b2"], "z")]
    inits.update({"w2": f32(rng, 4, 5), "b2": f32(rng, 5)})
    if cfg.get("identity"):
        nodes += [node(cfg["op"], ["z"], "p", **attrs), node("Identity", ["p"])]
    else:
        nodes.append(node(cfg["op"], ["z"], **attrs))
    proto = model(nodes, dyn(6), inits, opset=cfg["opset"])
    proto.graph.output.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 5]))
    x = batch(rng, 6)
    reference = ort_outputs(proto, x)
    m = bbp_ref.load(proto)
    assert m.stripped and cfg["op"] in m.stripped[0]
    assert_forward_close(m.forward(x), reference["z"])
    for e in check_decomposition(m, x, check=True):
        assert e.stripped == m.stripped
        assert_forward_close(e.logits, reference["z"])
    logits_model = model([*nodes[:3], node("Identity", ["z"])], dyn(6), inits,
                         opset=cfg["opset"])
    expected = finite_difference_jacobian(logits_model, x)
    np.testing.assert_allclose(m.jacobian(x), expected, rtol=0, atol=FD_TOL * 10)
