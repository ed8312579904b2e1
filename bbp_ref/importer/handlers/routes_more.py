"""Routes given by a table (docs/math.md §7.3): Split, Tile, Expand of data, Gather and
GatherElements with constant indices, DepthToSpace, SpaceToDepth, and Where with a
constant condition. Each table is the op applied to `np.arange` of the per-example
input (flat indices), so the route is the op itself; an output that a constant fills
(Where choosing a constant) makes the node an `Embed` (§7.2 decision 6).
"""

from __future__ import annotations

import numpy as np

from ...engine.embed import Embed
from ...engine.routes import IndexRoute, Slice
from ..context import (
    OWN_BATCH_AXIS,
    NodeContext,
    batched_constant,
    handler,
    normalize_axis,
    per_example_axis,
)
from ..values import Const, MergedBatch, Value, Var


def _arange(shape: tuple[int, ...]) -> np.ndarray:
    return np.arange(int(np.prod(shape))).reshape(shape)


def _route(ctx: NodeContext, data: list[Var], table: np.ndarray,
           batch_axis: int = 0, merged: MergedBatch | None = None) -> list[Var]:
    if table.size == 0:
        raise ctx.error("the output is empty")
    if len(data) == 1 and table.shape == data[0].shape and \
            np.array_equal(table, _arange(data[0].shape)):
        return [Var(data[0].node, data[0].shape, 0 if merged else batch_axis, merged)]
    return [ctx.add(IndexRoute([v.shape for v in data], table), data, table.shape,
                    batch_axis=batch_axis, merged=merged)]


