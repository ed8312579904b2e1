"""What an ONNX tensor is during import: a constant, a structural tensor of the
canonical graph, or a zero Pad waiting to be folded into the Conv after it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Const:
    """A tensor that does not depend on the input; its full ONNX value."""

    value: np.ndarray


@dataclass(frozen=True)
class Var:
    """A tensor that depends on the input: the canonical node holding it, its
    per-example shape (the ONNX shape with the batch axis left out, the other axes in
    their ONNX order) and ``batch_axis``, the ONNX axis holding the batch (0 unless a
    Transpose moved it, docs/math.md §7.5). The engine's arrays always hold the batch
    at axis 0, followed by the per-example shape."""

    node: str
    shape: tuple[int, ...]
    batch_axis: int = 0

    @property
    def rank(self) -> int:
        """Rank of the ONNX tensor (batch axis included)."""
        return len(self.shape) + 1

    @property
    def onnx_shape(self) -> tuple[int, ...]:
        """The ONNX shape for a batch of one."""
        return self.shape[:self.batch_axis] + (1,) + self.shape[self.batch_axis:]

    def example_axis(self, axis: int) -> int:
        """The per-example axis of ONNX ``axis`` (in range, not the batch axis)."""
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
