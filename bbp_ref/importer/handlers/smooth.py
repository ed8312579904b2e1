"""Element-wise functions of one data tensor (docs/math.md §7): smooth gates (Sigmoid,
Tanh, Gelu, ...), frozen to their tangent at the point, and the piecewise-linear Abs and
ThresholdedRelu; HardSigmoid as `Clip(alpha u + beta, 0, 1)`. Each op is one row of
`engine.functions`; adding one is a table entry here."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ...engine import functions as fn
from ...engine.affine import Scale
from ...engine.elementwise import function_gate
from ...engine.functions import Function
from ...engine.gates import PiecewiseLinear
from ..context import SAME_BATCH_AXIS, NodeContext, batched_constant, handler
from ..values import Var

# op type -> the row, from the node's attributes (ONNX defaults)
FUNCTIONS: dict[str, Callable[[NodeContext], Function]] = {
    "Sigmoid": lambda ctx: Function("Sigmoid", fn.sigmoid),
    "Tanh": lambda ctx: Function("Tanh", fn.tanh),
    "Softplus": lambda ctx: Function("Softplus", fn.softplus),
    "Softsign": lambda ctx: Function("Softsign", fn.softsign),
    "Elu": lambda ctx: Function("Elu", fn.elu(float(ctx.attr("alpha", 1.0)))),
    "Selu": lambda ctx: Function("Selu", fn.selu(
        float(ctx.attr("alpha", 1.67326319217681884765625)),
        float(ctx.attr("gamma", 1.05070102214813232421875)))),
    "Celu": lambda ctx: Function("Celu", fn.celu(float(ctx.attr("alpha", 1.0)))),
    "Erf": lambda ctx: Function("Erf", fn.erf),
    "Exp": lambda ctx: Function("Exp", fn.exp),
    "Log": lambda ctx: Function("Log", fn.log),
    "Sqrt": lambda ctx: Function("Sqrt", fn.sqrt),
    "Reciprocal": lambda ctx: Function("Reciprocal", fn.reciprocal),
    "Sin": lambda ctx: Function("Sin", fn.sin),
    "Cos": lambda ctx: Function("Cos", fn.cos),
    "Atan": lambda ctx: Function("Atan", fn.atan),
    "Sinh": lambda ctx: Function("Sinh", fn.sinh),
    "Cosh": lambda ctx: Function("Cosh", fn.cosh),
    "Asinh": lambda ctx: Function("Asinh", fn.asinh),
    "Mish": lambda ctx: Function("Mish", fn.mish),
    "HardSwish": lambda ctx: Function("HardSwish", fn.hard_swish),
    "Gelu": lambda ctx: Function("Gelu", fn.gelu_tanh if ctx.attr("approximate", "none")
                                 == "tanh" else fn.gelu),
    "Abs": lambda ctx: Function("Abs", fn.absolute, piecewise_linear=True),
    "ThresholdedRelu": lambda ctx: Function(
        "ThresholdedRelu", fn.thresholded_relu(float(ctx.attr("alpha", 1.0))),
        piecewise_linear=True),
}


@handler(*FUNCTIONS, batch_axis=SAME_BATCH_AXIS)
def elementwise_function(ctx: NodeContext) -> list[Var]:
    if ctx.op_type == "Gelu" and ctx.attr("approximate", "none") not in ("none", "tanh"):
        raise ctx.error(f"unknown approximate={ctx.attr('approximate')!r}")
    data = ctx.var(0)
    return [ctx.add(function_gate(FUNCTIONS[ctx.op_type](ctx)), [data], data.shape)]


@handler("Pow", batch_axis=SAME_BATCH_AXIS)
def power(ctx: NodeContext) -> list[Var]:
    """`u ** p` with a constant exponent `p` (a constant base to a data exponent is
    `exp(p log c)`, not supported)."""
    if not isinstance(ctx.inputs[0], Var):
        raise ctx.error("a constant base raised to a data exponent is not supported")
    data = ctx.var(0, "X")
    exponent = batched_constant(ctx, ctx.float_const(1, "Y (the exponent)"), data.rank,
                                "the exponent", data.batch_axis)
    shape = np.broadcast_shapes(data.shape, exponent.shape[1:])
    if shape != data.shape:
        raise ctx.error("an exponent that broadcasts the data to a larger shape is not "
                        "supported")
    if not np.isfinite(exponent).all():
        raise ctx.error("the exponent is not finite")
    return [ctx.add(function_gate(Function("Pow", fn.power(exponent))), [data], data.shape)]


@handler("HardSigmoid", batch_axis=SAME_BATCH_AXIS)
def hard_sigmoid(ctx: NodeContext) -> list[Var]:
    """`max(0, min(1, alpha u + beta))` as an affine node and a Clip (both piecewise
    linear, so exact integrated gradients walks it)."""
    data = ctx.var(0)
    alpha, beta = float(ctx.attr("alpha", 0.2)), float(ctx.attr("beta", 0.5))
    ones = (1,) * data.rank
    affine = ctx.add(Scale(np.full(ones, alpha), np.full(ones, beta), data.shape),
                     [data], data.shape, part="affine")
    return [ctx.add(PiecewiseLinear(0.0, 0.0, 1.0), [affine], data.shape)]
