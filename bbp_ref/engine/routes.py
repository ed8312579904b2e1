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
