"""Product nodes (docs/math.md §7): a product of two data tensors is bilinear, so at the
point `(u0, v0)` it is affine in `(u, v)`:

    u * v   ->  A(u, v) = u * v0 + u0 * v,    b = -u0 * v0   (element-wise, broadcast)
    u @ v   ->  A(u, v) = u @ v0 + u0 @ v,    b = -u0 @ v0   (MatMul semantics)

`A(u0, v0) + b = u0 * v0`: the value is exact. The local map is an ordinary affine
operator whose coefficients are the other operand's value, so every rule scores it
like any affine node (`z = u * v0` and `z = u0 * v` for the two operands).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .affine import Sum
from .operator import (
    PRODUCT,
    AffineLocal,
    AffineOperator,
    Array,
    LocalMap,
    TangentOperator,
    reduce_to_shape,
)


class Product(TangentOperator):
    """Mul of two data tensors (NumPy broadcasting of the per-example shapes)."""

    kind = PRODUCT

    def __init__(self, operand_shapes: Sequence[tuple[int, ...]]) -> None:
        self.operand_shapes = tuple(operand_shapes)

    def forward(self, operands: Sequence[Array]) -> Array:
        u, v = operands
        return u * v

    def evaluate(self, operands: Sequence[Array]) -> tuple[Array, LocalMap]:
        u, v = operands
        value = u * v
        shape = value.shape
        local = Sum([np.broadcast_to(v, shape), np.broadcast_to(u, shape)], -value,
                    self.operand_shapes)
        return value, AffineLocal(local, operands)


class BilinearMatMul(AffineOperator):
    """`A(u, v) = u @ right + left @ v + b`: a MatMul of two data tensors at a point
    (``right`` = `v0`, ``left`` = `u0`), batched along axis 0."""

    def __init__(self, right: Array, left: Array, bias: Array | None,
                 operand_shapes: Sequence[tuple[int, ...]]) -> None:
        self.coefficients = (right, left)
        self.bias = bias
        self.operand_shapes = tuple(operand_shapes)

    def linear(self, operands: Sequence[Array]) -> Array:
        u, v = operands
        right, left = self.coefficients
        return u @ right + left @ v

    def vjp(self, grad: Array) -> list[Array]:
        right, left = self.coefficients
        n = grad.shape[0]
        to_u = grad @ np.swapaxes(right, -1, -2)
        to_v = np.swapaxes(left, -1, -2) @ grad
        return [reduce_to_shape(to_u, (n, *self.operand_shapes[0])),
                reduce_to_shape(to_v, (n, *self.operand_shapes[1]))]

    def with_coefficients(self, coefficients: tuple[Array, ...]) -> BilinearMatMul:
        return BilinearMatMul(coefficients[0], coefficients[1], None, self.operand_shapes)


class MatMulProduct(Product):
    """MatMul of two data tensors of the same rank (per-example rank >= 2)."""

    def forward(self, operands: Sequence[Array]) -> Array:
        u, v = operands
        return u @ v

    def evaluate(self, operands: Sequence[Array]) -> tuple[Array, LocalMap]:
        u, v = operands
        value = u @ v
        return value, AffineLocal(BilinearMatMul(v, u, -value, self.operand_shapes), operands)
