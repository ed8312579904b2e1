"""Integrated gradients (Sundararajan et al. 2017) on the exact float64 engine:
`IG(x) = (x - b) * int_0^1 grad f_t(b + a (x - b)) da`.

``method="exact"`` integrates exactly: a piecewise-linear network is affine on each of
the finitely many pieces of the straight path, so the integral is a finite sum of
constant gradients times piece lengths (see `path_walk` for how the piece after a kink is
chosen and how ties are handled). Two walks implement it with the same rules: `event_walk`
(one example at a time, each kink updating only what it reaches, independent kinks several
per sweep, every target in one walk) and `path_walk` (the
whole batch in lock step, two full passes per piece). The lock-step walk is used for
batches of at least `LOCK_STEP_MIN_BATCH` examples of a network with at most
`LOCK_STEP_MAX_VALUES` values per example (all nodes' outputs): there a pass costs little
more than its per-node overhead, which the batch shares (the digits CNN, 46 images: 6 s
against 12 s one at a time); otherwise the event walk (a 64x64 CNN, one image: 16 s
against 99 s). It satisfies completeness,
`sum IG = f_t(x) - f_t(b)`, up to rounding.

The quadrature methods are Captum's (``captum/attr/_utils/approximation_methods.py``),
with the same names, points `a_k` ("alphas") and weights `w_k` ("step sizes"), in float64
(Captum builds the Riemann alphas with ``torch.linspace`` in float32 and multiplies by the
step sizes in float32); `IG = (x - b) * sum_k w_k grad f_t(b + a_k (x - b))`:

| method | `a_k`, k = 0..n-1 | `w_k` |
| --- | --- | --- |
| ``riemann_left`` | `k / n` | `1 / n` |
| ``riemann_right`` | `(k + 1) / n` | `1 / n` |
| ``riemann_middle`` | `(k + 1/2) / n` | `1 / n` |
| ``riemann_trapezoid`` | `k / (n - 1)` | `1 / n`, halved at both ends (they sum to `1 - 1/n`) |
| ``gausslegendre`` | `(1 + z_k) / 2`, `z_k` the Gauss-Legendre nodes | half their weights |

The Riemann rules need ``n_steps > 1``, Gauss-Legendre ``n_steps > 0`` (Captum's asserts).
A gradient at a point on a kink is the engine's one-sided one (autograd's).
``Attribution.delta`` is Captum's convergence delta, `sum IG - (f_t(x) - f_t(b))`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace

import numpy as np

from .. import budget
from ..binding import pick_baseline, pick_example
from ..engine.gates import MaxPool, PiecewiseLinear
from ..engine.memory import keeps_freed_memory
from ..engine.operator import ROUTE, AffineOperator
from ..engine.trace import forward, input_gradient
from ..errors import InputError, UnsupportedOpError
from ..graph import Graph
from .baselines import Attribution, Setup, baseline_batch, bound_call, setup, with_delta
from .event_walk import EventWalk
from .path_walk import BOUNDARY_RTOL, RESYNC_EVERY, PathWalk
from .targets import resolve_target_sets

RIEMANN = ("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid")
METHODS = ("exact", *RIEMANN, "gausslegendre")
DEFAULT_MAX_PIECES = 1_000_000
LOCK_STEP_MIN_BATCH = 8
LOCK_STEP_MAX_VALUES = 20_000


def approximation_parameters(method: str, n_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Captum's ``(step_sizes, alphas)`` for a quadrature ``method``, in float64. The
    arrays (and Gauss-Legendre's n x n companion matrix) must fit the byte budget."""
    what = f"n_steps={n_steps} for {method}"
    needed = [n_steps, n_steps] if method == "gausslegendre" else [n_steps]
    budget.check_elements(needed, what, error=InputError)
    if method in RIEMANN:
        if n_steps < 2:
            raise InputError(f"{method} needs n_steps > 1, got {n_steps}")
        n = n_steps
        steps = np.full(n, 1.0 / n)
        k = np.arange(n, dtype=np.float64)
        if method == "riemann_trapezoid":
            steps[0] /= 2
            steps[-1] /= 2
            return steps, k / (n - 1)
        offset = {"riemann_left": 0.0, "riemann_right": 1.0, "riemann_middle": 0.5}[method]
        return steps, (k + offset) / n
    if method == "gausslegendre":
        if n_steps < 1:
            raise InputError(f"gausslegendre needs n_steps > 0, got {n_steps}")
        nodes, weights = np.polynomial.legendre.leggauss(n_steps)
        return 0.5 * weights, 0.5 * (1.0 + nodes)
    raise InputError(f"unknown integration method {method!r}; choose from {list(METHODS)}")


