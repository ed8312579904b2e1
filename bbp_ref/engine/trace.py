"""The forward trace of a graph at an input, the reverse pass over it, and the two
linear passes of docs/math.md §3 that check `W^x x + b^x = f(x)` independently."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from ..graph import Graph, Node
from .operator import Array, DomainError, LocalMap, Pullback


@dataclass
class Trace:
    """Every node's value `h_v` and local map at a batch of inputs (batch axis 0)."""

    graph: Graph
    values: dict[str, Array]
    local: dict[str, LocalMap]

    @property
    def output(self) -> Array:
        return self.values[self.graph.output]

    @property
    def batch_size(self) -> int:
        return int(self.values[self.graph.input].shape[0])


def forward(graph: Graph, x: Array, *, linearize: bool = True) -> Trace:
    """Run the graph's own (nonlinear) forward pass on a float64 batch ``x`` and, with
    ``linearize``, freeze every node at it."""
    values: dict[str, Array] = {graph.input: x}
    local: dict[str, LocalMap] = {}
    for node in graph:
        if node.operator is None:
            continue
        operands = [values[name] for name in node.inputs + node.context]
        try:
            if linearize:
                values[node.name], local[node.name] = node.operator.evaluate(operands)
            else:
                values[node.name] = node.operator.forward(operands)
        except DomainError as exc:
            raise InputError(f"node {node.name!r} ({node.op}): {exc}") from None
    return Trace(graph, values, local)


def linear_pass(trace: Trace, x: Array, *, with_bias: bool) -> Array:
    """Propagate ``x`` through the frozen local maps: with ``with_bias=False`` this is
    `W^x x`; with ``x = 0`` and ``with_bias=True`` it is `b^x` (every output at once)."""
    values: dict[str, Array] = {trace.graph.input: x}
    for node in trace.graph:
        if node.operator is None:
            continue
        local = trace.local[node.name]
        out = local.apply([values[name] for name in node.inputs])
        if with_bias and local.bias is not None:
            out = out + local.bias
        values[node.name] = out
    return values[trace.graph.output]


def linear_parts(trace: Trace, x: Array) -> tuple[Array, Array]:
    """`(W^x x, b^x)` for every output: the two linear passes of docs/math.md §3."""
    return (linear_pass(trace, x, with_bias=False),
            linear_pass(trace, np.zeros_like(x), with_bias=True))


def backward(trace: Trace, seed: Array,
             pullbacks: Mapping[str, Pullback] | None = None) -> Iterator[tuple[Node, Array]]:
    """The reverse pass: yields each node with its complete gradient `g_v = do/dh_v`
    in reverse topological order (the input last), then pulls the gradient back to
    the node's operands. ``seed`` is `do/dh` at the output node; ``pullbacks`` replaces
    the trace's local maps of some nodes (DeepLIFT's multipliers)."""
    maps: Mapping[str, Pullback] = trace.local if pullbacks is None else {**trace.local,
                                                                         **pullbacks}
    grads: dict[str, Array] = {trace.graph.output: seed}
    for node in reversed(list(trace.graph)):
        grad = grads.pop(node.name, None)
        if grad is None:
            grad = np.zeros((trace.batch_size, *node.shape))
        yield node, grad
        if node.operator is None:
            continue
        for source, part in zip(node.inputs, maps[node.name].vjp(grad)):
            previous = grads.get(source)
            grads[source] = part if previous is None else previous + part


def input_gradient(trace: Trace, seed: Array,
                   pullbacks: Mapping[str, Pullback] | None = None) -> Array:
    """`seed^T W^x`: the gradient of the seeded output at the input (with
    ``pullbacks`` replacing some nodes' maps, as in `backward`)."""
    for node, grad in backward(trace, seed, pullbacks):
        if node.name == trace.graph.input:
            return grad
    raise AssertionError("graph has no input node")
