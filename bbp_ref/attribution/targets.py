"""Which output is explained: `explain`'s ``target`` conventions, shared by every method."""

from __future__ import annotations

import numpy as np

from ..errors import InputError


def resolve_targets(target: object, flat: np.ndarray, single: bool) -> np.ndarray:
    """The target index of each example: ``target`` (one index, or one per example) into
    each example's flattened output ``flat`` [N, K], or the argmax by default."""
    n, size = flat.shape
    if target is None:
        return flat.argmax(axis=1)
    array = np.asarray(target)
    if not np.issubdtype(array.dtype, np.integer):
        raise InputError(f"target must be an integer index, got {target!r}")
    if array.ndim == 0:
        array = np.full(n, int(array))
    elif array.shape != (n,) or single:
        raise InputError(f"target must be one index or one per example ({n}), got shape "
                         f"{list(array.shape)}")
    if (array < 0).any() or (array >= size).any():
        raise InputError(f"target {array.tolist()} is out of range for an output of "
                         f"{size} elements")
    return array.astype(np.int64)
