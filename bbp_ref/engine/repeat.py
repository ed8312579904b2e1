"""A trace with every example repeated, for one batched reverse pass over several targets
(or several seeds) of the same examples.

Example `n`'s copies are rows `n * times ... n * times + times - 1` (example-major). The
local maps of the known affine operators whose coefficients and bias are the same for every
example take any batch in their vector-Jacobian product and are shared as they are: their
operands keep the original batch, which is what lets the attribution rules run each rule's
forward once per example and share it across the targets (`attribution.rules.distribute`).
Gates get their per-example arrays (`d`, `c`, `s`) repeated; routes are their own maps; any
other local map (a product's, whose coefficients are per example) is frozen again at the
repeated operand values.
"""

from __future__ import annotations

import numpy as np

from .affine import AveragePool, Conv, MatMul, Reduction, Scale, Sum
from .gates import ElementwiseLocal, MaxPoolLocal
from .operator import AffineLocal, Array, LocalMap, RouteOperator
from .trace import Trace

# Affine operators whose vjp reads nothing per example (the batch comes from the gradient).
BATCH_FREE_AFFINE = (MatMul, Conv, Scale, Sum, AveragePool, Reduction)
# Those whose coefficients are kernels, never per example: a Conv's weight [O, C / G, *k]
# has as many axes as its batched operand, but its first axis is the output channels.
KERNEL_AFFINE = (Conv, AveragePool)


def repeat_rows(a: Array | None, times: int, n: int) -> Array | None:
    """``a`` with each of its ``n`` leading rows repeated ``times`` times (arrays that
    broadcast along the batch axis are returned as they are)."""
    if a is None or times == 1 or np.ndim(a) == 0 or np.shape(a)[0] != n:
        return a
    return np.repeat(a, times, axis=0)


def _batch_free(frozen: LocalMap, batched_rank: int) -> bool:
    """A known affine operator whose coefficients and bias are the same for every example
    (no leading batch axis longer than 1: a product's coefficients are per example)."""
    if not isinstance(frozen, AffineLocal) or type(frozen.operator) not in BATCH_FREE_AFFINE:
        return False
    if type(frozen.operator) in KERNEL_AFFINE:
        return True
    if type(frozen.operator) is MatMul and np.ndim(frozen.operator.weight) <= 2:
        return True  # a matrix (Gemm, Linear) is never batched by NumPy's matmul
    arrays = (*frozen.operator.coefficients, frozen.operator.bias)
    return all(np.ndim(a) < batched_rank or np.shape(a)[0] == 1 for a in arrays
               if a is not None)


def one_hot_seeds(targets: Array, output_shape: tuple[int, ...]) -> Array:
    """The seeds of the batched reverse pass over the targets ``targets`` [N, T] (indices
    into each example's flattened output): row ``n * T + j`` is one at example ``n``'s
    output element ``targets[n, j]`` and zero elsewhere, shaped [N * T, *output_shape]
    (the rows of `repeat_trace(trace, T)`)."""
    rows = targets.size
    seed = np.zeros((rows, int(np.prod(output_shape, dtype=np.int64))))
    seed[np.arange(rows), np.ravel(targets)] = 1.0
    return seed.reshape(rows, *output_shape)


def repeat_trace(trace: Trace, times: int) -> Trace:
    """``trace`` with every example repeated ``times`` times. Its ``values`` hold only
    the (repeated) input; the reverse pass and the bias backpropagation need no more."""
    if times == 1:
        return trace
    graph, n = trace.graph, trace.batch_size
    local: dict[str, LocalMap] = {}
    for node in graph:
        if node.operator is None:
            continue
        frozen = trace.local[node.name]
        if isinstance(frozen, RouteOperator) or _batch_free(frozen, len(node.shape) + 1):
            local[node.name] = frozen
        elif type(frozen) is ElementwiseLocal:
            # one example: its arrays broadcast against the repeated rows as they are
            slope = repeat_rows(frozen.slope, times, n)
            assert slope is not None
            local[node.name] = frozen if n == 1 else ElementwiseLocal(
                slope, repeat_rows(frozen.offset, times, n))
        elif type(frozen) is MaxPoolLocal:
            index = repeat_rows(frozen.index, times, n)
            assert index is not None
            local[node.name] = MaxPoolLocal(index, (n * times, *frozen.in_shape[1:]))
        else:
            operands = [repeat_rows(trace.values[name], times, n)
                        for name in node.inputs + node.context]
            local[node.name] = node.operator.linearize(operands)  # type: ignore[arg-type]
    values = {graph.input: np.repeat(trace.values[graph.input], times, axis=0)}
    return Trace(graph, values, local)
