"""Routes (Flatten, Reshape, Transpose, Squeeze, Unsqueeze, Concat, Slice), the ops
that pass a tensor through unchanged (Identity, Dropout, float Cast), and Shape/Size
of a data tensor, which are constants."""

from __future__ import annotations

import numpy as np
from onnx import helper

from ...engine.embed import Embed
from ...engine.routes import Concat, Reshape, Slice, Transpose
from ...errors import UnsupportedOpError
from ..context import (
    OWN_BATCH_AXIS,
    SAME_BATCH_AXIS,
    NodeContext,
    batched_constant,
    handler,
    normalize_axis,
    per_example_axis,
)
from ..values import Const, MergedBatch, Value, Var


def _reshaped(ctx: NodeContext, data: Var, shape: tuple[int, ...],
              batch_axis: int = 0, merged: MergedBatch | None = None) -> list[Var]:
    """``data`` with per-example ``shape`` and the batch at ONNX ``batch_axis`` (or
    ``merged`` into an axis, docs/math.md §7.5)."""
    shape = tuple(int(n) for n in shape)
    if shape == data.shape:
        return [Var(data.node, data.shape, 0 if merged else batch_axis, merged)]
    return [ctx.add(Reshape(data.shape, shape), [data], shape, batch_axis=batch_axis,
                    merged=merged)]


@handler("Identity", batch_axis=SAME_BATCH_AXIS, merged_batch=True)
def identity(ctx: NodeContext) -> list[Value]:
    return [ctx.var(0)]


@handler("Dropout", batch_axis=SAME_BATCH_AXIS, merged_batch=True)
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


@handler("Cast", batch_axis=SAME_BATCH_AXIS, merged_batch=True)
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


@handler("Reshape", since=5, batch_axis=OWN_BATCH_AXIS, merged_batch=True)
def reshape(ctx: NodeContext) -> list[Var]:
    data = ctx.var(0)
    target = [int(n) for n in np.asarray(ctx.const(1, "shape")).ravel()]
    if data.batch_axis == 0 and data.merged is None:
        try:
            return _reshape_batch_first(ctx, data, target)
        except UnsupportedOpError as refusal:
            # merging the batch into an axis: placed as for a moved batch, the refusal
            # of the batch-first rule standing if that fails too
            try:
                tracked = _reshape_tracking_batch(ctx, data)
            except UnsupportedOpError:
                tracked = None
            if tracked is None:
                raise refusal from None
            return tracked
    tracked = _reshape_tracking_batch(ctx, data)
    if tracked is not None:
        return tracked
    if data.merged is not None:
        raise ctx.error(f"the batch is {data.where_batch}; the target shape {target} is "
                        "written for a batch of one only (its element count does not "
                        "grow with the batch), so where the batch goes is ambiguous")
    return _reshape_moved_batch(ctx, data, target)


def _reshape_batch_first(ctx: NodeContext, data: Var, target: list[int]) -> list[Var]:
    """A Reshape of a tensor whose batch is at ONNX axis 0 that keeps it there."""
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


def _resolved_target(ctx: NodeContext, target: list[int],
                     full: tuple[int, ...]) -> list[int] | None:
    """``target`` with its 0s (unless ``allowzero``) and -1 filled in from ``full``, or
    None if it does not fit ``full``."""
    if not ctx.attr("allowzero", 0):
        target = [full[i] if n == 0 and i < len(full) else n for i, n in enumerate(target)]
    if target.count(-1) > 1 or any(n < -1 for n in target):
        return None
    if -1 in target:
        known = int(np.prod([n for n in target if n != -1]))
        if known == 0 or int(np.prod(full)) % known:
            return None
        target[target.index(-1)] = int(np.prod(full)) // known
    return target if int(np.prod(target)) == int(np.prod(full)) else None


