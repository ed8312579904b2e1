"""Gate operators (docs/math.md §2): `h[p] = d[p] * u[s(p)] + c[p]`, each output reads one
input element. At an input they freeze into a `GateLocal` holding `d`, `c` and `s`."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .operator import GATE, Array, LocalMap, Operator, SingleInputMap
from .windows import Window


class ElementwiseLocal(SingleInputMap):
    """A frozen element-wise gate: `s(p) = p`."""

    kind = GATE

    def __init__(self, slope: Array, offset: Array | None) -> None:
        self.slope = slope
        self.offset = offset

    @property
    def bias(self) -> Array | None:
        return self.offset

    def apply(self, operands: Sequence[Array]) -> Array:
        return self.slope * operands[0]

    def vjp(self, grad: Array) -> list[Array]:
        return [self.slope * grad]

    def hand_back(self, mass: Array) -> list[Array]:
        return [mass]


class PiecewiseLinear(Operator):
    """Relu, LeakyRelu, PRelu and Clip as one element-wise gate.

    Below zero the slope is ``negative_slope`` (0 for Relu, alpha for LeakyRelu, the
    broadcast slope tensor for PRelu); at exactly 0 the negative side is taken, as
    PyTorch's autograd does. ``lower``/``upper`` (Clip) saturate: outside the open
    interval `d = 0` and `c` is the clipped value, the node's local bias.
    """

    kind = GATE

    def __init__(self, negative_slope: Array | float = 0.0, lower: float | None = None,
                 upper: float | None = None) -> None:
        self.negative_slope = np.asarray(negative_slope, dtype=float)
        self.lower = lower
        self.upper = upper

    @property
    def is_clip(self) -> bool:
        return self.lower is not None or self.upper is not None

    @property
    def has_bias(self) -> bool:
        return self.is_clip

    def forward(self, operands: Sequence[Array]) -> Array:
        (u,) = operands
        if self.is_clip:
            out = u
            if self.lower is not None:
                out = np.maximum(out, self.lower)
            if self.upper is not None:
                out = np.minimum(out, self.upper)
            return np.array(out, dtype=float)
        return self._value(u, self._slope(u))

    def linearize(self, operands: Sequence[Array]) -> LocalMap:
        return self._freeze(operands[0], None)

    def evaluate(self, operands: Sequence[Array]) -> tuple[Array, LocalMap]:
        if self.is_clip:
            value = self.forward(operands)
            return value, self._freeze(operands[0], value)
        (u,) = operands
        slope = self._slope(u)
        return self._value(u, slope), ElementwiseLocal(slope, None)

    def _slope(self, u: Array) -> Array:
        """`d`: 1 above 0, the negative slope at and below it."""
        return np.where(u > 0, 1.0, self.negative_slope)

    def _value(self, u: Array, slope: Array) -> Array:
        """`d u`: the same numbers as ``where(u > 0, u, negative_slope * u)``, the sign of a
        zero included (`u * 1 = u`, and below 0 `u * a = a * u`)."""
        return u * slope

    def _freeze(self, u: Array, value: Array | None) -> LocalMap:
        """The local map at ``u``; ``value`` is the forward output if already known."""
        if not self.is_clip:
            return ElementwiseLocal(self._slope(u), None)
        inside = np.ones(u.shape, dtype=bool)
        if self.lower is not None:
            inside &= u > self.lower
        if self.upper is not None:
            inside &= u < self.upper
        clipped = self.forward([u]) if value is None else value
        return ElementwiseLocal(inside.astype(float), np.where(inside, 0.0, clipped))


class MaxPoolLocal(SingleInputMap):
    """A frozen max pool: output element `p` copies input element `s(p)` of its
    channel; ``index`` holds `s` as flat spatial indices, shape [N, C, *out]."""

    kind = GATE

    def __init__(self, index: Array, in_shape: tuple[int, ...]) -> None:
        self.index = index
        self.in_shape = in_shape  # batched [N, C, *spatial]

    def apply(self, operands: Sequence[Array]) -> Array:
        (u,) = operands
        n, c = u.shape[:2]
        flat = u.reshape(n, c, -1)
        picked = np.take_along_axis(flat, self.index.reshape(n, c, -1), axis=2)
        return picked.reshape(self.index.shape)

    def vjp(self, grad: Array) -> list[Array]:
        return [self._scatter(grad)]

    def hand_back(self, mass: Array) -> list[Array]:
        return [self._scatter(mass)]

    def _scatter(self, values: Array) -> Array:
        n, c = self.in_shape[:2]
        spatial = int(np.prod(self.in_shape[2:]))
        rows = np.arange(n * c).reshape(n, c, *([1] * (self.index.ndim - 2))) * spatial
        flat = np.bincount((rows + self.index).ravel(), weights=values.ravel(),
                           minlength=n * c * spatial)
        return flat.reshape(self.in_shape)


class MaxPool(Operator):
    """MaxPool / GlobalMaxPool: each output copies the arg-max of its in-bounds
    window; ties go to the lowest flat index (docs/math.md §2)."""

    kind = GATE

    def __init__(self, window: Window) -> None:
        self.window = window

    def _argmax(self, u: Array) -> tuple[Array, Array]:
        window = self.window
        padded = window.pad(u, value=-np.inf)
        lead = (slice(None), slice(None))
        best = np.full(u.shape[:2] + window.out_spatial, -np.inf)
        which = np.zeros(best.shape, dtype=np.int64)
        for k, offset in enumerate(window.offsets()):
            values = padded[lead + window.slices(offset)]
            better = values > best
            best = np.where(better, values, best)
            which = np.where(better, k, which)
        return best, which

    def forward(self, operands: Sequence[Array]) -> Array:
        best, _ = self._argmax(operands[0])
        return best

    def linearize(self, operands: Sequence[Array]) -> LocalMap:
        return self.evaluate(operands)[1]

    def evaluate(self, operands: Sequence[Array]) -> tuple[Array, LocalMap]:
        (u,) = operands
        best, which = self._argmax(u)
        return best, self.frozen(which, u.shape)

    def frozen(self, which: Array, in_shape: tuple[int, ...]) -> MaxPoolLocal:
        """The local map that copies, for each output, the window element numbered
        ``which`` (a kernel offset in `Window.offsets` order) of a batched input of
        shape ``in_shape``."""
        window = self.window
        offsets = np.array(list(window.offsets()), dtype=np.int64)  # [K, dims]
        flat = np.zeros(which.shape, dtype=np.int64)
        for axis, size in enumerate(window.in_spatial):
            start = np.arange(window.out_spatial[axis]) * window.strides[axis]
            start = np.reshape(start, [-1 if a == axis else 1
                                       for a in range(len(window.in_spatial))])
            coordinate = (start + offsets[which, axis] * window.dilations[axis]
                          - window.pads_begin[axis])
            flat = flat * size + coordinate
        return MaxPoolLocal(flat, in_shape)
