"""Canonicalisation passes over the built graph (docs/math.md §2).

An element-wise affine node (`Scale`: BatchNormalization, or Add/Sub/Mul/Div by a
constant) that directly follows a Conv or MatMul/Gemm, as that node's only consumer,
is folded into it: `W' = s W`, `b' = s b + c`. This is exact; it changes none of
`W^x`, `b^x`, `B(x)` (docs/math.md §5, invariant 4) and makes one layer of what the
exporter split in two
(BatchNormalization after Conv, the Add after a MatMul).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..engine.affine import Conv, MatMul, Scale
from ..engine.operator import AffineOperator
from ..graph import Graph, Node


def canonicalize(graph: Graph) -> Graph:
    """Fold every foldable `Scale` into its producer, in one pass in topological order
    (linear in the number of nodes): a chain such as Conv -> BatchNormalization -> Mul
    folds step by step, since the merged producer is the one the next Scale sees."""
    consumers = {name: len(users) for name, users in graph.consumers().items()}
    for node in graph:  # a context reader needs the producer's own value: no fold into it
        for source in node.context:
            consumers[source] += 1
    merged_into: dict[str, str] = {}  # a folded node's name -> the producer it went into
    nodes: dict[str, Node] = {}
    for node in graph:
        if any(i in merged_into for i in node.inputs + node.context):
            node = replace(node, inputs=tuple(merged_into.get(i, i) for i in node.inputs),
                           context=tuple(merged_into.get(i, i) for i in node.context))
        producer = nodes.get(node.inputs[0]) if len(node.inputs) == 1 else None
        if (producer is not None and isinstance(node.operator, Scale)
                and consumers[producer.name] == 1 and producer.shape == node.shape):
            folded = _fold(producer.operator, node.operator, node.shape)
            if folded is not None:
                nodes[producer.name] = replace(producer, op=f"{producer.op}+{node.op}",
                                               operator=folded, tensor=node.tensor)
                consumers[producer.name] = consumers[node.name]
                merged_into[node.name] = producer.name
                continue
        nodes[node.name] = node
    graph.nodes = nodes
    graph.output = merged_into.get(graph.output, graph.output)
    for alias, target in list(graph.aliases.items()):
        graph.aliases[alias] = merged_into.get(target, target)
    graph.aliases.update(merged_into)
    return graph


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
