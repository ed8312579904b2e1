"""Element-wise functions `phi` with their derivatives `phi'`, one table row each.

A row computes, from the operand values `u0`, the value `phi(u0)` and the slope
`phi'(u0)`; the gate built from it (`engine.elementwise`) freezes at `u0` into
`h = d u + c` with `d = phi'(u0)`, `c = phi(u0) - d u0` (docs/math.md §7). Rows are
evaluated in a numerically stable form (no overflow for large `|u0|` where `phi` and
`phi'` are finite). A value outside the function's domain raises `DomainError`.

At a kink (Abs at 0, Elu/Selu at 0, HardSwish at +-3, ThresholdedRelu at `alpha`) the
slope is the one PyTorch's autograd returns (docs/math.md §2 decision 1 and §7).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import special

from .operator import Array, DomainError

ValueAndSlope = Callable[[Array], tuple[Array, Array]]

SQRT_2 = np.sqrt(2.0)
SQRT_2_OVER_PI = np.sqrt(2.0 / np.pi)
INV_SQRT_2PI = 1.0 / np.sqrt(2.0 * np.pi)
TWO_OVER_SQRT_PI = 2.0 / np.sqrt(np.pi)
GELU_TANH_CUBIC = 0.044715


@dataclass(frozen=True)
class Function:
    """An element-wise function: ``name`` (the ONNX op), ``evaluate`` (`u -> (phi(u),
    phi'(u))`) and whether it is piecewise linear (a gate of §2) or smooth (a tangent
    gate of §7)."""

    name: str
    evaluate: ValueAndSlope
    piecewise_linear: bool = False


def _require(condition: Array, message: str) -> None:
    if not np.all(condition):
        raise DomainError(message)


def sigmoid(u: Array) -> tuple[Array, Array]:
    value = special.expit(u)
    return value, value * (1.0 - value)


def tanh(u: Array) -> tuple[Array, Array]:
    value = np.tanh(u)
    return value, 1.0 - value * value


def softplus(u: Array) -> tuple[Array, Array]:
    return np.logaddexp(0.0, u), special.expit(u)


def softsign(u: Array) -> tuple[Array, Array]:
    denominator = 1.0 + np.abs(u)
    return u / denominator, 1.0 / (denominator * denominator)


def elu(alpha: float) -> ValueAndSlope:
    def evaluate(u: Array) -> tuple[Array, Array]:
        positive = u > 0  # at 0 the negative side, as autograd
        negative = np.minimum(u, 0.0)
        return (np.where(positive, u, alpha * np.expm1(negative)),
                np.where(positive, 1.0, alpha * np.exp(negative)))
    return evaluate


def selu(alpha: float, gamma: float) -> ValueAndSlope:
    inner = elu(alpha)

    def evaluate(u: Array) -> tuple[Array, Array]:
        value, slope = inner(u)
        return gamma * value, gamma * slope
    return evaluate


def celu(alpha: float) -> ValueAndSlope:
    def evaluate(u: Array) -> tuple[Array, Array]:
        negative = np.minimum(u, 0.0) / alpha
        return (np.maximum(u, 0.0) + alpha * np.expm1(negative),
                np.where(u > 0, 1.0, np.exp(negative)))
    return evaluate


def erf(u: Array) -> tuple[Array, Array]:
    return special.erf(u), TWO_OVER_SQRT_PI * np.exp(-u * u)


def exp(u: Array) -> tuple[Array, Array]:
    _require(u <= 709.0,
             f"Exp overflows float64 at an input of {float(np.max(u, initial=-np.inf)):.6g}")
    value = np.exp(u)
    return value, value


def log(u: Array) -> tuple[Array, Array]:
    _require(u > 0, f"Log of a non-positive value ({float(np.min(u, initial=np.inf)):.6g})")
    return np.log(u), 1.0 / u


def sqrt(u: Array) -> tuple[Array, Array]:
    _require(u >= 0, f"Sqrt of a negative value ({float(np.min(u, initial=np.inf)):.6g})")
    _require(u > 0, "Sqrt at 0 has no finite derivative")
    value = np.sqrt(u)
    return value, 0.5 / value


def reciprocal(u: Array) -> tuple[Array, Array]:
    _require(u != 0, "Reciprocal of 0")
    value = 1.0 / u
    return value, -value * value


def power(exponent: Array) -> ValueAndSlope:
    """`u ** p` for a constant `p` (broadcast). At `u = 0` the derivative is its limit:
    0 for `p > 1` or `p = 0`, 1 for `p = 1`; infinite limits are refused."""
    p = np.asarray(exponent, dtype=np.float64)
    integral = p == np.round(p)

    def evaluate(u: Array) -> tuple[Array, Array]:
        _require((u >= 0) | integral,
                 "Pow of a negative value to a non-integer exponent")
        zero = u == 0
        _require(~zero | (p >= 1) | (p == 0),
                 "Pow at 0 with an exponent below 1 has no finite value or derivative")
        safe = np.where(zero, 1.0, u)
        value = np.where(zero, np.where(p == 0, 1.0, 0.0), safe ** p)
        slope = np.where(zero, np.where(p == 1, 1.0, 0.0), p * safe ** (p - 1.0))
        return value, slope
    return evaluate


def sin(u: Array) -> tuple[Array, Array]:
    return np.sin(u), np.cos(u)


def cos(u: Array) -> tuple[Array, Array]:
    return np.cos(u), -np.sin(u)


def atan(u: Array) -> tuple[Array, Array]:
    return np.arctan(u), 1.0 / (1.0 + u * u)


def sinh(u: Array) -> tuple[Array, Array]:
    return np.sinh(u), np.cosh(u)


def cosh(u: Array) -> tuple[Array, Array]:
    return np.cosh(u), np.sinh(u)


def asinh(u: Array) -> tuple[Array, Array]:
    return np.arcsinh(u), 1.0 / np.sqrt(1.0 + u * u)


def mish(u: Array) -> tuple[Array, Array]:
    """`u tanh(softplus(u))`; `phi' = tanh(sp) + u (1 - tanh(sp)^2) sigmoid(u)`."""
    t = np.tanh(np.logaddexp(0.0, u))
    return u * t, t + u * (1.0 - t * t) * special.expit(u)


def gelu(u: Array) -> tuple[Array, Array]:
    """`u Phi(u)` with `Phi` the standard normal CDF; `phi' = Phi(u) + u N(u)`."""
    cdf = 0.5 * (1.0 + special.erf(u / SQRT_2))
    return u * cdf, cdf + u * INV_SQRT_2PI * np.exp(-0.5 * u * u)


def gelu_tanh(u: Array) -> tuple[Array, Array]:
    """`0.5 u (1 + tanh(k (u + 0.044715 u^3)))`, `k = sqrt(2 / pi)`."""
    t = np.tanh(SQRT_2_OVER_PI * (u + GELU_TANH_CUBIC * u ** 3))
    slope = 0.5 * (1.0 + t) + 0.5 * u * (1.0 - t * t) * SQRT_2_OVER_PI * (
        1.0 + 3.0 * GELU_TANH_CUBIC * u * u)
    return 0.5 * u * (1.0 + t), slope


def hard_swish(u: Array) -> tuple[Array, Array]:
    """`u clip(u / 6 + 1/2, 0, 1)`: piecewise quadratic, so a tangent gate. At -3 and 3
    the slope is the middle piece's (-1/2 and 3/2), as autograd's."""
    value = u * np.clip(u / 6.0 + 0.5, 0.0, 1.0)
    slope = np.where(u < -3.0, 0.0, np.where(u <= 3.0, u / 3.0 + 0.5, 1.0))
    return value, slope


def absolute(u: Array) -> tuple[Array, Array]:
    """`|u|`; the slope at 0 is 0 (autograd's `sign(0)`)."""
    return np.abs(u), np.sign(u)


def thresholded_relu(alpha: float) -> ValueAndSlope:
    """`u` where `u > alpha`, else 0 (a jump at `alpha` when `alpha != 0`)."""
    def evaluate(u: Array) -> tuple[Array, Array]:
        above = u > alpha
        return np.where(above, u, 0.0), above.astype(np.float64)
    return evaluate


def shifted_exp(u: Array, shift: Array) -> tuple[Array, Array]:
    """`exp(u - m)` with `m` a per-row shift held constant (Softmax's stable form)."""
    value = np.exp(u - shift)
    return value, value
