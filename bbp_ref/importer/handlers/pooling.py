"""MaxPool, AveragePool, their global forms, and ReduceMean / ReduceSum."""

from __future__ import annotations

import numpy as np

from ...engine.affine import AveragePool, Reduction
from ...engine.gates import MaxPool
from ...engine.windows import Window
from ..context import SAME_BATCH_AXIS, NodeContext, handler, per_example_axis
from ..values import Var
from .window_attributes import read_window


def _pool_window(ctx: NodeContext, data: Var) -> Window:
    if len(data.shape) < 2:
        raise ctx.error(f"X must be [N, C, spatial...], got per-example {list(data.shape)}")
    kernel = ctx.attr("kernel_shape")
    if kernel is None or len(kernel) != len(data.shape) - 1:
        raise ctx.error("kernel_shape must give one size per spatial axis")
    return read_window(ctx, data.shape[1:], tuple(kernel), ceil_mode=bool(ctx.attr("ceil_mode", 0)))


@handler("MaxPool")
def max_pool(ctx: NodeContext) -> list[Var]:
    data = ctx.var(0)
    if ctx.output_used(1):
        raise ctx.error("the Indices output is not supported")
    window = _pool_window(ctx, data)
    return [ctx.add(MaxPool(window), [data], (data.shape[0], *window.out_spatial))]


@handler("AveragePool")
def average_pool(ctx: NodeContext) -> list[Var]:
    data = ctx.var(0)
    window = _pool_window(ctx, data)
    if ctx.attr("count_include_pad", 0):
        counted = np.zeros(window.padded_spatial)
        declared = tuple(slice(0, b + n + e) for b, n, e in
                         zip(window.pads_begin, window.in_spatial, window.pads_end))
        counted[declared] = 1.0
        divisor = window.padded_window_sum(counted)
    else:
        divisor = window.window_sum(np.ones(window.in_spatial))
    scale = (1.0 / divisor).reshape(1, 1, *window.out_spatial)
    return [ctx.add(AveragePool(window, scale), [data], (data.shape[0], *window.out_spatial))]


@handler("GlobalAveragePool")
def global_average_pool(ctx: NodeContext) -> list[Var]:
    data = ctx.var(0)
    if len(data.shape) < 2:
        raise ctx.error(f"X must be [N, C, spatial...], got per-example {list(data.shape)}")
    axes = tuple(range(1, len(data.shape)))
    scale = np.asarray(1.0 / int(np.prod(data.shape[1:])))
    shape = (data.shape[0],) + (1,) * len(axes)
    return [ctx.add(Reduction(axes, True, data.shape, scale), [data], shape)]


@handler("GlobalMaxPool")
def global_max_pool(ctx: NodeContext) -> list[Var]:
    data = ctx.var(0)
    if len(data.shape) < 2:
        raise ctx.error(f"X must be [N, C, spatial...], got per-example {list(data.shape)}")
    spatial = data.shape[1:]
    ones = (1,) * len(spatial)
    zeros = (0,) * len(spatial)
    window = Window(spatial, spatial, ones, ones, zeros, zeros)
    return [ctx.add(MaxPool(window), [data], (data.shape[0], *ones))]


def _reduce(ctx: NodeContext, mean: bool) -> list[Var]:
    data = ctx.var(0)
    if ctx.opset >= (18 if mean else 13):
        axes_value = ctx.optional_const(1, "axes")
    else:
        axes_value = ctx.attr("axes")
    keepdims = bool(ctx.attr("keepdims", 1))
    if axes_value is None or np.asarray(axes_value).size == 0:
        if ctx.attr("noop_with_empty_axes", 0):
            return [data]
        raise ctx.error("reducing over all axes would reduce over the batch axis")
    axes = tuple(sorted({per_example_axis(ctx, int(a), data.rank, data.batch_axis)
                         for a in np.asarray(axes_value).ravel()}))
    batch = data.batch_axis if keepdims else data.batch_axis - sum(
        1 for a in axes if a < data.batch_axis)
    count = int(np.prod([data.shape[a] for a in axes]))
    scale = np.asarray(1.0 / count if mean else 1.0)
    if keepdims:
        shape = tuple(1 if a in axes else n for a, n in enumerate(data.shape))
    else:
        shape = tuple(n for a, n in enumerate(data.shape) if a not in axes)
    return [ctx.add(Reduction(axes, keepdims, data.shape, scale), [data], shape,
                    batch_axis=batch)]


@handler("ReduceMean", batch_axis=SAME_BATCH_AXIS)
def reduce_mean(ctx: NodeContext) -> list[Var]:
    return _reduce(ctx, mean=True)


@handler("ReduceSum", batch_axis=SAME_BATCH_AXIS)
def reduce_sum(ctx: NodeContext) -> list[Var]:
    return _reduce(ctx, mean=False)
