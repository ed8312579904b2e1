"""Max / Min of data tensors (and constants) and ReduceMax / ReduceMin: selection gates
(docs/math.md §7.3). Ties go to the first operand, resp. the lowest index."""

from __future__ import annotations

import numpy as np

from ...engine.selection import Extremum, ReduceExtremum
from ..context import NodeContext, batched_constant, handler, per_example_axis
from ..values import Const, Var


def _extremum(ctx: NodeContext, largest: bool) -> list[Var]:
    data = [v for v in ctx.inputs if isinstance(v, Var)]
    if not data or any(not isinstance(v, (Var, Const)) for v in ctx.inputs):
        ctx.var(0)  # raises a clear error (a pending Pad, a missing input)
        raise ctx.error("every input must be a tensor")
    rank = max(v.rank for v in data)
    if any(v.rank != rank for v in data):
        raise ctx.error("data operands of different ranks would broadcast along the "
                        "batch axis")
    inputs: list[tuple[int, ...] | np.ndarray] = []
    for k, value in enumerate(ctx.inputs):
        if isinstance(value, Var):
            inputs.append(value.shape)
        else:
            assert isinstance(value, Const)
            inputs.append(batched_constant(ctx, value.value, rank, f"input {k}"))
    try:
        shape = np.broadcast_shapes(*(s if isinstance(s, tuple) else s.shape[1:]
                                      for s in inputs))
    except ValueError as exc:
        raise ctx.error(f"the inputs do not broadcast: {exc}") from exc
    if len(shape) != rank - 1:
        raise ctx.error("a constant would add axes before the batch axis")
    ctx.check_size((len(inputs), *shape), "the candidates")
    if len(inputs) == 1 and shape == data[0].shape:
        return [data[0]]
    return [ctx.add(Extremum(inputs, tuple(shape), largest), data, shape)]


@handler("Max")
def max_(ctx: NodeContext) -> list[Var]:
    return _extremum(ctx, largest=True)


@handler("Min")
def min_(ctx: NodeContext) -> list[Var]:
    return _extremum(ctx, largest=False)


def _reduce_extremum(ctx: NodeContext, largest: bool) -> list[Var]:
    data = ctx.var(0)
    value = ctx.optional_const(1, "axes") if ctx.opset >= 18 else ctx.attr("axes")
    if value is None or np.asarray(value).size == 0:
        if ctx.opset >= 18 and ctx.attr("noop_with_empty_axes", 0):
            return [data]
        raise ctx.error("reducing over all axes would reduce over the batch axis")
    axes = tuple(sorted({per_example_axis(ctx, int(a), data.rank)
                         for a in np.asarray(value).ravel()}))
    if any(data.shape[a] == 0 for a in axes):  # the result would be -inf/+inf, no arg-max
        raise ctx.error("reducing an empty set: there is no element to select")
    operator = ReduceExtremum(axes, bool(ctx.attr("keepdims", 1)), data.shape, largest)
    return [ctx.add(operator, [data], operator.out_shape)]


@handler("ReduceMax")
def reduce_max(ctx: NodeContext) -> list[Var]:
    return _reduce_extremum(ctx, largest=True)


@handler("ReduceMin")
def reduce_min(ctx: NodeContext) -> list[Var]:
    return _reduce_extremum(ctx, largest=False)
