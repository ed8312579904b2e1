"""`explain`: the bias decomposition of one output of a model at an input."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np

from .attribution.baselines import setup
from .attribution.bbp import bias_backpropagation
from .attribution.rules import resolve_rule
from .binding import Binding, for_each_example, needs_binding, pick_example
from .checks.onnxruntime_check import check_output
from .checks.residuals import Checks, check_mode, relative_residual
from .engine.trace import Trace, linear_parts
from .errors import InputError
from .graph import Graph
from .model import load


@dataclass(frozen=True)
class Explanation:
    """The decomposition `f_t(x) = sum_q W^x[t, q] x[q] + b^x` and its bias attribution.

    For a batch every field has a leading batch axis; for one example it has none.
    ``output``: `f_t(x)`; ``target``: `t`, an index into the flattened output of one
    example; ``gradient``: `W^x[t]`, shaped like `x`; ``bias``: `b^x`;
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


def explain(model: object, x: object, target: object = None, rule: object = "abs",
            layers: object = None, check: object = True, *, wrt: str | None = None,
            inputs: Mapping[str, object] | None = None) -> Explanation:
    """Explain output ``target`` of ``model`` at ``x`` by BBp (SPEC §4).

    ``model``: a path, bytes, ``onnx.ModelProto`` or `Model`; ``x``: one example
    shaped like the model input without its batch axis, or a batch; ``target``: an
    index into one example's flattened output (default: its argmax), or one per
    example; ``rule``: ``"abs"``, ``"signed"``, ``"uniform"`` or a callable (see
    `bbp_ref.rules`); ``layers``: node names whose biases are attributed (None: all);
    ``check``: True compares the output with onnxruntime as well (reported as
    unavailable, not failed, if onnxruntime cannot load or run the model), ``"strict"``
    requires that comparison to run and agree, False skips it; ``wrt``: the tensor to
    explain with respect to (a graph input, or any intermediate tensor: then ``x`` is the
    value of the graph input and the fields are shaped like ``wrt``), ``inputs``: the values
    of the other graph inputs, constants at the point (`bbp_ref.binding`, docs/math.md §7).
    """
    mode = check_mode(check)
    binding = Binding.of(wrt, inputs)
    loaded = load(model)
    if needs_binding(loaded, binding):
        return for_each_example(
            loaded, x, binding,
            lambda m, xi, i: explain(m, xi, pick_example(target, i), rule, layers, check),
            lambda e, value: replace(e, wrt_value=value))
    chosen_rule = resolve_rule(rule)
    s = setup(loaded, x, target)
    loaded, batch, single, trace, targets = s.model, s.batch, s.single, s.trace, s.targets
    logits, output, n = s.logits, s.output, batch.shape[0]
    selected = _layers(trace.graph, layers)
    result = bias_backpropagation(trace, s.seed, chosen_rule, selected)

    gradient_x_input = (result.gradient * batch).reshape(n, -1)
    bias = sum(result.layer_bias.values(), np.zeros(n))
    injected = sum((result.layer_bias[name] for name in result.injected), np.zeros(n))
    bias_magnitude = result.bias_magnitude
    checks = Checks(
        decomposition=relative_residual(gradient_x_input.sum(axis=1) + bias, output,
                                        np.abs(gradient_x_input).sum(axis=1) + bias_magnitude),
        completeness=relative_residual(result.bias_attribution.reshape(n, -1).sum(axis=1),
                                       injected, bias_magnitude),
        linear_passes=_linear_pass_residual(trace, batch, logits),
        onnxruntime=check_output(loaded, batch, logits) if mode != "off" else None,
        strict=mode == "strict",
    )
    layer_names = result.injected
    explanation = Explanation(
        output=output, target=targets, gradient=result.gradient, bias=bias,
        bias_attribution=result.bias_attribution, rule=chosen_rule.name,
        layer_bias=dict(result.layer_bias), layers=layer_names, logits=logits,
        stripped=loaded.stripped, checks=checks,
        piecewise_linear=trace.graph.piecewise_linear, tangent_nodes=trace.graph.tangent_nodes)
    return _unbatched(explanation) if single else explanation


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
                       linear_passes=e.checks.linear_passes[0]),
        piecewise_linear=e.piecewise_linear, tangent_nodes=e.tangent_nodes)
