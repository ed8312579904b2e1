"""Control flow with constant conditions (docs/math.md §7.8): an `If` whose condition is
a constant is replaced by its taken branch; a `Loop` with a constant trip count and a
condition that stays constant, and a `Scan` (whose length is always known), are
unrolled. The subgraph's nodes are inlined into the walk of the enclosing graph: its
local tensors are renamed ``<node>/<tensor>`` (``<node>/<k>/<tensor>`` for iteration `k`),
names from the outer scope resolve to the enclosing graph's tensors. Anything else is an
`UnsupportedOpError` naming the node."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import numpy_helper

from ..engine.routes import IndexRoute
from ..errors import UnsupportedOpError
from .context import NodeContext
from .unrolling import reserve_unrolled_nodes
from .values import Const, Value, Var

if TYPE_CHECKING:
    from .builder import GraphBuilder

CONTROL_FLOW = frozenset({"If", "Loop", "Scan"})


def outer_names(graph: onnx.GraphProto) -> set[str]:
    """The tensors a subgraph reads from enclosing scopes (its nodes' inputs, nested
    subgraphs included, that it does not define itself)."""
    local = {t.name for t in graph.initializer} | {i.name for i in graph.input}
    local |= {t for n in graph.node for t in n.output if t}
    read: set[str] = set()
    for n in graph.node:
        read.update(t for t in n.input if t)
        read |= subgraph_reads(n)
    read.update(o.name for o in graph.output)
    return read - local


def subgraph_reads(node: onnx.NodeProto) -> set[str]:
    """The outer-scope tensors the subgraphs of ``node`` read."""
    read: set[str] = set()
    for attribute in node.attribute:
        if attribute.type == onnx.AttributeProto.GRAPH:
            read |= outer_names(attribute.g)
        elif attribute.type == onnx.AttributeProto.GRAPHS:
            for graph in attribute.graphs:
                read |= outer_names(graph)
    return read


def _renamed_graph(graph: onnx.GraphProto, names: dict[str, str]) -> onnx.GraphProto:
    """A copy of a nested subgraph reading renamed outer tensors (its own locals shadow)."""
    copy = onnx.GraphProto()
    copy.CopyFrom(graph)
    local = {t.name for t in graph.initializer} | {i.name for i in graph.input}
    local |= {t for n in graph.node for t in n.output if t}
    visible = {k: v for k, v in names.items() if k not in local}
    for n in copy.node:
        _rename_inputs(n, visible)
    for output in copy.output:
        output.name = visible.get(output.name, output.name)
    return copy


def _rename_inputs(node: onnx.NodeProto, names: dict[str, str]) -> None:
    for i, tensor in enumerate(node.input):
        if tensor in names:
            node.input[i] = names[tensor]
    for attribute in node.attribute:
        if attribute.type == onnx.AttributeProto.GRAPH:
            attribute.g.CopyFrom(_renamed_graph(attribute.g, names))
        elif attribute.type == onnx.AttributeProto.GRAPHS:
            graphs = [_renamed_graph(g, names) for g in attribute.graphs]
            del attribute.graphs[:]
            attribute.graphs.extend(graphs)


class Inliner:
    """Inlines subgraphs of one control-flow node into the builder's walk."""

    def __init__(self, builder: GraphBuilder, node: onnx.NodeProto, name: str,
                 inputs: list[Value | None]) -> None:
        self.builder = builder
        self.node = node
        self.name = name
        self.ctx = NodeContext(node, name, builder.signature.opset, inputs, builder)

    def error(self, reason: str) -> UnsupportedOpError:
        return UnsupportedOpError(self.node.op_type, self.name, reason)

    def run(self, graph: onnx.GraphProto, prefix: str, bound: dict[str, Value]) -> list[Value]:
        """Visit ``graph``'s nodes with its inputs bound to ``bound``; its outputs."""
        env = self.builder.env
        names: dict[str, str] = {}
        for tensor, value in bound.items():
            names[tensor] = prefix + tensor
            env[prefix + tensor] = value
        for initializer in graph.initializer:
            names[initializer.name] = prefix + initializer.name
            env[prefix + initializer.name] = Const(numpy_helper.to_array(initializer))
        for n in graph.node:
            names.update({t: prefix + t for t in n.output if t})
        copies = []
        for index, n in enumerate(graph.node):
            copy = onnx.NodeProto()
            copy.CopyFrom(n)
            _rename_inputs(copy, names)
            for i, tensor in enumerate(copy.output):
                if tensor:
                    copy.output[i] = names[tensor]
            copy.name = prefix + (n.name or f"{n.op_type}_{index}")
            copies.append(copy)
        self.builder.used.update(t for c in copies for t in c.output if t)
        for copy in copies:
            self.builder.visit(copy, copy.name)
        results = []
        for output in graph.output:
            tensor = names.get(output.name, output.name)
            if tensor not in env:
                raise self.error(f"subgraph output {output.name!r} is not computed")
            results.append(env[tensor])
        return results


