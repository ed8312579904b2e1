"""The attribution maps of the paper's figure, computed for a batch of inputs: the
gradient, gradient x input, integrated gradients and the BBp bias attribution for each
rule (`attribution_maps`), and the bias attribution of each layer separately
(`layer_maps`). Everything is float64, shaped like the model input, for one target per
example (default: the predicted class)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..engine.trace import input_gradient
from ..explain import explain
from ..model import Model, load

#: The BBp rules in the order of the poster's "bias.1", "bias.2", "bias.3".
RULES = ("abs", "signed", "uniform")
POSTER_NAMES = {"abs": "bias.1", "signed": "bias.2", "uniform": "bias.3"}


@dataclass(frozen=True)
class AttributionMaps:
    """Maps for a batch ``x`` ``[N, *input]``, each shaped like ``x``.

    ``target``: the explained output per example; ``logits``: `f(x)` ``[N, ...]``;
    ``gradient``: `W^x[t]`; ``gradient_x_input``: `W^x[t] * x` (sums to `W^x x`);
    ``integrated_gradients``: from ``ig_baseline`` (sums to `f_t(x) - f_t(baseline)`),
    computed by ``ig_method``; ``bias``: `b^x` ``[N]``; ``bias_attribution``: rule name
    -> `B(x)` (sums to `b^x`).
    """

    x: np.ndarray
    target: np.ndarray
    logits: np.ndarray
    gradient: np.ndarray
    gradient_x_input: np.ndarray
    integrated_gradients: np.ndarray
    ig_method: str
    bias: np.ndarray
    bias_attribution: dict[str, np.ndarray]

    @property
    def predicted(self) -> np.ndarray:
        return self.logits.reshape(len(self.x), -1).argmax(axis=1)


@dataclass(frozen=True)
class LayerMaps:
    """The bias attribution of each layer alone (BBp with ``layers=[name]``).

    ``layers``: ``(name, op)`` of every node with a bias, in graph order; ``attribution``:
    name -> `B(x)` of that layer's bias (shaped like ``x``); ``contribution``: name ->
    the layer's share `sum_p e_v[p]` of `b^x` ``[N]`` (what its map sums to); ``total``:
    `B(x)` of all biases together.
    """

    x: np.ndarray
    target: np.ndarray
    logits: np.ndarray
    rule: str
    layers: tuple[tuple[str, str], ...]
    attribution: dict[str, np.ndarray]
    contribution: dict[str, np.ndarray]
    total: np.ndarray

    @property
    def predicted(self) -> np.ndarray:
        return self.logits.reshape(len(self.x), -1).argmax(axis=1)


def as_batch(model: Model, x: object) -> np.ndarray:
    """``x`` as a float64 batch (one example gets a batch axis)."""
    batch, _ = model.prepare(x)
    return batch


def attribution_maps(model: object, x: object, target: object = None,
                     rules: Sequence[str] = RULES, ig_baseline: float = 0.0,
                     ig_method: str = "exact", ig_steps: int = 50) -> AttributionMaps:
    """Every map of the paper's figure for the batch ``x`` (see `AttributionMaps`).

    Integrated gradients use `bbp_ref.attribution.integrated_gradients` (``ig_method``,
    default the exact piecewise-linear path integral) when it is available, and a
    midpoint Riemann sum of ``ig_steps`` points otherwise (``ig_method`` then says so).
    """
    m = load(model)
    batch = as_batch(m, x)
    first = None
    bias_attribution = {}
    for rule in rules:
        e = explain(m, batch, target=target, rule=rule, check=False)
        bias_attribution[rule] = e.bias_attribution
        if first is None:
            first = e
    if first is None:
        first = explain(m, batch, target=target, check=False)
    targets = first.target
    gradient = _gradient(m, batch, targets, first.gradient)
    ig, method = _integrated_gradients(m, batch, targets, ig_baseline, ig_method, ig_steps)
    return AttributionMaps(
        x=batch, target=targets, logits=first.logits, gradient=gradient,
        gradient_x_input=gradient * batch, integrated_gradients=ig, ig_method=method,
        bias=first.bias, bias_attribution=bias_attribution)


def layer_maps(model: object, x: object, target: object = None, rule: str = "abs",
               layers: Sequence[str] | None = None) -> LayerMaps:
    """The bias attribution of each layer of ``model`` with a bias (or of ``layers``)
    separately, for the batch ``x`` (see `LayerMaps`)."""
    m = load(model)
    batch = as_batch(m, x)
    whole = explain(m, batch, target=target, rule=rule, check=False)
    graph = m.graph_for(tuple(batch.shape[1:]))
    nodes = [n for n in graph if n.has_bias]
    if layers is not None:
        chosen = {graph.resolve(name) for name in layers}
        nodes = [n for n in nodes if n.name in chosen]
    attribution, contribution = {}, {}
    for node in nodes:
        e = explain(m, batch, target=whole.target, rule=rule, layers=[node.name], check=False)
        attribution[node.name] = e.bias_attribution
        contribution[node.name] = whole.layer_bias[node.name]
    return LayerMaps(
        x=batch, target=whole.target, logits=whole.logits, rule=whole.rule,
        layers=tuple((n.name, n.op) for n in nodes), attribution=attribution,
        contribution=contribution, total=whole.bias_attribution)


def _optional(module: str, name: str) -> Callable[..., Any] | None:
    """``bbp_ref.attribution.<module>.<name>`` if that module exists (it may not yet)."""
    try:
        mod = __import__(f"bbp_ref.attribution.{module}", fromlist=[name])
    except ImportError:
        return None
    return getattr(mod, name, None)


def _gradient(model: Model, batch: np.ndarray, targets: np.ndarray,
              fallback: np.ndarray) -> np.ndarray:
    gradient = _optional("baselines", "gradient")
    if gradient is None:
        return fallback
    return np.asarray(gradient(model, batch, target=targets).attribution)


def _integrated_gradients(model: Model, batch: np.ndarray, targets: np.ndarray,
                          baseline: float, method: str, n_steps: int) -> tuple[np.ndarray, str]:
    ig = _optional("integrated_gradients", "integrated_gradients")
    if ig is not None:
        result = ig(model, batch, baselines=baseline, target=targets, method=method,
                    n_steps=n_steps)
        return np.asarray(result.attribution), method
    return riemann_integrated_gradients(model, batch, targets, baseline, n_steps), \
        f"riemann_middle ({n_steps} steps, fallback)"


def riemann_integrated_gradients(model: Model, batch: np.ndarray, targets: np.ndarray,
                                 baseline: float = 0.0, n_steps: int = 50) -> np.ndarray:
    """Integrated gradients by the midpoint rule: `(x - b) * mean_k grad f_t(b + a_k (x - b))`,
    `a_k = (k + 1/2) / n_steps` (the fallback while the exact module is missing)."""
    base = np.full_like(batch, baseline)
    alphas = (np.arange(n_steps) + 0.5) / n_steps
    shape = (n_steps,) + (1,) * batch.ndim
    points = base[None] + alphas.reshape(shape) * (batch - base)[None]
    points = points.reshape(-1, *batch.shape[1:])
    trace = model.trace(points)
    flat = trace.output.reshape(len(points), -1)
    seed = np.zeros_like(flat)
    seed[np.arange(len(points)), np.tile(targets, n_steps)] = 1.0
    grads = input_gradient(trace, seed.reshape(trace.output.shape))
    return (batch - base) * grads.reshape(n_steps, *batch.shape).mean(axis=0)
