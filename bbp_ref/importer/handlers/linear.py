"""Gemm and MatMul with a constant weight: affine `MatMul` nodes."""

from __future__ import annotations

import numpy as np

from ...engine.affine import MatMul
from ...engine.products import MatMulProduct
from ..context import OWN_BATCH_AXIS, NodeContext, batched_constant, handler
from ..values import Const, Var


@handler("Gemm", merged_batch=True)
def gemm(ctx: NodeContext) -> list[Var]:
    """`Y = alpha * A' B' + beta * C` with A the data ([N, K]) and B constant; A may
    also be `[T * N, K]`, the batch merged into its rows (docs/math.md §7.5)."""
    if isinstance(ctx.inputs[1], Var):
        raise ctx.error("input B depends on the model input: Gemm's operands are 2-D, so "
                        "B's axis 0 (contracted, or an output axis with transB) would be "
                        "the batch axis and mix examples (docs/math.md §7.3)")
    if ctx.attr("transA", 0):
        raise ctx.error("transA=1 on the data input would move the batch axis")
    data = ctx.var(0, "A")
    if data.merged is not None:
        return [_gemm_merged_rows(ctx, data)]
    if len(data.shape) != 1:
        raise ctx.error(f"input A must be 2-D, got per-example shape {list(data.shape)}")
    weight = _gemm_weight(ctx, data.shape[0])
    bias = None
    if ctx.has_input(2):
        c = batched_constant(ctx, ctx.float_const(2, "C"), 2, "C")
        bias = np.broadcast_to(ctx.attr("beta", 1.0) * c, (1, weight.shape[1])).copy()
    return [ctx.add(MatMul(weight, bias, data.shape), [data], (weight.shape[1],))]


def _gemm_weight(ctx: NodeContext, columns: int) -> np.ndarray:
    """`alpha B'` (``B`` transposed with ``transB``), checked against A's ``columns``."""
    b = ctx.float_const(1, "B")
    if b.ndim != 2:
        raise ctx.error(f"input B must be 2-D, got shape {list(b.shape)}")
    weight = ctx.attr("alpha", 1.0) * (b.T if ctx.attr("transB", 0) else b)
    if weight.shape[0] != columns:
        raise ctx.error(f"A has {columns} columns but B' has {weight.shape[0]} rows")
    return weight


def _gemm_merged_rows(ctx: NodeContext, data: Var) -> Var:
    """Gemm of `A` = `[T * N, K]` (the batch merged into the rows): per example the
    rows `[T, K]` times the same `B'`, plus `C`."""
    if data.merged is None or data.merged.axis != 0 or len(data.shape) != 2:
        raise ctx.error(f"input A holds the batch {data.where_batch}; only a batch merged "
                        "into the rows of a 2-D A is supported")
    weight = _gemm_weight(ctx, data.shape[1])
    shape = (data.shape[0], weight.shape[1])
    bias = None
    if ctx.has_input(2):
        c = batched_constant(ctx, ctx.float_const(2, "C"), 3, "C")
        bias = np.broadcast_to(ctx.attr("beta", 1.0) * c, (1, *shape)).copy()
    return ctx.add(MatMul(weight, bias, data.shape), [data], shape)


@handler("MatMul", batch_axis=OWN_BATCH_AXIS, merged_batch=True)
def matmul(ctx: NodeContext) -> list[Var]:
    """`data @ W` or `W @ data` with a constant `W` (NumPy matmul semantics)."""
    left, right = ctx.inputs[0], ctx.inputs[1]
    if isinstance(left, Var) and isinstance(right, Var):
        return [_matmul_product(ctx, left, right)]
    moved = next(v for v in (left, right) if isinstance(v, Var))
    if moved.merged is not None:
        return [_matmul_merged_batch(ctx, moved, left is moved)]
    if moved.batch_axis != 0:
        return [_matmul_moved_batch(ctx, moved, left is moved)]
    if isinstance(left, Var):
        data, side, weight = left, "right", ctx.float_const(1, "B")
    else:
        data, side, weight = ctx.var(1, "B"), "left", ctx.float_const(0, "A")
        if not isinstance(left, Const):
            raise ctx.error("input A must be a constant")
    if weight.ndim < 2:
        raise ctx.error(f"the constant operand must be at least 2-D, got {list(weight.shape)}")
    if side == "left" and len(data.shape) < 2:
        raise ctx.error("a constant left operand needs a data operand of rank >= 3")
    if weight.ndim > max(data.rank, 2) or (weight.ndim == data.rank >= 3
                                           and weight.shape[0] != 1):
        raise ctx.error(f"the constant operand of shape {list(weight.shape)} would broadcast "
                        "along the batch axis")
    example = np.zeros((1, *data.shape))
    try:
        shape = (example @ weight if side == "right" else weight @ example).shape[1:]
    except ValueError as exc:
        raise ctx.error(f"shapes do not match: {exc}") from exc
    return [ctx.add(MatMul(weight, None, data.shape, side), [data], shape)]