def _boolean(value: Value | None) -> bool | None:
    """The value of a constant condition; None if it depends on the input."""
    if not isinstance(value, Const):
        return None
    array = np.asarray(value.value)
    if array.size != 1:
        return None
    return bool(array.reshape(()))


def expand_control_flow(builder: GraphBuilder, node: onnx.NodeProto, name: str,
                        inputs: list[Value | None]) -> Sequence[Value]:
    inliner = Inliner(builder, node, name, inputs)
    if node.op_type == "If":
        return _if(inliner, inputs)
    if node.op_type == "Loop":
        return _loop(inliner, inputs)
    return _scan(inliner, inputs)


def _if(inliner: Inliner, inputs: list[Value | None]) -> list[Value]:
    condition = _boolean(inputs[0] if inputs else None)
    if condition is None:
        raise inliner.error("its condition depends on the model input (only an If whose "
                            "condition folds to a constant is supported)")
    branch = inliner.ctx.attr("then_branch" if condition else "else_branch")
    reserve_unrolled_nodes(inliner.ctx, len(branch.node), "the taken branch")
    return inliner.run(branch, f"{inliner.name}/", {})


def _loop(inliner: Inliner, inputs: list[Value | None]) -> list[Value]:
    ctx = inliner.ctx
    body: onnx.GraphProto = ctx.attr("body")
    trip = inputs[0] if inputs else None
    if trip is not None and not isinstance(trip, Const):
        raise inliner.error("its trip count M depends on the model input")
    condition = _boolean(inputs[1]) if len(inputs) > 1 and inputs[1] is not None else True
    if condition is None:
        raise inliner.error("its initial condition depends on the model input")
    if trip is None:
        raise inliner.error("a Loop without a trip count M ends on a data-dependent "
                            "condition; only a constant trip count is supported")
    count = int(np.asarray(trip.value).reshape(()))
    carried: list[Value | None] = list(inputs[2:])
    n_carried = len(carried)
    n_scan = len(body.output) - 1 - n_carried
    reserve_unrolled_nodes(ctx, max(count, 0) * len(body.node),
                           f"{count} iterations of {len(body.node)} nodes")
    scanned: list[list[Value]] = [[] for _ in range(n_scan)]
    for k in range(count):
        if not condition:
            break
        bound: dict[str, Value] = {}
        values: list[Value | None] = [Const(np.array(k, np.int64)),
                                      Const(np.array(condition)), *carried]
        for graph_input, value in zip(body.input, values):
            if value is None:
                raise inliner.error(f"loop-carried input {graph_input.name!r} is absent")
            bound[graph_input.name] = value
        outputs = inliner.run(body, f"{inliner.name}/{k}/", bound)
        next_condition = _boolean(outputs[0])
        if next_condition is None:
            raise inliner.error(f"its condition becomes data-dependent in iteration {k} "
                                "(data-dependent termination is not supported)")
        condition = next_condition
        carried = list(outputs[1:1 + n_carried])
        for j in range(n_scan):
            scanned[j].append(outputs[1 + n_carried + j])
    results: list[Value] = [v for v in carried if v is not None]
    for j, parts in enumerate(scanned):
        results.append(_stack(inliner, parts, 0, 1 + n_carried + j, f"scan_output_{j}"))
    return results


