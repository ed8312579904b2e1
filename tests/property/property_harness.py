"""What every property needs besides the strategies: saving a failing model, running
onnxruntime and onnx.reference, and the error scales and kink distances the tolerances
and finite-difference steps are derived from (never guessed).

Rounding bounds. A float computation of a node with fan-in `n` errs by at most about
`(n + 2) u` times the sum of the magnitudes it adds; errors already in its operands are
carried on with at most the absolute values of its coefficients. So the error of any
output is bounded by `(K + 1) u m`, where `u` is the unit roundoff, `K` the sum over the
graph's affine nodes of (largest fan-in + 4), and `m` the output of the *magnitude pass*:
the forward pass with every coefficient, bias and input replaced by its absolute value
(gates pass magnitudes on scaled by their Lipschitz constant, max pools take the largest
magnitude of the window). The same holds backwards with the *absolute gradient* (the
reverse pass with `|W|`, `|slope|`). These scales are computed on the unfolded graph
(BatchNormalization and constant Add/Mul not folded into the layer before), which bounds
the folded one as well.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import numpy as np
import onnx
from hypothesis.control import current_build_context

import bbp_ref
from bbp_ref.engine.gates import ElementwiseLocal, MaxPool, MaxPoolLocal, PiecewiseLinear
from bbp_ref.engine.operator import AffineLocal
from bbp_ref.engine.trace import Trace, backward

FAILURES = Path(os.environ.get("BBP_PROPERTY_FAILURES", Path(__file__).parent / "failures"))
U64 = float(np.finfo(np.float64).eps)
U32 = float(np.finfo(np.float32).eps)


# -- saving failing models -----------------------------------------------------------------
def _final_run() -> bool:
    """True outside Hypothesis and in the final replay of the shrunk failing example
    (so shrinking does not write hundreds of files)."""
    try:
        return current_build_context().is_final
    except Exception:  # noqa: BLE001 - not inside a Hypothesis test
        return True


def save_failure(test: str, net: object, extra: dict[str, onnx.ModelProto]) -> list[Path]:
    """Write ``<test>-<hash>.onnx`` (the model under test), ``.npy`` (its input batch,
    float32), ``.txt`` (the description) and ``.<label>.onnx`` for each extra model."""
    proto = net.onnx()
    digest = hashlib.sha1(proto.SerializeToString() + net.x.tobytes()).hexdigest()[:10]
    stem = FAILURES / f"{test}-{digest}"
    FAILURES.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".onnx"), stem.with_suffix(".npy"), stem.with_suffix(".txt")]
    onnx.save(proto, paths[0])
    np.save(paths[1], net.x)
    paths[2].write_text(repr(net) + "\n")
    for label, other in extra.items():
        path = Path(f"{stem}.{label}.onnx")
        onnx.save(other, path)
        paths.append(path)
    return paths


@contextmanager
def failure_artifacts(test: str, net: object, **extra: onnx.ModelProto) -> Iterator[dict]:
    """Run a property's body; if it raises (in the final, shrunk example), save the
    model and its input under `FAILURES` and name the files in the error. The body may
    add more models to save to the yielded dict (e.g. a rewritten graph)."""
    models = dict(extra)
    try:
        yield models
    except Exception as exc:
        if _final_run():
            paths = save_failure(test, net, models)
            message = (f"failing model saved: {paths[0]} (input batch: {paths[1]}; "
                       f"description: {paths[2]}" + "".join(f"; {p}" for p in paths[3:]) + ")")
            if isinstance(exc, AssertionError):
                first = str(exc.args[0]) if exc.args else ""
                exc.args = (f"{first}\n{message}",) + exc.args[1:]
            else:
                exc.add_note(message)
        raise


# -- other evaluators ----------------------------------------------------------------------
def run_onnxruntime(proto: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(proto.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    return session.run(None, {"x": np.asarray(x, np.float32)})[0]


def run_reference(proto: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    from onnx.reference import ReferenceEvaluator

    return ReferenceEvaluator(proto).run(None, {"x": np.asarray(x, np.float64)})[0]


def load_unfolded(proto: onnx.ModelProto) -> bbp_ref.Model:
    """The model imported without canonicalisation (no BatchNormalization or constant
    Add/Mul folded into the Conv/Gemm/MatMul before it)."""
    with mock.patch("bbp_ref.importer.builder.canonicalize", lambda graph: graph):
        return bbp_ref.load(proto)


# -- error scales --------------------------------------------------------------------------
def _ones(c: np.ndarray) -> np.ndarray:
    return np.ones(np.shape(c))


def rounding_count(trace: Trace) -> int:
    """`K`: the sum over affine nodes of their largest fan-in `max_p |RF(p)|` plus 4."""
    total = 0
    for node in trace.graph:
        local = trace.local.get(node.name)
        if isinstance(local, AffineLocal):
            ones = [np.ones((1, *u.shape[1:])) for u in local.operands]
            fan_in = local.operator.map_coefficients(_ones).linear(ones)
            total += int(np.max(fan_in, initial=1)) + 4
    return total


def _lipschitz(operator: PiecewiseLinear) -> float:
    return max(1.0, float(np.max(np.abs(operator.negative_slope), initial=0.0)))


def forward_magnitude(trace: Trace) -> np.ndarray:
    """The magnitude pass: a bound on the magnitudes every output is summed from."""
    mags = {trace.graph.input: np.abs(trace.values[trace.graph.input])}
    for node in trace.graph:
        if node.operator is None:
            continue
        local = trace.local[node.name]
        ins = [mags[name] for name in node.inputs]
        if isinstance(local, AffineLocal):
            out = local.operator.map_coefficients(np.abs).linear(ins)
            if local.bias is not None:
                out = out + np.abs(local.bias)
        elif isinstance(local, ElementwiseLocal):
            out = _lipschitz(node.operator) * ins[0]
            out = np.maximum(out, np.abs(trace.values[node.name]))
        elif isinstance(local, MaxPoolLocal):
            out = node.operator.forward(ins)
        else:  # a route
            out = local.apply(ins)
        mags[node.name] = out
    return mags[trace.graph.output]


def absolute_backward(trace: Trace, seed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The reverse pass with `|W|` and `|slope|` from ``|seed|``: the absolute gradient
    at the input (bounds the gradient's rounding) and `sum_v sum_p |g_v| |b_v|` per
    example (bounds the rounding of `b^x` and `B(x)`)."""
    n = trace.batch_size
    grads = {trace.graph.output: np.abs(seed)}
    bias_scale = np.zeros(n)
    for node in reversed(list(trace.graph)):
        grad = grads.pop(node.name, None)
        if grad is None:
            grad = np.zeros((n, *node.shape))
        if node.operator is None:
            return grad, bias_scale
        local = trace.local[node.name]
        if local.bias is not None:
            bias_scale += (grad * np.abs(local.bias)).reshape(n, -1).sum(axis=1)
        if isinstance(local, AffineLocal):
            parts = local.operator.map_coefficients(np.abs).vjp(grad)
        elif isinstance(local, ElementwiseLocal):
            parts = [np.abs(local.slope) * grad]
        else:
            parts = local.vjp(grad)
        for source, part in zip(node.inputs, parts):
            grads[source] = part if source not in grads else grads[source] + part
    raise AssertionError("graph has no input node")


