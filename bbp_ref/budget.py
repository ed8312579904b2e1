"""The budgets that bound what an untrusted model or input file can make bbp_ref do.

A model file declares sizes (a ConstantOfShape of [16000, 16000], an input of 1e5 x 1e5,
a Conv with pads of a billion) far larger than the file itself. Every allocation whose
size comes from such a declaration is checked against one *byte budget* before it is
made: the model file, each initializer and external-data tensor, a densified sparse
tensor, each constant folded at import, each canonical node's tensor (per example), the
engine's working set for a batch, an ``.npy``/``.npz`` input file. The budget is
`DEFAULT_MAX_BYTES` unless the environment variable ``BBP_MAX_BYTES`` or
``load(..., max_bytes=)`` says otherwise (docs/security.md).

Two allocations get a share only: a model file (one protobuf message) at most 2 GiB, the
protobuf format's own limit; a constant folded at import (shape arithmetic, in practice)
`FOLD_SHARE` of the budget.

Work that is not memory is bounded by fixed limits: `MAX_FOLD_OPERATIONS` for a constant
folded at import, `MAX_WINDOW_OFFSETS` for the kernel of a Conv or pool (the engine loops
over kernel offsets in Python).
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterable, Iterator
from contextvars import ContextVar

from .errors import BBpError, ModelLoadError

DEFAULT_MAX_BYTES = 4 * 2**30
PROTOBUF_MAX_BYTES = 2**31 - 1
FOLD_SHARE = 1 / 16
ENVIRONMENT_VARIABLE = "BBP_MAX_BYTES"
MAX_FOLD_OPERATIONS = 10**9
MAX_WINDOW_OFFSETS = 2**16
FLOAT64_BYTES = 8

_override: ContextVar[int | None] = ContextVar("bbp_max_bytes", default=None)


def validated(max_bytes: object, what: str = "max_bytes") -> int:
    """``max_bytes`` as a positive int, or a `ModelLoadError` naming ``what``."""
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, (int, str)):
        raise ModelLoadError(f"{what} must be a positive number of bytes, got {max_bytes!r}")
    try:
        value = int(max_bytes)
    except ValueError:
        raise ModelLoadError(f"{what} must be a positive number of bytes, "
                             f"got {max_bytes!r}") from None
    if value <= 0:
        raise ModelLoadError(f"{what} must be a positive number of bytes, got {max_bytes!r}")
    return value


def max_bytes() -> int:
    """The byte budget in force: `limit`'s, else ``BBP_MAX_BYTES``, else the default."""
    current = _override.get()
    if current is not None:
        return current
    from_environment = os.environ.get(ENVIRONMENT_VARIABLE)
    if from_environment:
        return validated(from_environment.strip(), ENVIRONMENT_VARIABLE)
    return DEFAULT_MAX_BYTES


@contextlib.contextmanager
def limit(budget: int | None) -> Iterator[int]:
    """Use ``budget`` bytes (None: keep the one in force) inside the ``with`` block."""
    chosen = max_bytes() if budget is None else validated(budget)
    token = _override.set(chosen)
    try:
        yield chosen
    finally:
        _override.reset(token)


def count(shape: Iterable[int]) -> int:
    """The number of elements of ``shape``, as an exact Python int (no overflow)."""
    return math.prod(int(n) for n in shape)


def check_bytes(nbytes: int, what: str, error: type[BBpError] = ModelLoadError) -> None:
    """Raise ``error`` if ``nbytes`` exceeds the byte budget; ``what`` names the thing."""
    budget = max_bytes()
    if nbytes > budget:
        raise error(f"{what} would take {describe(nbytes)}, more than the byte budget of "
                    f"{describe(budget)} (raise it with {ENVIRONMENT_VARIABLE} or "
                    "max_bytes= if this is expected)")


def check_elements(shape: Iterable[int], what: str, itemsize: int = FLOAT64_BYTES,
                   error: type[BBpError] = ModelLoadError) -> None:
    """`check_bytes` for an array of ``shape`` with ``itemsize``-byte elements."""
    check_bytes(count(shape) * itemsize, what, error)


def describe(nbytes: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= size:
            return f"{nbytes / size:.3g} {unit}"
    return f"{nbytes} bytes"
