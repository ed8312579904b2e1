"""Freed memory kept for reuse while the engine works (glibc's malloc only).

The engine allocates and frees arrays of the size of a layer's activations many times per
pass. glibc's malloc returns such blocks to the operating system when they are freed
(blocks above its mmap threshold, and the top of the heap beyond its trim threshold), so
each new array is fresh memory that the kernel must fault in and zero: about a fifth of an
explanation's time for one 224x224 image, and half of it for a batch of 16 (docs/scaling.md).

`keeping_freed_memory` raises these thresholds while a public call runs, so that freed
blocks stay in the heap and the next array of the same size reuses them, the way
onnxruntime's arena does. When the outermost such call returns, it sets them to the values
glibc's own adaptive thresholds reach once a process has freed a 32 MiB array (mmap
threshold 32 MiB, trim threshold 64 MiB) and gives the memory the engine freed back to the
system (``malloc_trim``), so the process does not keep more memory after the call than it
would otherwise.

Elsewhere than glibc (macOS, Windows, musl) it does nothing. Setting the environment
variable ``BBP_KEEP_FREED_MEMORY=0`` turns it off.
"""

from __future__ import annotations

import ctypes
import functools
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

# mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3

# while the engine works: blocks up to 1 GiB come from the heap, which is never trimmed
WORKING = ((M_MMAP_THRESHOLD, 2**30), (M_TRIM_THRESHOLD, 2**31 - 1), (M_TOP_PAD, 64 * 2**20))
# afterwards: glibc's adaptive thresholds at their maximum, its default top pad
AFTERWARDS = ((M_MMAP_THRESHOLD, 32 * 2**20), (M_TRIM_THRESHOLD, 64 * 2**20),
              (M_TOP_PAD, 128 * 2**10))

_lock = threading.Lock()
_depth = 0


def _glibc() -> Any | None:
    """The C library if it is glibc (it has ``mallopt`` and ``malloc_trim``), else None."""
    if os.environ.get("BBP_KEEP_FREED_MEMORY", "1") == "0":
        return None
    try:
        libc = ctypes.CDLL(None)  # the process's own symbols: the C library it runs on
        libc.gnu_get_libc_version  # noqa: B018 - raises AttributeError elsewhere than glibc
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
    except (OSError, AttributeError, TypeError):
        return None
    return libc


_LIBC = _glibc()


def _set(settings: tuple[tuple[int, int], ...]) -> None:
    assert _LIBC is not None
    for parameter, value in settings:
        _LIBC.mallopt(parameter, value)


@contextmanager
def keeping_freed_memory() -> Iterator[None]:
    """Keep freed memory for reuse until the outermost such block ends (see above)."""
    global _depth
    if _LIBC is None:
        yield
        return
    with _lock:
        if _depth == 0:
            _set(WORKING)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                _set(AFTERWARDS)
                _LIBC.malloc_trim(0)


def keeps_freed_memory(fn: F) -> F:
    """``fn`` run inside `keeping_freed_memory`."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with keeping_freed_memory():
            return fn(*args, **kwargs)
    return wrapper  # type: ignore[return-value]
