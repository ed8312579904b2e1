"""Relu, LeakyRelu, PRelu, Clip: element-wise gates."""

from __future__ import annotations

import numpy as np

from ...engine.gates import PiecewiseLinear
from ..context import SAME_BATCH_AXIS, NodeContext, batched_constant, handler
from ..values import Var

# Clip bounds at or beyond these magnitudes (float32's range) mean "no bound".
_NO_BOUND = float(np.finfo(np.float32).max)


@handler("Relu", batch_axis=SAME_BATCH_AXIS)
def relu(ctx: NodeContext) -> list[Var]:
    data = ctx.var(0)
    return [ctx.add(PiecewiseLinear(0.0), [data], data.shape)]


@handler("LeakyRelu", batch_axis=SAME_BATCH_AXIS)
def leaky_relu(ctx: NodeContext) -> list[Var]:
    data = ctx.var(0)
    return [ctx.add(PiecewiseLinear(float(ctx.attr("alpha", 0.01))), [data], data.shape)]


@handler("PRelu", batch_axis=SAME_BATCH_AXIS)
def prelu(ctx: NodeContext) -> list[Var]:
    data = ctx.var(0, "X")
    slope = ctx.float_const(1, "slope")
    if ctx.opset < 7 and slope.ndim == 1 and data.rank > 2 and slope.size == data.shape[0]:
        slope = slope.reshape(-1, *([1] * (data.rank - 2)))  # per channel (PRelu-6)
    slope = batched_constant(ctx, slope, data.rank, "slope", data.batch_axis)
    if np.broadcast_shapes(slope.shape[1:], data.shape) != data.shape:
        raise ctx.error(f"slope of shape {list(slope.shape)} does not broadcast to the data")
    return [ctx.add(PiecewiseLinear(slope), [data], data.shape)]


def _bound(value: object | None) -> float | None:
    if value is None:
        return None
    array = np.asarray(value, dtype=np.float64)
    if array.size != 1:
        raise ValueError
    bound = float(array.reshape(()))
    return None if abs(bound) >= _NO_BOUND else bound


def _clip(ctx: NodeContext, lower: object | None, upper: object | None) -> list[Var]:
    data = ctx.var(0)
    try:
        low, high = _bound(lower), _bound(upper)
    except ValueError:
        raise ctx.error("min and max must be scalars") from None
    if low is None and high is None:
        return [data]
    return [ctx.add(PiecewiseLinear(0.0, low, high), [data], data.shape)]


@handler("Clip", batch_axis=SAME_BATCH_AXIS)
def clip_attributes(ctx: NodeContext) -> list[Var]:
    return _clip(ctx, ctx.attr("min"), ctx.attr("max"))


@handler("Clip", since=11, batch_axis=SAME_BATCH_AXIS)
def clip_inputs(ctx: NodeContext) -> list[Var]:
    return _clip(ctx, ctx.optional_const(1, "min"), ctx.optional_const(2, "max"))