def _scan(inliner: Inliner, inputs: list[Value | None]) -> list[Value]:
    ctx = inliner.ctx
    if ctx.opset < 9:
        raise inliner.error("Scan-8 (with a sequence_lens input) is not supported")
    body: onnx.GraphProto = ctx.attr("body")
    n_scan_in = int(ctx.attr("num_scan_inputs"))
    n_state = len(inputs) - n_scan_in
    states: list[Value | None] = list(inputs[:n_state])
    scan_inputs = inputs[n_state:]
    in_axes = list(ctx.attr("scan_input_axes") or [0] * n_scan_in)
    in_directions = list(ctx.attr("scan_input_directions") or [0] * n_scan_in)
    n_scan_out = len(body.output) - n_state
    out_axes = list(ctx.attr("scan_output_axes") or [0] * n_scan_out)
    out_directions = list(ctx.attr("scan_output_directions") or [0] * n_scan_out)
    lengths = {_length(inliner, v, a) for v, a in zip(scan_inputs, in_axes)}
    if len(lengths) != 1:
        raise inliner.error(f"scan inputs have different lengths {sorted(lengths)}")
    count = lengths.pop()
    reserve_unrolled_nodes(ctx, count * (len(body.node) + n_scan_in),
                           f"{count} iterations of {len(body.node)} nodes")
    scanned: list[list[Value]] = [[] for _ in range(n_scan_out)]
    for k in range(count):
        bound: dict[str, Value] = {}
        values: list[Value | None] = list(states)
        for j, (value, axis, reverse) in enumerate(zip(scan_inputs, in_axes, in_directions)):
            values.append(_take(inliner, value, axis, count - 1 - k if reverse else k,
                                f"{k}/scan_input_{j}"))
        for graph_input, value in zip(body.input, values):
            if value is None:
                raise inliner.error(f"state input {graph_input.name!r} is absent")
            bound[graph_input.name] = value
        outputs = inliner.run(body, f"{inliner.name}/{k}/", bound)
        states = list(outputs[:n_state])
        for j in range(n_scan_out):
            scanned[j].append(outputs[n_state + j])
    results: list[Value] = [v for v in states if v is not None]
    for j, parts in enumerate(scanned):
        ordered = parts[::-1] if out_directions[j] else parts
        results.append(_stack(inliner, ordered, int(out_axes[j]), n_state + j,
                              f"scan_output_{j}"))
    return results


def _length(inliner: Inliner, value: Value | None, axis: int) -> int:
    if isinstance(value, Const):
        shape = np.shape(value.value)
    elif isinstance(value, Var):
        shape = value.onnx_shape
        if axis % len(shape) == value.batch_axis:
            raise inliner.error(f"scanning along axis {axis}, the batch axis, would mix "
                                "examples")
    else:
        raise inliner.error("a scan input is absent or not a tensor")
    return int(shape[axis % len(shape)])


def _take(inliner: Inliner, value: Value | None, axis: int, k: int, part: str) -> Value:
    """Element ``k`` of ``value`` along ONNX ``axis`` (the axis dropped)."""
    if isinstance(value, Const):
        return Const(np.take(np.asarray(value.value), k, axis=axis))
    assert isinstance(value, Var)
    axis %= value.rank
    example_axis = value.example_axis(axis)
    table = np.take(np.arange(int(np.prod(value.shape))).reshape(value.shape), k,
                    axis=example_axis)
    batch = value.batch_axis - (1 if axis < value.batch_axis else 0)
    return inliner.ctx.add(IndexRoute([value.shape], table), [value], table.shape, part=part,
                           batch_axis=batch)


def _stack(inliner: Inliner, parts: Iterable[Value], axis: int, output: int,
           part: str) -> Value:
    """The per-iteration values stacked along a new ONNX ``axis``."""
    parts = list(parts)
    if not parts:
        raise inliner.error("a scan output of zero iterations is not supported")
    if all(isinstance(p, Const) for p in parts):
        return Const(np.stack([np.asarray(p.value) for p in parts if isinstance(p, Const)],
                              axis=axis))
    if not all(isinstance(p, Var) for p in parts):
        raise inliner.error("a scan output mixing constants and data is not supported")
    variables = [p for p in parts if isinstance(p, Var)]
    first = variables[0]
    if any(v.shape != first.shape or v.batch_axis != first.batch_axis for v in variables):
        raise inliner.error("scan output iterations differ in shape")
    axis %= first.rank + 1
    batch = first.batch_axis if axis > first.batch_axis else first.batch_axis + 1
    example_axis = axis if axis < batch else axis - 1
    size = int(np.prod(first.shape))
    tables = [k * size + np.arange(size).reshape(first.shape) for k in range(len(variables))]
    table = np.stack(tables, axis=example_axis)
    return inliner.ctx.add(IndexRoute([v.shape for v in variables], table), variables,
                           table.shape, output=output, batch_axis=batch)

