"""The generic walk over an ONNX graph that builds the canonical graph.

It knows nothing of individual ops: each node is either folded to a constant (all
its inputs are constants; `onnx.reference` evaluates it) or handed to the handler
registered for its op type (`handlers/`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from .. import budget
from ..engine.operator import Operator
from ..errors import BBpError, ModelLoadError, UnsupportedOpError
from ..graph import Graph, Node
from . import handlers  # noqa: F401 - registers the handlers
from .canonicalize import canonicalize
from .context import NodeContext, check_batch_axes, check_masked_inputs, find_handler, supported_ops
from .control_flow import CONTROL_FLOW, expand_control_flow, subgraph_reads
from .folding import check_fold, check_results
from .signature import Signature
from .values import Const, PendingPad, Value, Var

DEFAULT_DOMAINS = ("", "ai.onnx")


class GraphBuilder:
    """Holds the canonical nodes made so far and the value of every ONNX tensor."""

    def __init__(self, model: onnx.ModelProto, signature: Signature,
                 example_shape: tuple[int, ...]) -> None:
        self.model = model
        self.signature = signature
        self.nodes: dict[str, Node] = {}
        self.env: dict[str, Value] = {}
        self.unrolled_nodes = 0  # made by unrolling recurrent ops and loops (unrolling.py)
        self.needed = _needed_nodes(model.graph, signature.explained)
        self.used = {name for index in self.needed
                     for name in (*model.graph.node[index].input,
                                  *subgraph_reads(model.graph.node[index]))}
        self.used.add(signature.explained)
        budget.check_elements(example_shape, f"one example of the input "
                              f"{signature.input_name!r} of shape {list(example_shape)}")
        input_node = Node(signature.input_name, "Input", None, (), example_shape,
                          signature.input_name)
        self.nodes[input_node.name] = input_node
        self.env[signature.input_name] = Var(input_node.name, example_shape)

    def is_used(self, tensor: str) -> bool:
        return tensor in self.used

    def add_node(self, ctx: NodeContext, operator: Operator, inputs: Sequence[Var],
                 shape: tuple[int, ...], part: str | None = None,
                 context: Sequence[Var] = (), output: int = 0) -> Var:
        _check_finite(ctx, operator)
        budget.check_elements(shape, f"the output of node {ctx.name!r} ({ctx.op_type}) of "
                              f"shape {list(shape)} per example")
        tensor = ctx.node.output[output] if len(ctx.node.output) > output else ctx.name
        if part is None:
            base = ctx.name if output == 0 else f"{ctx.name}:{output}"
            name, op = self._unique(base), ctx.op_type
        else:
            name, op, tensor = self._unique(f"{ctx.name}/{part}"), f"{ctx.op_type}/{part}", ""
        self.nodes[name] = Node(name, op, operator, tuple(v.node for v in inputs), shape,
                                tensor, tuple(v.node for v in context))
        return Var(name, shape)

    def _unique(self, name: str) -> str:
        candidate, k = name, 1
        while candidate in self.nodes:
            k += 1
            candidate = f"{name}_{k}"
        return candidate

    def build(self) -> Graph:
        for initializer in self.model.graph.initializer:
            budget.check_elements(initializer.dims, f"initializer {initializer.name!r}")
            try:
                value = numpy_helper.to_array(initializer)
            except Exception as exc:  # noqa: BLE001 - numpy/onnx raise many types here
                raise ModelLoadError(f"initializer {initializer.name!r} cannot be decoded: "
                                     f"{exc}") from exc
            self.env[initializer.name] = Const(value)
        for index, node in enumerate(self.model.graph.node):
            if index in self.needed:
                self.visit(node, node.name or f"{node.op_type}_{index}")
        explained = self.env.get(self.signature.explained)
        if isinstance(explained, PendingPad):
            raise UnsupportedOpError("Pad", explained.node_name,
                                     "a Pad is only supported directly before a Conv")
        if not isinstance(explained, Var):
            raise ModelLoadError(
                f"output {self.signature.explained!r} does not depend on the model input")
        if explained.batch_axis != 0 or explained.merged is not None:
            op_type, name = self._producer(self.signature.explained)
            raise UnsupportedOpError(
                op_type, name,
                f"its output {self.signature.explained!r}, the explained output, holds the "
                f"batch {explained.where_batch}; an explained output needs the "
                "batch axis at 0 (docs/math.md §7.5)")
        if explained.masked is not None:
            op_type, name = self._producer(self.signature.explained)
            raise UnsupportedOpError(
                op_type, name,
                f"its output {self.signature.explained!r}, the explained output, holds -inf "
                "(an attention mask is explained only through a Softmax, docs/math.md §7.5)")
        graph = Graph(self.nodes, self.signature.input_name, explained.node,
                      self.signature.stripped)
        return canonicalize(graph)

    def _all_constant(self, node: onnx.NodeProto, inputs: list[Value | None]) -> bool:
        """Whether a node's inputs and the outer-scope tensors its subgraphs read are all
        constants (then it is folded like any other node)."""
        outer = [self.env.get(t) for t in subgraph_reads(node)]
        return all(v is None or isinstance(v, Const) for v in [*inputs, *outer])

    def _producer(self, tensor: str) -> tuple[str, str]:
        """The op type and name of the ONNX node that computes ``tensor``."""
        for index, node in enumerate(self.model.graph.node):
            if tensor in node.output:
                return node.op_type, node.name or f"{node.op_type}_{index}"
        return "Output", tensor

    def visit(self, node: onnx.NodeProto, name: str) -> None:
        """Import one ONNX node: fold it, expand its control flow, or run its handler."""
        if node.domain not in DEFAULT_DOMAINS:
            raise UnsupportedOpError(node.op_type, name,
                                     f"ops of domain {node.domain!r} are not supported")
        inputs: list[Value | None] = []
        for tensor in node.input:
            if not tensor:
                inputs.append(None)
            elif tensor in self.env:
                inputs.append(self.env[tensor])
            else:
                raise ModelLoadError(f"node {name!r} ({node.op_type}) reads tensor "
                                     f"{tensor!r}, which no node or initializer produces")
        outputs: Sequence[Value]
        if node.op_type in CONTROL_FLOW and not self._all_constant(node, inputs):
            outputs = expand_control_flow(self, node, name, inputs)
        elif all(v is None or isinstance(v, Const) for v in inputs):
            outputs = self._fold(node, name, inputs)
        else:
            handle = find_handler(node.op_type, self.signature.opset)
            if handle is None:
                raise UnsupportedOpError(
                    node.op_type, name,
                    "this op is not supported (supported: "
                    + ", ".join(supported_ops()) + ")")
            ctx = NodeContext(node, name, self.signature.opset, inputs, self)
            check_batch_axes(ctx, handle)
            check_masked_inputs(ctx, handle)
            try:
                outputs = handle(ctx)
            except BBpError:
                raise
            except (ArithmeticError, IndexError, KeyError, TypeError, ValueError) as exc:
                # a malformed node (attributes or constant inputs of the wrong shape or
                # type) that the handler did not check for: still name the node
                raise UnsupportedOpError(node.op_type, name,
                                         f"its attributes or constant inputs are invalid "
                                         f"({type(exc).__name__}: {exc})") from exc
        for index, tensor in enumerate(node.output):
            if not tensor or not self.is_used(tensor):
                continue
            if index >= len(outputs):
                raise UnsupportedOpError(node.op_type, name,
                                         f"its output {index} ({tensor!r}) is not supported")
            self.env[tensor] = outputs[index]

    def _fold(self, node: onnx.NodeProto, name: str,
              inputs: list[Value | None]) -> list[Value]:
        """Evaluate a node of constants with `onnx.reference`, if `folding` allows it."""
        check_fold(node, name, [v.value if isinstance(v, Const) else None for v in inputs])
        feeds = {tensor: value.value for tensor, value in zip(node.input, inputs)
                 if isinstance(value, Const)}
        for tensor in subgraph_reads(node):  # outer-scope tensors of If/Loop/Scan bodies
            outer = self.env.get(tensor)
            if isinstance(outer, Const):
                feeds[tensor] = outer.value
        try:
            evaluator = ReferenceEvaluator(_single_node_model(node, feeds, self.model))
            results = evaluator.run(None, feeds)
        except Exception as exc:  # noqa: BLE001 - the evaluator raises anything
            raise UnsupportedOpError(node.op_type, name,
                                     f"it could not be evaluated on its constant inputs: "
                                     f"{exc}") from exc
        check_results(node, name, [np.asarray(r) for r in results])
        at_two = self._fold_at_two(node, name, inputs, evaluator)
        if at_two is None:
            return [Const(np.asarray(r)) for r in results]
        return [Const(np.asarray(r), np.asarray(t)) for r, t in zip(results, at_two)]

    def _fold_at_two(self, node: onnx.NodeProto, name: str, inputs: list[Value | None],
                     evaluator: ReferenceEvaluator) -> list[np.ndarray] | None:
        """The node's values for a batch of two, if an input depends on the batch size
        (docs/math.md §7.5); None if none does, or if the node cannot be evaluated (or
        would not fit the budgets) at that batch size: then a Reshape that needs it
        refuses what is ambiguous."""
        if not any(isinstance(v, Const) and v.at_two is not None for v in inputs):
            return None
        if subgraph_reads(node):
            return None
        arrays = [v.value_at_two if isinstance(v, Const) else None for v in inputs]
        feeds = {tensor: array for tensor, array in zip(node.input, arrays)
                 if array is not None}
        try:
            check_fold(node, name, arrays)
            results = [np.asarray(r) for r in evaluator.run(None, feeds)]
            check_results(node, name, results)
        except Exception:  # noqa: BLE001 - the batch-two value is only a hint
            return None
        return results


def _check_finite(ctx: NodeContext, operator: Operator) -> None:
    """Weights, biases and slopes must be finite; a Clip bound may be infinite, not NaN."""
    arrays = list(getattr(operator, "coefficients", ()))
    arrays += [a for a in (getattr(operator, "bias", None),
                           getattr(operator, "negative_slope", None)) if a is not None]
    if any(not np.isfinite(a).all() for a in arrays):
        raise ModelLoadError(f"node {ctx.name!r} ({ctx.op_type}) has NaN or infinite "
                             "weights, biases or slopes")
    bounds = [getattr(operator, "lower", None), getattr(operator, "upper", None)]
    if any(b is not None and np.isnan(b).any() for b in bounds):
        raise ModelLoadError(f"node {ctx.name!r} ({ctx.op_type}) has a NaN bound")


def _single_node_model(node: onnx.NodeProto, feeds: dict[str, np.ndarray],
                       model: onnx.ModelProto) -> onnx.ModelProto:
    """``node`` alone in a model of ``model``'s opsets, so that `onnx.reference` runs
    the op version the model was written for."""
    inputs = [helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(v.dtype),
                                            list(v.shape)) for name, v in feeds.items()]
    outputs = [helper.make_value_info(name, onnx.TypeProto()) for name in node.output if name]
    graph = helper.make_graph([node], "fold", inputs, outputs)
    return helper.make_model(graph, opset_imports=list(model.opset_import),
                             ir_version=model.ir_version)


def _needed_nodes(graph: onnx.GraphProto, explained: str) -> set[int]:
    """Indices of the nodes the explained tensor depends on."""
    producers = {name: index for index, node in enumerate(graph.node)
                 for name in node.output if name}
    needed: set[int] = set()
    stack = [explained]
    while stack:
        index = producers.get(stack.pop())
        if index is None or index in needed:
            continue
        needed.add(index)
        stack.extend(t for t in graph.node[index].input if t)
        stack.extend(subgraph_reads(graph.node[index]))
    return needed


def build_graph(model: onnx.ModelProto, signature: Signature,
                example_shape: tuple[int, ...]) -> Graph:
    """The canonical graph of ``model`` for inputs of per-example ``example_shape``."""
    return GraphBuilder(model, signature, example_shape).build()