def open_gradient_bound(trace: Trace, seed: np.ndarray) -> np.ndarray:
    """A bound on `|grad f_t|` anywhere: the reverse pass of ``|seed|`` with `|W|`, every
    element-wise gate at slope `max(1, |slope|)` and every MaxPool output sending its
    gradient to its whole window (as if every gate were open)."""
    n = trace.batch_size
    grads = {trace.graph.output: np.abs(seed)}
    for node in reversed(list(trace.graph)):
        grad = grads.pop(node.name, None)
        if grad is None:
            grad = np.zeros((n, *node.shape))
        if node.operator is None:
            return grad
        local = trace.local[node.name]
        if isinstance(local, AffineLocal):
            parts = local.operator.map_coefficients(np.abs).vjp(grad)
        elif isinstance(local, ElementwiseLocal):
            parts = [np.maximum(1.0, np.abs(local.slope)) * grad]
        elif isinstance(local, MaxPoolLocal):
            parts = [node.operator.window.window_sum_transpose(grad)]
        else:
            parts = local.vjp(grad)
        for source, part in zip(node.inputs, parts):
            grads[source] = part if source not in grads else grads[source] + part
    raise AssertionError("graph has no input node")


def bias_contributions(trace: Trace, seed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`b^x = sum_v sum_p e_v[p]` and `sum_v sum_p |e_v[p]|`, computed here from the
    reverse pass (``seed``: `do/dh` at the output)."""
    n = trace.batch_size
    total, magnitude = np.zeros(n), np.zeros(n)
    for node, grad in backward(trace, seed):
        local = trace.local.get(node.name)
        if local is not None and local.bias is not None:
            e = (grad * local.bias).reshape(n, -1)
            total += e.sum(axis=1)
            magnitude += np.abs(e).sum(axis=1)
    return total, magnitude


# -- linear regions ------------------------------------------------------------------------
def tangents(trace: Trace, direction: np.ndarray) -> dict[str, np.ndarray]:
    """Forward mode through the frozen local maps: every node's directional derivative
    along ``direction`` (as `engine.trace.linear_pass` with the biases off, all nodes kept)."""
    values = {trace.graph.input: direction}
    for node in trace.graph:
        if node.operator is not None:
            values[node.name] = trace.local[node.name].apply([values[i] for i in node.inputs])
    return values


def _distance(gap: np.ndarray, rate: np.ndarray) -> np.ndarray:
    """|gap| / |rate| (inf where the rate is 0 or the gap infinite)."""
    gap, rate = np.abs(gap), np.abs(rate)
    out = np.full(np.broadcast_shapes(gap.shape, rate.shape), np.inf)
    ok = (rate > 0) & np.isfinite(gap)
    np.divide(np.broadcast_to(gap, out.shape), np.broadcast_to(rate, out.shape), out=out,
              where=np.broadcast_to(ok, out.shape))
    return out


def kink_distance(trace: Trace, direction: np.ndarray) -> np.ndarray:
    """Per example, the largest `t` such that every gate keeps its linear piece on the
    open segment `x +- t * direction`: for Relu-type gates `|u| / |du|`, for Clip the
    distance to each bound, for a max pool the smallest gap between the window's
    maximum and another window element over the rate at which they approach."""
    n = trace.batch_size
    du = tangents(trace, direction)
    best = np.full(n, np.inf)

    def fold(t: np.ndarray) -> None:
        nonlocal best
        best = np.minimum(best, t.reshape(n, -1).min(axis=1, initial=np.inf))

    for node in trace.graph:
        operator = node.operator
        if isinstance(operator, PiecewiseLinear):
            u, d = trace.values[node.inputs[0]], du[node.inputs[0]]
            kinks = [b for b in (operator.lower, operator.upper) if b is not None]
            if not operator.is_clip:
                kinks = [0.0]
            for kink in kinks:
                fold(_distance(u - kink, d))
        elif isinstance(operator, MaxPool):
            u, d = trace.values[node.inputs[0]], du[node.inputs[0]]
            window = operator.window
            top = trace.values[node.name]
            top_rate = trace.local[node.name].apply([d])
            padded, padded_rate = window.pad(u, value=-np.inf), window.pad(d, value=0.0)
            lead = (slice(None), slice(None))
            for offset in window.offsets():
                index = lead + window.slices(offset)
                fold(_distance(top - padded[index], padded_rate[index] - top_rate))
    return best
