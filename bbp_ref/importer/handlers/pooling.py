"""MaxPool, AveragePool, their global forms, and ReduceMean / ReduceSum."""

from __future__ import annotations

import numpy as np

from ...engine.affine import AveragePool, Reduction
from ...engine.gates import MaxPool
from ...engine.operator import AffineOperator
from ...engine.orphans import WithEmptyOutputs
from ...engine.windows import Window
from ..context import SAME_BATCH_AXIS, NodeContext, handler, per_example_axis
from ..values import PendingPad, Var
from .window_attributes import read_window

Pads = tuple[tuple[int, ...], tuple[int, ...]]


def _pool_window(ctx: NodeContext, data: Var, extra_pads: Pads | None = None) -> Window:
    """The pool's window; ``extra_pads``: a zero Pad folded into its padding (then a
    window may lie in that Pad's zeros alone)."""
    if len(data.shape) < 2:
        raise ctx.error(f"X must be [N, C, spatial...], got per-example {list(data.shape)}")
    kernel = ctx.attr("kernel_shape")
    if kernel is None or len(kernel) != len(data.shape) - 1:
        raise ctx.error("kernel_shape must give one size per spatial axis")
    return read_window(ctx, data.shape[1:], tuple(kernel), extra_pads,
                       ceil_mode=bool(ctx.attr("ceil_mode", 0)),
                       allow_empty=extra_pads is not None)


@handler("MaxPool")
def max_pool(ctx: NodeContext) -> list[Var]:
    data = ctx.var(0)
    if ctx.output_used(1):
        raise ctx.error("the Indices output is not supported")
    window = _pool_window(ctx, data)
    return [ctx.add(MaxPool(window), [data], (data.shape[0], *window.out_spatial))]


@handler("AveragePool")
def average_pool(ctx: NodeContext) -> list[Var]:
    """Window sum times 1 / divisor. A zero Pad before it (PyTorch's form of a padded
    average pool at opset 9, and of LRN) is folded into its padding, its zeros counted
    in the divisor: padding positions are not inputs, as for a Conv (docs/math.md §7.4).
    Windows lying in that Pad's zeros alone read no input (`WithEmptyOutputs`)."""
    source, extra = ctx.inputs[0], None
    if isinstance(source, PendingPad):
        extra = (source.pads_begin, source.pads_end)
        source = source.source
    if not isinstance(source, Var):
        raise ctx.error("input 0 (X) must depend on the model input")
    window = _pool_window(ctx, source, extra)
    divisor = _divisor(window, extra, bool(ctx.attr("count_include_pad", 0)))
    if not divisor.all():
        raise ctx.error("some output windows lie entirely in the padding, with nothing to "
                        "average (count_include_pad=0)")
    scale = (1.0 / divisor).reshape(1, 1, *window.out_spatial)
    operator: AffineOperator = AveragePool(window, scale)
    empty = window.window_sum(np.ones((1, 1, *window.in_spatial))) == 0
    if empty.any():
        operator = WithEmptyOutputs(operator, empty.astype(np.float64), [source.shape])
    return [ctx.add(operator, [source], (source.shape[0], *window.out_spatial))]


def _divisor(window: Window, extra_pads: Pads | None, count_include_pad: bool) -> np.ndarray:
    """How many elements each window averages: the input and a folded Pad's zeros, and
    with ``count_include_pad`` the pool's own declared padding too."""
    dims = len(window.kernel)
    extra_begin, extra_end = extra_pads or ((0,) * dims, (0,) * dims)
    counted = np.zeros(window.padded_spatial)
    if count_include_pad:
        region = tuple(slice(0, b + n + e) for b, n, e in
                       zip(window.pads_begin, window.in_spatial, window.pads_end))
    else:
        region = tuple(slice(b - xb, b + n + xe) for b, n, xb, xe in
                       zip(window.pads_begin, window.in_spatial, extra_begin, extra_end))
    counted[region] = 1.0
    return window.padded_window_sum(counted)


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
