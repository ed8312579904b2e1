"""Cross-checks against onnxruntime: the explained output, and every intermediate
tensor (to find the first node where a new exporter's graph diverges)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from ..errors import BBpError
from ..model import Model, load

# float32 rounding: |engine - onnxruntime| <= RTOL * |onnxruntime| + ATOL * max|onnxruntime|
RTOL = 1e-4
ATOL = 1e-5


@dataclass(frozen=True)
class Comparison:
    """Largest absolute and relative difference between the engine's float64 tensor and
    onnxruntime's, and whether they agree to float32 rounding."""

    tensor: str
    max_abs_diff: float
    max_rel_diff: float
    ok: bool

    def __str__(self) -> str:
        verdict = "ok" if self.ok else "MISMATCH"
        return (f"{self.tensor}: max |diff| {self.max_abs_diff:.3g}, "
                f"max rel {self.max_rel_diff:.3g} ({verdict})")


def compare(tensor: str, engine: np.ndarray, reference: np.ndarray,
            rtol: float = RTOL, atol: float = ATOL) -> Comparison:
    reference = np.asarray(reference, dtype=np.float64).reshape(engine.shape)
    diff = np.abs(engine - reference)
    magnitude = np.abs(reference)
    scale = float(magnitude.max()) if magnitude.size else 0.0
    rel = diff / np.maximum(magnitude, max(scale, 1e-30) * 1e-3)
    ok = bool((diff <= rtol * magnitude + atol * max(scale, 1.0)).all())
    return Comparison(tensor, float(diff.max(initial=0.0)), float(rel.max(initial=0.0)), ok)


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
            raise BBpError(f"onnxruntime cannot run the model: {exc}") from exc
        for store, value in zip(results, values):
            store.append(np.asarray(value)[:count])
    return [np.concatenate(parts) for parts in results]


def _session(model: Model, tensors: Sequence[str]) -> Any:
    """An onnxruntime session of the model with ``tensors`` added as outputs."""
    import onnxruntime as ort

    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    outputs = {o.name for o in proto.graph.output}
    for name in tensors:
        if name not in outputs:
            proto.graph.output.append(onnx.ValueInfoProto(name=name))
            outputs.add(name)
    try:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        return ort.InferenceSession(proto.SerializeToString(), options,
                                    providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types
        raise BBpError(f"onnxruntime cannot load the model: {exc}") from exc


def check_output(model: Model, batch: np.ndarray, logits: np.ndarray) -> Comparison:
    """The engine's explained output against onnxruntime's on the same batch."""
    tensor = model.signature.explained
    (reference,) = run_onnxruntime(model, batch, [tensor])
    return compare(tensor, logits, reference)


def first_divergence(model: object, x: object, rtol: float = RTOL,
                     atol: float = ATOL) -> tuple[Comparison | None, list[Comparison]]:
    """Compare every canonical node's tensor with onnxruntime's value of the same ONNX
    tensor, in topological order; returns the first mismatch (None if all agree) and
    all comparisons. Meant for debugging the import of a new exporter's graph."""
    loaded = load(model, example=x)
    batch, _ = loaded.prepare(x)
    trace = loaded.trace(batch, linearize=False)
    nodes = [n for n in trace.graph if n.operator is not None]
    references = run_onnxruntime(loaded, batch, [n.tensor for n in nodes])
    comparisons = [compare(f"{n.name} ({n.op}) -> {n.tensor}", trace.values[n.name], ref,
                           rtol, atol)
                   for n, ref in zip(nodes, references)]
    first = next((c for c in comparisons if not c.ok), None)
    return first, comparisons
