"""Element-wise gates built from a `functions.Function` row (docs/math.md §7): at `u0`
each freezes into `h = d u + c`, `d = phi'(u0)`, `c = phi(u0) - d u0` (an
`ElementwiseLocal`), so every rule hands an output's mass to its one input.

``function_gate`` makes a piecewise-linear gate (kind ``gate``: Abs, ThresholdedRelu)
or a tangent gate (kind ``smooth``: Sigmoid, Tanh, Gelu, ...). `ShiftedExp` and
`ShiftedLog` are the two gates of the stable Softmax / LogSoftmax / ReduceLogSumExp
expansions: `exp(u - m)` and `log(s) + m` with `m` the maximum of the expanded op's input
over the reduced axes, a per-row number held constant at the point. The expansions are
exact for any such `m` (Softmax does not depend on it), and with the maximum no
exponential overflows.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .functions import Function
from .gates import ElementwiseLocal
from .operator import GATE, SMOOTH, Array, DomainError, LocalMap, Operator, TangentOperator


class _FunctionGate(TangentOperator):
    def __init__(self, function: Function) -> None:
        self.function = function

    @property
    def has_bias(self) -> bool:
        return not self.function.piecewise_linear

    def evaluate(self, operands: Sequence[Array]) -> tuple[Array, LocalMap]:
        (u,) = operands
        value, slope = self.function.evaluate(u)
        return value, _frozen(self.function.name, u, value, slope, self.has_bias)


class PiecewiseFunctionGate(_FunctionGate):
    """A piecewise-linear element-wise gate from a table row (Abs, ThresholdedRelu)."""

    kind = GATE


class TangentGate(_FunctionGate):
    """A smooth element-wise gate from a table row, frozen to its tangent at `u0`."""

    kind = SMOOTH


def function_gate(function: Function) -> Operator:
    return (PiecewiseFunctionGate(function) if function.piecewise_linear
            else TangentGate(function))


def _frozen(name: str, u: Array, value: Array, slope: Array,
            with_bias: bool) -> ElementwiseLocal:
    if not (np.isfinite(value).all() and np.isfinite(slope).all()):
        raise DomainError(f"{name} has no finite value or derivative at an input of "
                          f"{float(np.max(np.abs(u), initial=0.0)):.6g}")
    offset = value - slope * u if with_bias else None
    return ElementwiseLocal(slope, offset)


def _row_maximum(x: Array, axes: tuple[int, ...]) -> Array:
    """`m`: the maximum over per-example ``axes`` (kept as length-1 axes; -inf over an
    empty set, whose sum of exponentials is then 0)."""
    return np.max(x, axis=tuple(a + 1 for a in axes), keepdims=True, initial=-np.inf)


class ShiftedExp(TangentOperator):
    """`h = exp(u - m)`, `m` the maximum of `u` over ``axes`` held constant: `d = h`,
    `c = h (1 - u)`.

    ``masked``: the elements where an attention mask added -inf to `u` (a bool array
    broadcasting to the engine's layout, docs/math.md §7.5). They are hard zeros:
    `h = 0`, `d = 0`, `c = 0` whatever `u` is, and `m` is the maximum over the other
    elements, exactly as `exp(-inf - m) = 0` gives. The importer refuses a row with
    every element masked, so `m` is finite."""

    kind = SMOOTH

    def __init__(self, axes: tuple[int, ...], masked: Array | None = None) -> None:
        self.axes = axes
        self.masked = masked

    def evaluate(self, operands: Sequence[Array]) -> tuple[Array, LocalMap]:
        (u,) = operands
        shifted = u if self.masked is None else np.where(self.masked, -np.inf, u)
        value = np.exp(shifted - _row_maximum(shifted, self.axes))
        return value, _frozen("Exp", u, value, value, True)


class ShiftedLog(TangentOperator):
    """`h = log(s) + m` for `s` (the sum of a `ShiftedExp`'s outputs, reduced axes kept)
    and `m` the maximum, over ``axes``, of the context operand (the `ShiftedExp`'s
    input), held constant: `d = 1 / s`, `c = h - 1`. Its one structural input is `s`;
    the second operand is context only (no gradient, no mass)."""

    kind = SMOOTH

    def __init__(self, axes: tuple[int, ...]) -> None:
        self.axes = axes

    def evaluate(self, operands: Sequence[Array]) -> tuple[Array, LocalMap]:
        s, context = operands
        if not (s > 0).all():  # cannot happen for a sum of exp(u - max u) >= 1
            raise DomainError("Log of a non-positive sum")
        value = np.log(s) + _row_maximum(context, self.axes)
        return value, _frozen("Log", s, value, 1.0 / s, True)
