"""The exceptions bbp_ref raises. Every error a user can cause is a `BBpError`."""

from __future__ import annotations


class BBpError(Exception):
    """Base class of every error bbp_ref raises on bad models, bad input or bad rules."""


class ModelLoadError(BBpError):
    """The model cannot be read: missing file, not ONNX, invalid graph, unsafe external data."""


class UnsupportedOpError(BBpError):
    """The model contains an op (or an op configuration) that is not piecewise linear
    or not supported; the message names the op type and the node."""

    def __init__(self, op_type: str, node_name: str, reason: str = "") -> None:
        self.op_type = op_type
        self.node_name = node_name
        detail = f": {reason}" if reason else ""
        super().__init__(f"unsupported op {op_type} in node {node_name!r}{detail}")


class InputError(BBpError, ValueError):
    """An argument is wrong: input shape, dtype, NaN/Inf, target out of range, unknown
    rule or layer name."""


class RuleError(BBpError):
    """An attribution rule broke its contract (negative scores, mass not conserved,
    or a row carrying mass with no score and no fallback)."""
