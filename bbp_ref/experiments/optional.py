"""Lazy imports of optional dependencies with a clear `BBpError` when they are missing."""

from __future__ import annotations

import importlib
from types import ModuleType

from ..errors import InputError


class MissingDependencyError(InputError, ImportError):
    """An optional dependency (matplotlib, scikit-learn) that a feature needs is not
    installed; the message says what to install."""


def require(module: str, install: str) -> ModuleType:
    """Import ``module`` or raise `MissingDependencyError` telling to ``pip install``
    ``install``."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{module} is needed for this and is not installed: pip install {install}"
        ) from exc
