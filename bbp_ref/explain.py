"""`explain`: the bias decomposition of one output of a model at an input."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, overload

import numpy as np

from .attribution.baselines import loaded_for
from .attribution.bbp import bias_backpropagations
from .attribution.rules import resolve_rule
from .attribution.targets import resolve_target_sets
from .binding import Binding, for_each_example, needs_binding, pick_example
from .checks.onnxruntime_check import check_output
from .checks.residuals import Checks, check_mode, relative_residual
from .engine.memory import keeps_freed_memory
from .engine.repeat import one_hot_seeds, repeat_trace
from .engine.trace import Trace, linear_parts
from .errors import InputError
from .graph import Graph


@dataclass(frozen=True)
class Explanation:
    """The decomposition `f_t(x) = sum_q W^x[t, q] x[q] + b^x` and its bias attribution.

    For a batch every field has a leading batch axis; for one example it has none. With
    several targets the fields that depend on the target (all but ``logits`` and the
    linear-pass and onnxruntime checks) have a target axis next: [N, T, ...], or [T, ...]
    for one example.
    ``output``: `f_t(x)`; ``target``: `t`, an index into the flattened output of one
    example; ``gradient``: `W^x[t]`, shaped like `x`; ``bias``: `b^x` (its part that
    reaches `f_t`);
    ``bias_attribution``: `B(x)`, shaped like `x`, summing to the injected biases;
    ``rule``: the rule's name; ``layer_bias``: each node with a local bias mapped to
    its contribution `sum_p e_v[p]` to `b^x`; ``layers``: the nodes whose biases were
    attributed; ``logits``: the whole explained output `f(x)`; ``stripped``: the final
    ops cut off before explaining (e.g. a Softmax); ``checks``: the residuals and the
    onnxruntime comparison; ``piecewise_linear``: whether the explained graph is
    piecewise linear (`W^x` holds on a whole linear region) or only tangent at `x`
    (docs/math.md §7); ``tangent_nodes``: the names of its nodes that are not piecewise
    linear (smooth gates, products); ``wrt_value``: with ``wrt``/``inputs``, the value of
    the explained tensor (what ``gradient`` and ``bias_attribution`` are shaped like and
    multiply), else None.
    """

    output: np.ndarray
    target: np.ndarray
    gradient: np.ndarray
    bias: np.ndarray
    bias_attribution: np.ndarray
    rule: str
    layer_bias: Mapping[str, np.ndarray]
    layers: tuple[str, ...]
    logits: np.ndarray
    stripped: tuple[str, ...]
    checks: Checks
    piecewise_linear: bool = True
    tangent_nodes: tuple[str, ...] = ()
    wrt_value: np.ndarray | None = None

    def __repr__(self) -> str:
        """One line: what was explained and the decomposition's numbers, not the arrays."""
        verdict = "passed" if self.checks.passed else "FAILED"
        partial = (f", layers={list(self.layers)}" if set(self.layers) != set(self.layer_bias)
                   else "")
        if np.ndim(self.output) == 0:
            return (f"Explanation(target={int(self.target)}, f_t(x)={float(self.output):.6g}, "
                    f"b^x={float(self.bias):.6g}, sum B(x)="
                    f"{float(np.sum(self.bias_attribution)):.6g}, rule={self.rule!r}{partial}, "
                    f"input {list(np.shape(self.gradient))}, checks {verdict})")
        n = len(self.output)
        return (f"Explanation(batch of {n}, targets {_brief(self.target)}, f_t(x) "
                f"{_brief(self.output)}, b^x {_brief(self.bias)}, rule={self.rule!r}{partial}, "
                f"input {list(np.shape(self.gradient)[1:])} each, checks {verdict})")


