"""Cross-checks against onnxruntime: the explained output, and every intermediate
tensor (to find the first node where a new exporter's graph diverges).

A model onnxruntime cannot load or run (an old opset it no longer implements) is not an
error of the explanation: `check_output` then returns `Unavailable` with onnxruntime's
reason in one line. onnxruntime's own logger is silenced (it would print multi-line
coloured logs on stderr); its messages reach the user through these reasons only."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto

from ..errors import BBpError
from ..model import Model, load

# float32 rounding: |engine - onnxruntime| <= RTOL * |onnxruntime| + ATOL * max|onnxruntime|
RTOL = 1e-4
ATOL = 1e-5
# A model computing in a shorter float type (its input, a weight, or a Cast) is rounded by
# onnxruntime to that type at every step, while the engine computes in float64 from the
# same weights: about 10 and 5 machine epsilons of the type (float16: eps = 9.8e-4,
# bfloat16: 7.8e-3). Measured on the test models converted to float16 (141 batches):
# the largest difference used 8 % of the float16 allowance.
SHORT_FLOAT_TOLERANCES = {TensorProto.FLOAT16: (1e-2, 5e-3),
                          TensorProto.BFLOAT16: (8e-2, 4e-2)}


class OnnxruntimeUnavailable(BBpError):
    """onnxruntime is not installed, or cannot load or run the model."""


class ShapeMismatch(BBpError):
    """onnxruntime's value of a tensor has another number of elements than the engine's
    (docs/math.md §5: dilated pools with ``auto_pad`` SAME_* are one such case)."""


@dataclass(frozen=True)
class Unavailable:
    """The onnxruntime check could not run; ``reason`` is onnxruntime's, in one line."""

    reason: str
    ok: bool = False

    def __str__(self) -> str:
        return f"unavailable: {self.reason}"


def tolerances(proto: onnx.ModelProto) -> tuple[float, float]:
    """``(rtol, atol)`` for comparing with onnxruntime: float32's, or wider for a model
    whose input, initializers or Casts use a shorter float type (the shortest decides)."""
    graph = proto.graph
    types = {v.type.tensor_type.elem_type for v in graph.input}
    types |= {t.data_type for t in graph.initializer}
    types |= {a.i for n in graph.node if n.op_type in ("Cast", "CastLike")
              for a in n.attribute if a.name == "to"}
    for short in (TensorProto.BFLOAT16, TensorProto.FLOAT16):
        if short in types:
            return SHORT_FLOAT_TOLERANCES[short]
    return RTOL, ATOL


@dataclass(frozen=True)
class Comparison:
    """Largest absolute and relative difference between the engine's float64 tensor and
    onnxruntime's, and whether they agree to float32 rounding."""

    tensor: str
    max_abs_diff: float
    max_rel_diff: float
    ok: bool
    detail: str = ""

    def __str__(self) -> str:
        verdict = "ok" if self.ok else "MISMATCH"
        detail = f": {self.detail}" if self.detail else ""
        return (f"{self.tensor}: max |diff| {self.max_abs_diff:.3g}, "
                f"max rel {self.max_rel_diff:.3g} ({verdict}){detail}")


def compare(tensor: str, engine: np.ndarray, reference: np.ndarray,
            rtol: float = RTOL, atol: float = ATOL) -> Comparison:
    """Element-wise ``|engine - reference| <= rtol |reference| + atol max(1, max
    |reference|)``. A NaN or infinite value on either side is a mismatch (and makes
    the differences infinite); the scale comes from the finite values only. Arrays of
    different sizes are a `ShapeMismatch` naming ``tensor`` and both shapes."""
    reference = np.asarray(reference, dtype=np.float64)
    if reference.size != np.size(engine):
        raise ShapeMismatch(f"onnxruntime's {tensor!r} has shape {list(reference.shape)}, "
                            f"the engine's {list(np.shape(engine))}")
    reference = reference.reshape(engine.shape)
    finite = np.isfinite(reference) & np.isfinite(engine)
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.where(finite, np.abs(engine - reference), np.inf)
    magnitude = np.where(finite, np.abs(reference), 0.0)
    scale = float(magnitude.max()) if magnitude.size else 0.0
    rel = diff / np.maximum(magnitude, max(scale, 1e-30) * 1e-3)
    ok = bool((diff <= rtol * magnitude + atol * max(scale, 1.0)).all())
    return Comparison(tensor, float(diff.max(initial=0.0)), float(rel.max(initial=0.0)), ok)


