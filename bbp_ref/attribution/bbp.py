"""Bias backpropagation (docs/math.md §3-4): one reverse sweep that carries both the gradient
`g_v` and the bias mass `beta_v` from the output to the input."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np

from ..engine.affine import Conv
from ..engine.operator import AffineLocal, Array, LocalMap, Pullback, SingleInputMap
from ..engine.trace import Trace, backward
from ..errors import InputError, RuleError
from ..graph import Node
from .rules import NodeView, Rule, distribute

# Relative tolerance of the per-node mass conservation check (rounding only).
CONSERVATION_RTOL = 1e-8


@dataclass(frozen=True)
class BiasBackpropagation:
    """``gradient``: `g` at the input (batched, the gradient `W^x[t]`);
    ``bias_attribution``: the input's mass `B(x)`; ``layer_bias``: every node with a
    local bias mapped to its contribution `sum_p e_v[p]` (shape [N]); ``injected``:
    the names whose `e_v` were injected; ``bias_magnitude``: `sum_v sum_p |e_v[p]|`
    over all nodes (the scale of the residual checks)."""

    gradient: Array
    bias_attribution: Array
    layer_bias: dict[str, Array]
    injected: tuple[str, ...]
    bias_magnitude: Array


def bias_backpropagation(trace: Trace, seed: Array, rule: Rule,
                         layers: Collection[str] | None = None) -> BiasBackpropagation:
    """Run BBp for the output selected by ``seed`` (`do/dh` at the output node)."""
    (result,) = bias_backpropagations(trace, seed, [rule], layers)
    return result


def bias_backpropagations(trace: Trace, seed: Array, rules: Sequence[Rule],
                          layers: Collection[str] | None = None) -> list[BiasBackpropagation]:
    """BBp for several rules in one reverse sweep: the gradient `g_v` and the local bias
    contributions `e_v` are computed once, each rule carries its own mass `beta_v`."""
    n = trace.batch_size
    masses: list[dict[str, Array]] = [{} for _ in rules]
    layer_bias: dict[str, Array] = {}
    injected = []
    magnitude = np.zeros(n)
    gradient = None
    attributions: list[Array] = []
    for node, grad in backward(trace, seed, _gathered_convolutions(trace)):
        _check_finite(node.name, node.op, "gradient", grad)
        betas = [mass.pop(node.name, None) for mass in masses]
        if node.operator is None:
            gradient = grad
            attributions = [np.zeros_like(grad) if beta is None else beta for beta in betas]
            continue
        local = trace.local[node.name]
        if local.bias is not None:
            with np.errstate(over="ignore", invalid="ignore"):
                contribution = grad * local.bias  # e_v
                row_magnitude = np.abs(contribution).reshape(n, -1).sum(axis=1)
            if not np.isfinite(row_magnitude).all():  # else every element is finite
                _check_finite(node.name, node.op, "bias contribution e_v", contribution)
            layer_bias[node.name] = contribution.reshape(n, -1).sum(axis=1)
            magnitude += row_magnitude
            if layers is None or node.name in layers:
                injected.append(node.name)
                betas = [contribution if beta is None else beta + contribution
                         for beta in betas]
        for rule, mass, beta in zip(rules, masses, betas):
            if beta is not None:
                _hand_on(node, local, rule, np.broadcast_to(beta, grad.shape), grad, mass)
    assert gradient is not None
    if not np.isfinite(magnitude).all():
        raise InputError("the bias contributions sum to more than float64 holds (sum_v "
                         "sum_p |e_v[p]| overflows); the model's biases are too large")
    return [BiasBackpropagation(gradient, attribution, layer_bias, tuple(injected), magnitude)
            for attribution in attributions]


def _gathered_convolutions(trace: Trace) -> dict[str, Pullback]:
    """The reverse pass's maps of the convolutions: `GatheredConv` (the same `W^T g` in
    another summation order, faster for few input channels or small images; docs/math.md
    §8). The trace's own maps are left as they are."""
    return {name: AffineLocal(local.operator.gathered(), local.operands)
            for name, local in trace.local.items()
            if isinstance(local, AffineLocal) and type(local.operator) is Conv}


def _hand_on(node: Node, local: LocalMap, rule: Rule, beta: Array, grad: Array,
             mass: dict[str, Array]) -> None:
    """Node ``node`` hands its mass ``beta`` to its operands' entries of ``mass``."""
    if isinstance(local, AffineLocal):
        view = NodeView(node.name, node.op, local.operands, grad, beta)
        shares = distribute(local, view, rule)
        _check_conservation(node.name, rule, beta, shares, op=node.op)
    else:
        assert isinstance(local, SingleInputMap), node.name
        shares = local.hand_back(np.ascontiguousarray(beta))
    for source, share in zip(node.inputs, shares):
        previous = mass.get(source)
        mass[source] = share if previous is None else previous + share


def _check_conservation(name: str, rule: Rule, beta: Array, shares: list[Array],
                        op: str | None = None) -> None:
    """The shares sum to the mass received (up to CONSERVATION_RTOL); with ``op``, a share
    that is not finite is an `InputError` first. A share's row sums are finite only if all
    its elements are, so the element-wise finiteness check runs only when a sum is not."""
    n = beta.shape[0]
    with np.errstate(over="ignore", invalid="ignore"):
        sums = [s.reshape(n, -1).sum(axis=1) for s in shares]
    if op is not None and not all(np.isfinite(total).all() for total in sums):
        for share in shares:
            _check_finite(name, op, "bias mass handed on", share)
    given = beta.reshape(n, -1).sum(axis=1)
    handed = sum(sums)
    scale = np.abs(beta).reshape(n, -1).sum(axis=1)
    if not (np.abs(handed - given) <= CONSERVATION_RTOL * scale + 1e-300).all():  # NaN fails
        raise RuleError(f"rule {rule.name!r} does not conserve bias mass at node {name!r}: "
                        f"it received {given.tolist()} and handed on {handed.tolist()}")


def _check_finite(name: str, op: str, what: str, value: Array) -> None:
    if not np.isfinite(value).all():
        raise InputError(f"the {what} at node {name!r} ({op}) is not finite: the input or "
                         "the model's weights overflow float64 there")
