"""What an ONNX tensor is during import: a constant, a structural tensor of the
canonical graph, or a zero Pad waiting to be folded into the Conv after it."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Const:
    """A tensor that does not depend on the input; its full ONNX value. ``at_two``:
    for a constant folded from the shape of a data tensor (batch taken as 1), the value
    it would have for a batch of two, which tells where a Reshape puts the batch
    (docs/math.md §7.5); None for a constant that does not depend on the batch size."""

    value: np.ndarray
    at_two: np.ndarray | None = None

    @property
    def value_at_two(self) -> np.ndarray:
        """The value for a batch of two."""
        return self.value if self.at_two is None else self.at_two


@dataclass(frozen=True)
class MergedBatch:
    """Where the batch sits when a Reshape merged it into another ONNX axis ``axis``
    (docs/math.md §7.5): along that axis of length `O * N * inner` for a batch of N,
    index `o * N * inner + n * inner + i` is element `o * inner + i` of example `n`.
    ``inner`` is the per-example length minor to the batch (the axis's per-example
    length when the batch is its major factor, 1 when it is the minor one)."""

    axis: int
    inner: int


@dataclass(frozen=True)
class Var:
    """A tensor that depends on the input: the canonical node holding it, its
    per-example shape (the ONNX shape with the batch axis left out, the other axes in
    their ONNX order) and ``batch_axis``, the ONNX axis holding the batch (0 unless a
    Transpose moved it, docs/math.md §7.5). The engine's arrays always hold the batch
    at axis 0, followed by the per-example shape. ``masked``: for the output of an Add
    of a constant holding -inf (an attention mask, docs/math.md §7.5), where the ONNX
    value is -inf, a bool array in the engine's layout (length 1 along the batch)
    broadcasting to the per-example shape; the node's value is finite there, and only
    a Softmax may read such a tensor."""

    node: str
    shape: tuple[int, ...]
    batch_axis: int = 0
    merged: MergedBatch | None = None
    masked: np.ndarray | None = field(default=None, compare=False)

    @property
    def rank(self) -> int:
        """Rank of the ONNX tensor (batch axis included); for a merged batch, the rank
        of the engine's array (batch axis first, then the ONNX shape for a batch of
        one), which is what element-wise handlers broadcast against."""
        return len(self.shape) + 1

    @property
    def onnx_rank(self) -> int:
        """Rank of the ONNX tensor."""
        return len(self.shape) if self.merged is not None else len(self.shape) + 1

    @property
    def onnx_shape(self) -> tuple[int, ...]:
        """The ONNX shape for a batch of one."""
        if self.merged is not None:
            return self.shape
        return self.shape[:self.batch_axis] + (1,) + self.shape[self.batch_axis:]

    def onnx_shape_for(self, batch: int) -> tuple[int, ...]:
        """The ONNX shape for a batch of ``batch``."""
        shape = list(self.onnx_shape)
        shape[self.merged.axis if self.merged is not None else self.batch_axis] *= batch
        return tuple(shape)

    @property
    def elements_before_batch(self) -> int:
        """How many per-example elements precede the batch in ONNX (row-major) order
        along the axes before it: the ONNX tensor, flattened, is `[before, N, after]`."""
        if self.merged is None:
            return int(np.prod(self.shape[:self.batch_axis]))
        axis, inner = self.merged.axis, self.merged.inner
        return int(np.prod(self.shape[:axis])) * (self.shape[axis] // inner)

    @property
    def where_batch(self) -> str:
        """Where the batch is, in words, for error messages."""
        if self.merged is None:
            return f"at ONNX axis {self.batch_axis}"
        return (f"merged into ONNX axis {self.merged.axis} of {list(self.onnx_shape)} "
                f"(a batch of one; {self.merged.inner} per-example positions minor to it)")

    def example_axis(self, axis: int) -> int:
        """The per-example axis of ONNX ``axis`` (in range, not the batch axis)."""
        if self.merged is not None:
            return axis
        return axis if axis < self.batch_axis else axis - 1


@dataclass(frozen=True)
class PendingPad:
    """A constant-zero Pad of a structural tensor's spatial axes; only a Conv may
    consume it (docs/math.md §2: it folds into the Conv's padding)."""

    source: Var
    pads_begin: tuple[int, ...]
    pads_end: tuple[int, ...]
    node_name: str


Value = Const | Var | PendingPad
