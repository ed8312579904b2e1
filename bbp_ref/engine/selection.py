"""Selection gates (docs/math.md §7.3): Max/Min of several tensors and ReduceMax /
ReduceMin. At an input each output element copies one input element, the winner:

    h[p] = d[p] * u[s(p)] + c[p],     d = 1, c = 0 where a data element wins,
                                      d = 0, c = the constant where a constant wins.

`s(p)` indexes the flattened concatenation of the data operands (per example), so the
frozen map is a route with a per-example table (`PickLocal`). Ties go to the first
operand (Max/Min) or to the lowest flat index of the reduced block (ReduceMax/Min), as
a MaxPool's ties do. An output that a constant wins is saturated, like a clipped
element: its value is local bias and its mass goes to the element of the first data
operand at its position.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .operator import GATE, Array, LocalMap, Operator, SingleInputMap
from .routes import split_flat


def _flat(operands: Sequence[Array]) -> Array:
    n = operands[0].shape[0]
    return np.concatenate([u.reshape(n, -1) for u in operands], axis=1)


class PickLocal(SingleInputMap):
    """A frozen selection: output `p` of example `i` is ``slope[i, p]`` times element
    ``index[i, p]`` of example `i`'s flattened operands, plus ``offset``."""

    kind = GATE

    def __init__(self, index: Array, slope: Array | None, offset: Array | None,
                 operand_shapes: Sequence[tuple[int, ...]]) -> None:
        self.index = index
        self.slope = slope
        self.offset = offset
        self.operand_shapes = tuple(operand_shapes)

    @property
    def bias(self) -> Array | None:
        return self.offset

    def apply(self, operands: Sequence[Array]) -> Array:
        n = self.index.shape[0]
        picked = np.take_along_axis(_flat(operands), self.index.reshape(n, -1), axis=1)
        picked = picked.reshape(self.index.shape)
        return picked if self.slope is None else picked * self.slope

    def vjp(self, grad: Array) -> list[Array]:
        return self._scatter(grad if self.slope is None else grad * self.slope)

    def hand_back(self, mass: Array) -> list[Array]:
        return self._scatter(mass)

    def _scatter(self, values: Array) -> list[Array]:
        n = self.index.shape[0]
        total = sum(int(np.prod(s)) for s in self.operand_shapes)
        rows = (np.arange(n) * total).reshape(n, *([1] * (self.index.ndim - 1)))
        values = np.broadcast_to(values, self.index.shape)
        flat = np.bincount((rows + self.index).ravel(), weights=values.ravel(),
                           minlength=n * total).reshape(n, total)
        return split_flat(flat, self.operand_shapes)


class Extremum(Operator):
    """Max or Min (``largest``) of data operands and constants, broadcast together.

    ``inputs`` lists, in ONNX input order, either the per-example shape of a data
    operand (a tuple) or a constant batched to shape (1, ...) (an array). The first
    input that reaches the extremum wins (ties to the first operand)."""

    kind = GATE

    def __init__(self, inputs: Sequence[tuple[int, ...] | Array], out_shape: tuple[int, ...],
                 largest: bool) -> None:
        self.inputs = list(inputs)
        self.out_shape = out_shape
        self.largest = largest
        self.operand_shapes = [s for s in self.inputs if isinstance(s, tuple)]
        # per input: its flat source index per output element (constants: the first data
        # operand's element at that position, which receives a saturated output's mass)
        offsets = np.cumsum([0] + [int(np.prod(s)) for s in self.operand_shapes])
        tables, k = [], 0
        for item in self.inputs:
            if isinstance(item, tuple):
                table = np.arange(int(np.prod(item))).reshape(item) + offsets[k]
                tables.append(np.broadcast_to(table, out_shape))
                k += 1
        first = tables[0]
        self.sources = np.stack([tables.pop(0) if isinstance(item, tuple) else first
                                 for item in self.inputs])
        self.is_constant = np.array([not isinstance(item, tuple) for item in self.inputs])

    @property
    def has_bias(self) -> bool:
        return bool(self.is_constant.any())

    def _stacked(self, operands: Sequence[Array]) -> Array:
        n = operands[0].shape[0]
        data = iter(operands)
        return np.stack([np.broadcast_to(next(data) if isinstance(item, tuple) else item,
                                         (n, *self.out_shape)) for item in self.inputs])

    def forward(self, operands: Sequence[Array]) -> Array:
        return self.evaluate(operands)[0]

    def linearize(self, operands: Sequence[Array]) -> LocalMap:
        return self.evaluate(operands)[1]

    def evaluate(self, operands: Sequence[Array]) -> tuple[Array, LocalMap]:
        stacked = self._stacked(operands)
        winner = stacked.argmax(axis=0) if self.largest else stacked.argmin(axis=0)
        value = np.take_along_axis(stacked, winner[None], axis=0)[0]
        index = np.take_along_axis(np.broadcast_to(self.sources[:, None], stacked.shape),
                                   winner[None], axis=0)[0]
        if not self.has_bias:
            return value, PickLocal(index, None, None, self.operand_shapes)
        saturated = self.is_constant[winner]
        return value, PickLocal(index, (~saturated).astype(float),
                                np.where(saturated, value, 0.0), self.operand_shapes)


class ReduceExtremum(Operator):
    """ReduceMax / ReduceMin over per-example ``axes``: each output copies the arg-max
    (arg-min) of its block; ties go to the lowest flat index within the block."""

    kind = GATE

    def __init__(self, axes: tuple[int, ...], keepdims: bool, operand_shape: tuple[int, ...],
                 largest: bool) -> None:
        self.axes = axes
        self.keepdims = keepdims
        self.operand_shape = operand_shape
        self.largest = largest
        kept = [a for a in range(len(operand_shape)) if a not in axes]
        self.order = (*kept, *axes)  # reduced axes last, so a block is one flat row
        self.kept_shape = tuple(operand_shape[a] for a in kept)
        self.out_shape = (tuple(1 if a in axes else n for a, n in enumerate(operand_shape))
                          if keepdims else self.kept_shape)
        table = np.arange(int(np.prod(operand_shape))).reshape(operand_shape)
        self.table = table.transpose(self.order).reshape(*self.kept_shape, -1)

    def forward(self, operands: Sequence[Array]) -> Array:
        return self.evaluate(operands)[0]

    def linearize(self, operands: Sequence[Array]) -> LocalMap:
        return self.evaluate(operands)[1]

    def evaluate(self, operands: Sequence[Array]) -> tuple[Array, LocalMap]:
        (u,) = operands
        n = u.shape[0]
        blocks = u.transpose(0, *(a + 1 for a in self.order)).reshape(n, *self.kept_shape, -1)
        winner = blocks.argmax(axis=-1) if self.largest else blocks.argmin(axis=-1)
        value = np.take_along_axis(blocks, winner[..., None], axis=-1)[..., 0]
        index = np.take_along_axis(np.broadcast_to(self.table, blocks.shape),
                                   winner[..., None], axis=-1)[..., 0]
        shape = (n, *self.out_shape)
        return value.reshape(shape), PickLocal(index.reshape(shape), None, None,
                                               [self.operand_shape])
