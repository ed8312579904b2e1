"""Route operators (docs/math.md §2): fixed permutations and selections of elements. Each is
its own local map; its vector-Jacobian product is the inverse routing."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .operator import Array, RouteOperator


class Reshape(RouteOperator):
    """Reshape, Flatten, Squeeze, Unsqueeze, Identity, Dropout (inference), Cast."""

    def __init__(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> None:
        self.in_shape = in_shape
        self.out_shape = out_shape

    def forward(self, operands: Sequence[Array]) -> Array:
        (u,) = operands
        return u.reshape(u.shape[0], *self.out_shape)

    def vjp(self, grad: Array) -> list[Array]:
        return [grad.reshape(grad.shape[0], *self.in_shape)]


class Transpose(RouteOperator):
    """A permutation of the per-example axes."""

    def __init__(self, perm: tuple[int, ...]) -> None:
        self.perm = perm

    def forward(self, operands: Sequence[Array]) -> Array:
        return operands[0].transpose(0, *(p + 1 for p in self.perm))

    def vjp(self, grad: Array) -> list[Array]:
        inverse = np.argsort(self.perm)
        return [grad.transpose(0, *(int(p) + 1 for p in inverse))]


class Concat(RouteOperator):
    """Concatenation of several structural tensors along a per-example axis."""

    def __init__(self, axis: int, sizes: Sequence[int]) -> None:
        self.axis = axis
        self.sizes = tuple(sizes)

    def forward(self, operands: Sequence[Array]) -> Array:
        return np.concatenate(operands, axis=self.axis + 1)

    def vjp(self, grad: Array) -> list[Array]:
        cuts = np.cumsum(self.sizes)[:-1]
        return np.split(grad, cuts, axis=self.axis + 1)


class Slice(RouteOperator):
    """A constant slice (any steps, negative ones included) of the per-example axes."""

    def __init__(self, in_shape: tuple[int, ...], index: tuple[slice, ...]) -> None:
        self.in_shape = in_shape
        self.index = index

    def forward(self, operands: Sequence[Array]) -> Array:
        return operands[0][(slice(None),) + self.index]

    def vjp(self, grad: Array) -> list[Array]:
        out = np.zeros((grad.shape[0], *self.in_shape))
        out[(slice(None),) + self.index] = grad
        return [out]


def gather_flat(operands: Sequence[Array], index: Array) -> Array:
    """Per example, the elements at flat ``index`` of the operands' flattened
    concatenation (``index`` has the per-example output shape)."""
    n = operands[0].shape[0]
    flat = (operands[0].reshape(n, -1) if len(operands) == 1 else
            np.concatenate([u.reshape(n, -1) for u in operands], axis=1))
    return flat[:, index]


def scatter_flat(values: Array, index: Array, sizes: Sequence[int],
                 injective: bool) -> Array:
    """The transpose of `gather_flat`: adds each of ``values`` (batched, shaped like
    ``index``) into the flat position it was read from; returns [N, sum(sizes)]."""
    n = values.shape[0]
    total = int(sum(sizes))
    flat_values = values.reshape(n, -1)
    flat_index = index.reshape(-1)
    if injective:
        out = np.zeros((n, total))
        out[:, flat_index] = flat_values
        return out
    rows = (np.arange(n) * total)[:, None]
    return np.bincount((rows + flat_index).ravel(), weights=flat_values.ravel(),
                       minlength=n * total).reshape(n, total)


def split_flat(flat: Array, shapes: Sequence[tuple[int, ...]]) -> list[Array]:
    """[N, sum of sizes] back into one batched array per operand shape."""
    n = flat.shape[0]
    cuts = np.cumsum([int(np.prod(s)) for s in shapes])[:-1]
    return [part.reshape(n, *shape) for part, shape in zip(np.split(flat, cuts, axis=1), shapes)]


def is_injective(index: Array) -> bool:
    return np.unique(index).size == index.size


class IndexRoute(RouteOperator):
    """A route given by a table: output element `p` copies element ``index[p]`` of the
    operands' flattened concatenation (per example). Tile, Expand, Gather with constant
    indices, DepthToSpace, Pad in reflect/edge mode, Where with a constant condition,
    nearest-neighbour Resize, ... are all this route with their own table."""

    def __init__(self, operand_shapes: Sequence[tuple[int, ...]], index: Array) -> None:
        self.operand_shapes = tuple(tuple(s) for s in operand_shapes)
        self.index = np.asarray(index, dtype=np.int64)
        self.injective = is_injective(self.index)

    def forward(self, operands: Sequence[Array]) -> Array:
        return gather_flat(operands, self.index)

    def vjp(self, grad: Array) -> list[Array]:
        sizes = [int(np.prod(s)) for s in self.operand_shapes]
        flat = scatter_flat(grad, self.index, sizes, self.injective)
        return split_flat(flat, self.operand_shapes)