def _reshape_tracking_batch(ctx: NodeContext, data: Var) -> list[Var] | None:
    """A Reshape placed by its target for a batch of two (docs/math.md §7.5): the
    target is read for a batch of one and of two (a target folded from the data's
    Shape has both values, a literal one the same; its 0s and -1 follow the batch).
    Exactly one axis `j` must double: the batch is in it. The ONNX tensor is, flattened,
    `[before, N, after]`; with `P` the per-example length of the target axes before `j`
    the batch is a factor of axis `j` with `O = before / P` positions major to it, so
    its own axis if the axis has length 1 for a batch of one, else merged into it with
    `inner = t_j / O` positions minor to it. None if the target does not grow with the
    batch (written for a batch of one only)."""
    shape = ctx.inputs[1]
    assert isinstance(shape, Const)
    one = _resolved_target(ctx, [int(n) for n in np.asarray(shape.value).ravel()],
                           data.onnx_shape)
    two = _resolved_target(ctx, [int(n) for n in np.asarray(shape.value_at_two).ravel()],
                           data.onnx_shape_for(2))
    if one is None or two is None or len(one) != len(two) \
            or int(np.prod(two)) != 2 * int(np.prod(one)):
        return None
    grown = [j for j, (a, b) in enumerate(zip(one, two)) if a != b]
    if len(grown) != 1 or two[grown[0]] != 2 * one[grown[0]]:
        raise ctx.error(f"the target shape is {one} for a batch of one and {two} for a "
                        "batch of two: the batch is not one factor of one axis")
    j = grown[0]
    before, preceding = data.elements_before_batch, int(np.prod(one[:j]))
    if before % preceding or one[j] % (before // preceding):
        raise ctx.error(f"reshaping {list(data.onnx_shape)} (batch {data.where_batch}) to "
                        f"{one} (a batch of one) would interleave the examples' elements")
    major = before // preceding
    if one[j] == 1:
        return _reshaped(ctx, data, tuple(one[:j] + one[j + 1:]), j)
    ctx.check_size(one)
    return _reshaped(ctx, data, tuple(one), merged=MergedBatch(j, one[j] // major))


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


@handler("Transpose", batch_axis=OWN_BATCH_AXIS, merged_batch=True)
def transpose(ctx: NodeContext) -> list[Var]:
    """A permutation of the per-example axes; moving the batch axis needs no node (the
    engine keeps the batch first), only a new ``batch_axis`` (docs/math.md §7.5). A
    merged batch moves with its axis."""
    data = ctx.var(0)
    perm = ctx.attr("perm")
    rank = data.onnx_rank
    perm = list(range(rank))[::-1] if perm is None else [int(p) for p in perm]
    if sorted(perm) != list(range(rank)):
        raise ctx.error(f"perm {perm} is not a permutation of {rank} axes")
    if data.merged is not None:
        merged = MergedBatch(perm.index(data.merged.axis), data.merged.inner)
        if perm == sorted(perm):
            return [Var(data.node, data.shape, 0, merged)]
        shape = tuple(data.shape[p] for p in perm)
        return [ctx.add(Transpose(tuple(perm)), [data], shape, merged=merged)]
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


@handler("Squeeze", batch_axis=OWN_BATCH_AXIS, merged_batch=True)
def squeeze(ctx: NodeContext) -> list[Var]:
    data = ctx.var(0)
    axes = _axes(ctx, 13)
    if data.merged is not None:
        return _squeeze_merged(ctx, data, axes)
    if axes is None:
        drop = {a for a, n in enumerate(data.shape) if n == 1}
    else:
        drop = {per_example_axis(ctx, a, data.rank, data.batch_axis) for a in axes}
        if any(data.shape[a] != 1 for a in drop):
            raise ctx.error(f"cannot squeeze axes {axes} of shape {list(data.onnx_shape)}")
    batch = data.batch_axis - sum(1 for a in drop if a < data.batch_axis)
    return _reshaped(ctx, data, tuple(n for a, n in enumerate(data.shape) if a not in drop),
                     batch)


def _squeeze_merged(ctx: NodeContext, data: Var, axes: list[int] | None) -> list[Var]:
    """Squeeze of a tensor whose batch is merged into an axis (docs/math.md §7.5): the
    squeezed axes must be named and must not be that axis."""
    assert data.merged is not None
    if axes is None:
        raise ctx.error(f"the batch is {data.where_batch}; a Squeeze without axes is "
                        "ambiguous for it (the axes of length 1 depend on the batch size)")
    drop = {normalize_axis(ctx, a, data.onnx_rank) for a in axes}
    if data.merged.axis in drop or any(data.shape[a] != 1 for a in drop):
        raise ctx.error(f"cannot squeeze axes {axes} of {list(data.onnx_shape)} (a batch "
                        f"of one), whose batch is {data.where_batch}")
    merged = MergedBatch(data.merged.axis - sum(1 for a in drop if a < data.merged.axis),
                         data.merged.inner)
    shape = tuple(n for a, n in enumerate(data.shape) if a not in drop)
    return _reshaped(ctx, data, shape, merged=merged)


@handler("Unsqueeze", batch_axis=OWN_BATCH_AXIS, merged_batch=True)
def unsqueeze(ctx: NodeContext) -> list[Var]:
    """Inserting axes before the batch axis moves it (docs/math.md §7.5)."""
    data = ctx.var(0)
    axes = _axes(ctx, 13)
    if not axes:
        raise ctx.error("axes are required")
    rank = data.onnx_rank + len(axes)
    inserted = {normalize_axis(ctx, a, rank) for a in axes}
    if len(inserted) != len(axes):
        raise ctx.error(f"axes {axes} repeat an axis")
    kept = [a for a in range(rank) if a not in inserted]
    if data.merged is not None:
        dims = iter(data.shape)
        shape = tuple(1 if a in inserted else next(dims) for a in range(rank))
        merged = MergedBatch(kept[data.merged.axis], data.merged.inner)
        return _reshaped(ctx, data, shape, merged=merged)
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


@handler("Concat", batch_axis=SAME_BATCH_AXIS, merged_batch=True)
def concat(ctx: NodeContext) -> list[Var]:
    """With a batch merged into an axis (docs/math.md §7.5) every part holds it the same
    way (checked centrally), so the per-example Concat is exact along any axis, the
    merged one included: the parts' blocks of `inner` elements follow each other for
    every example."""
    merged = ctx.merged_batch
    if any(isinstance(v, Const) for v in ctx.inputs):
        if merged is not None:
            where = next(v for v in ctx.inputs if isinstance(v, Var)).where_batch
            raise ctx.error(f"the batch is {where}; a constant operand of Concat cannot "
                            "grow with the batch size along the merged axis")
        return _concat_with_constants(ctx)
    parts = [ctx.var(i) for i in range(len(ctx.inputs))]
    rank = parts[0].rank
    if any(p.rank != rank for p in parts):
        raise ctx.error("inputs have different ranks")
    if merged is not None:
        axis = normalize_axis(ctx, int(ctx.attr("axis", 1)), parts[0].onnx_rank)
    else:
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


@handler("Slice", batch_axis=SAME_BATCH_AXIS, merged_batch=True)
def slice_(ctx: NodeContext) -> list[Var]:
    data = ctx.var(0)
    starts, ends, axes, steps = _slice_arguments(ctx)
    axes = list(range(len(starts))) if axes is None else list(axes)
    steps = [1] * len(starts) if steps is None else list(steps)
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise ctx.error("starts, ends, axes and steps must have the same length")
    index = [slice(None)] * len(data.shape)
    for k, (start, end, axis, step) in enumerate(zip(starts, ends, axes, steps)):
        if step == 0:
            raise ctx.error("steps must be non-zero")
        axis = normalize_axis(ctx, int(axis), data.onnx_rank)
        if data.merged is not None and axis == data.merged.axis:
            index[axis] = _merged_axis_slice(ctx, data, k, int(start), int(end), int(step))
            continue
        if data.merged is None and axis == data.batch_axis:
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


def _merged_axis_slice(ctx: NodeContext, data: Var, k: int, start: int, end: int,
                       step: int) -> slice:
    """The per-example slice for slice ``k`` (``start``, ``end``, ``step`` at a batch of
    one) along the axis a batch is merged into (docs/math.md §7.5): only whole blocks of
    `inner` elements, step 1, whose bounds for a batch of two (`Const.at_two` of starts
    and ends; a literal is the same at both) are twice those for one; then every example
    keeps the same blocks. Anything else would take some examples' elements only."""
    assert data.merged is not None
    length, inner = data.shape[data.merged.axis], data.merged.inner
    first, last, _ = slice(start, end).indices(length)
    start_two, end_two = _slice_bounds_at_two(ctx, k, start, end)
    first_two, last_two, _ = slice(start_two, end_two).indices(2 * length)
    if step != 1 or first % inner or last % inner or last <= first \
            or (first_two, last_two) != (2 * first, 2 * last):
        raise ctx.error(
            f"slicing ONNX axis {data.merged.axis}, which holds the batch "
            f"({data.where_batch}), from {start} to {end} step {step} (for a batch of two "
            f"from {start_two} to {end_two}) does not keep whole blocks of {inner} "
            "elements of every example; it would take some examples' elements only")
    return slice(first, last)


def _slice_bounds_at_two(ctx: NodeContext, k: int, start: int, end: int) -> tuple[int, int]:
    """Start and end ``k`` of a Slice for a batch of two (docs/math.md §7.5 decision 1)."""
    if ctx.opset < 10:
        return start, end

    def at_two(index: int) -> int:
        given = ctx.inputs[index]
        assert isinstance(given, Const)
        return int(np.asarray(given.value_at_two).ravel()[k])

    return at_two(1), at_two(2)


@handler("Shape", batch_axis=OWN_BATCH_AXIS, merged_batch=True)
def shape_(ctx: NodeContext) -> list[Const]:
    """The ONNX shape for a batch of one, and (``at_two``) of two (docs/math.md §7.5)."""
    data = ctx.var(0)
    start, end = int(ctx.attr("start", 0)), ctx.attr("end")
    window = slice(start, None if end is None else int(end))
    return [Const(np.array(data.onnx_shape, dtype=np.int64)[window],
                  np.array(data.onnx_shape_for(2), dtype=np.int64)[window])]


@handler("Size", batch_axis=OWN_BATCH_AXIS, merged_batch=True)
def size(ctx: NodeContext) -> list[Const]:
    count = int(np.prod(ctx.var(0).shape))
    return [Const(np.array(count, dtype=np.int64), np.array(2 * count, dtype=np.int64))]
