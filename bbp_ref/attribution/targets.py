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


# "all" targets is allowed up to this many output elements: each target is one more row of
# the batched reverse pass (memory grows with it, docs/scaling.md).
ALL_TARGETS_LIMIT = 100


def resolve_target_sets(target: object, flat: np.ndarray,
                        single: bool) -> tuple[np.ndarray, bool]:
    """Several targets per example: the indices [N, T] and whether the fields get a target
    axis. ``target`` as in `resolve_targets` (no target axis, T = 1), or a list of indices
    for one example, an array [N, T] for a batch, or ``"all"`` (every output element, for
    outputs of at most `ALL_TARGETS_LIMIT` elements)."""
    n, size = flat.shape
    if isinstance(target, str):
        if target != "all":
            raise InputError(f"target must be an index, a list of indices or 'all', "
                             f"got {target!r}")
        if size > ALL_TARGETS_LIMIT:
            raise InputError(f"target='all' is for outputs of at most {ALL_TARGETS_LIMIT} "
                             f"elements; this one has {size}: pass a list of indices")
        return np.tile(np.arange(size, dtype=np.int64), (n, 1)), True
    array = np.asarray(target)
    if target is None or array.ndim == 0 or (array.ndim == 1 and not single):
        return resolve_targets(target, flat, single)[:, None], False
    if array.size == 0 or not np.issubdtype(array.dtype, np.integer):
        raise InputError(f"targets must be integer indices, got {target!r}")
    if single and array.ndim == 1:
        array = array[None]
    elif array.ndim != 2 or array.shape[0] != n or single:
        raise InputError(f"several targets are a list for one example or an array [N, T] "
                         f"for a batch of N = {n}, got shape {list(array.shape)}")
    if (array < 0).any() or (array >= size).any():
        raise InputError(f"target {array.tolist()} is out of range for an output of "
                         f"{size} elements")
    return array.astype(np.int64), True
