"""Which constant subgraphs bbp_ref folds at import, and what they may cost.

A node whose inputs are all constants is evaluated with `onnx.reference` (docs/math.md
§2, decision 5). A model file is untrusted, so only ops whose cost the declared shapes
and values bound are folded: element-wise arithmetic, shape manipulation, gathers,
reductions, a matrix product, and the few ops whose output size a small input decides
(ConstantOfShape, Expand, Tile, Range, OneHot, Pad), whose size is computed first.
Loop, Scan, If, string and regex ops, convolutions and pools, random ops and anything
else are refused with `ModelLoadError`; so is a fold whose output exceeds 1/16 of the
byte budget (`budget.FOLD_SHARE`) or whose work exceeds `budget.MAX_FOLD_OPERATIONS`
element operations.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import onnx
from onnx import helper

from .. import budget
from ..errors import ModelLoadError

Arrays = Sequence[np.ndarray | None]
# op -> the number of output elements, from the constant inputs and the attributes
Estimate = Callable[[Arrays, dict[str, object]], int]


def _largest_input(inputs: Arrays, attributes: dict[str, object]) -> int:
    return max((a.size for a in inputs if a is not None), default=1)


def _total_input(inputs: Arrays, attributes: dict[str, object]) -> int:
    return sum(a.size for a in inputs if a is not None) or 1


def _broadcast(inputs: Arrays, attributes: dict[str, object]) -> int:
    shapes = [a.shape for a in inputs if a is not None]
    return budget.count(np.broadcast_shapes(*shapes)) if shapes else 1


def _matmul(inputs: Arrays, attributes: dict[str, object]) -> int:
    """NumPy's matmul: the axes before the last two broadcast, the last two multiply
    (a 1-D operand is a row or a column)."""
    a, b = inputs[0], inputs[1]
    assert a is not None and b is not None
    rows = a.shape if a.ndim > 1 else (1, *a.shape)
    columns = b.shape if b.ndim > 1 else (*b.shape, 1)
    if rows[-1] != columns[-2]:
        raise ValueError(f"shapes {list(a.shape)} and {list(b.shape)} do not multiply")
    return budget.count((*np.broadcast_shapes(rows[:-2], columns[:-2]), rows[-2],
                         columns[-1]))


def _gemm(inputs: Arrays, attributes: dict[str, object]) -> int:
    """Gemm's [M, N] after its transposes."""
    a, b = inputs[0], inputs[1]
    assert a is not None and b is not None and a.ndim == b.ndim == 2
    rows = a.shape[1] if attributes.get("transA", 0) else a.shape[0]
    columns = b.shape[0] if attributes.get("transB", 0) else b.shape[1]
    return budget.count((rows, columns))


def _constant(inputs: Arrays, attributes: dict[str, object]) -> int:
    return 1  # its value is stored in the file (sparse values were checked when densified)


def _constant_of_shape(inputs: Arrays, attributes: dict[str, object]) -> int:
    return budget.count(_shape_argument(inputs[0] if inputs else None))


def _expand(inputs: Arrays, attributes: dict[str, object]) -> int:
    data, shape = inputs[0], _shape_argument(inputs[1])
    assert data is not None
    return budget.count(np.broadcast_shapes(data.shape, shape))


def _tile(inputs: Arrays, attributes: dict[str, object]) -> int:
    data, repeats = inputs[0], _shape_argument(inputs[1])
    assert data is not None
    return data.size * budget.count(repeats)


def _range(inputs: Arrays, attributes: dict[str, object]) -> int:
    start, limit, delta = (float(np.asarray(a).reshape(-1)[0]) for a in inputs[:3]
                           if a is not None)
    if delta == 0 or not np.isfinite([start, limit, delta]).all():
        raise ValueError("Range needs a finite, non-zero delta and finite bounds")
    return max(int(np.ceil((limit - start) / delta)), 0)


def _one_hot(inputs: Arrays, attributes: dict[str, object]) -> int:
    indices, depth = inputs[0], inputs[1]
    assert indices is not None and depth is not None
    return indices.size * max(int(np.asarray(depth).reshape(-1)[0]), 0)


def _gather(inputs: Arrays, attributes: dict[str, object]) -> int:
    data, indices = inputs[0], inputs[1]
    assert data is not None and indices is not None
    axis = int(attributes.get("axis", 0))  # type: ignore[call-overload]
    return data.size // max(data.shape[axis], 1) * indices.size if data.ndim else 1


def _pad(inputs: Arrays, attributes: dict[str, object]) -> int:
    data = inputs[0]
    assert data is not None
    pads = inputs[1] if len(inputs) > 1 and inputs[1] is not None else attributes.get("pads")
    widths = np.asarray(pads if pads is not None else [], dtype=np.int64).reshape(2, -1)
    axes = np.arange(data.ndim)
    if len(inputs) > 3 and inputs[3] is not None:
        axes = np.asarray(inputs[3], dtype=np.int64).reshape(-1) % max(data.ndim, 1)
    if widths.shape[1] != axes.size:
        raise ValueError(f"{widths.size} pads for {axes.size} axes")
    shape = list(data.shape)
    for axis, begin, end in zip(axes, widths[0], widths[1]):
        shape[axis] = max(shape[axis] + int(begin) + int(end), 0)
    return budget.count(shape)


