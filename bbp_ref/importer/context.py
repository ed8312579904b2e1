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
from .values import Const, MergedBatch, PendingPad, Value, Var

if TYPE_CHECKING:
    from .builder import GraphBuilder

Handler = Callable[["NodeContext"], Sequence[Value]]
_HANDLERS: dict[str, list[tuple[int, Handler]]] = {}

# How a handler treats a moved batch axis (docs/math.md §7.5): SAME_BATCH_AXIS handlers
# act element-wise, so all their data inputs must hold the batch at one ONNX axis,
# which their output keeps; OWN_BATCH_AXIS handlers place it themselves. Every other
# handler sees only tensors whose batch is at ONNX axis 0.
SAME_BATCH_AXIS = "same"
OWN_BATCH_AXIS = "own"
_BATCH_AXIS_MODES: dict[Handler, str] = {}
# Handlers that also accept a batch merged into another axis (`Var.merged`): element-wise
# ones see such a tensor in the engine's layout (batch first, then the ONNX shape for a
# batch of one), OWN_BATCH_AXIS ones read `Var.merged` themselves.
_MERGED_BATCH: set[Handler] = set()
# Handlers that read a tensor holding an attention mask's -inf (`Var.masked`,
# docs/math.md §7.5): only Softmax.
_MASKED_INPUT: set[Handler] = set()


def handler(*op_types: str, since: int = 1, batch_axis: str | None = None,
            merged_batch: bool = False,
            masked_input: bool = False) -> Callable[[Handler], Handler]:
    """Register a handler for ``op_types`` from opset ``since`` on (the newest
    registration not newer than the model's opset is used). ``batch_axis``:
    `SAME_BATCH_AXIS` or `OWN_BATCH_AXIS` if the handler understands a moved batch axis;
    ``merged_batch``: whether it also understands a batch merged into another axis;
    ``masked_input``: whether it reads an attention mask's -inf (`Var.masked`)."""

    def register(fn: Handler) -> Handler:
        for op_type in op_types:
            entries = _HANDLERS.setdefault(op_type, [])
            entries.append((since, fn))
            entries.sort(key=lambda entry: entry[0])
        if batch_axis is not None:
            _BATCH_AXIS_MODES[fn] = batch_axis
        if merged_batch:
            _MERGED_BATCH.add(fn)
        if masked_input:
            _MASKED_INPUT.add(fn)
        return fn

    return register


def _check_merged_batch(ctx: NodeContext, fn: Handler) -> None:
    """A batch merged into another axis (docs/math.md §7.5) reaches only the handlers
    that opted in; an element-wise one needs every data input merged the same way and
    no constant of higher rank (it would add axes before the merged one)."""
    data = [(i, v) for i, v in enumerate(ctx.inputs) if isinstance(v, Var)]
    merged = [(i, v) for i, v in data if v.merged is not None]
    if not merged:
        return
    if fn not in _MERGED_BATCH:
        i, v = merged[0]
        raise ctx.error(f"input {i} holds the batch {v.where_batch} (a Reshape merged it "
                        "with another axis); this op does not support a merged batch")
    if _BATCH_AXIS_MODES.get(fn) == OWN_BATCH_AXIS:
        return
    layouts = {(v.merged, v.onnx_rank) for _, v in data}
    if len(layouts) > 1:
        found = "; ".join(f"input {i} {v.where_batch}" for i, v in data)
        raise ctx.error("data operands hold the batch in different places and would "
                        f"broadcast examples against each other ({found})")
    rank = merged[0][1].onnx_rank
    for i, value in enumerate(ctx.inputs):
        if isinstance(value, Const) and np.ndim(value.value) > rank:
            raise ctx.error(f"input {i} of shape {list(np.shape(value.value))} has more "
                            f"axes than the data tensor, whose batch is "
                            f"{merged[0][1].where_batch}; broadcasting would move it")


def check_masked_inputs(ctx: NodeContext, fn: Handler) -> None:
    """A tensor holding an attention mask's -inf (docs/math.md §7.5) is exact only as
    the input of a Softmax, where the masked elements are hard zeros; anywhere else the
    -inf would be an infinite local bias."""
    if fn in _MASKED_INPUT:
        return
    for i, value in enumerate(ctx.inputs):
        if isinstance(value, Var) and value.masked is not None:
            raise ctx.error(f"input {i} holds -inf (an attention mask, which node "
                            f"{value.node!r} adds to the scores); such a tensor is "
                            "supported only as the input of a Softmax (docs/math.md §7.5)")


