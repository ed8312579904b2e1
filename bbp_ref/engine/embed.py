"""Nodes some of whose output elements depend on no input (docs/math.md §7): a constant
concatenated to data (a class token), the border of a constant Pad, a Where with a
constant condition choosing a constant.

`Embed` is an affine node `h = R(u) + b`: `R` copies operand elements to the routed
outputs (a table, as `IndexRoute`) and `b` holds the constants at the other outputs.
For the attribution rules (`rule_view`) each constant output is connected to every
element of the node's data operands with coefficient 1, so its bias mass is spread over
the data input of its own example (by `|u|` for ``abs``, by the signed values for
``signed``, evenly for ``uniform``) and no constant keeps mass. `WithOrphans` adds such
connections to any affine operator whose outputs marked in a mask have no structural
input.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .operator import AffineOperator, Array
from .routes import gather_flat, is_injective, scatter_flat, split_flat


class Embed(AffineOperator):
    """`h[p] = weight[p] * u[index[p]] + b[p]`; ``index`` is -1 where `h[p]` is a
    constant (``weight`` 0 there, 1 elsewhere); ``bias`` holds the constants."""

    def __init__(self, operand_shapes: Sequence[tuple[int, ...]], index: Array,
                 bias: Array | None, weight: Array | None = None) -> None:
        self.operand_shapes = tuple(tuple(s) for s in operand_shapes)
        self.index = np.asarray(index, dtype=np.int64)
        self.fill = self.index < 0
        self.read = np.where(self.fill, 0, self.index)
        if weight is None:
            weight = (~self.fill).astype(np.float64)[None]
        self.coefficients = (weight,)
        self.bias = bias
        self.injective = is_injective(self.index[~self.fill])

    def linear(self, operands: Sequence[Array]) -> Array:
        # constant outputs read a placeholder (element 0) that a mapped weight must not see
        return np.where(self.fill, 0.0, gather_flat(operands, self.read) * self.coefficients[0])

    def vjp(self, grad: Array) -> list[Array]:
        sizes = [int(np.prod(s)) for s in self.operand_shapes]
        values = np.where(self.fill, 0.0, grad * self.coefficients[0])
        injective = self.injective and not self.fill.any()
        flat = scatter_flat(values, self.read, sizes, injective)
        return split_flat(flat, self.operand_shapes)

    def with_coefficients(self, coefficients: tuple[Array, ...]) -> Embed:
        return Embed(self.operand_shapes, self.index, None, coefficients[0])

    def rule_view(self) -> AffineOperator:
        if not self.fill.any():
            return self
        return WithOrphans(self, self.fill.astype(np.float64)[None], self.operand_shapes)


class WithOrphans(AffineOperator):
    """``base`` plus, at the outputs where ``mask`` is 1, the sum of every element of
    every operand (per example): the rules' view of outputs with no structural input."""

    def __init__(self, base: AffineOperator, mask: Array,
                 operand_shapes: Sequence[tuple[int, ...]]) -> None:
        self.base = base
        self.coefficients = (*base.coefficients, mask)
        self.bias = None
        self.operand_shapes = tuple(operand_shapes)

    @property
    def mask(self) -> Array:
        return self.coefficients[-1]

    def linear(self, operands: Sequence[Array]) -> Array:
        n = operands[0].shape[0]
        total = sum(u.reshape(n, -1).sum(axis=1) for u in operands)
        out = self.base.linear(operands)
        return out + self.mask * total.reshape(n, *([1] * (out.ndim - 1)))

    def vjp(self, grad: Array) -> list[Array]:
        n = grad.shape[0]
        spread = (grad * self.mask).reshape(n, -1).sum(axis=1)
        return [part + np.broadcast_to(spread.reshape(n, *([1] * len(shape))), (n, *shape))
                for part, shape in zip(self.base.vjp(grad), self.operand_shapes)]

    def with_coefficients(self, coefficients: tuple[Array, ...]) -> WithOrphans:
        base = self.base.with_coefficients(coefficients[:-1])
        return WithOrphans(base, coefficients[-1], self.operand_shapes)
