"""Sliding-window geometry shared by Conv, AveragePool and MaxPool (any number of
spatial axes), and the window loops that implement them in operator form.

A window op is computed as a loop over the kernel offsets (a few to a few dozen),
each step one vectorised slice of the padded input; nothing of size
output x kernel is ever materialised.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

Array = np.ndarray


def output_size(size: int, kernel: int, stride: int, dilation: int, pad_begin: int,
                pad_end: int, ceil_mode: bool) -> int:
    """Output length of one spatial axis (ONNX; with ceil_mode a window that would
    start in the end padding is dropped, as onnxruntime and PyTorch do)."""
    span = dilation * (kernel - 1) + 1
    room = size + pad_begin + pad_end - span
    if room < 0:
        return 0
    if ceil_mode:
        out = -(-room // stride) + 1
        if (out - 1) * stride >= size + pad_begin:
            out -= 1
        return out
    return room // stride + 1


def auto_pads(auto_pad: str, size: int, kernel: int, stride: int,
              dilation: int) -> tuple[int, int]:
    """Begin and end padding of one axis for auto_pad SAME_UPPER / SAME_LOWER / VALID."""
    if auto_pad == "VALID":
        return 0, 0
    out = -(-size // stride)
    total = max(0, (out - 1) * stride + dilation * (kernel - 1) + 1 - size)
    small, large = total // 2, total - total // 2
    return (small, large) if auto_pad == "SAME_UPPER" else (large, small)


@dataclass(frozen=True)
class Window:
    """Geometry of a window op over the trailing ``len(kernel)`` axes of a tensor."""

    in_spatial: tuple[int, ...]
    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    pads_begin: tuple[int, ...]
    pads_end: tuple[int, ...]
    ceil_mode: bool = False

    @property
    def out_spatial(self) -> tuple[int, ...]:
        return tuple(
            output_size(n, k, s, d, b, e, self.ceil_mode)
            for n, k, s, d, b, e in zip(self.in_spatial, self.kernel, self.strides,
                                        self.dilations, self.pads_begin, self.pads_end)
        )

    @property
    def padded_spatial(self) -> tuple[int, ...]:
        """Extent of the padded input that the windows read (covers ceil_mode's last
        window, which may reach past the declared end padding)."""
        return tuple(
            max(b + n + e, (o - 1) * s + d * (k - 1) + 1)
            for n, k, s, d, b, e, o in zip(self.in_spatial, self.kernel, self.strides,
                                           self.dilations, self.pads_begin, self.pads_end,
                                           self.out_spatial)
        )

    @property
    def size(self) -> int:
        return int(np.prod(self.kernel))

    def offsets(self) -> Iterator[tuple[int, ...]]:
        """Kernel offsets in row-major order (so in increasing input flat index)."""
        return itertools.product(*(range(k) for k in self.kernel))

    def slices(self, offset: tuple[int, ...]) -> tuple[slice, ...]:
        """The slice of the padded input's spatial axes that kernel ``offset`` reads
        for every output position."""
        return tuple(
            slice(o * d, o * d + s * (n - 1) + 1, s)
            for o, d, s, n in zip(offset, self.dilations, self.strides, self.out_spatial)
        )

    def pad(self, x: Array, value: float = 0.0) -> Array:
        """``x`` with its spatial axes padded to ``padded_spatial``."""
        lead = x.ndim - len(self.kernel)
        widths = [(0, 0)] * lead + [
            (b, p - b - n) for b, p, n in zip(self.pads_begin, self.padded_spatial,
                                              self.in_spatial)
        ]
        if not any(w for pair in widths for w in pair):
            return x
        return np.pad(x, widths, constant_values=value)

    def crop(self, x_padded: Array) -> Array:
        """Inverse of ``pad``: the input region of a padded tensor."""
        lead = x_padded.ndim - len(self.kernel)
        region = tuple(slice(b, b + n) for b, n in zip(self.pads_begin, self.in_spatial))
        return x_padded[(slice(None),) * lead + region]

    def in_bounds(self) -> Array:
        """Indicator of the input region inside the padded extent (spatial shape)."""
        mask = np.zeros(self.padded_spatial)
        mask[tuple(slice(b, b + n) for b, n in zip(self.pads_begin, self.in_spatial))] = 1.0
        return mask

    def window_sum(self, x: Array) -> Array:
        """Sum of each window of ``x`` (padding reads as 0)."""
        return self.padded_window_sum(self.pad(x))

    def padded_window_sum(self, padded: Array) -> Array:
        """Sum of each window of an array already laid out on ``padded_spatial``."""
        lead_shape = padded.shape[: padded.ndim - len(self.kernel)]
        lead = (slice(None),) * len(lead_shape)
        out = np.zeros(lead_shape + self.out_spatial)
        for offset in self.offsets():
            out += padded[lead + self.slices(offset)]
        return out

    def window_sum_transpose(self, grad: Array) -> Array:
        """Adjoint of ``window_sum``: each output's gradient added to its window."""
        lead_shape = grad.shape[: grad.ndim - len(self.kernel)]
        gp = np.zeros(lead_shape + self.padded_spatial)
        lead = (slice(None),) * len(lead_shape)
        for offset in self.offsets():
            gp[lead + self.slices(offset)] += grad
        return self.crop(gp)
