"""The decomposition checks of docs/math.md §3 and §5 that every explanation carries."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from .onnxruntime_check import Comparison, Unavailable

# float64 residuals, relative to the sum of magnitudes of the summed terms
# (docs/math.md §5, invariant 1).
RESIDUAL_TOL = 1e-10

# explain(check=...): the decomposition and completeness residuals cost nothing and always
# run. True runs the onnxruntime check when onnxruntime can run the model, "strict"
# requires it to run, "full" adds the two linear passes of docs/math.md §3 (two more passes through
# the network), False runs nothing else.
CHECK_MODES = {True: "on", False: "off", "strict": "strict", "full": "full"}


def check_mode(check: object) -> str:
    """The check mode ``"on"``, ``"off"``, ``"strict"`` or ``"full"`` for ``explain``'s
    ``check`` argument (True, False, or one of the names); anything else is an
    `InputError`. The one place where ``check`` is parsed."""
    if isinstance(check, (bool, np.bool_)):
        return CHECK_MODES[bool(check)]
    if isinstance(check, str) and check in CHECK_MODES:
        return CHECK_MODES[check]
    names = sorted(k for k in CHECK_MODES if isinstance(k, str))
    raise InputError(f"check must be True, False or one of {names}, got {check!r}")


def relative_residual(total: np.ndarray, expected: np.ndarray, magnitude: np.ndarray) -> np.ndarray:
    """|total - expected| / magnitude, per example (0 where everything is 0). A NaN or
    infinite value in any of the three gives an infinite residual: a failure."""
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.abs(total - expected)
        residual = np.where(magnitude > 0, diff / np.where(magnitude > 0, magnitude, 1.0),
                            np.where(diff > 0, np.inf, 0.0))
    finite = np.isfinite(total) & np.isfinite(expected) & np.isfinite(magnitude)
    return np.where(finite, residual, np.inf)


@dataclass(frozen=True)
class Checks:
    """Residuals of the decomposition (float64, per example) and the onnxruntime
    cross-check.

    ``decomposition``: `|sum_q W^x[q] x[q] + b^x - f(x)|` relative to
    `sum_q |W^x[q] x[q]| + sum_v sum_p |e_v[p]|` (docs/math.md §5, invariant 1);
    ``completeness``: `|sum_q B(x)[q] - sum_(injected v) sum_p e_v[p]|` relative to
    `sum |e_v|` (docs/math.md §5, invariant 2); ``linear_passes``: the two frozen linear
    passes of docs/math.md §3
    (`W^x x` with biases zeroed, `b^x` from a zero input) against `f(x)`, for every
    output (None unless ``check="full"``); ``onnxruntime``: the engine's output against
    onnxruntime's (None when
    skipped, `Unavailable` when onnxruntime cannot run the model); ``strict``: the
    onnxruntime check was required (``check="strict"``).

    ``passed``: every residual of every example is finite and at most ``tolerance``
    (the worst example decides), and the onnxruntime check, if it ran, agreed; under
    ``strict`` it must have run."""

    decomposition: np.ndarray
    completeness: np.ndarray
    linear_passes: np.ndarray | None
    onnxruntime: Comparison | Unavailable | None = None
    tolerance: float = RESIDUAL_TOL
    strict: bool = False

    @property
    def passed(self) -> bool:
        residuals = (self.decomposition, self.completeness, self.linear_passes)
        residuals_ok = all(bool(np.all(np.asarray(r) <= self.tolerance)) for r in residuals
                           if r is not None)
        if isinstance(self.onnxruntime, Unavailable):
            return residuals_ok and not self.strict
        return residuals_ok and (self.onnxruntime is None or self.onnxruntime.ok)

    def summary(self) -> str:
        lines = [
            f"decomposition residual  {float(np.max(self.decomposition)):.2e}",
            f"completeness residual   {float(np.max(self.completeness)):.2e}",
        ]
        if self.linear_passes is None:
            lines.append("linear-pass residual    skipped (check='full' runs it)")
        else:
            lines.append(f"linear-pass residual    {float(np.max(self.linear_passes)):.2e}")
        if self.onnxruntime is None:
            lines.append("onnxruntime             skipped")
        elif isinstance(self.onnxruntime, Unavailable):
            required = " (required by strict: FAILED)" if self.strict else ""
            lines.append(f"onnxruntime             unavailable{required}: "
                         f"{self.onnxruntime.reason}")
        else:
            verdict = "ok" if self.onnxruntime.ok else "MISMATCH"
            detail = f": {self.onnxruntime.detail}" if self.onnxruntime.detail else ""
            lines.append(f"onnxruntime max |diff|  {self.onnxruntime.max_abs_diff:.2e} "
                         f"({verdict}){detail}")
        lines.append(f"checks                  {'passed' if self.passed else 'FAILED'} "
                     f"(tolerance {self.tolerance:g})")
        return "\n".join(lines)