def _brief(values: np.ndarray, shown: int = 4) -> str:
    """At most ``shown`` values of a 1-D array, then how many more."""
    items = [f"{v:.4g}" if isinstance(v, float) else str(v) for v in values[:shown].tolist()]
    more = f", ... ({len(values) - shown} more)" if len(values) > shown else ""
    return "[" + ", ".join(items) + more + "]"


@overload
def explain(  # type: ignore[overload-overlap]
        model: object, x: object, target: object = None, *,
        rule: list[Any] | tuple[Any, ...], layers: object = None, check: object = True,
        output: str | None = None, wrt: str | None = None,
        inputs: Mapping[str, object] | None = None) -> tuple[Explanation, ...]: ...


@overload
def explain(model: object, x: object, target: object = None, rule: object = "abs",
            layers: object = None, check: object = True, output: str | None = None, *,
            wrt: str | None = None, inputs: Mapping[str, object] | None = None
            ) -> Explanation: ...


@keeps_freed_memory
def explain(model: object, x: object, target: object = None, rule: object = "abs",
            layers: object = None, check: object = True, output: str | None = None, *,
            wrt: str | None = None, inputs: Mapping[str, object] | None = None) -> Any:
    """Explain output ``target`` of ``model`` at ``x`` by BBp (docs/math.md §4).

    ``model``: a path, bytes, ``onnx.ModelProto``, `Model` or ``torch.nn.Module``
    (exported to ONNX in memory, `load`; then ``x`` is always a batch); ``x``: one example
    shaped like the model input without its batch axis, or a batch; ``target``: an
    index into one example's flattened output (default: its argmax), one per example,
    or several: a list for one example, an array [N, T] for a batch, ``"all"`` for a
    small output (the fields then have a target axis after the batch axis); ``rule``:
    ``"abs"``, ``"signed"``, ``"uniform"`` or a callable (see `bbp_ref.rules`), or a list
    of them (a tuple of explanations, one per rule, sharing the forward trace and the
    reverse pass); ``layers``: node names whose biases are attributed (None: all);
    ``check``: True compares the output with onnxruntime as well (reported as
    unavailable, not failed, if onnxruntime cannot load or run the model), ``"strict"``
    requires that comparison to run and agree, ``"full"`` also runs the two linear passes
    of docs/math.md §3, False only computes the free residuals (`check_mode`); ``output``:
    the tensor to explain, a graph output or any float tensor inside the graph (see `load`);
    ``wrt``: the tensor to explain with respect to (a graph input, or any intermediate
    tensor: then ``x`` is the value of the graph input and the fields are shaped like
    ``wrt``), ``inputs``: the
    values of the other graph inputs, constants at the point (`bbp_ref.binding`,
    docs/math.md §7).
    """
    mode = check_mode(check)
    binding = Binding.of(wrt, inputs)
    several_rules = isinstance(rule, (list, tuple))
    rules = [resolve_rule(r) for r in (rule if isinstance(rule, (list, tuple)) else [rule])]
    if not rules:
        raise InputError("rule is an empty list")
    loaded = loaded_for(model, x, output)
    if needs_binding(loaded, binding):
        if several_rules:  # each rule on its own bound models
            return tuple(explain(loaded, x, target, r, layers, check, wrt=wrt, inputs=inputs)
                         for r in rules)
        return for_each_example(
            loaded, x, binding,
            lambda m, xi, i: explain(m, xi, pick_example(target, i), rule, layers, check),
            lambda e, value: replace(e, wrt_value=value))
    batch, single = loaded.prepare(x)
    trace = loaded.trace(batch)
    logits, n = trace.output, batch.shape[0]
    flat = logits.reshape(n, -1)
    targets, target_axis = resolve_target_sets(target, flat, single)
    count = targets.shape[1]
    selected = _layers(trace.graph, layers)
    results = bias_backpropagations(repeat_trace(trace, count),
                                    one_hot_seeds(targets, logits.shape[1:]), rules, selected)
    chosen = flat[np.arange(n)[:, None], targets]  # f_t(x) for every target
    linear_passes = _linear_pass_residual(trace, batch, logits) if mode == "full" else None
    onnxruntime = check_output(loaded, batch, logits) if mode != "off" else None

    def per_target(a: np.ndarray) -> np.ndarray:
        """[N * T, ...] -> [N, T, ...] (or [N, ...] without a target axis)."""
        return a.reshape(n, count, *a.shape[1:]) if target_axis else a.reshape(n, *a.shape[1:])

    explanations = []
    for chosen_rule, result in zip(rules, results):
        gradient = result.gradient.reshape(n, count, -1)
        gradient_x_input = (gradient * batch.reshape(n, 1, -1)).reshape(n * count, -1)
        bias = sum(result.layer_bias.values(), np.zeros(n * count))
        injected = sum((result.layer_bias[name] for name in result.injected),
                       np.zeros(n * count))
        magnitude = result.bias_magnitude
        checks = Checks(
            decomposition=per_target(relative_residual(
                gradient_x_input.sum(axis=1) + bias, chosen.ravel(),
                np.abs(gradient_x_input).sum(axis=1) + magnitude)),
            completeness=per_target(relative_residual(
                result.bias_attribution.reshape(n * count, -1).sum(axis=1), injected,
                magnitude)),
            linear_passes=linear_passes, onnxruntime=onnxruntime, strict=mode == "strict")
        explanation = Explanation(
            output=per_target(chosen.ravel()), target=per_target(targets.ravel()),
            gradient=per_target(result.gradient), bias=per_target(bias),
            bias_attribution=per_target(result.bias_attribution), rule=chosen_rule.name,
            layer_bias={k: per_target(v) for k, v in result.layer_bias.items()},
            layers=result.injected, logits=logits, stripped=loaded.stripped, checks=checks,
            piecewise_linear=trace.graph.piecewise_linear,
            tangent_nodes=trace.graph.tangent_nodes)
        explanations.append(_unbatched(explanation) if single else explanation)
    return tuple(explanations) if several_rules else explanations[0]