@keeps_freed_memory
def integrated_gradients(model: object, x: object, baselines: object = 0.0,
                         target: object = None, method: str = "exact", n_steps: int = 50,
                         internal_batch_size: int | None = None,
                         max_pieces: int | None = DEFAULT_MAX_PIECES, *,
                         wrt: str | None = None,
                         inputs: Mapping[str, object] | None = None,
                         on_pass: Callable[[int], None] | None = None) -> Attribution:
    """Integrated gradients of output ``target`` from ``baselines`` (a scalar, one
    example's shape, or the batch's shape; default 0) to ``x``.

    ``target`` as in `bbp_ref.explain`: one index, one per example, or several (a list
    for one example, an array [N, T] for a batch, ``"all"``); with several, the fields
    that depend on the target (``attribution``, ``target``, ``output``,
    ``baseline_output``, ``delta``) get a target axis after the batch axis. The exact
    method walks the path once for all the targets (docs/math.md §6); a quadrature rule
    evaluates its points once per target.

    ``method``: ``"exact"`` (the default: walk the path's linear pieces; the result's
    ``n_pieces`` counts them per example; more than ``max_pieces`` for one example
    raises `BBpError`) or one of Captum's quadrature rules ``"riemann_left"``,
    ``"riemann_right"``, ``"riemann_middle"``, ``"riemann_trapezoid"``,
    ``"gausslegendre"`` with ``n_steps`` points, evaluated ``internal_batch_size``
    points (times examples) per engine pass (None: all at once); ``on_pass`` is called
    with the number of points done after each pass (for a progress bar).
    """
    bound = bound_call(model, x, wrt, inputs, lambda m, xi, i: integrated_gradients(
        m, xi, pick_baseline(baselines, i, xi), pick_example(target, i), method, n_steps,
        internal_batch_size, max_pieces))
    if bound is not None:
        return bound
    if method not in METHODS:
        raise InputError(f"unknown integration method {method!r}; choose from {list(METHODS)}")
    if isinstance(n_steps, bool) or not isinstance(n_steps, (int, np.integer)):
        raise InputError(f"n_steps must be an integer, got {n_steps!r}")
    s = setup(model, x, None, linearize=False)
    n = s.batch.shape[0]
    targets, target_axis = resolve_target_sets(target, s.logits.reshape(n, -1), s.single)
    per_target = [_for_target(s, targets[:, k]) for k in range(targets.shape[1])]
    base = baseline_batch(baselines, s.batch, s.single)
    baseline_logits = forward(s.graph, base, linearize=False).output
    if method == "exact":
        seeds = np.stack([one.seed for one in per_target], axis=1)
        totals, pieces = _exact_integral(s, base, seeds, max_pieces)
        results = [with_delta(one, (s.batch - base) * totals[:, k], baseline_logits,
                              "integrated_gradients", integration="exact", n_pieces=pieces)
                   for k, one in enumerate(per_target)]
    else:
        steps, alphas = approximation_parameters(method, int(n_steps))
        results = [with_delta(one, (s.batch - base) * _weighted_gradients(
                       one, base, steps, alphas, internal_batch_size, on_pass),
                       baseline_logits, "integrated_gradients", integration=method,
                       n_steps=int(n_steps))
                   for one in per_target]
    return s.finish(_with_target_axis(results) if target_axis else results[0])


def _for_target(s: Setup, targets: np.ndarray) -> Setup:
    """``s`` explaining output ``targets`` (one index per example)."""
    n = s.batch.shape[0]
    seed = np.zeros((n, s.logits.reshape(n, -1).shape[1]))
    seed[np.arange(n), targets] = 1.0
    return replace(s, targets=targets, seed=seed.reshape(s.logits.shape))


