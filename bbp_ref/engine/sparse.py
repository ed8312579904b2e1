"""Sparse forward and reverse products of one example's local maps: a change in a few
elements of a node's input (or of its output's gradient) is carried to the elements it
reaches and no further. The exact integrated-gradients event walk
(`bbp_ref.attribution.event_walk`) moves one gate at a time and uses these to update only
what that gate reaches.

A *sparse vector* is a pair ``(index, value)``: flat indices into one example's tensor
(row-major over the node's per-example shape, no batch axis) and float64 values, with
no repeated index once `aggregate`d. `Conv` has its own products (a changed input element
reaches the outputs whose windows contain it, `O(kernel x output channels)` of them);
every other map is applied densely to the scattered vector (`dense_apply`, `dense_vjp`),
exact but proportional to the node's size.

The event walk makes many small calls, so the per-call overhead counts: index sets are
deduplicated by one sort (`distinct`, `union`, `distinct_inverse`) instead of `np.unique`,
a conv keeps its weights and index tables laid out by output position and kernel offset,
and a one-group conv sums its sparse product by output position (the same sums as
`aggregate`, bitwise) and its several-column vector-Jacobian product as one matrix product
per kernel offset (the same sums in another order; docs/math.md §6).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .affine import Conv
from .operator import Array, LocalMap, Pullback
from .windows import Window

Sparse = tuple[Array, Array]

EMPTY_INDEX = np.zeros(0, dtype=np.int64)


def empty() -> Sparse:
    return EMPTY_INDEX, np.zeros(0)


# -- index sets ------------------------------------------------------------------------
# `np.unique` on the small index sets of one event costs tens of microseconds of Python
# per call (and hashes, then sorts); these are the same results from one sort and one
# comparison.


def run_starts(ordered: Array) -> Array:
    """``[n]`` bool: where a run of equal values of a sorted array begins."""
    starts = np.empty(ordered.size, dtype=bool)
    if ordered.size:
        starts[0] = True
        np.not_equal(ordered[1:], ordered[:-1], out=starts[1:])
    return starts


def distinct_sorted(ordered: Array) -> Array:
    """The distinct values of an already sorted array (`np.unique` of it)."""
    return ordered[run_starts(ordered)]


def distinct(values: Array) -> Array:
    """The distinct values of an array, sorted (`np.unique`)."""
    return distinct_sorted(np.sort(values, axis=None))


def union(a: Array, b: Array) -> Array:
    """The union of two sorted arrays of distinct values, sorted (`np.union1d`; one of
    them itself when the other is empty)."""
    if b.size == 0:
        return a
    if a.size == 0:
        return b
    return distinct(np.concatenate([a, b]))


def distinct_inverse(values: Array) -> tuple[Array, Array]:
    """`np.unique(values, return_inverse=True)` of a flattened array: the sorted distinct
    values and, per element, the position of its value among them."""
    flat = values.ravel()
    order = np.argsort(flat, kind="stable")
    ordered = flat[order]
    starts = run_starts(ordered)
    inverse = np.empty(flat.size, dtype=np.intp)
    inverse[order] = np.cumsum(starts) - 1
    return ordered[starts], inverse


def aggregate(index: Array, value: Array, size: int) -> Sparse:
    """Sum the values of repeated indices into a tensor of ``size`` elements (sorted by
    index; summed densely when the entries are not few compared with ``size``)."""
    if index.size == 0:
        return empty()
    if index.size * 16 >= size:
        dense = np.bincount(index.ravel(), weights=value.ravel(), minlength=size)
        unique = np.flatnonzero(dense)
        return unique, dense[unique]
    unique, inverse = distinct_inverse(index)
    return unique, np.bincount(inverse, weights=value.ravel(), minlength=unique.size)


def concatenate(parts: Sequence[Sparse], size: int) -> Sparse:
    """The sum of several sparse vectors over the same tensor of ``size`` elements."""
    if len(parts) == 1:
        return parts[0] if _unique(parts[0][0]) else aggregate(*parts[0], size)
    return aggregate(np.concatenate([p[0] for p in parts]),
                     np.concatenate([p[1] for p in parts]), size)


def _unique(index: Array) -> bool:
    return index.size < 2 or bool((index[1:] > index[:-1]).all())


def to_dense(vector: Sparse, shape: tuple[int, ...]) -> Array:
    """The batch-of-one dense tensor ``[1, *shape]`` of a sparse vector."""
    flat = np.zeros(int(np.prod(shape)))
    flat[vector[0]] = vector[1]
    return flat.reshape((1, *shape))


def from_dense(tensor: Array) -> Sparse:
    """The non-zero elements of a batch-of-one tensor."""
    flat = tensor.ravel()
    index = np.flatnonzero(flat)
    return index, flat[index]


def dense_apply(local: LocalMap, operands: Sequence[Sparse | None],
                shapes: Sequence[tuple[int, ...]]) -> Sparse:
    """`A(u)` of sparse operands (None: zero) through any local map."""
    dense = [np.zeros((1, *shape)) if v is None else to_dense(v, shape)
             for v, shape in zip(operands, shapes)]
    return from_dense(local.apply(dense))


def dense_vjp(pullback: Pullback, grad: Sparse, shape: tuple[int, ...]) -> list[Sparse]:
    """`A^T g` of a sparse output gradient, one sparse vector per operand."""
    return [from_dense(part) for part in pullback.vjp(to_dense(grad, shape))]


def window_table(window: Window) -> Array:
    """``[P, K]``: for each output position (flat over the output's spatial axes) and
    kernel offset (`Window.offsets` order) the flat spatial input index it reads, -1
    where it reads padding."""
    out_positions = np.indices(window.out_spatial).reshape(len(window.out_spatial), -1).T
    offsets = np.array(list(window.offsets()), dtype=np.int64).reshape(window.size, -1)
    coordinate = (out_positions[:, None, :] * np.array(window.strides)
                  + offsets[None, :, :] * np.array(window.dilations)
                  - np.array(window.pads_begin))
    inside = np.all((coordinate >= 0) & (coordinate < np.array(window.in_spatial)), axis=2)
    flat = np.zeros(inside.shape, dtype=np.int64)
    for axis, size in enumerate(window.in_spatial):
        flat = flat * size + coordinate[:, :, axis]
    return np.where(inside, flat, -1)


class Inverse:
    """The transpose of a ``[rows, K]`` index table (entries -1 skipped): for each
    target index, the ``(row, column)`` pairs that read it, in CSR form."""

    def __init__(self, table: Array, targets: int) -> None:
        rows, columns = np.nonzero(table >= 0)
        read = table[rows, columns]
        order = np.argsort(read, kind="stable")
        counts = np.bincount(read, minlength=targets)
        self.pointer = np.concatenate(([0], np.cumsum(counts)))
        self.rows = rows[order]
        self.columns = columns[order]
        # every target read by the same number of pairs (a pool with stride = kernel,
        # no padding): the pairs as ``[targets, width]`` tables, a few whole-row gathers
        self.width = int(counts.max(initial=0))
        self.full = bool(np.all(counts == self.width))
        if self.full:
            self.rows_by_target = self.rows.reshape(targets, self.width)
            self.columns_by_target = self.columns.reshape(targets, self.width)
            # `pairs`' owners of n targets: the first n * width entries
            self.owners = np.repeat(np.arange(targets), self.width)

    def pairs(self, targets: Array) -> tuple[Array, Array, Array]:
        """For targets ``t_i``: ``(i, row, column)`` of every pair that reads one (by
        ``i``, then in the table's row-major order)."""
        if self.full:
            pairs = targets.size * self.width
            owner = (self.owners[:pairs] if pairs <= self.owners.size  # (targets may repeat)
                     else np.repeat(np.arange(targets.size), self.width))
            return (owner, self.rows_by_target[targets].ravel(),
                    self.columns_by_target[targets].ravel())
        starts = self.pointer[targets]
        owner, position = ranges(starts, self.pointer[targets + 1] - starts)
        return owner, self.rows[position], self.columns[position]


def ranges(start: Array, length: Array) -> tuple[Array, Array]:
    """For the ranges ``[start[i], start[i] + length[i])``: ``(i, entry)`` of every entry,
    by ``i``, then in order."""
    owner = np.repeat(np.arange(start.size), length)
    first = np.cumsum(length) - length
    return owner, start[owner] + np.arange(owner.size) - first[owner]


class SparseConv:
    """A `Conv`'s products for sparse vectors of one example ``[C, *spatial]``; a vector
    with more than `DENSE_FRACTION` of its elements non-zero goes through the dense
    operator instead (the same products, fewer steps)."""

    DENSE_FRACTION = 1 / 16

    def __init__(self, op: Conv) -> None:
        self.op = op
        window = op.window
        self.out_channels = op.weight.shape[0]
        self.in_per_group = op.in_channels // op.groups
        self.out_per_group = self.out_channels // op.groups
        self.in_channels = op.in_channels
        self.kernel = op.weight.reshape(self.out_channels, self.in_per_group, window.size)
        # the same weights laid out so that one (channel, offset) pair reads a contiguous
        # row: ``[in_per_group, K, groups, out_per_group]`` for `apply`,
        # ``[out_channels, K, in_per_group]`` for `windows_of`
        self.kernel_forward = np.ascontiguousarray(self.kernel.reshape(
            op.groups, self.out_per_group, self.in_per_group, window.size).transpose(2, 3, 0, 1))
        self.kernel_backward = np.ascontiguousarray(self.kernel.transpose(0, 2, 1))
        # ``[K, out_channels, in_per_group]``: one matrix per offset (`conv_vjp_columns`)
        self.kernel_by_offset = np.ascontiguousarray(self.kernel.transpose(2, 0, 1))
        self.table = window_table(window)
        self.in_size = int(np.prod(window.in_spatial))
        self.out_size = self.table.shape[0]
        self.inverse = Inverse(self.table, self.in_size)
        # flat indices by output position: ``outputs_at[p, j]`` the output of channel
        # ``j`` of group 0 at ``p``; ``reads_at[p, k, i]`` what ``p`` reads at offset ``k``
        # in input channel ``i`` of group 0 (garbage where the table is -1); other groups
        # add a whole group of channels. (`reads_at` only up to `READS_LIMIT` entries.)
        self.outputs_at = (np.arange(self.out_per_group) * self.out_size
                           + np.arange(self.out_size)[:, None])
        self.reads_at = None
        if self.table.size * self.in_per_group <= self.READS_LIMIT:
            self.reads_at = (np.arange(self.in_per_group) * self.in_size
                             + self.table[:, :, None])

    READS_LIMIT = 1 << 21

    def apply(self, u: Sparse) -> Sparse:
        """`W * du`: each changed input element reaches the output positions whose
        windows read it, in every output channel of its group."""
        if u[0].size > self.DENSE_FRACTION * self.in_channels * self.in_size:
            shape = (self.in_channels, *self.op.window.in_spatial)
            return from_dense(self.op.linear([to_dense(u, shape)]))
        channel, spatial = np.divmod(u[0], self.in_size)
        owner, position, offset = self.inverse.pairs(spatial)
        if self.op.groups == 1:
            return self._apply_by_position(u[1][owner], channel[owner], position, offset)
        source = channel[owner]
        group, within = np.divmod(source, self.in_per_group)
        value = u[1][owner, None] * self.kernel_forward[within, offset, group]
        index = self.outputs_at[position]
        if self.op.groups > 1:
            index = index + (group * (self.out_per_group * self.out_size))[:, None]
        return aggregate(index, value, self.out_channels * self.out_size)

    def _apply_by_position(self, u: Array, channel: Array, position: Array,
                           offset: Array) -> Sparse:
        """`apply` of a one-group conv for its (input element, output position, offset)
        pairs, values ``u``: the outputs numbered by position first (a sort of the pairs,
        not of pairs x output channels), then summed as `aggregate` sums them (the same
        entries in the same order: equal sums, the same elements)."""
        value = u[:, None] * self.kernel_forward[channel, offset, 0]  # [pairs, out]
        positions, slot = distinct_inverse(position)
        channels = self.out_channels
        key = (slot[:, None] * channels + np.arange(channels)).ravel()
        summed = np.bincount(key, weights=value.ravel(), minlength=positions.size * channels)
        index = (np.arange(channels)[:, None] * self.out_size + positions).ravel()
        value = summed.reshape(positions.size, channels).T.ravel()
        if u.size * channels * 16 >= channels * self.out_size:  # (`aggregate` sums
            # these densely, and drops zeros)
            nonzero = value != 0
            index, value = index[nonzero], value[nonzero]
        return index, value

    def vjp(self, g: Sparse) -> Sparse:
        """`W^T g`: each changed output gradient reaches its window's in-bounds inputs,
        in every input channel of its group."""
        if g[0].size > self.DENSE_FRACTION * self.out_channels * self.out_size:
            shape = (self.out_channels, *self.op.window.out_spatial)
            return from_dense(self.op.vjp(to_dense(g, shape))[0])
        owner, index, weight = self.windows_of(g[0])
        return aggregate(index, g[1][owner, None] * weight, self.in_channels * self.in_size)

    def windows_of(self, output: Array) -> tuple[Array, Array, Array]:
        """What the outputs ``output`` (flat indices) read: for each (output, in-bounds
        kernel offset) pair ``r``, the position ``owner[r]`` in ``output``, the flat input
        indices ``index[r, :]`` of every input channel of its group, and their weights
        ``weight[r, :]``."""
        channel, position = np.divmod(output, self.out_size)
        read = self.table[position]
        owner, offset = np.nonzero(read >= 0)
        out_channel = channel[owner]
        weight = self.kernel_backward[out_channel, offset]
        group = out_channel // self.out_per_group
        if self.reads_at is None:
            in_channel = group[:, None] * self.in_per_group + np.arange(self.in_per_group)
            return owner, in_channel * self.in_size + read[owner, offset][:, None], weight
        index = self.reads_at[position[owner], offset]
        if self.op.groups > 1:
            index = index + (group * (self.in_per_group * self.in_size))[:, None]
        return owner, index, weight


# -- several columns -------------------------------------------------------------------
# The event walk's reverse sweep carries, per element, one value per target and per kind
# (the change of `lambda` and that change weighted by `1 - t`): a sparse vector with
# values ``[n, k]``. These functions are the column-wise versions of the ones above.


COLUMNS_DENSE_FRACTION = 1 / 16
BY_OFFSET_MIN = 16  # `conv_vjp_columns` of a one-group conv from this many outputs on:
# one matrix product per kernel offset (faster than the products per element from about
# 20 outputs, and than the dense operator until the vector is nearly full)


def aggregate_columns(index: Array, value: Array, size: int) -> Sparse:
    """`aggregate` for values ``[n, k]``: one row per distinct index, sorted."""
    if index.size == 0:
        return EMPTY_INDEX, np.zeros((0, value.shape[1]))
    if index.size * 16 >= size:
        dense = _sum_rows(index, value, size)
        unique = nonzero_rows(dense)
        return unique, dense[unique]
    order = np.argsort(index, kind="stable")
    ordered = index[order]
    starts = run_starts(ordered)
    unique = ordered[starts]
    if unique.size == index.size:  # no index repeats: the rows, sorted
        return unique, value[order]
    position = np.empty(index.size, dtype=np.intp)
    position[order] = np.cumsum(starts) - 1
    return unique, _sum_rows(position, value, unique.size)


def _sum_rows(index: Array, value: Array, size: int) -> Array:
    """``[size, k]``: the rows of ``value`` ``[n, k]`` summed by ``index`` (in the rows'
    order, as one `np.bincount` per column would: one bincount over row x column)."""
    columns = value.shape[1]
    key = (index[:, None] * columns + np.arange(columns)).ravel()
    return np.bincount(key, weights=value.ravel(), minlength=size * columns).reshape(
        size, columns)


def concatenate_columns(parts: Sequence[Sparse], size: int,
                        scratch: Array | None = None) -> Sparse:
    """`concatenate` for values ``[n, k]``. With ``scratch`` (an integer array of at
    least ``size`` elements, its content ignored) the result's indices are only
    distinct, not necessarily sorted: rows whose indices do not repeat are returned as
    they are, found without a sort (`is_distinct`)."""
    if len(parts) == 1 and _unique(parts[0][0]):
        return parts[0]
    if len(parts) == 1:
        index, value = parts[0]
    else:
        index = np.concatenate([p[0] for p in parts])
        value = np.concatenate([p[1] for p in parts])
    if scratch is not None and is_distinct(index, scratch):
        return index, value
    return aggregate_columns(index, value, size)


def is_distinct(index: Array, scratch: Array) -> bool:
    """Whether no value of ``index`` repeats, with a ``scratch`` array that the values
    index (content ignored, overwritten): every value writes its position there, so a
    repeated value's earlier position is overwritten by a later one."""
    position = np.arange(index.size)
    scratch[index] = position
    return bool((scratch[index] == position).all())


def nonzero_rows(dense: Array) -> Array:
    """The rows of ``[n, k]`` values with a non-zero entry, sorted (`np.any` along a short
    axis is slow: one comparison per column instead)."""
    nonzero = dense[:, 0] != 0
    for k in range(1, dense.shape[1]):
        nonzero |= dense[:, k] != 0
    return np.flatnonzero(nonzero)


def columns_to_dense(vector: Sparse, shape: tuple[int, ...]) -> Array:
    """The dense ``[k, *shape]`` tensor of a sparse vector with values ``[n, k]``: each
    column is one row of a batch."""
    index, value = vector
    flat = np.zeros((value.shape[1], int(np.prod(shape))))
    flat[:, index] = value.T
    return flat.reshape((value.shape[1], *shape))


def columns_from_dense(tensor: Array) -> Sparse:
    """The elements of a ``[k, ...]`` tensor non-zero in some row, values ``[n, k]``."""
    flat = tensor.reshape(tensor.shape[0], -1)
    index = np.flatnonzero(np.any(flat != 0, axis=0))
    return index, flat[:, index].T


def dense_vjp_columns(pullback: Pullback, grad: Sparse,
                      shape: tuple[int, ...]) -> list[Sparse]:
    """`dense_vjp` for values ``[n, k]`` (the ``k`` columns as a batch of ``k``)."""
    return [columns_from_dense(part)
            for part in pullback.vjp(columns_to_dense(grad, shape))]


def conv_vjp_columns(conv: SparseConv, g: Sparse) -> Sparse:
    """`SparseConv.vjp` for values ``[n, k]``."""
    columns = g[1].shape[1]
    if conv.op.groups == 1 and g[0].size >= BY_OFFSET_MIN:
        return _conv_vjp_by_offset(conv, g)
    if g[0].size > COLUMNS_DENSE_FRACTION * conv.out_channels * conv.out_size:
        shape = (conv.out_channels, *conv.op.window.out_spatial)
        return columns_from_dense(conv.op.vjp(columns_to_dense(g, shape))[0])
    if not _unique(g[0]):  # (distinct, unsorted: sorted, so the sums keep their order)
        order = np.argsort(g[0])
        g = g[0][order], g[1][order]
    owner, reads, weight = conv.windows_of(g[0])
    index = reads.ravel()
    size = conv.in_channels * conv.in_size
    values = g[1][owner]
    if index.size * 16 < size:
        value = (values[:, None, :] * weight[:, :, None]).reshape(-1, columns)
        return aggregate_columns(index, value, size)
    # one contiguous product and one dense sum per column
    dense = np.stack([np.bincount(index, weights=(values[:, k, None] * weight).ravel(),
                                  minlength=size) for k in range(columns)], axis=1)
    unique = nonzero_rows(dense)
    return unique, dense[unique]



def _conv_vjp_by_offset(conv: SparseConv, g: Sparse) -> Sparse:
    """`conv_vjp_columns` of a one-group conv as one matrix product per kernel offset:
    the gradient at the output positions ``g`` touches, ``[positions, k, out_channels]``,
    times that offset's ``[out_channels, in_channels]`` weights, added at the input
    positions the offset reads (one per output position, so no two rows of one product
    land on the same input). The same sums as the per-element products, in another order
    (equal up to rounding); every input element the windows reach is listed, also one
    whose sum is zero."""
    index, value = g
    columns = value.shape[1]
    channel, position = np.divmod(index, conv.out_size)
    positions, slot = distinct_inverse(position)
    grad = np.zeros((positions.size, columns, conv.out_channels))
    grad[slot, :, channel] = value
    read = conv.table[positions]  # [positions, K]
    valid = read >= 0
    inputs, where = distinct_inverse(read[valid])
    read_slot = np.zeros(read.shape, dtype=np.intp)
    read_slot[valid] = where
    total = np.zeros((inputs.size, columns, conv.in_channels))
    inside = valid.all(axis=0)  # offsets that read no padding: every row, no gathering
    for k in range(read.shape[1]):
        if inside[k]:
            part = grad.reshape(-1, conv.out_channels) @ conv.kernel_by_offset[k]
            total[read_slot[:, k]] += part.reshape(positions.size, columns, conv.in_channels)
            continue
        rows = np.flatnonzero(valid[:, k])
        if rows.size:
            part = grad[rows].reshape(-1, conv.out_channels) @ conv.kernel_by_offset[k]
            total[read_slot[rows, k]] += part.reshape(rows.size, columns, -1)
    flat = np.arange(conv.in_channels)[:, None] * conv.in_size + inputs
    return flat.ravel(), total.transpose(2, 0, 1).reshape(-1, columns)
