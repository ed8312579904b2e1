"""The attribution maps of the paper's figure, computed for a batch of inputs: the
gradient, gradient x input, integrated gradients and the BBp bias attribution for each
rule (`attribution_maps`), and the bias attribution of each layer separately
(`layer_maps`). Everything is float64, shaped like the model input, for one target per
example (default: the predicted class)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from ..attribution.integrated_gradients import integrated_gradients
from ..errors import InputError
from ..explain import Explanation, explain
from ..model import Model, load
from ..progress import Progress

#: The BBp rules in the order of the poster's "bias.1", "bias.2", "bias.3".
RULES = ("abs", "signed", "uniform")
POSTER_NAMES = {"abs": "bias.1", "signed": "bias.2", "uniform": "bias.3"}
#: The methods `method_maps` computes: BBp with a rule, the gradient, gradient x input,
#: integrated gradients by quadrature ("ig") or exactly ("ig-exact").
METHODS = ("gradient", "gradient-x-input", "ig", "ig-exact", *(f"bbp-{r}" for r in RULES))
IG_QUADRATURE = "gausslegendre"
#: Examples x quadrature points per engine pass of "ig" (bounds the memory of a pass).
IG_POINTS_PER_PASS = 8


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


@dataclass(frozen=True)
class MethodMaps:
    """The maps of the chosen ``methods`` for a batch ``x`` ``[N, *input]``: method ->
    array shaped like ``x`` (``"gradient"``: `W^x[t]`; ``"gradient-x-input"``:
    `W^x[t] * x`; ``"ig"``/``"ig-exact"``: integrated gradients from ``ig_baseline``;
    ``"bbp-<rule>"``: `B(x)`), the explained ``target`` and the ``logits`` `f(x)`."""

    x: np.ndarray
    target: np.ndarray
    logits: np.ndarray
    maps: dict[str, np.ndarray]
    ig_baseline: float
    ig_steps: int

    @property
    def predicted(self) -> np.ndarray:
        return self.logits.reshape(len(self.x), -1).argmax(axis=1)


def method_maps(model: object, x: object, methods: Sequence[str], target: object = None,
                ig_baseline: float = 0.0, ig_steps: int = 32,
                progress: Progress | None = None,
                explained: Explanation | None = None) -> MethodMaps:
    """The maps of ``methods`` (`METHODS`) for the batch ``x``; ``progress`` ticks once per
    method and once per quadrature point of ``"ig"``. ``explained``: `explain`'s result
    for this model, ``x`` and ``target``, if the caller has it already (it is reused)."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise InputError(f"unknown methods {unknown}; choose from {list(METHODS)}")
    m = load(model, example=x)
    batch = as_batch(m, x)
    ticks = progress if progress is not None else Progress(enabled=False)
    ticks.add(len(methods) + (ig_steps - 1 if "ig" in methods else 0) + 1)
    first = (_batched(explained) if explained is not None else
             explain(m, batch, target=target, check=False))  # the targets, W^x, B(x)
    ticks.update()
    targets = first.target
    out: dict[str, np.ndarray] = {}
    for method in methods:
        if method in ("gradient", "gradient-x-input"):
            out[method] = first.gradient * (batch if method == "gradient-x-input" else 1.0)
        elif method.startswith("bbp-"):
            rule = method[len("bbp-"):]
            out[method] = (first.bias_attribution if rule == first.rule else
                           explain(m, batch, target=targets, rule=rule,
                                   check=False).bias_attribution)
        elif method == "ig":
            out[method] = integrated_gradients(
                m, batch, baselines=ig_baseline, target=targets, method=IG_QUADRATURE,
                n_steps=ig_steps, internal_batch_size=IG_POINTS_PER_PASS,
                on_pass=ticks.update).attribution
            continue  # ticked per pass
        else:
            out[method] = integrated_gradients(m, batch, baselines=ig_baseline,
                                               target=targets, method="exact").attribution
        ticks.update()
    return MethodMaps(batch, targets, first.logits, out, ig_baseline, ig_steps)


def _batched(e: Explanation) -> Explanation:
    """An explanation with the batch axis (one example's gets one)."""
    if np.ndim(e.output) > 0:
        return e
    return replace(e, output=e.output[None], target=e.target[None], gradient=e.gradient[None],
                   bias=e.bias[None], bias_attribution=e.bias_attribution[None],
                   logits=e.logits[None])


def as_batch(model: Model, x: object) -> np.ndarray:
    """``x`` as a float64 batch (one example gets a batch axis)."""
    batch, _ = model.prepare(x)
    return batch


def attribution_maps(model: object, x: object, target: object = None,
                     rules: Sequence[str] = RULES, ig_baseline: float = 0.0,
                     ig_method: str = "exact", ig_steps: int = 50) -> AttributionMaps:
    """Every map of the paper's figure for the batch ``x`` (see `AttributionMaps`).

    Integrated gradients use `bbp_ref.integrated_gradients` with ``ig_method`` (default
    the exact piecewise-linear path integral; ``ig_steps`` points for a quadrature rule).
    """
    m = load(model)
    batch = as_batch(m, x)
    # one forward trace and one reverse pass for all the rules
    explanations = explain(m, batch, target=target, rule=list(rules) or ["abs"], check=False)
    bias_attribution = {rule: e.bias_attribution for rule, e in zip(rules, explanations)}
    first = explanations[0]
    targets = first.target
    ig = integrated_gradients(m, batch, baselines=ig_baseline, target=targets,
                              method=ig_method, n_steps=ig_steps).attribution
    return AttributionMaps(
        x=batch, target=targets, logits=first.logits, gradient=first.gradient,
        gradient_x_input=first.gradient * batch, integrated_gradients=ig, ig_method=ig_method,
        bias=first.bias, bias_attribution=bias_attribution)


def layer_maps(model: object, x: object, target: object = None, rule: str = "abs",
               layers: Sequence[str] | None = None,
               progress: Progress | None = None) -> LayerMaps:
    """The bias attribution of each layer of ``model`` with a bias (or of ``layers``)
    separately, for the batch ``x`` (see `LayerMaps`); ``progress`` ticks per layer."""
    m = load(model)
    batch = as_batch(m, x)
    whole = explain(m, batch, target=target, rule=rule, check=False)
    graph = m.graph_for(tuple(batch.shape[1:]))
    nodes = [n for n in graph if n.has_bias]
    if layers is not None:
        chosen = {graph.resolve(name) for name in layers}
        nodes = [n for n in nodes if n.name in chosen]
    attribution, contribution = {}, {}
    ticks = progress if progress is not None else Progress(enabled=False)
    ticks.add(len(nodes))
    for node in nodes:
        e = explain(m, batch, target=whole.target, rule=rule, layers=[node.name], check=False)
        attribution[node.name] = e.bias_attribution
        contribution[node.name] = whole.layer_bias[node.name]
        ticks.update()
    return LayerMaps(
        x=batch, target=whole.target, logits=whole.logits, rule=whole.rule,
        layers=tuple((n.name, n.op) for n in nodes), attribution=attribution,
        contribution=contribution, total=whole.bias_attribution)
