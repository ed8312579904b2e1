"""Routes (Flatten, Reshape, Transpose, Squeeze, Unsqueeze, Concat, Slice), the ops
that pass a tensor through unchanged (Identity, Dropout, float Cast), and Shape/Size
of a data tensor, which are constants."""

from __future__ import annotations

import numpy as np
from onnx import helper

from ...engine.embed import Embed
from ...engine.routes import Concat, Reshape, Slice, Transpose
from ..context import (
    OWN_BATCH_AXIS,
    SAME_BATCH_AXIS,
    NodeContext,
    batched_constant,
    handler,
    normalize_axis,
    per_example_axis,
)
from ..values import Const, Value, Var


def _reshaped(ctx: NodeContext, data: Var, shape: tuple[int, ...],
              batch_axis: int = 0) -> list[Var]:
    """``data`` with per-example ``shape`` and the batch at ONNX ``batch_axis``."""
    shape = tuple(int(n) for n in shape)
    if shape == data.shape:
        return [Var(data.node, data.shape, batch_axis)]
    return [ctx.add(Reshape(data.shape, shape), [data], shape, batch_axis=batch_axis)]


@handler("Identity", batch_axis=SAME_BATCH_AXIS)
def identity(ctx: NodeContext) -> list[Value]:
    return [ctx.var(0)]


@handler("Dropout", batch_axis=SAME_BATCH_AXIS)
def dropout(ctx: NodeContext) -> list[Value]:
    if ctx.opset >= 12 and ctx.has_input(2) and bool(np.asarray(ctx.const(2, "training_mode"))):
        raise ctx.error("training_mode=True is not supported (inference only)")
    if ctx.opset < 7 and not ctx.attr("is_test", 0):
        raise ctx.error("is_test=0 (training mode) is not supported")
    if ctx.output_used(1):
        raise ctx.error("the mask output is not supported")
    return [ctx.var(0)]


def _float_cast(ctx: NodeContext, elem_type: int) -> list[Value]:
    dtype = helper.tensor_dtype_to_np_dtype(elem_type)
    if not np.issubdtype(dtype, np.floating):
        raise ctx.error(f"casting a data tensor to {dtype} is not piecewise linear")
    return [ctx.var(0)]


@handler("Cast", batch_axis=SAME_BATCH_AXIS)
def cast(ctx: NodeContext) -> list[Value]:
    return _float_cast(ctx, int(ctx.attr("to")))


@handler("CastLike", batch_axis=OWN_BATCH_AXIS)  # input 1 only lends its type
def cast_like(ctx: NodeContext) -> list[Value]:
    """A cast to the type of another tensor; casting a constant to the type of a data
    tensor (as unoptimised dynamo exports do for a zero bias) stays a constant."""
    source, like = ctx.inputs[0], ctx.inputs[1]
    if isinstance(source, Const):
        return [Const(np.asarray(source.value, dtype=np.float64))]
    dtype = like.value.dtype if isinstance(like, Const) else np.dtype(np.float32)
    return _float_cast(ctx, helper.np_dtype_to_tensor_dtype(dtype))


@handler("Flatten")
def flatten(ctx: NodeContext) -> list[Var]:
    data = ctx.var(0)
    axis = int(ctx.attr("axis", 1))
    axis = axis + data.rank if axis < 0 else axis
    if not 0 <= axis <= data.rank:
        raise ctx.error(f"axis {axis} is out of range for a tensor of rank {data.rank}")
    if axis == 0 or int(np.prod(data.shape[: axis - 1])) != 1:
        raise ctx.error(f"Flatten with axis={axis} merges the batch axis with others")
    return _reshaped(ctx, data, (int(np.prod(data.shape[axis - 1:])),))


@handler("Reshape", since=5, batch_axis=OWN_BATCH_AXIS)
def reshape(ctx: NodeContext) -> list[Var]:
    data = ctx.var(0)
    target = [int(n) for n in np.asarray(ctx.const(1, "shape")).ravel()]
    if data.batch_axis != 0:
        return _reshape_moved_batch(ctx, data, target)
    full = (1, *data.shape)  # batch axis taken as 1, as shape subgraphs were folded
    if not ctx.attr("allowzero", 0):
        target = [full[i] if n == 0 and i < len(full) else n for i, n in enumerate(target)]
    known = int(np.prod([n for n in target if n != -1]))
    if target.count(-1) > 1 or any(n < -1 for n in target):
        raise ctx.error(f"invalid target shape {target}")
    if -1 in target:
        if known == 0 or int(np.prod(full)) % known:
            raise ctx.error(f"cannot reshape {list(full)} to {target}")
        target[target.index(-1)] = int(np.prod(full)) // known
    if not target or target[0] != 1 or int(np.prod(target)) != int(np.prod(full)):
        raise ctx.error(f"reshaping per-example shape {list(data.shape)} to {target} "
                        "does not keep the batch axis first")
    return _reshaped(ctx, data, tuple(target[1:]))