def check_batch_axes(ctx: NodeContext, fn: Handler) -> None:
    """Refuse, before the handler runs, data inputs whose batch axis it cannot place:
    a moved batch axis for a handler that did not opt in, or data inputs that disagree
    on it for an element-wise handler."""
    _check_merged_batch(ctx, fn)
    mode = _BATCH_AXIS_MODES.get(fn)
    if mode == OWN_BATCH_AXIS:
        return
    data = [(i, v) for i, v in enumerate(ctx.inputs) if isinstance(v, Var)]
    # NumPy broadcasting aligns the last axes: the batch must sit as far from the end
    from_end = {v.rank - v.batch_axis for _, v in data}
    if mode == SAME_BATCH_AXIS and len(from_end) > 1:
        found = ", ".join(f"input {i} of rank {v.rank} at axis {v.batch_axis}" for i, v in data)
        raise ctx.error("data operands of different ranks would broadcast along the batch "
                        f"axis: they hold it at different axes counted from the end ({found})")
    if mode is None:
        for i, v in data:
            if v.batch_axis != 0:
                raise ctx.error(
                    f"input {i} holds the batch at ONNX axis {v.batch_axis} (moved there "
                    "by a Transpose or a recurrent op); this op is supported only with the "
                    "batch at axis 0")


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

    @property
    def batch_axis(self) -> int:
        """The ONNX batch axis the data inputs share (0 if they disagree or there are
        none); what an element-wise op's output keeps."""
        axes = {v.batch_axis for v in self.inputs if isinstance(v, Var)}
        return axes.pop() if len(axes) == 1 else 0

    @property
    def merged_batch(self) -> MergedBatch | None:
        """The merged batch the data inputs share (docs/math.md §7.5), if they share
        one; what an element-wise op's output keeps."""
        merged = {v.merged for v in self.inputs if isinstance(v, Var)}
        return merged.pop() if len(merged) == 1 else None

    def add(self, operator: Operator, inputs: Sequence[Var], shape: tuple[int, ...],
            part: str | None = None, context: Sequence[Var] = (), output: int = 0,
            batch_axis: int | None = None,
            merged: MergedBatch | None | str = "inputs") -> Var:
        """Create the canonical node for this ONNX node's first output (``output``: for
        another output, named ``<node>:<output>``), or, with ``part``, an intermediate
        node of its expansion named ``<node>/<part>``. ``context``: operands the
        operator reads that are not structural inputs. ``batch_axis``: the ONNX axis of
        the batch in the result (default: the one the data inputs share); ``merged``:
        where a batch merged into another axis sits in the result (default: where the
        data inputs share it, docs/math.md §7.5)."""
        var = self.builder.add_node(self, operator, inputs, tuple(int(n) for n in shape),
                                    part, context, output)
        axis = self.batch_axis if batch_axis is None else batch_axis
        where = self.merged_batch if isinstance(merged, str) else merged
        if where is not None:
            return Var(var.node, var.shape, 0, where)
        return var if axis == 0 else Var(var.node, var.shape, axis)

    def check_size(self, shape: Sequence[int], what: str = "the output") -> None:
        """Refuse a tensor or table of per-example ``shape`` beyond the memory budget
        before it is built (``bbp_ref.budget``)."""
        budget.check_elements([int(n) for n in shape], f"{what} of node {self.name!r} "
                              f"({self.op_type}) of shape {[int(n) for n in shape]} per example")

    def output_used(self, index: int) -> bool:
        return index < len(self.node.output) and self.builder.is_used(self.node.output[index])


def batched_constant(ctx: NodeContext, value: np.ndarray, rank: int, what: str,
                     batch_axis: int = 0) -> np.ndarray:
    """A constant operand of an element-wise op against a tensor of ONNX ``rank``
    (batch axis included) whose batch is at ONNX ``batch_axis``, as a float64 array of
    that rank with the batch axis first and of length 1 (the engine's layout). A
    constant that would broadcast along, or add axes before, the batch axis is
    rejected."""
    value = np.asarray(value, dtype=np.float64)
    if value.ndim > rank:
        raise ctx.error(f"{what} of shape {list(value.shape)} has more axes than the data "
                        "tensor; broadcasting it would add axes before the batch axis")
    value = np.reshape(value, (1,) * (rank - value.ndim) + tuple(value.shape))
    if np.shape(value)[batch_axis] != 1:
        raise ctx.error(f"{what} of shape {list(value.shape)} varies along the batch axis")
    return value if batch_axis == 0 else np.moveaxis(value, batch_axis, 0)


def normalize_axis(ctx: NodeContext, axis: int, rank: int) -> int:
    """An ONNX axis (may be negative) of a tensor of ONNX ``rank``, checked in range."""
    if not -rank <= axis < rank:
        raise ctx.error(f"axis {axis} is out of range for a tensor of rank {rank}")
    return axis % rank


def per_example_axis(ctx: NodeContext, axis: int, rank: int, batch_axis: int = 0) -> int:
    """The per-example axis for ONNX ``axis``; the batch axis itself is rejected."""
    axis = normalize_axis(ctx, axis, rank)
    if axis == batch_axis:
        raise ctx.error(f"operating on the batch axis (axis {batch_axis}) is not supported")
    return axis if axis < batch_axis else axis - 1