def compare_or_mismatch(tensor: str, engine: np.ndarray, reference: np.ndarray,
                        rtol: float = RTOL, atol: float = ATOL) -> Comparison:
    """`compare`, with a `ShapeMismatch` reported as a failed comparison (infinite
    differences, the two shapes in ``detail``): the engine and onnxruntime disagree."""
    try:
        return compare(tensor, engine, reference, rtol, atol)
    except ShapeMismatch as exc:
        return Comparison(tensor, float("inf"), float("inf"), False, detail=str(exc))


def run_onnxruntime(model: Model, batch: np.ndarray, tensors: Sequence[str]) -> list[np.ndarray]:
    """The values onnxruntime computes for ``tensors`` (any tensor names of the graph)
    on a float64 ``batch`` cast to the model's input type."""
    session = model.sessions.get(tuple(tensors))
    if session is None:
        session = model.sessions[tuple(tensors)] = _session(model, tensors)
    signature = model.signature
    x = batch.astype(signature.input_dtype)
    declared = signature.input_dims[0]
    chunk = declared if declared is not None else len(x)
    results: list[list[np.ndarray]] = [[] for _ in tensors]
    for start in range(0, len(x), chunk):
        part = x[start:start + chunk]
        count = len(part)
        if count < chunk:  # a model declared for a fixed batch size: pad the last chunk
            part = np.concatenate([part, np.repeat(part[-1:], chunk - count, axis=0)])
        try:
            values = session.run(list(tensors), {signature.input_name: part})
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types
            raise OnnxruntimeUnavailable(
                f"onnxruntime cannot run the model: {one_line(exc)}") from exc
        for store, value in zip(results, values):
            store.append(np.asarray(value)[:count])
    return [np.concatenate(parts) for parts in results]


def _session(model: Model, tensors: Sequence[str]) -> Any:
    """An onnxruntime session of the model with ``tensors`` added as outputs. The
    model is the loader's: every tensor inline, checked against the guards."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise OnnxruntimeUnavailable(f"onnxruntime is not installed: {one_line(exc)}") from exc
    ort.set_default_logger_severity(4)  # fatal only: failures come back as exceptions

    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    outputs = {o.name for o in proto.graph.output}
    for name in tensors:
        if name not in outputs:
            proto.graph.output.append(onnx.ValueInfoProto(name=name))
            outputs.add(name)
    try:
        options = ort.SessionOptions()
        options.log_severity_level = 4
        return ort.InferenceSession(proto.SerializeToString(), options,
                                    providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types
        raise OnnxruntimeUnavailable(
            f"onnxruntime cannot load the model: {one_line(exc)}") from exc


def check_output(model: Model, batch: np.ndarray,
                 logits: np.ndarray) -> Comparison | Unavailable:
    """The engine's explained output against onnxruntime's on the same batch, with the
    tolerances of the model's input float type; `Unavailable` if onnxruntime cannot
    load or run the model."""
    tensor = model.signature.explained
    try:
        (reference,) = run_onnxruntime(model, batch, [tensor])
    except OnnxruntimeUnavailable as exc:
        return Unavailable(str(exc))
    return compare_or_mismatch(tensor, logits, reference, *tolerances(model.proto))


def one_line(error: BaseException) -> str:
    """An exception's message on one line, without terminal control characters."""
    text = " ".join(str(error).split()) or type(error).__name__
    return "".join(c if c.isprintable() else "?" for c in text)


def first_divergence(model: object, x: object, rtol: float = RTOL,
                     atol: float = ATOL) -> tuple[Comparison | None, list[Comparison]]:
    """Compare every canonical node's tensor with onnxruntime's value of the same ONNX
    tensor, in topological order; returns the first mismatch (None if all agree) and
    all comparisons. Meant for debugging the import of a new exporter's graph."""
    loaded = load(model, example=x)
    batch, _ = loaded.prepare(x)
    trace = loaded.trace(batch, linearize=False)
    # intermediate nodes of an expanded composite op hold no ONNX tensor
    nodes = [n for n in trace.graph if n.operator is not None and n.tensor]
    references = run_onnxruntime(loaded, batch, [n.tensor for n in nodes])
    comparisons = [compare_or_mismatch(f"{n.name} ({n.op}) -> {n.tensor}", trace.values[n.name],
                                       ref, rtol, atol)
                   for n, ref in zip(nodes, references)]
    first = next((c for c in comparisons if not c.ok), None)
    return first, comparisons
