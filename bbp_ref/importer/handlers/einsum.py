"""Einsum with one data operand (affine) or two (a product node), docs/math.md §7.3.
The equation is made explicit (ellipses expanded, the implicit output written out);
each data operand's first label is the batch label, which must lead the output and
appear in no constant."""

from __future__ import annotations

import string

import numpy as np

from ...engine.einsum import EinsumAffine, EinsumProduct, Equation
from ..context import NodeContext, handler
from ..values import Const, Var


def explicit(ctx: NodeContext, equation: str, ranks: list[int]) -> Equation:
    """``equation`` with ellipses expanded for operands of ONNX ``ranks``."""
    equation = equation.replace(" ", "")
    left, arrow, right = equation.partition("->")
    terms = left.split(",")
    if len(terms) != len(ranks):
        raise ctx.error(f"equation {equation!r} has {len(terms)} operands, the node "
                        f"{len(ranks)}")
    used = set(equation) - set(".,->")
    if not all(c in string.ascii_letters for c in used):
        raise ctx.error(f"equation {equation!r} has labels that are not letters")
    spare = [c for c in string.ascii_letters if c not in used]
    widest = max(rank - (len(t) - 3) if "..." in t else 0 for t, rank in zip(terms, ranks))
    if widest < 0:
        raise ctx.error(f"equation {equation!r} does not fit operand ranks {ranks}")
    ellipsis = "".join(spare[:widest])
    expanded = []
    for term, rank in zip(terms, ranks):
        if "..." in term:
            extra = rank - (len(term) - 3)
            term = term.replace("...", ellipsis[widest - extra:] if extra else "")
        if len(term) != rank:
            raise ctx.error(f"term {term!r} of equation {equation!r} does not fit an "
                            f"operand of rank {rank}")
        expanded.append(term)
    if arrow:
        output = right.replace("...", ellipsis)
    else:
        counts = {c: "".join(expanded).count(c) for c in set("".join(expanded))}
        output = ellipsis + "".join(sorted(c for c, k in counts.items()
                                           if k == 1 and c not in ellipsis))
    if any(len(set(t)) != len(t) for t in expanded) or len(set(output)) != len(output):
        raise ctx.error(f"equation {equation!r} repeats a label within one term "
                        "(diagonals are not supported)")
    if not set(output) <= set("".join(expanded)):
        raise ctx.error(f"output labels of {equation!r} appear in no operand")
    return Equation(tuple(expanded), output)


@handler("Einsum", since=12)
def einsum(ctx: NodeContext) -> list[Var]:
    values: list[Var | Const] = []
    for k, value in enumerate(ctx.inputs):
        if not isinstance(value, Const):
            value = ctx.var(k)  # raises a clear error unless it is data
        values.append(value)
    data = [v for v in values if isinstance(v, Var)]
    ranks = [v.rank if isinstance(v, Var) else np.asarray(v.value).ndim for v in values]
    equation = explicit(ctx, str(ctx.attr("equation", "")), ranks)
    positions = [k for k, v in enumerate(values) if isinstance(v, Var)]
    batch = {equation.inputs[k][0] for k in positions}
    label = batch.pop()
    if batch or not equation.output.startswith(label) or any(
            label in equation.inputs[k] for k in range(len(values)) if k not in positions):
        raise ctx.error(f"equation {ctx.attr('equation')!r} does not keep the batch axis: "
                        "each data operand's first label must be the output's first, "
                        "and no constant may carry it")
    if len(data) > 2:
        raise ctx.error("an Einsum of more than two data operands is not supported")
    constants = [np.asarray(v.value, dtype=np.float64) for v in values if isinstance(v, Const)]
    batched = Equation(equation.inputs, equation.output)
    sizes: dict[str, int] = {}
    for labels, value in zip(equation.inputs, values):
        dims = (1, *value.shape) if isinstance(value, Var) else np.shape(value.value)
        for label, n in zip(labels, dims):
            if sizes.setdefault(label, int(n)) != int(n) and 1 not in (sizes[label], int(n)):
                raise ctx.error(f"label {label!r} has sizes {sizes[label]} and {n}")
            sizes[label] = max(sizes[label], int(n))
    ctx.check_size([sizes[label] for label in equation.output[1:]])
    try:
        examples = [np.zeros((1, *v.shape)) if isinstance(v, Var)
                    else np.asarray(v.value, dtype=np.float64) for v in values]
        shape = np.einsum(batched.forward_spec(), *examples).shape[1:]
    except ValueError as exc:
        raise ctx.error(f"shapes do not match the equation: {exc}") from exc
    if len(data) == 2:
        if constants:
            raise ctx.error("an Einsum of two data operands and constants is not supported")
        return [ctx.add(EinsumProduct(batched, [v.shape for v in data]), data, shape)]
    operator = EinsumAffine(batched, positions[0], constants, data[0].shape)
    return [ctx.add(operator, data, shape)]
