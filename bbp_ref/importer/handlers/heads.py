"""Softmax, LogSoftmax and ReduceLogSumExp of data, expanded into primitives
(docs/math.md §7). As the graph's last ops Softmax/LogSoftmax never reach these handlers:
the model signature strips them and the logits are explained.

    Softmax(x)         = e * Reciprocal(s)      e = Exp(x), s = ReduceSum(e)
    LogSoftmax(x)      = x - Log(s)
    ReduceLogSumExp(x) = Log(s)

Evaluated stably with no extra node for the shift: the Exp node computes `exp(x - m)`
and the Log node `log(s) + m`, `m` the per-row maximum of `x` held constant (exact for
any `m`; see `engine.elementwise`). A Softmax of scores an attention mask added -inf to
makes those elements hard zeros of its Exp node (docs/math.md §7.5).
"""

from __future__ import annotations

import numpy as np

from ...engine import functions
from ...engine.affine import Reduction, Sum
from ...engine.elementwise import ShiftedExp, ShiftedLog, function_gate
from ...engine.functions import Function
from ...engine.products import Product
from ...engine.routes import Reshape
from ..context import SAME_BATCH_AXIS, NodeContext, handler, normalize_axis, per_example_axis
from ..values import Var


def _softmax_axes(ctx: NodeContext, data: Var) -> tuple[int, ...]:
    """Opset >= 13: the one ``axis`` (default -1); before: ``axis`` (default 1) and
    every axis after it (the input is coerced to 2-D there)."""
    if ctx.opset >= 13 and data.merged is not None:
        axis = normalize_axis(ctx, int(ctx.attr("axis", -1)), data.onnx_rank)
        if axis == data.merged.axis:
            raise ctx.error(f"normalizing along ONNX axis {axis}, which holds the batch "
                            f"{data.where_batch}, would mix examples")
        return (axis,)
    if data.merged is not None:
        raise ctx.error(f"before opset 13 this op flattens the axes from `axis` on; the "
                        f"batch is {data.where_batch}")
    if ctx.opset >= 13:
        return (per_example_axis(ctx, int(ctx.attr("axis", -1)), data.rank, data.batch_axis),)
    if data.batch_axis != 0:
        raise ctx.error("before opset 13 this op flattens the axes from `axis` on, which "
                        f"would include the batch at ONNX axis {data.batch_axis}")
    first = per_example_axis(ctx, int(ctx.attr("axis", 1)), data.rank)
    return tuple(range(first, len(data.shape)))


def _exp_sum(ctx: NodeContext, data: Var, axes: tuple[int, ...]) -> tuple[Var, Var]:
    exp = ctx.add(ShiftedExp(axes, _hard_zeros(ctx, data, axes)), [data], data.shape,
                  part="exp")
    kept = tuple(1 if a in axes else n for a, n in enumerate(data.shape))
    total = ctx.add(Reduction(axes, True, data.shape, np.asarray(1.0)), [exp], kept,
                    part="sum")
    return exp, total


def _hard_zeros(ctx: NodeContext, data: Var, axes: tuple[int, ...]) -> np.ndarray | None:
    """Where an attention mask added -inf to the scores (`Var.masked`, docs/math.md
    §7.5): the Softmax elements that are exactly 0. A row masked entirely has no
    softmax (0 / 0: NaN in PyTorch and onnxruntime) and is refused."""
    if data.masked is None:
        return None
    empty = np.broadcast_to(data.masked, (1, *data.shape)).all(
        axis=tuple(a + 1 for a in axes))
    if empty.any():
        row = [int(i) for i in np.argwhere(empty)[0][1:]]
        raise ctx.error(f"every element of a row of its input is -inf (an attention mask "
                        f"added by node {data.node!r} masks all of row {row} along "
                        f"per-example axes {list(axes)}): its softmax is 0 / 0")
    return data.masked


@handler("Softmax", batch_axis=SAME_BATCH_AXIS, merged_batch=True, masked_input=True)
def softmax(ctx: NodeContext) -> list[Var]:
    data = ctx.var(0)
    exp, total = _exp_sum(ctx, data, _softmax_axes(ctx, data))
    inverse = ctx.add(function_gate(Function("Reciprocal", functions.reciprocal)), [total],
                      total.shape, part="reciprocal")
    return [ctx.add(Product([exp.shape, inverse.shape]), [exp, inverse], data.shape)]


@handler("LogSoftmax", batch_axis=SAME_BATCH_AXIS, merged_batch=True)
def log_softmax(ctx: NodeContext) -> list[Var]:
    data = ctx.var(0)
    axes = _softmax_axes(ctx, data)
    _, total = _exp_sum(ctx, data, axes)
    log = ctx.add(ShiftedLog(axes), [total], total.shape, part="log", context=[data])
    difference = Sum([np.asarray(1.0), np.asarray(-1.0)], None, [data.shape, log.shape])
    return [ctx.add(difference, [data, log], data.shape)]


@handler("ReduceLogSumExp")
def reduce_log_sum_exp(ctx: NodeContext) -> list[Var]:
    data = ctx.var(0)
    value = ctx.optional_const(1, "axes") if ctx.opset >= 18 else ctx.attr("axes")
    if value is None or np.asarray(value).size == 0:
        if ctx.attr("noop_with_empty_axes", 0):
            raise ctx.error("noop_with_empty_axes=1 with no axes is not supported")
        raise ctx.error("reducing over all axes would reduce over the batch axis")
    axes = tuple(sorted({per_example_axis(ctx, int(a), data.rank)
                         for a in np.asarray(value).ravel()}))
    _, total = _exp_sum(ctx, data, axes)
    if ctx.attr("keepdims", 1):
        return [ctx.add(ShiftedLog(axes), [total], total.shape, context=[data])]
    log = ctx.add(ShiftedLog(axes), [total], total.shape, part="log", context=[data])
    shape = tuple(n for a, n in enumerate(data.shape) if a not in axes)
    return [ctx.add(Reshape(log.shape, shape), [log], shape)]
