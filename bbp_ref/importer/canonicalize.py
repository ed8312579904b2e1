"""Canonicalisation passes over the built graph (docs/math.md §2).

An element-wise affine node (`Scale`: BatchNormalization, or Add/Sub/Mul/Div by a
constant) that directly follows a Conv or MatMul/Gemm, as that node's only consumer,
is folded into it: `W' = s W`, `b' = s b + c`. This is exact; it changes none of
`W^x`, `b^x`, `B(x)` (docs/math.md §5, invariant 4) and makes one layer of what the exporter split in two
(BatchNormalization after Conv, the Add after a MatMul).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..engine.affine import Conv, MatMul, Scale
from ..engine.operator import AffineOperator
from ..graph import Graph, Node


def canonicalize(graph: Graph) -> Graph:
    while _fold_once(graph):
        pass
    return graph


def _fold_once(graph: Graph) -> bool:
    consumers = graph.consumers()
    for node in graph:
        if not isinstance(node.operator, Scale) or len(node.inputs) != 1:
            continue
        producer = graph[node.inputs[0]]
        if len(consumers[producer.name]) != 1 or producer.shape != node.shape:
            continue
        folded = _fold(producer.operator, node.operator, node.shape)
        if folded is None:
            continue
        merged = replace(producer, op=f"{producer.op}+{node.op}", operator=folded,
                         tensor=node.tensor)
        _replace_node(graph, producer, merged, removed=node)
        return True
    return False


def _fold(producer: object, scale: Scale, shape: tuple[int, ...]) -> AffineOperator | None:
    """The producer with ``scale`` folded in, or None where the scale does not act
    along the producer's output-feature axis alone."""
    factor = scale.scale
    if not factor.all():
        # a zero scale would zero the producer's row: its scores vanish and the rule falls
        # back, where unfolded the row's mass is split by |W u| (docs/math.md §5, invariant 4)
        return None
    if isinstance(producer, Conv):
        feature_axis = 1
    elif isinstance(producer, MatMul) and producer.side == "right":
        feature_axis = factor.ndim - 1
    else:
        return None
    if any(n != 1 for axis, n in enumerate(factor.shape) if axis != feature_axis):
        return None
    per_feature = factor.reshape(-1)
    bias = _combined_bias(producer.bias, factor, scale.bias, shape)
    if isinstance(producer, Conv):
        weight = producer.weight * per_feature.reshape(-1, *([1] * (producer.weight.ndim - 1)))
        return Conv(weight, bias, producer.window, producer.groups, producer.in_channels)
    weight = producer.weight * per_feature
    return MatMul(weight, bias, producer.operand_shape, producer.side)


def _combined_bias(bias: np.ndarray | None, factor: np.ndarray, shift: np.ndarray | None,
                   shape: tuple[int, ...]) -> np.ndarray | None:
    parts = [p for p in (None if bias is None else bias * factor, shift) if p is not None]
    if not parts:
        return None
    total = parts[0] if len(parts) == 1 else parts[0] + parts[1]
    return np.broadcast_to(total, np.broadcast_shapes(total.shape, (1,) * (len(shape) + 1)))


def _replace_node(graph: Graph, old: Node, new: Node, removed: Node) -> None:
    """Put ``new`` in ``old``'s place and drop ``removed`` (which read only ``old``),
    pointing ``removed``'s consumers at ``new``."""
    nodes: dict[str, Node] = {}
    for node in graph:
        if node.name == removed.name:
            continue
        if node.name == old.name:
            node = new
        elif removed.name in node.inputs:
            node = replace(node, inputs=tuple(new.name if i == removed.name else i
                                              for i in node.inputs))
        nodes[node.name] = node
    graph.nodes = nodes
    if graph.output == removed.name:
        graph.output = new.name
    graph.aliases[removed.name] = new.name
    for alias, target in graph.aliases.items():
        if target == removed.name:
            graph.aliases[alias] = new.name