def _reshape_moved_batch(ctx: NodeContext, data: Var, target: list[int]) -> list[Var]:
    """A Reshape of a tensor whose batch sits at ONNX axis `b` > 0 (docs/math.md §7.5):
    the target (written for a batch of one) must keep a length-1 axis `b'` with as
    many elements before it as before `b`, so that each example's elements keep their
    order. A 0 copying axis `b` marks `b'`; otherwise `b'` must be the only such axis."""
    full = data.onnx_shape
    copied = [i for i, n in enumerate(target) if n == 0 and not ctx.attr("allowzero", 0)]
    target = [full[i] if i in copied and i < len(full) else n for i, n in enumerate(target)]
    if target.count(-1) > 1 or any(n < -1 for n in target):
        raise ctx.error(f"invalid target shape {target}")
    if -1 in target:
        known = int(np.prod([n for n in target if n != -1]))
        if known == 0 or int(np.prod(full)) % known:
            raise ctx.error(f"cannot reshape {list(full)} to {target}")
        target[target.index(-1)] = int(np.prod(full)) // known
    if int(np.prod(target)) != int(np.prod(full)):
        raise ctx.error(f"cannot reshape {list(full)} to {target}")
    before = int(np.prod(full[:data.batch_axis]))
    candidates = [j for j, n in enumerate(target)
                  if n == 1 and int(np.prod(target[:j])) == before]
    if data.batch_axis in copied and data.batch_axis in candidates:
        candidates = [data.batch_axis]
    if len(candidates) != 1:
        raise ctx.error(
            f"the batch is at ONNX axis {data.batch_axis} of {list(full)} (batch of one); "
            f"reshaping to {target} " + ("merges it with other axes" if not candidates
                                          else "leaves it ambiguous where the batch goes"))
    batch = candidates[0]
    return _reshaped(ctx, data, tuple(target[:batch] + target[batch + 1:]), batch)


@handler("Transpose", batch_axis=OWN_BATCH_AXIS)
def transpose(ctx: NodeContext) -> list[Var]:
    """A permutation of the per-example axes; moving the batch axis needs no node (the
    engine keeps the batch first), only a new ``batch_axis`` (docs/math.md §7.5)."""
    data = ctx.var(0)
    perm = ctx.attr("perm")
    perm = list(range(data.rank))[::-1] if perm is None else [int(p) for p in perm]
    if sorted(perm) != list(range(data.rank)):
        raise ctx.error(f"perm {perm} is not a permutation of {data.rank} axes")
    batch = perm.index(data.batch_axis)
    example_perm = tuple(data.example_axis(p) for p in perm if p != data.batch_axis)
    if example_perm == tuple(range(len(example_perm))):
        return [Var(data.node, data.shape, batch)]
    shape = tuple(data.shape[p] for p in example_perm)
    return [ctx.add(Transpose(example_perm), [data], shape, batch_axis=batch)]


def _axes(ctx: NodeContext, since_input: int) -> list[int] | None:
    if ctx.opset >= since_input:
        value = ctx.optional_const(1, "axes")
    else:
        value = ctx.attr("axes")
    return None if value is None else [int(a) for a in np.asarray(value).ravel()]


@handler("Squeeze", batch_axis=OWN_BATCH_AXIS)
def squeeze(ctx: NodeContext) -> list[Var]:
    data = ctx.var(0)
    axes = _axes(ctx, 13)
    if axes is None:
        drop = {a for a, n in enumerate(data.shape) if n == 1}
    else:
        drop = {per_example_axis(ctx, a, data.rank, data.batch_axis) for a in axes}
        if any(data.shape[a] != 1 for a in drop):
            raise ctx.error(f"cannot squeeze axes {axes} of shape {list(data.onnx_shape)}")
    batch = data.batch_axis - sum(1 for a in drop if a < data.batch_axis)
    return _reshaped(ctx, data, tuple(n for a, n in enumerate(data.shape) if a not in drop),
                     batch)


@handler("Unsqueeze", batch_axis=OWN_BATCH_AXIS)
def unsqueeze(ctx: NodeContext) -> list[Var]:
    """Inserting axes before the batch axis moves it (docs/math.md §7.5)."""
    data = ctx.var(0)
    axes = _axes(ctx, 13)
    if not axes:
        raise ctx.error("axes are required")
    rank = data.rank + len(axes)
    inserted = {normalize_axis(ctx, a, rank) for a in axes}
    if len(inserted) != len(axes):
        raise ctx.error(f"axes {axes} repeat an axis")
    kept = [a for a in range(rank) if a not in inserted]
    batch = kept[data.batch_axis]
    dims = iter(data.onnx_shape)
    full = [1 if a in inserted else next(dims) for a in range(rank)]
    return _reshaped(ctx, data, tuple(full[:batch] + full[batch + 1:]), batch)