_SAME = ("Identity", "Cast", "CastLike", "Reshape", "Flatten", "Squeeze", "Unsqueeze",
         "Transpose", "Slice", "Split", "Concat", "Shape", "Size", "Neg", "Abs", "Sign",
         "Floor", "Ceil", "Round", "Relu", "Clip", "Sqrt", "Reciprocal", "Exp", "Log",
         "Sigmoid", "Tanh", "Erf", "Not", "IsNaN", "IsInf", "Dropout", "ReduceSum",
         "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ArgMax", "ArgMin",
         "CumSum", "GatherElements", "GatherND", "NonZero", "ScatterElements", "ScatterND",
         "EyeLike", "Softmax", "LogSoftmax", "BatchNormalization", "LeakyRelu", "PRelu",
         "Trilu", "Compress", "ReduceL1", "ReduceL2", "ReduceLogSumExp", "ReduceSumSquare",
         "Softplus", "Softsign", "Elu", "Selu", "Celu", "HardSigmoid", "HardSwish", "Gelu",
         "Mish", "Sin", "Cos", "ThresholdedRelu", "Shrink", "Hardmax", "QuantizeLinear",
         "DequantizeLinear", "Atan", "Acos", "Asin", "Sinh", "Cosh", "Tan", "Asinh", "Acosh",
         "Atanh", "BitwiseNot")
_BROADCAST = ("Add", "Sub", "Mul", "Div", "Pow", "Mod", "Min", "Max", "Sum", "Mean",
              "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or",
              "Xor", "Where", "BitShift", "BitwiseAnd", "BitwiseOr", "BitwiseXor")

ESTIMATES: dict[str, Estimate] = {
    **{op: _total_input for op in _SAME},
    **{op: _broadcast for op in _BROADCAST},
    "Constant": _constant,
    "ConstantOfShape": _constant_of_shape,
    "Expand": _expand,
    "Tile": _tile,
    "Range": _range,
    "OneHot": _one_hot,
    "Gather": _gather,
    "Pad": _pad,
    "MatMul": _matmul,
    "Gemm": _gemm,
}


def check_fold(node: onnx.NodeProto, name: str, inputs: Arrays) -> None:
    """Refuse to fold ``node`` (all of whose ``inputs`` are constants) unless its op is
    on the allow-list and its output and work fit the budgets."""
    estimate = ESTIMATES.get(node.op_type)
    if estimate is None:
        raise ModelLoadError(
            f"node {name!r} ({node.op_type}) computes a constant, but bbp_ref evaluates "
            f"only ops whose cost is bounded by their shapes at import "
            f"({', '.join(sorted(ESTIMATES))}); refusing to run it")
    if any(a is not None and a.dtype.kind in "OSU" for a in inputs):
        raise ModelLoadError(f"node {name!r} ({node.op_type}) computes on string constants; "
                             "bbp_ref does not evaluate those at import")
    attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    try:
        elements = estimate(inputs, attributes)
        work = max(elements, _largest_input(inputs, attributes))
        if node.op_type in ("MatMul", "Gemm"):
            first = inputs[0]
            work *= max(first.shape, default=1) if first is not None else 1
    except (ValueError, IndexError, TypeError, OverflowError, AssertionError) as exc:
        raise ModelLoadError(f"node {name!r} ({node.op_type}) has constant inputs that do "
                             f"not fit the op: {exc}") from None
    _check_folded_bytes(elements * budget.FLOAT64_BYTES,
                        f"folding node {name!r} ({node.op_type})")
    if work > budget.MAX_FOLD_OPERATIONS:
        raise ModelLoadError(f"folding node {name!r} ({node.op_type}) would take about "
                             f"{work:.3g} element operations, more than the limit of "
                             f"{budget.MAX_FOLD_OPERATIONS:.3g}")


def check_results(node: onnx.NodeProto, name: str, results: Sequence[np.ndarray]) -> None:
    """The folded values, once computed, must fit the budget too (a safety net for an
    estimate that undercounted)."""
    total = sum(np.asarray(r).nbytes for r in results)
    _check_folded_bytes(total, f"the constants folded from node {name!r} ({node.op_type})")


def _check_folded_bytes(nbytes: int, what: str) -> None:
    share = int(budget.max_bytes() * budget.FOLD_SHARE)
    if nbytes > share:
        raise ModelLoadError(f"{what} would take {budget.describe(nbytes)}, more than the "
                             f"{budget.describe(share)} a folded constant may take (1/16 of "
                             f"the byte budget; raise it with {budget.ENVIRONMENT_VARIABLE} or "
                             "max_bytes= if this is expected)")


def _shape_argument(value: np.ndarray | None) -> tuple[int, ...]:
    if value is None:
        return ()
    shape = tuple(int(n) for n in np.asarray(value).reshape(-1))
    if any(n < 0 for n in shape):
        raise ValueError(f"shape {list(shape)} has a negative dimension")
    return shape
