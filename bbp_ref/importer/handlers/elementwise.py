"""Element-wise affine ops: Add/Sub/Mul/Div with a constant, Add/Sub/Sum of data
tensors (residual connections), Neg, and BatchNormalization (inference); Mul of two
data tensors (a product node) and Div by a data tensor (Mul by its Reciprocal,
docs/math.md §7)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from ...engine import functions
from ...engine.affine import Scale, Sum
from ...engine.elementwise import function_gate
from ...engine.functions import Function
from ...engine.products import Product
from ...engine.routes import Reshape
from ..context import SAME_BATCH_AXIS, NodeContext, batched_constant, handler
from ..values import Const, Value, Var


def _legacy_aligned(ctx: NodeContext, value: np.ndarray, rank: int) -> np.ndarray:
    """Opset < 7 broadcasting: with ``broadcast=1`` and ``axis``, B aligns at ``axis``."""
    axis = ctx.attr("axis")
    if ctx.opset >= 7 or not ctx.attr("broadcast", 0) or axis is None:
        return value
    axis = axis % rank
    return value.reshape(value.shape + (1,) * (rank - axis - value.ndim))


def _constant_operand(ctx: NodeContext, index: int, data: Var) -> np.ndarray:
    value = _legacy_aligned(ctx, ctx.float_const(index, f"input {index}"), data.rank)
    return batched_constant(ctx, value, data.rank, f"input {index}", data.batch_axis)


def _lift(ctx: NodeContext, data: Var, rank: int) -> Var:
    """``data`` with leading length-1 axes up to ONNX ``rank``, as NumPy broadcasting
    against a higher-rank operand does; this moves its batch axis (docs/math.md §7.5)."""
    extra = rank - data.rank
    if extra <= 0:
        return data
    shape = (1,) * extra + data.shape
    return ctx.add(Reshape(data.shape, shape), [data], shape, part="broadcast",
                   batch_axis=data.batch_axis + extra)


def _with_constant(ctx: NodeContext, data_index: int) -> Var:
    """The data operand, lifted to the rank of the other (constant) operand."""
    constant = ctx.inputs[1 - data_index]
    rank = np.ndim(constant.value) if isinstance(constant, Const) else 0
    return _lift(ctx, ctx.var(data_index), rank)


def _scale(ctx: NodeContext, data: Var, scale: np.ndarray,
           bias: np.ndarray | None) -> list[Var]:
    shape = np.broadcast_shapes(data.shape, scale.shape[1:],
                                () if bias is None else bias.shape[1:])
    if len(shape) != len(data.shape):
        raise ctx.error("the constant operand would add axes before the batch axis")
    if shape != data.shape:  # a constant broadcasts the data up: `A` maps onto the output
        scale = np.broadcast_to(scale, (1, *shape))
    return [ctx.add(Scale(scale, bias, data.shape), [data], tuple(shape),
                    batch_axis=data.batch_axis)]


def _sum(ctx: NodeContext, terms: Sequence[tuple[float, Value | None]]) -> list[Var]:
    """`sum_j sign_j * input_j` over data tensors and constants."""
    ranks = [np.ndim(v.value) if isinstance(v, Const) else v.rank if isinstance(v, Var) else 0
             for _, v in terms]
    rank = max(ranks)
    data = [(sign, _lift(ctx, v, rank)) for sign, v in terms if isinstance(v, Var)]
    batch = data[0][1].batch_axis
    bias = None
    for sign, value in terms:
        if isinstance(value, Const):
            c = sign * batched_constant(ctx, np.asarray(value.value, np.float64), rank,
                                        "a constant operand", batch)
            bias = c if bias is None else bias + c
        elif not isinstance(value, Var):
            raise ctx.error("every operand must be a tensor")
    if len(data) == 1:
        sign, var = data[0]
        if var.rank != rank:
            raise ctx.error("a constant operand of higher rank than the data is not supported")
        return _scale(ctx, var, np.full((1,) * var.rank, sign), bias)
    if any(v.rank != rank for _, v in data):
        raise ctx.error("data operands of different ranks would broadcast along the "
                        "batch axis")
    shapes = [v.shape for _, v in data]
    shape = np.broadcast_shapes(*shapes, *(() if bias is None else (bias.shape[1:],)))
    signs = [np.asarray(sign) for sign, _ in data]
    if shape != np.broadcast_shapes(*shapes):  # the constant broadcasts the data up
        signs[0] = np.broadcast_to(signs[0], (1, *shape))
    operator = Sum(signs, bias, shapes)
    return [ctx.add(operator, [v for _, v in data], tuple(shape), batch_axis=batch)]


def _add_constant(ctx: NodeContext, data_index: int) -> list[Var]:
    """`u + c`. Where `c` is -inf (an attention mask, docs/math.md §7.5) the node adds 0
    and its output records the positions (`Var.masked`), which only a Softmax reads:
    there they are hard zeros, so the -inf never becomes a local bias."""
    data = _with_constant(ctx, data_index)
    constant = _constant_operand(ctx, 1 - data_index, data)
    masked = np.isneginf(constant)
    if not masked.any() or not np.isfinite(constant[~masked]).all():
        return _scale(ctx, data, np.ones((1,) * data.rank), constant)
    (out,) = _scale(ctx, data, np.ones((1,) * data.rank), np.where(masked, 0.0, constant))
    return [replace(out, masked=masked)]


@handler("Add", batch_axis=SAME_BATCH_AXIS, merged_batch=True)
def add(ctx: NodeContext) -> list[Var]:
    a, b = ctx.inputs[0], ctx.inputs[1]
    if isinstance(a, Var) and isinstance(b, Const):
        return _add_constant(ctx, 0)
    if isinstance(b, Var) and isinstance(a, Const):
        return _add_constant(ctx, 1)
    return _sum(ctx, [(1.0, ctx.var(0)), (1.0, ctx.var(1))])


@handler("Sub", batch_axis=SAME_BATCH_AXIS, merged_batch=True)
def sub(ctx: NodeContext) -> list[Var]:
    a, b = ctx.inputs[0], ctx.inputs[1]
    if isinstance(a, Var) and isinstance(b, Const):
        a = _with_constant(ctx, 0)
        return _scale(ctx, a, np.ones((1,) * a.rank), -_constant_operand(ctx, 1, a))
    if isinstance(b, Var) and isinstance(a, Const):
        b = _with_constant(ctx, 1)
        return _scale(ctx, b, -np.ones((1,) * b.rank), _constant_operand(ctx, 0, b))
    return _sum(ctx, [(1.0, ctx.var(0)), (-1.0, ctx.var(1))])


@handler("Sum", batch_axis=SAME_BATCH_AXIS, merged_batch=True)
def sum_(ctx: NodeContext) -> list[Var]:
    return _sum(ctx, [(1.0, v) for v in ctx.inputs])


def _product(ctx: NodeContext, a: Var, b: Var, part: str | None = None) -> Var:
    a, b = _lift(ctx, a, b.rank), _lift(ctx, b, a.rank)
    if a.rank != b.rank:
        raise ctx.error("data operands of different ranks would broadcast along the "
                        "batch axis")
    try:
        shape = np.broadcast_shapes(a.shape, b.shape)
    except ValueError as exc:
        raise ctx.error(f"shapes {list(a.shape)} and {list(b.shape)} do not broadcast") from exc
    return ctx.add(Product([a.shape, b.shape]), [a, b], shape, part=part,
                   batch_axis=a.batch_axis)


@handler("Mul", batch_axis=SAME_BATCH_AXIS, merged_batch=True)
def mul(ctx: NodeContext) -> list[Var]:
    a, b = ctx.inputs[0], ctx.inputs[1]
    if isinstance(a, Var) and isinstance(b, Var):
        return [_product(ctx, a, b)]
    if isinstance(a, Var):
        a = _with_constant(ctx, 0)
        return _scale(ctx, a, _constant_operand(ctx, 1, a), None)
    data = _with_constant(ctx, 1)
    return _scale(ctx, data, _constant_operand(ctx, 0, data), None)


@handler("Div", batch_axis=SAME_BATCH_AXIS, merged_batch=True)
def div(ctx: NodeContext) -> list[Var]:
    """By a constant: a `Scale`. By a data tensor `v`: `u * Reciprocal(v)` (the
    documented expansion, docs/math.md §7), the Reciprocal a node ``<name>/reciprocal``."""
    if isinstance(ctx.inputs[1], Var):
        denominator = ctx.var(1)
        inverse = ctx.add(function_gate(Function("Reciprocal", functions.reciprocal)),
                          [denominator], denominator.shape, part="reciprocal")
        numerator = ctx.inputs[0]
        if isinstance(numerator, Var):
            return [_product(ctx, numerator, inverse)]
        return _scale(ctx, inverse, _constant_operand(ctx, 0, inverse), None)
    data = _with_constant(ctx, 0)
    divisor = _constant_operand(ctx, 1, data)
    if (divisor == 0).any():
        raise ctx.error("division by zero")
    return _scale(ctx, data, 1.0 / divisor, None)


@handler("Neg", batch_axis=SAME_BATCH_AXIS, merged_batch=True)
def neg(ctx: NodeContext) -> list[Var]:
    data = ctx.var(0)
    return _scale(ctx, data, -np.ones((1,) * data.rank), None)


@handler("BatchNormalization")
def batch_normalization(ctx: NodeContext) -> list[Var]:
    """Inference-mode BN: `s = gamma / sqrt(var + eps)`, `h = s * u + (beta - s * mean)`
    along the channel axis (per element with ``spatial=0``, opsets < 9)."""
    data = ctx.var(0, "X")
    if ctx.attr("training_mode", 0) or any(ctx.output_used(i) for i in range(1, 5)):
        raise ctx.error("training mode (running statistics outputs) is not supported")
    gamma, beta, mean, var = (ctx.float_const(i, what) for i, what in
                              enumerate(("scale", "B", "input_mean", "input_var"), start=1))
    epsilon = float(ctx.attr("epsilon", 1e-5))
    if (var + epsilon <= 0).any():
        raise ctx.error("input_var + epsilon must be positive")
    s = gamma / np.sqrt(var + epsilon)
    shift = beta - s * mean
    if ctx.opset < 9 and not ctx.attr("spatial", 1):
        shape = (1, *s.shape)
    else:
        if s.ndim != 1 or s.shape[0] != data.shape[0]:
            raise ctx.error(f"statistics of shape {list(s.shape)} do not match "
                            f"{data.shape[0]} channels")
        shape = (1, -1) + (1,) * (len(data.shape) - 1)
    return _scale(ctx, data, s.reshape(shape), shift.reshape(shape))
