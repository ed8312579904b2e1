"""An affine operator some of whose outputs read no operand element (a Conv window lying
entirely in the padding): `h = A(u) + b` unchanged, but for the attribution rules those
outputs are connected to every operand element with coefficient 1 (docs/math.md §7.2
decision 6, §7.3), so the bias mass they carry is not lost."""

from __future__ import annotations

from collections.abc import Sequence

from .embed import WithOrphans
from .operator import AffineOperator, Array


class WithEmptyOutputs(AffineOperator):
    """``base`` whose outputs where ``mask`` is 1 (batched, broadcastable) read nothing."""

    def __init__(self, base: AffineOperator, mask: Array,
                 operand_shapes: Sequence[tuple[int, ...]]) -> None:
        self.base = base
        self.mask = mask
        self.operand_shapes = tuple(operand_shapes)
        self.coefficients = base.coefficients
        self.bias = base.bias

    def linear(self, operands: Sequence[Array]) -> Array:
        return self.base.linear(operands)

    def vjp(self, grad: Array) -> list[Array]:
        return self.base.vjp(grad)

    def with_coefficients(self, coefficients: tuple[Array, ...]) -> AffineOperator:
        return WithEmptyOutputs(self.base.with_coefficients(coefficients), self.mask,
                                self.operand_shapes)

    def rule_view(self) -> AffineOperator:
        return WithOrphans(self.base, self.mask, self.operand_shapes)