def _concat_with_constants(ctx: NodeContext) -> list[Var]:
    """Data and constants concatenated (a class token before patch embeddings): an
    `Embed` node whose constant elements are local bias (docs/math.md §7)."""
    data = [v for v in ctx.inputs if isinstance(v, Var)]
    rank, batch = data[0].rank, data[0].batch_axis
    axis = per_example_axis(ctx, int(ctx.attr("axis", 1)), rank, batch)
    index_parts, bias_parts, offset = [], [], 0
    for i, value in enumerate(ctx.inputs):
        if isinstance(value, Var):
            size = int(np.prod(value.shape))
            index_parts.append(offset + np.arange(size).reshape(value.shape))
            bias_parts.append(np.zeros(value.shape))
            offset += size
        elif isinstance(value, Const):
            constant = batched_constant(ctx, value.value, rank, f"input {i}", batch)[0]
            index_parts.append(np.full(constant.shape, -1))
            bias_parts.append(constant)
        else:
            ctx.var(i)  # raises a clear error
    try:
        index = np.concatenate(index_parts, axis=axis)
        bias = np.concatenate(bias_parts, axis=axis)
    except ValueError as exc:
        raise ctx.error(f"shapes do not match off the Concat axis: {exc}") from exc
    operator = Embed([v.shape for v in data], index, bias[None])
    return [ctx.add(operator, data, index.shape)]


@handler("Concat", batch_axis=SAME_BATCH_AXIS)
def concat(ctx: NodeContext) -> list[Var]:
    if any(isinstance(v, Const) for v in ctx.inputs):
        return _concat_with_constants(ctx)
    parts = [ctx.var(i) for i in range(len(ctx.inputs))]
    rank = parts[0].rank
    if any(p.rank != rank for p in parts):
        raise ctx.error("inputs have different ranks")
    axis = per_example_axis(ctx, int(ctx.attr("axis", 1)), rank, parts[0].batch_axis)
    rest = {p.shape[:axis] + p.shape[axis + 1:] for p in parts}
    if len(rest) != 1:
        raise ctx.error(f"shapes {[list(p.shape) for p in parts]} differ off the Concat axis")
    if len(parts) == 1:
        return [parts[0]]
    sizes = [p.shape[axis] for p in parts]
    shape = parts[0].shape[:axis] + (sum(sizes),) + parts[0].shape[axis + 1:]
    return [ctx.add(Concat(axis, sizes), parts, shape)]


def _slice_arguments(ctx: NodeContext) -> tuple[list[int], list[int], list[int] | None,
                                                 list[int] | None]:
    def ints(value: object) -> list[int]:
        return [int(v) for v in np.asarray(value).ravel()]

    if ctx.opset < 10:
        axes = ctx.attr("axes")
        return ctx.attr("starts"), ctx.attr("ends"), axes, None
    axes = ctx.optional_const(3, "axes")
    steps = ctx.optional_const(4, "steps")
    return (ints(ctx.const(1, "starts")), ints(ctx.const(2, "ends")),
            None if axes is None else ints(axes), None if steps is None else ints(steps))


# An end at least this large means "to the end" (exporters write INT32_MAX or INT64_MAX).
_TO_THE_END = 2**31 - 1


@handler("Slice", batch_axis=SAME_BATCH_AXIS)
def slice_(ctx: NodeContext) -> list[Var]:
    data = ctx.var(0)
    starts, ends, axes, steps = _slice_arguments(ctx)
    axes = list(range(len(starts))) if axes is None else list(axes)
    steps = [1] * len(starts) if steps is None else list(steps)
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise ctx.error("starts, ends, axes and steps must have the same length")
    index = [slice(None)] * len(data.shape)
    for start, end, axis, step in zip(starts, ends, axes, steps):
        if step == 0:
            raise ctx.error("steps must be non-zero")
        axis = normalize_axis(ctx, int(axis), data.rank)
        if axis == data.batch_axis:
            if step == 1 and start == 0 and end >= _TO_THE_END:
                continue  # the whole batch, whatever its size
            raise ctx.error("slicing the batch axis is not supported (only the whole batch, "
                            f"start 0 and end >= {_TO_THE_END})")
        index[data.example_axis(axis)] = slice(int(start), int(end), int(step))
    shape = np.empty(data.shape, dtype=np.bool_)[tuple(index)].shape
    if any(n == 0 for n in shape):
        raise ctx.error("the slice is empty")
    if shape == data.shape and all(s == slice(None) or s.step == 1 for s in index):
        return [data]
    return [ctx.add(Slice(data.shape, tuple(index)), [data], shape)]


@handler("Shape", batch_axis=OWN_BATCH_AXIS)
def shape_(ctx: NodeContext) -> list[Const]:
    data = ctx.var(0)
    dims = np.array(data.onnx_shape, dtype=np.int64)
    start, end = int(ctx.attr("start", 0)), ctx.attr("end")
    return [Const(dims[start:None if end is None else int(end)])]


@handler("Size", batch_axis=OWN_BATCH_AXIS)
def size(ctx: NodeContext) -> list[Const]:
    return [Const(np.array(int(np.prod(ctx.var(0).shape)), dtype=np.int64))]
