"""Einsum (docs/math.md §7.3). The data operands carry the batch label first; it is
the output's first label too, so examples never mix.

* one data operand `u` and constants `W`: `h = einsum(u, W)` is affine (`EinsumAffine`);
* two data operands: bilinear, a product node (`EinsumProduct`): at `(u0, v0)` it is
  `A(u, v) = einsum(u, v0) + einsum(u0, v)`, `b = -einsum(u0, v0)`, whose coefficients
  are the other operand's value (`BilinearEinsum`).

Every vector-Jacobian product is an einsum too: the gradient of an operand is the
einsum of the output gradient with the other operands into the operand's labels (a
label the operand sums over alone is broadcast back with a ones factor).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .operator import PRODUCT, AffineLocal, AffineOperator, Array, LocalMap, Operator


@dataclass(frozen=True)
class Equation:
    """An explicit equation over batched operands: ``inputs`` labels per operand,
    ``output`` labels; every label a single letter, no repeated label in one term."""

    inputs: tuple[str, ...]
    output: str

    def forward_spec(self) -> str:
        return ",".join(self.inputs) + "->" + self.output

    def gradient(self, grad: Array, others: Sequence[Array], which: int,
                 shape: tuple[int, ...]) -> Array:
        """`d(sum g * einsum(...)) / d operand[which]`, of batched ``shape``."""
        target = self.inputs[which]
        rest = [labels for k, labels in enumerate(self.inputs) if k != which]
        present = set(self.output).union(*rest)
        alone = "".join(label for label in target if label not in present)
        terms = [self.output, *rest]
        arrays = [grad, *others]
        if alone:
            terms.append(alone)
            arrays.append(np.ones([shape[target.index(label)] for label in alone]))
        return np.einsum(",".join(terms) + "->" + target, *arrays)


class EinsumAffine(AffineOperator):
    """`h = einsum(u, W_1, ..., W_k)` with constants `W_j` (``coefficients``); the data
    operand is ``data_position`` in the equation."""

    def __init__(self, equation: Equation, data_position: int, constants: Sequence[Array],
                 operand_shape: tuple[int, ...]) -> None:
        self.equation = equation
        self.data_position = data_position
        self.coefficients = tuple(constants)
        self.bias = None
        self.operand_shape = operand_shape

    def _arrays(self, u: Array) -> list[Array]:
        arrays = list(self.coefficients)
        arrays.insert(self.data_position, u)
        return arrays

    def linear(self, operands: Sequence[Array]) -> Array:
        return np.einsum(self.equation.forward_spec(), *self._arrays(operands[0]))

    def vjp(self, grad: Array) -> list[Array]:
        shape = (grad.shape[0], *self.operand_shape)
        return [self.equation.gradient(grad, self.coefficients, self.data_position, shape)]

    def with_coefficients(self, coefficients: tuple[Array, ...]) -> EinsumAffine:
        return EinsumAffine(self.equation, self.data_position, coefficients,
                            self.operand_shape)


class BilinearEinsum(AffineOperator):
    """`A(u, v) = einsum(u, v0) + einsum(u0, v) + b` (``coefficients`` = (`v0`, `u0`))."""

    def __init__(self, equation: Equation, right: Array, left: Array, bias: Array | None,
                 operand_shapes: Sequence[tuple[int, ...]]) -> None:
        self.equation = equation
        self.coefficients = (right, left)
        self.bias = bias
        self.operand_shapes = tuple(operand_shapes)

    def linear(self, operands: Sequence[Array]) -> Array:
        u, v = operands
        right, left = self.coefficients
        spec = self.equation.forward_spec()
        return np.einsum(spec, u, right) + np.einsum(spec, left, v)

    def vjp(self, grad: Array) -> list[Array]:
        right, left = self.coefficients
        n = grad.shape[0]
        return [self.equation.gradient(grad, [right], 0, (n, *self.operand_shapes[0])),
                self.equation.gradient(grad, [left], 1, (n, *self.operand_shapes[1]))]

    def with_coefficients(self, coefficients: tuple[Array, ...]) -> BilinearEinsum:
        return BilinearEinsum(self.equation, coefficients[0], coefficients[1], None,
                              self.operand_shapes)


class EinsumProduct(Operator):
    """Einsum of two data operands (each with the batch label first)."""

    kind = PRODUCT

    def __init__(self, equation: Equation, operand_shapes: Sequence[tuple[int, ...]]) -> None:
        self.equation = equation
        self.operand_shapes = tuple(operand_shapes)

    @property
    def has_bias(self) -> bool:
        return True

    def forward(self, operands: Sequence[Array]) -> Array:
        return np.einsum(self.equation.forward_spec(), *operands)

    def linearize(self, operands: Sequence[Array]) -> LocalMap:
        return self.evaluate(operands)[1]

    def evaluate(self, operands: Sequence[Array]) -> tuple[Array, LocalMap]:
        u, v = operands
        value = np.einsum(self.equation.forward_spec(), u, v)
        local = BilinearEinsum(self.equation, v, u, -value, self.operand_shapes)
        return value, AffineLocal(local, operands)
