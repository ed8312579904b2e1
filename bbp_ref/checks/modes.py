"""Which checks an explanation runs: the ``check=`` argument of `explain` (docs/math.md §5).

The decomposition and completeness residuals cost nothing (sums of arrays the
explanation already holds) and always run. The two frozen linear passes of SPEC §3 cost
two passes through the network; the onnxruntime comparison one onnxruntime run.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InputError


@dataclass(frozen=True)
class CheckMode:
    """``linear_passes``: run SPEC §3's two linear passes; ``onnxruntime``: compare the
    output with onnxruntime's."""

    name: str
    linear_passes: bool
    onnxruntime: bool


CHECK_MODES = {mode.name: mode for mode in (
    CheckMode("residuals", linear_passes=False, onnxruntime=False),
    CheckMode("default", linear_passes=False, onnxruntime=True),
    CheckMode("full", linear_passes=True, onnxruntime=True),
)}


def check_mode(check: object) -> CheckMode:
    """The `CheckMode` for ``check``: ``True`` is ``"default"`` (the residuals and the
    onnxruntime comparison), ``False`` is ``"residuals"`` (the free residuals only),
    ``"full"`` adds the two linear passes; a mode's name selects it."""
    if check is True:
        return CHECK_MODES["default"]
    if check is False:
        return CHECK_MODES["residuals"]
    if isinstance(check, str) and check in CHECK_MODES:
        return CHECK_MODES[check]
    raise InputError(f"check must be True, False or one of {sorted(CHECK_MODES)}, "
                     f"got {check!r}")