def _layers(graph: Graph, layers: object) -> set[str] | None:
    if layers is None:
        return None
    if isinstance(layers, str):
        layers = [layers]
    if not isinstance(layers, (list, tuple, set, frozenset)) or not all(
            isinstance(name, str) for name in layers):
        raise InputError(f"layers must be a node name or a list of node names, got {layers!r}")
    chosen = set()
    for name in layers:
        canonical = graph.resolve(name)
        if canonical is None or not graph[canonical].has_bias:
            available = [n.name for n in graph if n.has_bias]
            raise InputError(f"layer {name!r} is not a node with a bias; choose from "
                             f"{available}")
        chosen.add(canonical)
    return chosen


def _linear_pass_residual(trace: Trace, batch: np.ndarray, logits: np.ndarray) -> np.ndarray:
    n = batch.shape[0]
    weights_times_x, bias = (part.reshape(n, -1) for part in linear_parts(trace, batch))
    magnitude = np.abs(weights_times_x) + np.abs(bias)
    residual = relative_residual(weights_times_x + bias, logits.reshape(n, -1), magnitude)
    return residual.max(axis=1)


def _unbatched(e: Explanation) -> Explanation:
    return Explanation(
        output=e.output[0], target=e.target[0], gradient=e.gradient[0], bias=e.bias[0],
        bias_attribution=e.bias_attribution[0], rule=e.rule,
        layer_bias={k: v[0] for k, v in e.layer_bias.items()}, layers=e.layers,
        logits=e.logits[0], stripped=e.stripped,
        checks=replace(e.checks, decomposition=e.checks.decomposition[0],
                       completeness=e.checks.completeness[0],
                       linear_passes=None if e.checks.linear_passes is None
                       else e.checks.linear_passes[0]),
        piecewise_linear=e.piecewise_linear, tangent_nodes=e.tangent_nodes)
