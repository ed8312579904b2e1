"""The decomposition checks of docs/math.md §3 and §5 that every explanation carries."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .onnxruntime_check import Comparison

# float64 residuals, relative to the sum of magnitudes of the summed terms (docs/math.md §5, invariant 1).
RESIDUAL_TOL = 1e-10


def relative_residual(total: np.ndarray, expected: np.ndarray, magnitude: np.ndarray) -> np.ndarray:
    """|total - expected| / magnitude, per example (0 where everything is 0)."""
    diff = np.abs(total - expected)
    return np.where(magnitude > 0, diff / np.where(magnitude > 0, magnitude, 1.0),
                    np.where(diff > 0, np.inf, 0.0))


@dataclass(frozen=True)
class Checks:
    """Residuals of the decomposition (float64, per example) and the onnxruntime
    cross-check.

    ``decomposition``: `|sum_q W^x[q] x[q] + b^x - f(x)|` relative to
    `sum_q |W^x[q] x[q]| + sum_v sum_p |e_v[p]|` (docs/math.md §5, invariant 1);
    ``completeness``: `|sum_q B(x)[q] - sum_(injected v) sum_p e_v[p]|` relative to
    `sum |e_v|` (docs/math.md §5, invariant 2); ``linear_passes``: the two frozen linear passes of docs/math.md §3
    (`W^x x` with biases zeroed, `b^x` from a zero input) against `f(x)`, for every
    output; ``onnxruntime``: the engine's output against onnxruntime's (None when
    skipped)."""

    decomposition: np.ndarray
    completeness: np.ndarray
    linear_passes: np.ndarray
    onnxruntime: Comparison | None = None
    tolerance: float = RESIDUAL_TOL

    @property
    def passed(self) -> bool:
        residuals_ok = all(float(np.max(r)) <= self.tolerance for r in
                           (self.decomposition, self.completeness, self.linear_passes))
        return residuals_ok and (self.onnxruntime is None or self.onnxruntime.ok)

    def summary(self) -> str:
        lines = [
            f"decomposition residual  {float(np.max(self.decomposition)):.2e}",
            f"completeness residual   {float(np.max(self.completeness)):.2e}",
            f"linear-pass residual    {float(np.max(self.linear_passes)):.2e}",
        ]
        if self.onnxruntime is None:
            lines.append("onnxruntime             skipped")
        else:
            verdict = "ok" if self.onnxruntime.ok else "MISMATCH"
            lines.append(f"onnxruntime max |diff|  {self.onnxruntime.max_abs_diff:.2e} "
                         f"({verdict})")
        lines.append(f"checks                  {'passed' if self.passed else 'FAILED'} "
                     f"(tolerance {self.tolerance:g})")
        return "\n".join(lines)
