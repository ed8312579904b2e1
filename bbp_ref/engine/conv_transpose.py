"""ConvTranspose (docs/math.md §7.3): `h = C^T(u) + b`, where `C` is the convolution
whose weight, groups, strides, dilations and pads are the ConvTranspose's and whose
input has the ConvTranspose's output shape. So its linear part is `C`'s
vector-Jacobian product and its vector-Jacobian product is `C` itself (operator form,
no dense matrix).

Output positions that no input reaches (the gaps of a stride larger than the dilated
kernel, ``output_padding``, an ``output_shape`` larger than the natural size) hold only
the bias: for the rules they are connected to the whole input (§7.2 decision 6).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .affine import Conv
from .embed import WithOrphans
from .operator import AffineOperator, Array
from .windows import Window


class ConvTranspose(AffineOperator):
    """``weight`` [C_in, C_out / groups, *kernel]; ``window`` is the geometry of the
    adjoint convolution (its ``in_spatial`` is this op's output spatial shape)."""

    def __init__(self, weight: Array, bias: Array | None, window: Window, groups: int,
                 in_channels: int, orphans: Array | None = None) -> None:
        self.weight = weight
        self.bias = bias
        self.window = window
        self.groups = groups
        self.in_channels = in_channels
        self.out_channels = weight.shape[1] * groups
        self.coefficients = (weight,)
        self.orphans = orphans

    def _adjoint(self) -> Conv:
        return Conv(self.weight, None, self.window, self.groups, self.out_channels)

    def linear(self, operands: Sequence[Array]) -> Array:
        (u,) = operands
        return self._adjoint().vjp(u)[0]

    def vjp(self, grad: Array) -> list[Array]:
        return [self._adjoint().linear([grad])]

    def with_coefficients(self, coefficients: tuple[Array, ...]) -> ConvTranspose:
        return ConvTranspose(coefficients[0], None, self.window, self.groups,
                             self.in_channels, self.orphans)

    def rule_view(self) -> AffineOperator:
        if self.orphans is None:
            return self
        shape = (self.in_channels, *self.window.out_spatial)
        return WithOrphans(self, self.orphans, [shape])

    @staticmethod
    def unreached(window: Window, kernel_channels: int) -> Array | None:
        """The output positions no input element reaches (batched shape [1, 1, *out]),
        or None if every position is reached."""
        ones = np.ones((1, kernel_channels, *window.out_spatial))
        reach = window.window_sum_transpose(ones)[:, :1]
        mask = (reach == 0).astype(np.float64)
        return mask if mask.any() else None
