"""ReduceL1, ReduceL2, ReduceSumSquare and ReduceLogSum expanded into primitives by
their ONNX function bodies (docs/math.md §7.4):

    ReduceL1(x)        = ReduceSum(Abs(x))          (piecewise linear)
    ReduceL2(x)        = Sqrt(ReduceSum(x^2))
    ReduceSumSquare(x) = ReduceSum(x^2)
    ReduceLogSum(x)    = Log(ReduceSum(x))

`x^2` is one `Pow` gate where the bodies write `Mul(x, x)`: a product of a tensor with
itself hands both halves of its mass to the same element, so `B(x)` is the same.
"""

from __future__ import annotations

import numpy as np

from ..compose import Composer
from ..context import NodeContext, handler, per_example_axis
from ..values import Var


def _axes(ctx: NodeContext, x: Var) -> tuple[int, ...]:
    """The reduced per-example axes: the ``axes`` input from opset 18, the attribute
    before. No axes means all axes, the batch axis included, and is refused; so is
    ``noop_with_empty_axes=1`` with no axes (the implementations disagree on whether
    the function is still applied element-wise)."""
    value = ctx.optional_const(1, "axes") if ctx.opset >= 18 else ctx.attr("axes")
    if value is None or np.asarray(value).size == 0:
        if ctx.attr("noop_with_empty_axes", 0):
            raise ctx.error("noop_with_empty_axes=1 with no axes is not supported")
        raise ctx.error("reducing over all axes would reduce over the batch axis")
    return tuple(sorted({per_example_axis(ctx, int(a), x.rank)
                         for a in np.asarray(value).ravel()}))


def _keepdims(ctx: NodeContext) -> bool:
    return bool(ctx.attr("keepdims", 1))


@handler("ReduceL1")
def reduce_l1(ctx: NodeContext) -> list[Var]:
    c, x = Composer(ctx), ctx.var(0)
    return [c.reduce(c.absolute(x, "abs"), _axes(ctx, x), None, mean=False,
                     keepdims=_keepdims(ctx))]


@handler("ReduceL2")
def reduce_l2(ctx: NodeContext) -> list[Var]:
    c, x = Composer(ctx), ctx.var(0)
    total = c.reduce(c.power(x, 2.0, "square"), _axes(ctx, x), "sum", mean=False,
                     keepdims=_keepdims(ctx))
    return [c.sqrt(total, None)]


@handler("ReduceSumSquare")
def reduce_sum_square(ctx: NodeContext) -> list[Var]:
    c, x = Composer(ctx), ctx.var(0)
    return [c.reduce(c.power(x, 2.0, "square"), _axes(ctx, x), None, mean=False,
                     keepdims=_keepdims(ctx))]


@handler("ReduceLogSum")
def reduce_log_sum(ctx: NodeContext) -> list[Var]:
    c, x = Composer(ctx), ctx.var(0)
    total = c.reduce(x, _axes(ctx, x), "sum", mean=False, keepdims=_keepdims(ctx))
    return [c.log(total, None)]
