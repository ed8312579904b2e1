"""Resize with linear or cubic interpolation (docs/math.md §7.3): for constant scales or
sizes it is linear in the data, `h = R(u) + b`, and separable: along each resized axis
`a` output `o` reads `T_a` taps `index_a[o, t]` with weights `weight_a[o, t]`.

The operator loops over the combined taps `t = (t_1, ..., t_d)` (4 for bilinear, 16 for
bicubic), each one vectorised take per resized axis; no dense matrix is built. Its
coefficient array holds the combined weight `prod_a weight_a[o_a, t_a]` of every tap of
every output position, so a rule's coefficient map (`|W|`, `max(W, 0)`, ones) acts on the
true Jacobian entries even where cubic weights are negative. Outputs that
``tf_crop_and_resize`` extrapolates are constants (their bias), connected for the rules
to the whole input (docs/math.md §7.2 decision 6).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .embed import WithOrphans
from .operator import AffineOperator, Array


@dataclass(frozen=True)
class AxisTaps:
    """The 1-D interpolation along per-example ``axis``: ``index`` and ``weight`` of
    shape [out, T] (indices already clamped into the input)."""

    axis: int
    index: Array
    weight: Array


def _scatter_axis(values: Array, axis: int, index: Array, size: int) -> Array:
    """The transpose of ``np.take(u, index, axis)`` (a 1-D ``index``): adds each slice
    back to the position it was read from."""
    moved = np.moveaxis(values, axis, -1)
    lead = moved.shape[:-1]
    rows = moved.reshape(-1, moved.shape[-1])
    target = (np.arange(rows.shape[0])[:, None] * size + index[None, :]).ravel()
    out = np.bincount(target, weights=rows.ravel(), minlength=rows.shape[0] * size)
    return np.moveaxis(out.reshape(*lead, size), -1, axis)


class Interpolate(AffineOperator):
    """`h[p] = sum_t coefficient[t, p] u[taps_t(p)] + bias[p]` over combined taps."""

    def __init__(self, operand_shape: tuple[int, ...], taps: Sequence[AxisTaps],
                 coefficient: Array, bias: Array | None, orphans: Array | None) -> None:
        self.operand_shape = operand_shape
        self.taps = tuple(taps)
        self.coefficients = (coefficient,)
        self.bias = bias
        self.orphans = orphans
        # extrapolated outputs read no tap, whatever a rule maps the coefficients to
        self.reads = None if orphans is None else 1.0 - orphans

    @classmethod
    def build(cls, operand_shape: tuple[int, ...], taps: Sequence[AxisTaps],
              extrapolated: Array | None, extrapolation_value: float) -> Interpolate:
        """Combine per-axis taps; ``extrapolated`` (broadcastable to the output, batched)
        marks the outputs that are the constant ``extrapolation_value``."""
        rank = len(operand_shape) + 1
        parts = []
        for combo in itertools.product(*(range(a.weight.shape[1]) for a in taps)):
            weight = np.ones((1,) * rank)
            for axes_taps, t in zip(taps, combo):
                shape = [1] * rank
                shape[axes_taps.axis + 1] = axes_taps.weight.shape[0]
                weight = weight * axes_taps.weight[:, t].reshape(shape)
            parts.append(weight)
        coefficient = np.stack(parts)
        bias = orphans = None
        if extrapolated is not None and extrapolated.any():
            bias = np.where(extrapolated, float(extrapolation_value), 0.0)
            orphans = extrapolated.astype(np.float64)
        return cls(operand_shape, taps, coefficient, bias, orphans)

    def _combos(self) -> list[tuple[int, ...]]:
        return list(itertools.product(*(range(a.weight.shape[1]) for a in self.taps)))

    def linear(self, operands: Sequence[Array]) -> Array:
        (u,) = operands
        (coefficient,) = self.coefficients
        out = None
        for k, combo in enumerate(self._combos()):
            picked = u
            for axis_taps, t in zip(self.taps, combo):
                picked = np.take(picked, axis_taps.index[:, t], axis=axis_taps.axis + 1)
            part = coefficient[k] * picked
            out = part if out is None else out + part
        assert out is not None
        return out if self.reads is None else out * self.reads

    def vjp(self, grad: Array) -> list[Array]:
        (coefficient,) = self.coefficients
        total = np.zeros((grad.shape[0], *self.operand_shape))
        if self.reads is not None:
            grad = grad * self.reads
        for k, combo in enumerate(self._combos()):
            back = grad * coefficient[k]
            for axis_taps, t in reversed(list(zip(self.taps, combo))):
                back = _scatter_axis(back, axis_taps.axis + 1, axis_taps.index[:, t],
                                     self.operand_shape[axis_taps.axis])
            total += back
        return [total]

    def with_coefficients(self, coefficients: tuple[Array, ...]) -> Interpolate:
        return Interpolate(self.operand_shape, self.taps, coefficients[0], None, self.orphans)

    def rule_view(self) -> AffineOperator:
        if self.orphans is None:
            return self
        return WithOrphans(self, self.orphans, [self.operand_shape])