def _matmul_moved_batch(ctx: NodeContext, data: Var, data_left: bool) -> Var:
    """`data @ W` or `W @ data` for a 2-D constant `W` and a data tensor whose batch is
    at ONNX axis `b` > 0 off the contracted axis (docs/math.md §7.5): per example the
    same product, the batch staying at `b`. `data @ W` contracts the last axis only,
    `W @ data` acts on the last two."""
    weight = ctx.float_const(1 if data_left else 0, "the constant operand")
    free = data.rank - (1 if data_left else 2)  # the batch must lie before these axes
    if weight.ndim != 2 or data.batch_axis >= free:
        raise ctx.error(f"with the batch at ONNX axis {data.batch_axis} of a rank-"
                        f"{data.rank} tensor, only a 2-D constant operand that does not "
                        "act on the batch axis is supported")
    side = "right" if data_left else "left"
    example = np.zeros((1, *data.shape))
    try:
        shape = (example @ weight if data_left else weight @ example).shape[1:]
    except ValueError as exc:
        raise ctx.error(f"shapes do not match: {exc}") from exc
    return ctx.add(MatMul(weight, None, data.shape, side), [data], shape)


def _matmul_merged_batch(ctx: NodeContext, data: Var, data_left: bool) -> Var:
    """`data @ W` or `W @ data` for a constant `W` and a data tensor whose batch is
    merged into an axis that the product does not contract (docs/math.md §7.5): per
    example the same product, `W`'s leading axes broadcast against the per-example
    shape (the ONNX shape for a batch of one), the batch staying where it was."""
    assert data.merged is not None
    weight = ctx.float_const(1 if data_left else 0, "the constant operand")
    rank = data.onnx_rank
    contracted = rank - 1 if data_left else rank - 2
    if weight.ndim < 2 or weight.ndim > rank or rank < 2 or data.merged.axis == contracted:
        raise ctx.error(f"the batch is {data.where_batch}; only a constant operand of rank "
                        f"2 to {rank} that does not contract that axis is supported")
    example = np.zeros((1, *data.shape))
    try:
        shape = (example @ weight if data_left else weight @ example).shape[1:]
    except ValueError as exc:
        raise ctx.error(f"shapes do not match: {exc}") from exc
    side = "right" if data_left else "left"
    return ctx.add(MatMul(weight, None, data.shape, side), [data], shape)


def _matmul_product(ctx: NodeContext, left: Var, right: Var) -> Var:
    """MatMul of two data tensors: a product node (docs/math.md §7). Both need the same
    rank (>= 3 with the batch axis), or their batch axes would not line up; a moved
    batch axis must be the same for both and off the two matrix axes."""
    if left.merged != right.merged or (left.merged is not None and (
            left.onnx_rank != right.onnx_rank or left.merged.axis >= left.onnx_rank - 2)):
        raise ctx.error(f"the operands hold the batch {left.where_batch} and "
                        f"{right.where_batch}; a MatMul of two data tensors needs it merged "
                        "the same way into an axis before the two matrix axes")
    if left.batch_axis != right.batch_axis or left.batch_axis >= max(left.rank - 2, 1):
        raise ctx.error(f"the operands hold the batch at ONNX axes {left.batch_axis} and "
                        f"{right.batch_axis}; a MatMul of two data tensors needs the same "
                        "batch axis before the two matrix axes")
    if left.rank != right.rank or left.rank < 3:
        raise ctx.error(f"a MatMul of two data tensors needs operands of the same rank >= 3 "
                        f"(batch axis included), got {left.rank} and {right.rank}")
    try:
        shape = (np.zeros((1, *left.shape)) @ np.zeros((1, *right.shape))).shape[1:]
    except ValueError as exc:
        raise ctx.error(f"shapes do not match: {exc}") from exc
    return ctx.add(MatMulProduct([left.shape, right.shape]), [left, right], shape)
