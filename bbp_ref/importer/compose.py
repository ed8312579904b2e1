"""Primitives for writing a composite op's expansion (docs/math.md §7.4) so that it
reads like its formula.

`Composer(ctx)` adds canonical nodes for one ONNX node: each method takes a ``part``
name (the node becomes ``<onnx node>/<part>``) or ``None`` for the expansion's final
node, which carries the ONNX output tensor. Each method builds the same primitive an
exporter's decomposed graph imports as (`ReduceMean` -> `Reduction`, `Sub` of data ->
`Sum`, `Pow` -> a tangent gate, `Div` of data -> `Reciprocal` and `Product`, `Mul`/`Add`
by a constant -> `Scale`), so that a fused op and its decomposed export give the same
canonical structure (invariant 9).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..engine import functions
from ..engine.affine import AveragePool, Reduction, Scale, Sum
from ..engine.elementwise import function_gate
from ..engine.functions import Function
from ..engine.products import Product
from ..engine.routes import Reshape
from ..engine.windows import Window
from .context import NodeContext
from .values import Var


def kept_shape(shape: tuple[int, ...], axes: Sequence[int]) -> tuple[int, ...]:
    """``shape`` with the per-example ``axes`` reduced to length 1."""
    return tuple(1 if a in axes else n for a, n in enumerate(shape))


class Composer:
    """Adds the primitive nodes of one ONNX node's expansion."""

    def __init__(self, ctx: NodeContext) -> None:
        self.ctx = ctx

    # -- affine ------------------------------------------------------------------------
    def reduce(self, u: Var, axes: Sequence[int], part: str | None, *, mean: bool,
               keepdims: bool = True) -> Var:
        """`ReduceMean` (``mean``) or `ReduceSum` over per-example ``axes``."""
        axes = tuple(sorted(axes))
        count = int(np.prod([u.shape[a] for a in axes]))
        scale = np.asarray(1.0 / count if mean else 1.0)
        shape = (kept_shape(u.shape, axes) if keepdims
                 else tuple(n for a, n in enumerate(u.shape) if a not in axes))
        return self.ctx.add(Reduction(axes, keepdims, u.shape, scale), [u], shape, part=part)

    def subtract(self, u: Var, v: Var, part: str | None) -> Var:
        """`u - v` of two data tensors (broadcast): a `Sum` with signs +1, -1."""
        shape = np.broadcast_shapes(u.shape, v.shape)
        operator = Sum([np.asarray(1.0), np.asarray(-1.0)], None, [u.shape, v.shape])
        return self.ctx.add(operator, [u, v], shape, part=part)

    def affine(self, u: Var, scale: np.ndarray | float, bias: np.ndarray | float | None,
               part: str | None) -> Var:
        """`scale * u + bias` with constants of per-example shape broadcasting to ``u``
        (a `Scale`; the constants never broadcast ``u`` up)."""
        batched = (1, *u.shape)
        factor = np.asarray(scale, dtype=np.float64)
        factor = factor.reshape((1,) * (len(batched) - factor.ndim) + factor.shape)
        shift = None
        if bias is not None:
            shift = np.asarray(bias, dtype=np.float64)
            shift = shift.reshape((1,) * (len(batched) - shift.ndim) + shift.shape)
        shapes = [factor.shape] + ([] if shift is None else [shift.shape])
        try:
            fits = np.broadcast_shapes(batched, *shapes) == batched
        except ValueError:
            fits = False
        if not fits:
            raise self.ctx.error(f"a constant of shape {[list(s) for s in shapes]} does not "
                                 f"broadcast to the data's shape {list(u.shape)}")
        return self.ctx.add(Scale(factor, shift, u.shape), [u], u.shape, part=part)

    def window_average(self, u: Var, window: Window, divisor: float, part: str | None) -> Var:
        """`AveragePool` of ``u`` ([C, *spatial] per example) with a fixed ``divisor``
        (count_include_pad=1: the window size)."""
        scale = np.full((1, 1, *window.out_spatial), 1.0 / divisor)
        return self.ctx.add(AveragePool(window, scale), [u],
                            (u.shape[0], *window.out_spatial), part=part)

    # -- routes ------------------------------------------------------------------------
    def reshape(self, u: Var, shape: tuple[int, ...], part: str | None) -> Var:
        return self.ctx.add(Reshape(u.shape, shape), [u], shape, part=part)

    # -- element-wise functions (tangent or piecewise-linear gates) ---------------------
    def function(self, u: Var, function: Function, part: str | None) -> Var:
        return self.ctx.add(function_gate(function), [u], u.shape, part=part)

    def power(self, u: Var, exponent: float, part: str | None) -> Var:
        """`u ** p`: the gate an exporter's `Pow` with a constant exponent imports as."""
        p = np.full((1,) * (len(u.shape) + 1), float(exponent))
        return self.function(u, Function("Pow", functions.power(p)), part)

    def sqrt(self, u: Var, part: str | None) -> Var:
        return self.function(u, Function("Sqrt", functions.sqrt), part)

    def reciprocal(self, u: Var, part: str | None) -> Var:
        return self.function(u, Function("Reciprocal", functions.reciprocal), part)

    def absolute(self, u: Var, part: str | None) -> Var:
        return self.function(u, Function("Abs", functions.absolute, piecewise_linear=True),
                             part)

    def log(self, u: Var, part: str | None) -> Var:
        return self.function(u, Function("Log", functions.log), part)

    # -- products ----------------------------------------------------------------------
    def multiply(self, u: Var, v: Var, part: str | None) -> Var:
        """`u * v` of two data tensors (broadcast): a `Product` node."""
        shape = np.broadcast_shapes(u.shape, v.shape)
        return self.ctx.add(Product([u.shape, v.shape]), [u, v], shape, part=part)

    def divide(self, u: Var, v: Var, part: str | None) -> Var:
        """`u / v` of two data tensors as the `Div` handler imports it: a node
        ``reciprocal`` and the product `u * Reciprocal(v)` (docs/math.md §7.2 decision 4)."""
        return self.multiply(u, self.reciprocal(v, "reciprocal"), part)
