"""bbp_ref as a correctness oracle for other implementations (see `checks.oracle`)."""

from .checks.oracle import (
    ATOL,
    RTOL,
    FieldResult,
    GoldenCase,
    Report,
    compare,
    compare_arrays,
    explanation_fields,
    golden,
    known_fields,
)

__all__ = ["ATOL", "RTOL", "FieldResult", "GoldenCase", "Report", "compare", "compare_arrays",
           "explanation_fields", "golden", "known_fields"]
