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
    """A tensor that depends on the input: the canonical node holding it and its
    per-example shape (the batch axis, ONNX axis 0, left out)."""

    node: str
    shape: tuple[int, ...]

    @property
    def rank(self) -> int:
        """Rank of the ONNX tensor (batch axis included)."""
        return len(self.shape) + 1


@dataclass(frozen=True)
class PendingPad:
    """A constant-zero Pad of a structural tensor's spatial axes; only a Conv may
    consume it (docs/math.md §2: it folds into the Conv's padding)."""

    source: Var
    pads_begin: tuple[int, ...]
    pads_end: tuple[int, ...]
    node_name: str


Value = Const | Var | PendingPad