# -- Split ----------------------------------------------------------------------------------
def _split_sizes(ctx: NodeContext, length: int, outputs: int) -> list[int]:
    if ctx.opset >= 13:
        split = ctx.optional_const(1, "split")
    else:
        split = ctx.attr("split")
    if split is not None and np.asarray(split).size:
        sizes = [int(s) for s in np.asarray(split).ravel()]
        if len(sizes) != outputs or sum(sizes) != length or min(sizes) < 0:
            raise ctx.error(f"split {sizes} does not cut length {length} into {outputs} parts")
        return sizes
    parts = ctx.attr("num_outputs") if ctx.opset >= 18 else None
    if parts is not None:
        if int(parts) != outputs:
            raise ctx.error(f"num_outputs={parts} but the node has {outputs} outputs")
        size = -(-length // outputs)
        sizes = [min(size, max(length - size * k, 0)) for k in range(outputs)]
        if sizes[-1] == 0:
            raise ctx.error(f"num_outputs={parts} leaves an empty part of length {length}")
        return sizes
    if length % outputs:
        raise ctx.error(f"length {length} does not split evenly into {outputs} parts")
    return [length // outputs] * outputs


@handler("Split", merged_batch=True)
def split(ctx: NodeContext) -> list[Value]:
    """With a batch merged into an axis (docs/math.md §7.5), splitting off it is the
    per-example Split; along it, see `_check_merged_split`."""
    data = ctx.var(0)
    outputs = len(ctx.node.output)
    if data.merged is not None:
        axis = normalize_axis(ctx, int(ctx.attr("axis", 0)), data.onnx_rank)
    else:
        axis = per_example_axis(ctx, int(ctx.attr("axis", 0)), data.rank)
    sizes = _split_sizes(ctx, data.shape[axis], outputs)
    if data.merged is not None and axis == data.merged.axis:
        _check_merged_split(ctx, data, sizes)
    results: list[Value] = []
    start = 0
    for k, size in enumerate(sizes):
        if not ctx.output_used(k):
            results.append(Const(np.zeros(0)))  # never read
        elif size == 0:
            raise ctx.error(f"output {k} is empty")
        else:
            index = [slice(None)] * len(data.shape)
            index[axis] = slice(start, start + size)
            shape = data.shape[:axis] + (size,) + data.shape[axis + 1:]
            results.append(ctx.add(Slice(data.shape, tuple(index)), [data], shape, output=k))
        start += size
    return results


def _check_merged_split(ctx: NodeContext, data: Var, sizes: list[int]) -> None:
    """A Split along the axis a batch is merged into (docs/math.md §7.5) is per example
    only if every part is whole blocks of `inner` elements and the sizes for a batch of
    two (`Const.at_two` of ``split``; computed from the doubled length for equal parts)
    are twice those for one; otherwise a part would hold some examples only."""
    assert data.merged is not None
    length, inner = data.shape[data.merged.axis], data.merged.inner
    given = ctx.inputs[1] if ctx.opset >= 13 and ctx.has_input(1) else None
    if isinstance(given, Const) and np.asarray(given.value).size:
        sizes_two = [int(s) for s in np.asarray(given.value_at_two).ravel()]
    elif ctx.opset < 13 and ctx.attr("split") is not None:
        sizes_two = list(sizes)
    else:
        sizes_two = _split_sizes(ctx, 2 * length, len(sizes))
    if any(s % inner for s in sizes) or sizes_two != [2 * s for s in sizes]:
        raise ctx.error(
            f"splitting ONNX axis {data.merged.axis}, which holds the batch "
            f"({data.where_batch}), into {sizes} (for a batch of two {sizes_two}) does not "
            f"give every part whole blocks of {inner} elements of every example; a part "
            "would hold some examples only")


# -- Tile, Expand ---------------------------------------------------------------------------
@handler("Tile")
def tile(ctx: NodeContext) -> list[Var]:
    data = ctx.var(0)
    if ctx.opset < 6:
        raise ctx.error("Tile before opset 6 (tiles and axis inputs) is not supported")
    repeats = [int(r) for r in np.asarray(ctx.const(1, "repeats")).ravel()]
    if len(repeats) != data.rank or min(repeats) < 1:
        raise ctx.error(f"repeats {repeats} must be {data.rank} positive numbers")
    if repeats[0] != 1:
        raise ctx.error("repeating the batch axis would mix examples")
    ctx.check_size([n * r for n, r in zip(data.shape, repeats[1:])])
    return _route(ctx, [data], np.tile(_arange(data.shape), repeats[1:]))


@handler("Expand", since=8)
def expand(ctx: NodeContext) -> list[Var]:
    data = ctx.var(0)
    target = [int(n) for n in np.asarray(ctx.const(1, "shape")).ravel()]
    if len(target) > data.rank:
        raise ctx.error(f"expanding to {target} adds axes before the batch axis")
    target = [1] * (data.rank - len(target)) + target
    if target[0] != 1:
        raise ctx.error(f"expanding the batch axis to {target[0]} would copy examples "
                        "(shape subgraphs are folded with a batch of 1)")
    try:
        shape = np.broadcast_shapes(data.shape, tuple(target[1:]))
    except ValueError as exc:
        raise ctx.error(f"{list(data.shape)} does not broadcast to {target}") from exc
    ctx.check_size(shape)
    return _route(ctx, [data], np.broadcast_to(_arange(data.shape), shape))


# -- Gather, GatherElements -----------------------------------------------------------------
def _indices(ctx: NodeContext, size: int) -> np.ndarray:
    indices = np.asarray(ctx.const(1, "indices"))
    if not np.issubdtype(indices.dtype, np.integer):
        raise ctx.error("indices must be integers")
    if indices.size and (indices.min() < -size or indices.max() >= size):
        raise ctx.error(f"indices out of range [-{size}, {size - 1}]")
    return np.where(indices < 0, indices + size, indices).astype(np.int64)


@handler("Gather", batch_axis=OWN_BATCH_AXIS, merged_batch=True)
def gather(ctx: NodeContext) -> list[Var]:
    """With the batch at ONNX axis `b` (docs/math.md §7.5), gathering along an axis before
    it moves it by the rank of the indices minus one (`Y_h[-1]` of a recurrent op), and
    likewise a batch merged into an axis (`_gather_merged`)."""
    data = ctx.var(0)
    if isinstance(ctx.inputs[1], Var):
        raise ctx.error("indices computed from the model input (data-dependent "
                        "indices) are not supported")
    if data.merged is not None:
        return _gather_merged(ctx, data)
    onnx_axis = normalize_axis(ctx, int(ctx.attr("axis", 0)), data.rank)
    if onnx_axis == data.batch_axis:
        raise ctx.error(f"gathering along the batch axis (axis {data.batch_axis}) would mix "
                        "examples")
    axis = data.example_axis(onnx_axis)
    indices = _indices(ctx, data.shape[axis])
    ctx.check_size(data.shape[:axis] + indices.shape + data.shape[axis + 1:])
    batch = data.batch_axis + (indices.ndim - 1 if onnx_axis < data.batch_axis else 0)
    return _route(ctx, [data], np.take(_arange(data.shape), indices, axis=axis), batch)


def _gather_merged(ctx: NodeContext, data: Var) -> list[Var]:
    """Gather of a tensor whose batch is merged into an axis (docs/math.md §7.5): off
    that axis, the same table for every example; along it, only indices that take whole
    per-example blocks (as the torch.export-based exporter writes `as_strided`)."""
    assert data.merged is not None
    axis = normalize_axis(ctx, int(ctx.attr("axis", 0)), data.onnx_rank)
    indices = _indices(ctx, data.shape[axis])
    ctx.check_size(data.shape[:axis] + indices.shape + data.shape[axis + 1:])
    table = np.take(_arange(data.shape), indices, axis=axis)
    if axis != data.merged.axis:
        moved = indices.ndim - 1 if axis < data.merged.axis else 0
        return _route(ctx, [data], table,
                      merged=MergedBatch(data.merged.axis + moved, data.merged.inner))
    batch_axis, merged = _gathered_batch(ctx, data, indices)
    return _route(ctx, [data], table, batch_axis, merged)


def _gathered_batch(ctx: NodeContext, data: Var,
                    indices: np.ndarray) -> tuple[int, MergedBatch | None]:
    """Where the batch sits after gathering along the axis it is merged into: read from
    the indices for a batch of two (`Const.at_two`), which must be those for a batch of
    one taken per example, the examples merged into one axis of the indices in exactly
    one way (docs/math.md §7.5); otherwise the indices would pick examples."""
    assert data.merged is not None
    axis, inner = data.merged.axis, data.merged.inner
    refusal = (f"gathering along ONNX axis {axis}, which holds the batch "
               f"({data.where_batch}), with indices that")
    given = ctx.inputs[1]
    if not isinstance(given, Const) or given.at_two is None:
        raise ctx.error(f"{refusal} do not depend on the batch size would pick examples")
    at_two = np.asarray(given.at_two, dtype=np.int64)
    length_at_two = 2 * data.shape[axis]
    at_two = np.where(at_two < 0, at_two + length_at_two, at_two)
    grown = [j for j in range(indices.ndim) if at_two.shape == indices.shape[:j]
             + (2 * indices.shape[j],) + indices.shape[j + 1:]]
    layouts = []
    for j in grown:
        length = indices.shape[j]
        for inner_out in (d for d in range(1, length + 1) if length % d == 0):
            if np.array_equal(_indices_per_example(indices, j, inner_out, inner), at_two):
                layouts.append((axis + j, MergedBatch(axis + j, inner_out)
                                if length > 1 else None))
    if len(layouts) != 1:
        raise ctx.error(f"{refusal} do not take whole per-example blocks in exactly one "
                        f"way (shape {list(indices.shape)} for a batch of one, "
                        f"{list(at_two.shape)} for two) would pick examples")
    return layouts[0]


def _indices_per_example(indices: np.ndarray, j: int, inner_out: int,
                         inner: int) -> np.ndarray:
    """The indices for a batch of two that apply ``indices`` (a batch of one) to each
    example: along indices axis ``j`` position `o * 2 * inner_out + n * inner_out + i`
    takes `indices[..., o * inner_out + i, ...]` of example `n`, whose element `e` of
    the merged data axis sits at `(e // inner) * 2 * inner + n * inner + e % inner`."""
    outer, rest = np.divmod(np.arange(2 * indices.shape[j]), 2 * inner_out)
    example, within = np.divmod(rest, inner_out)
    taken = np.take(indices, outer * inner_out + within, axis=j)
    along_j = [1] * indices.ndim
    along_j[j] = -1
    example = example.reshape(along_j)
    return (taken // inner) * 2 * inner + example * inner + taken % inner


@handler("GatherElements")
def gather_elements(ctx: NodeContext) -> list[Var]:
    """Constant indices whose rows along the batch axis are all equal: the same table
    for every example."""
    data = ctx.var(0)
    if isinstance(ctx.inputs[1], Var):
        raise ctx.error("indices computed from the model input (data-dependent "
                        "indices) are not supported")
    onnx_axis = normalize_axis(ctx, int(ctx.attr("axis", 0)), data.rank)
    if onnx_axis == 0:
        raise ctx.error("gathering along the batch axis (axis 0) would mix examples")
    axis = onnx_axis - 1
    indices = _indices(ctx, data.shape[axis])
    if indices.ndim != data.rank:
        raise ctx.error(f"indices of rank {indices.ndim} must have the data's rank {data.rank}")
    if (indices != indices[:1]).any():
        raise ctx.error("indices that differ between examples (along the batch axis) "
                        "are not supported")
    rows = indices[0]
    if any(r > n for a, (r, n) in enumerate(zip(rows.shape, data.shape)) if a != axis):
        raise ctx.error(f"indices of shape {list(indices.shape)} exceed the data "
                        f"{[1, *data.shape]} off the gather axis")
    grid = list(np.indices(rows.shape))
    grid[axis] = rows
    return _route(ctx, [data], _arange(data.shape)[tuple(grid)])


# -- DepthToSpace, SpaceToDepth -------------------------------------------------------------
def _blocks(ctx: NodeContext, data: Var) -> tuple[int, int, int, int]:
    if len(data.shape) != 3:
        raise ctx.error(f"input must be [N, C, H, W], got per-example {list(data.shape)}")
    block = int(ctx.attr("blocksize", 0))
    if block < 1:
        raise ctx.error("blocksize must be positive")
    return block, *data.shape


@handler("DepthToSpace")
def depth_to_space(ctx: NodeContext) -> list[Var]:
    data = ctx.var(0)
    b, c, h, w = _blocks(ctx, data)
    if c % (b * b):
        raise ctx.error(f"{c} channels are not a multiple of blocksize^2 = {b * b}")
    table = _arange(data.shape)
    mode = ctx.attr("mode", "DCR") if ctx.opset >= 11 else "DCR"
    if mode == "DCR":
        table = table.reshape(b, b, c // (b * b), h, w).transpose(2, 3, 0, 4, 1)
    elif mode == "CRD":
        table = table.reshape(c // (b * b), b, b, h, w).transpose(0, 3, 1, 4, 2)
    else:
        raise ctx.error(f"unknown mode {mode!r}")
    return _route(ctx, [data], table.reshape(c // (b * b), h * b, w * b))


@handler("SpaceToDepth")
def space_to_depth(ctx: NodeContext) -> list[Var]:
    data = ctx.var(0)
    b, c, h, w = _blocks(ctx, data)
    if h % b or w % b:
        raise ctx.error(f"spatial size {[h, w]} is not a multiple of blocksize {b}")
    table = _arange(data.shape).reshape(c, h // b, b, w // b, b)
    mode = ctx.attr("mode", "DCR")  # an attribute from opset 28
    if mode == "DCR":
        table = table.transpose(2, 4, 0, 1, 3)
    elif mode == "CRD":
        table = table.transpose(0, 2, 4, 1, 3)
    else:
        raise ctx.error(f"unknown mode {mode!r}")
    return _route(ctx, [data], table.reshape(c * b * b, h // b, w // b))


# -- Where ----------------------------------------------------------------------------------
@handler("Where", merged_batch=True)
def where(ctx: NodeContext) -> list[Var]:
    """``Where(condition, X, Y)`` with a constant condition: each output copies an
    element of X or Y; one chosen from a constant is local bias (an `Embed`)."""
    if isinstance(ctx.inputs[0], Var):
        raise ctx.error("a condition computed from the model input (data-dependent "
                        "selection) is not supported")
    branches = ctx.inputs[1:3]
    data = [v for v in branches if isinstance(v, Var)]
    if not data or any(not isinstance(v, (Var, Const)) for v in branches):
        raise ctx.error("X and Y must be tensors")
    rank = max(v.rank for v in data)
    if any(v.rank != rank for v in data):
        raise ctx.error("data operands of different ranks would broadcast along the "
                        "batch axis")
    condition = batched_constant(ctx, ctx.const(0, "condition").astype(bool), rank,
                                 "condition")[0].astype(bool)
    constants = {k: batched_constant(ctx, v.value, rank, f"input {k + 1}")[0]
                 for k, v in enumerate(branches) if isinstance(v, Const)}
    try:
        shape = np.broadcast_shapes(condition.shape, *(v.shape for v in data),
                                    *(c.shape for c in constants.values()))
    except ValueError as exc:
        raise ctx.error(f"condition, X and Y do not broadcast: {exc}") from exc
    if len(shape) != rank - 1:
        raise ctx.error("a constant would add axes before the batch axis")
    ctx.check_size(shape)
    tables, values, offset = [], [], 0
    for k, value in enumerate(branches):
        if isinstance(value, Var):
            tables.append(np.broadcast_to(_arange(value.shape) + offset, shape))
            values.append(np.zeros(shape))
            offset += int(np.prod(value.shape))
        else:
            tables.append(np.full(shape, -1))
            values.append(np.broadcast_to(constants[k], shape))
    table = np.where(condition, tables[0], tables[1])
    if not (table < 0).any():
        return _route(ctx, data, table)
    bias = np.where(condition, values[0], values[1])[None]
    return [ctx.add(Embed([v.shape for v in data], table, bias), data, shape)]
