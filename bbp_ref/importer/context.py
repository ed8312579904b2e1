"""What a handler sees of one ONNX node, and the registry of handlers by op type."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from onnx import helper

from .. import budget
from ..engine.operator import Operator
from ..errors import UnsupportedOpError
from .values import Const, PendingPad, Value, Var

if TYPE_CHECKING:
    from .builder import GraphBuilder

Handler = Callable[["NodeContext"], Sequence[Value]]
_HANDLERS: dict[str, list[tuple[int, Handler]]] = {}


def handler(*op_types: str, since: int = 1) -> Callable[[Handler], Handler]:
    """Register a handler for ``op_types`` from opset ``since`` on (the newest
    registration not newer than the model's opset is used)."""

    def register(fn: Handler) -> Handler:
        for op_type in op_types:
            entries = _HANDLERS.setdefault(op_type, [])
            entries.append((since, fn))
            entries.sort(key=lambda entry: entry[0])
        return fn

    return register


def find_handler(op_type: str, opset: int) -> Handler | None:
    chosen = None
    for since, fn in _HANDLERS.get(op_type, []):
        if since <= opset:
            chosen = fn
    return chosen


def supported_ops() -> list[str]:
    return sorted(_HANDLERS)


class NodeContext:
    """One ONNX node during import: its inputs as `Const`/`Var`/None, its attributes
    with the spec's defaults, and ``add`` to create the canonical node."""

    def __init__(self, node: onnx.NodeProto, name: str, opset: int,
                 inputs: list[Value | None], builder: GraphBuilder) -> None:
        self.node = node
        self.name = name
        self.opset = opset
        self.inputs = inputs
        self.builder = builder
        self._attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}

    @property
    def op_type(self) -> str:
        return self.node.op_type

    def error(self, reason: str) -> UnsupportedOpError:
        return UnsupportedOpError(self.op_type, self.name, reason)

    def attr(self, name: str, default: Any = None) -> Any:
        value = self._attributes.get(name, default)
        if isinstance(value, bytes):
            return value.decode()
        return value

    def has_input(self, index: int) -> bool:
        return index < len(self.inputs) and self.inputs[index] is not None

    def const(self, index: int, what: str) -> np.ndarray:
        value = self.inputs[index] if index < len(self.inputs) else None
        if not isinstance(value, Const):
            raise self.error(f"input {index} ({what}) must be a constant, not computed "
                             "from the model input")
        return value.value

    def optional_const(self, index: int, what: str, default: Any = None) -> Any:
        return self.const(index, what) if self.has_input(index) else default

    def var(self, index: int, what: str = "data") -> Var:
        value = self.inputs[index] if index < len(self.inputs) else None
        if isinstance(value, PendingPad):
            raise self.error("a Pad is only supported directly before a Conv "
                             f"(Pad node {value.node_name!r})")
        if not isinstance(value, Var):
            raise self.error(f"input {index} ({what}) must depend on the model input")
        return value

    def float_const(self, index: int, what: str) -> np.ndarray:
        return np.asarray(self.const(index, what), dtype=np.float64)

    def add(self, operator: Operator, inputs: Sequence[Var], shape: tuple[int, ...],
            part: str | None = None, context: Sequence[Var] = (), output: int = 0) -> Var:
        """Create the canonical node for this ONNX node's first output (``output``: for
        another output, named ``<node>:<output>``), or, with ``part``, an intermediate
        node of its expansion named ``<node>/<part>``. ``context``: operands the
        operator reads that are not structural inputs."""
        return self.builder.add_node(self, operator, inputs, tuple(int(n) for n in shape),
                                     part, context, output)

    def check_size(self, shape: Sequence[int], what: str = "the output") -> None:
        """Refuse a tensor or table of per-example ``shape`` beyond the memory budget
        before it is built (``bbp_ref.budget``)."""
        budget.check_elements([int(n) for n in shape], f"{what} of node {self.name!r} "
                              f"({self.op_type}) of shape {[int(n) for n in shape]} per example")

    def output_used(self, index: int) -> bool:
        return index < len(self.node.output) and self.builder.is_used(self.node.output[index])


def batched_constant(ctx: NodeContext, value: np.ndarray, rank: int, what: str) -> np.ndarray:
    """A constant operand of an element-wise op against a tensor of ONNX ``rank``
    (batch axis included), as a float64 array of that rank whose batch axis is 1.
    A constant that would broadcast along, or add axes before, the batch axis is
    rejected."""
    value = np.asarray(value, dtype=np.float64)
    if value.ndim > rank:
        raise ctx.error(f"{what} of shape {list(value.shape)} has more axes than the data "
                        "tensor; broadcasting it would add axes before the batch axis")
    value = np.reshape(value, (1,) * (rank - value.ndim) + tuple(value.shape))
    if np.shape(value)[0] != 1:
        raise ctx.error(f"{what} of shape {list(value.shape)} varies along the batch axis")
    return value


def normalize_axis(ctx: NodeContext, axis: int, rank: int) -> int:
    """An ONNX axis (may be negative) of a tensor of ONNX ``rank``, checked in range."""
    if not -rank <= axis < rank:
        raise ctx.error(f"axis {axis} is out of range for a tensor of rank {rank}")
    return axis % rank


def per_example_axis(ctx: NodeContext, axis: int, rank: int) -> int:
    """The per-example axis for ONNX ``axis``; the batch axis itself is rejected."""
    axis = normalize_axis(ctx, axis, rank)
    if axis == 0:
        raise ctx.error("operating on the batch axis (axis 0) is not supported")
    return axis - 1