def _with_target_axis(results: list[Attribution]) -> Attribution:
    """One attribution per target stacked: the target-dependent fields get a target
    axis after the batch axis."""
    def stacked(name: str) -> np.ndarray:
        return np.stack([getattr(r, name) for r in results], axis=1)

    return replace(results[0], attribution=stacked("attribution"), target=stacked("target"),
                   output=stacked("output"), baseline_output=stacked("baseline_output"),
                   delta=stacked("delta"))


def require_walkable(graph: Graph) -> None:
    """Exact integrated gradients walks a path's linear pieces: it needs a graph of affine
    nodes, routes, Relu-type gates (Relu, LeakyRelu, PRelu, Clip) and max-pools. Raise an
    `UnsupportedOpError` naming the first other node (a smooth gate or product, whose
    gradient changes continuously, or a gate the walks do not know)."""
    for node in graph:
        op = node.operator
        if op is None or isinstance(op, (AffineOperator, PiecewiseLinear, MaxPool)) or (
                op.kind == ROUTE):
            continue
        why = ("it is not piecewise linear" if not node.piecewise_linear
               else "the exact walk does not know this gate")
        raise UnsupportedOpError(node.op, node.name,
                                 f"exact integrated gradients needs a piecewise-linear graph "
                                 f"of Relu-type gates and max-pools, and {why}; use a "
                                 "quadrature method (e.g. method='gausslegendre')")


def _exact_integral(s: Setup, base: np.ndarray, seeds: np.ndarray,
                    max_pieces: int | None) -> tuple[np.ndarray, np.ndarray]:
    """`int_0^1 grad f_t(b + a (x - b)) da` per example and target ``[N, T, *x]``
    (``seeds`` ``[N, T, *output]``, one one-hot `do/dh` per target) and the piece count
    per example. The event walk takes every target in one walk; the lock-step walk
    (small networks, large batches) walks once per target."""
    require_walkable(s.graph)
    n, count = seeds.shape[:2]
    total = np.zeros((n, count, *s.batch.shape[1:]))
    pieces = np.zeros(n, dtype=np.int64)
    values = sum(int(np.prod(node.shape)) for node in s.graph)
    if n >= LOCK_STEP_MIN_BATCH and values <= LOCK_STEP_MAX_VALUES:
        for k in range(count):
            lock_step = PathWalk(s.graph, base, s.batch, seeds[:, k], rtol=BOUNDARY_RTOL,
                                 resync_every=RESYNC_EVERY)
            lock_step.run(max_pieces)
            total[:, k] = lock_step.total_gradient
            pieces = lock_step.pieces
        return total, pieces
    for i in range(n):
        one = slice(i, i + 1)
        walk = EventWalk(s.graph, base[one], s.batch[one], seeds[i], rtol=BOUNDARY_RTOL)
        walk.run(max_pieces)
        total[i] = walk.total_gradient
        pieces[i] = walk.pieces
    return total, pieces


def _weighted_gradients(s: Setup, base: np.ndarray, steps: np.ndarray, alphas: np.ndarray,
                        internal_batch_size: int | None,
                        on_pass: Callable[[int], None] | None = None) -> np.ndarray:
    """`sum_k w_k grad f_t(b + a_k (x - b))` per example."""
    n = s.batch.shape[0]
    direction = s.batch - base
    per_pass = len(alphas) if internal_batch_size is None else max(1, internal_batch_size // n)
    per_point = sum(budget.count(node.shape) for node in s.graph)
    budget.check_elements([min(per_pass, len(alphas)), n, per_point],
                          f"the engine's values for {min(per_pass, len(alphas))} path points "
                          "per pass (lower internal_batch_size)", error=InputError)
    total = np.zeros_like(s.batch)
    for first in range(0, len(alphas), per_pass):
        a = alphas[first:first + per_pass]
        w = steps[first:first + per_pass]
        shape = (len(a), 1) + (1,) * (s.batch.ndim - 1)
        points = (base[None] + a.reshape(shape) * direction[None]).reshape(-1, *s.batch.shape[1:])
        trace = forward(s.graph, points)
        seed = np.broadcast_to(s.seed[None], (len(a), *s.seed.shape)).reshape(-1, *s.seed.shape[1:])
        grads = input_gradient(trace, seed).reshape(len(a), *s.batch.shape)
        total += np.tensordot(w, grads, axes=1)
        if on_pass is not None:
            on_pass(len(a))
    return total
