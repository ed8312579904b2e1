"""The exact walk along a straight path `x(t) = b + t (x - b)`, `t` in [0, 1], through a
piecewise-linear network, one linear piece at a time (exact integrated gradients), with two
full passes through the network per piece. It defines the walk's rules (below), which
`event_walk` follows too; `integrated_gradients` uses `event_walk.EventWalk`, which updates
only what each kink reaches, and the tests check it against this `PathWalk`.

**A piece.** At the start `t0` of a piece, every gate's *state* is fixed: for an
element-wise gate (Relu, LeakyRelu, PRelu, Clip) the interval of its pre-activation `u`
between breakpoints (`0`; Clip's `min` and `max`), for a MaxPool output the arg-max of its
window. With the states frozen the network is affine, so along the path every node value
is affine in `t`: `h(t) = h(t0) + (t - t0) dh`, where `dh` is the forward-mode pass of the
direction `d = x - b` through the frozen local maps with the biases off (a JVP). The piece
ends at the first `t` where a state stops being valid: an element-wise `u(t)` reaches the
breakpoint it is moving towards, or a MaxPool competitor's line `u_k(t)` overtakes the
winner's. One reverse pass through the same frozen maps gives the piece's constant gradient
`g` of `f_t`; integrated gradients is `d * sum_pieces (t1 - t0) g`.

**The state of the piece that starts at a kink** is the right limit of the states, found
lexicographically in the same forward-mode pass (nodes in topological order, so each gate
sees its input's `u` and `du` with all upstream states already chosen):

* element-wise gate: `u` is *above* breakpoint `c` if `u > c + tol`, or `|u - c| <= tol`
  and `du > 0`. A unit at a breakpoint therefore takes the side its directional derivative
  points to; with `du == 0` (it stays at the breakpoint) it takes the lower side, the
  engine's (and autograd's) convention at exactly `u = c`: ReLU-type off, Clip saturated.
* MaxPool: the candidates of a window are the in-bounds elements within `tol` of its
  maximum; the winner is the candidate with the largest `du`, ties (equal value and equal
  slope: the same line) to the lowest flat index, the engine's convention.

`tol = rtol * s` per gate and example (`rtol = 1e-11`), where `s` is the largest `max |u| +
max |du|` over the gate's input tensor seen so far on the walk (a running maximum, so it
cannot collapse when a tensor's values all come near 0): a bound on `|u(t)|` along the path
times a margin well above the rounding of `u`. So a unit a kink has just put at its
breakpoint (whose computed `u` is only rounding away from it) is recognised as being there,
and a piece never ends at its own start. The exit times are computed only towards
breakpoints the state moves to, so every piece has length at least about `rtol / 2` and the
walk terminates; ``max_pieces`` bounds it in practice. Deciding a state within `tol` of a
breakpoint skips at most a piece shorter than `tol / |du|`, an error of order `tol |g|` in
completeness.

**Values** are carried from piece to piece by the affine update `h += (t1 - t0) dh` (exact
in exact arithmetic, as `h` is continuous in `t`) and recomputed by the network's own
forward pass at `x(t)` every ``resync_every`` pieces, so rounding cannot drift. A batch is
walked in lock step, one piece per example per step (each example has its own `t`); an
example leaves the batch when it reaches `t = 1`. Each step costs one forward-mode and one
reverse pass through the engine plus element-wise work.
"""

from __future__ import annotations

import numpy as np

from ..engine.gates import ElementwiseLocal, MaxPool, PiecewiseLinear
from ..engine.operator import GATE, AffineLocal, AffineOperator, Array, LocalMap
from ..engine.trace import Trace, forward, input_gradient
from ..errors import BBpError
from ..graph import Graph

BOUNDARY_RTOL = 1e-11
RESYNC_EVERY = 32


class PathWalk:
    """The exact walk for a batch: ``start`` (`b`) and ``end`` (`x`) shaped like the
    batch, ``seed`` the one-hot `do/dh` at the output. Call `step` until `done`; then
    ``total_gradient`` is `sum (t1 - t0) g` per example and ``pieces`` the piece count."""

    def __init__(self, graph: Graph, start: Array, end: Array, seed: Array, *,
                 rtol: float = BOUNDARY_RTOL, resync_every: int = RESYNC_EVERY) -> None:
        self.graph = graph
        self.start = start
        self.direction = end - start
        self.seed = seed
        self.rtol = rtol
        self.resync_every = resync_every
        n = start.shape[0]
        self.t = np.zeros(n)
        self.pieces = np.zeros(n, dtype=np.int64)
        self.total_gradient = np.zeros_like(start)
        self.active = np.arange(n)
        # per gate and example, the running maximum of `max |u| + max |du|`
        self.scales = {node.name: np.zeros(n) for node in graph
                       if node.operator is not None and node.operator.kind == GATE}
        # only the gates' inputs are needed to choose states; other values are not kept
        self.tracked = {node.inputs[0] for node in graph
                        if node.operator is not None and node.operator.kind == GATE}
        self.release = _last_uses(graph, self.tracked)
        self._sync(start)

    @property
    def done(self) -> bool:
        return self.active.size == 0

    def _sync(self, points: Array) -> None:
        values = forward(self.graph, points, linearize=False).values
        self.values = {name: values[name] for name in self.tracked}
        self._since_sync = 0

    def step(self) -> None:
        """Walk one piece of every example not yet at `t = 1`."""
        idx = self.active
        whole = idx.size == self.t.size
        start, direction, seed, t = ((self.start, self.direction, self.seed, self.t) if whole
                                     else (self.start[idx], self.direction[idx],
                                           self.seed[idx], self.t[idx]))
        point = start + _column(t, start.ndim) * direction
        if self._since_sync >= self.resync_every:
            self._sync(point)
        floors = {name: scale[idx] for name, scale in self.scales.items()}
        dvalues, local, exit_time = directional_pass(self.graph, self.values, direction,
                                                     self.rtol, self.release, floors)
        for name, scale in floors.items():
            self.scales[name][idx] = scale
        remaining = 1.0 - t
        final = exit_time >= remaining
        dt = np.where(final, remaining, exit_time)
        values = dict(self.values)
        values[self.graph.input] = point
        grad = input_gradient(Trace(self.graph, values, local), seed)
        del local
        step = _column(dt, grad.ndim) * grad
        if whole:
            self.total_gradient += step
        else:
            self.total_gradient[idx] += step
        self.t[idx] = np.where(final, 1.0, t + dt)
        self.pieces[idx] += 1
        keep = ~final
        if keep.all():
            self.values = {name: value + _column(dt, value.ndim) * dvalues[name]
                           for name, value in self.values.items()}
        else:
            kept = dt[keep]
            self.values = {name: value[keep] + _column(kept, value.ndim) * dvalues[name][keep]
                           for name, value in self.values.items()}
            self.active = idx[keep]
        self._since_sync += 1

    def run(self, max_pieces: int | None) -> None:
        """Walk to the end, raising `BBpError` past ``max_pieces`` pieces of one example."""
        while not self.done:
            if max_pieces is not None and self.pieces.max() >= max_pieces:
                reached = float(self.t[self.active].min())
                raise BBpError(f"exact integrated gradients: more than {max_pieces} linear "
                               f"pieces (t = {reached:.6g} of 1 reached); raise max_pieces or "
                               "use a quadrature method")
            self.step()


def _column(v: Array, ndim: int) -> Array:
    return v.reshape((-1,) + (1,) * (ndim - 1))


def _last_uses(graph: Graph, keep: set[str]) -> dict[str, list[str]]:
    """For each node, the directional derivatives no longer needed once it is computed
    (those in ``keep`` are never released)."""
    last: dict[str, str] = {}
    for node in graph:
        for source in node.inputs:
            last[source] = node.name
    release: dict[str, list[str]] = {}
    for source, user in last.items():
        if source not in keep:
            release.setdefault(user, []).append(source)
    return release


def directional_pass(graph: Graph, values: dict[str, Array], direction: Array, rtol: float,
                     release: dict[str, list[str]] | None = None,
                     scales: dict[str, Array] | None = None,
                     ) -> tuple[dict[str, Array], dict[str, LocalMap], Array]:
    """The forward-mode pass of ``direction`` that also chooses every gate's state from
    the gate inputs' ``values`` (see the module docstring). Returns the nodes' `dh` (less
    those ``release`` frees after their last use), the frozen local maps, and per example
    the distance in `t` to the end of the piece (inf if none). ``scales`` holds each
    gate's running `max |u| + max |du|` per example and is updated in place."""
    n = direction.shape[0]
    dvalues: dict[str, Array] = {graph.input: direction}
    local: dict[str, LocalMap] = {}
    exit_time = np.full(n, np.inf)
    for node in graph:
        op = node.operator
        if op is None:
            continue
        doperands = [dvalues[name] for name in node.inputs]
        frozen: LocalMap
        if isinstance(op, (PiecewiseLinear, MaxPool)):
            u, du = values[node.inputs[0]], doperands[0]
            scale = _scale(u, du)
            if scales is not None:
                scale = scales[node.name] = np.maximum(scales.get(node.name, scale), scale)
            tol = _column(rtol * scale, u.ndim)
            frozen, time = (_elementwise_state(op, u, du, tol) if isinstance(op, PiecewiseLinear)
                            else _maxpool_state(op, u, du, tol))
            exit_time = np.minimum(exit_time, time)
        elif op.kind == GATE:
            raise BBpError(f"exact integrated gradients has no rule for gate {node.op} "
                           f"({node.name!r})")
        elif isinstance(op, AffineOperator):  # its map does not depend on the values
            frozen = AffineLocal(op, ())  # (the operands are kept only for BBp's rules)
        else:
            frozen = op.linearize(doperands)  # a route is its own map
        local[node.name] = frozen
        dvalues[node.name] = frozen.apply(doperands)
        for name in (release or {}).get(node.name, ()):
            dvalues.pop(name, None)
    return dvalues, local, exit_time


def _scale(u: Array, du: Array) -> Array:
    """`max |u| + max |du|` per example."""
    n = u.shape[0]
    return np.abs(u).reshape(n, -1).max(axis=1) + np.abs(du).reshape(n, -1).max(axis=1)


def _per_example_min(time: Array) -> Array:
    return time.reshape(time.shape[0], -1).min(axis=1)


def above(u: Array, du: Array, c: float, tol: Array | float,
          rising: Array | None = None) -> Array:
    """Whether `u` is past breakpoint `c` on the right of the current `t`."""
    rising = du > 0 if rising is None else rising
    shifted = u - c if c else u
    return (shifted > tol) | ((np.abs(shifted) <= tol) & rising)


def _elementwise_state(op: PiecewiseLinear, u: Array, du: Array,
                       tol: Array) -> tuple[LocalMap, Array]:
    """An element-wise gate's right-limit state and the time to its next breakpoint."""
    n = u.shape[0]
    never = np.full(n, np.inf)
    if not op.is_clip:
        return _relu_state(op, u, du, tol)
    lower, upper = op.lower, op.upper
    if lower is not None and upper is not None and lower >= upper:
        # ONNX: every output is `max`, whatever u (the engine: saturated)
        return ElementwiseLocal(np.zeros(u.shape), np.full(u.shape, float(upper))), never
    if lower is None and upper is None:
        return ElementwiseLocal(np.ones(u.shape), None), never
    ones = np.ones(u.shape, dtype=bool)
    above_lower = ones if lower is None else above(u, du, lower, tol)
    above_upper = ~ones if upper is None else above(u, du, upper, tol)
    below = ~above_lower & ~above_upper
    inside = above_lower & ~above_upper
    lo = -np.inf if lower is None else lower
    hi = np.inf if upper is None else upper
    offset = np.where(inside, 0.0, np.where(above_upper, hi, lo))
    up_to = np.where(below, lo, np.where(inside, hi, np.inf))  # the next breakpoint up
    down_to = np.where(above_upper, hi, np.where(inside, lo, -np.inf))  # and down
    with np.errstate(divide="ignore", invalid="ignore"):
        time = np.where(du > 0, (up_to - u) / du, np.where(du < 0, (down_to - u) / du, np.inf))
    return ElementwiseLocal(inside.astype(float), offset), _per_example_min(time)


def _relu_state(op: PiecewiseLinear, u: Array, du: Array,
                tol: Array) -> tuple[LocalMap, Array]:
    """Relu, LeakyRelu, PRelu: one breakpoint at 0."""
    rising = du > 0
    on = above(u, du, 0.0, tol, rising)
    moving = (on != rising) & (du != 0)  # on and falling, or off and rising
    time = np.full(u.shape, np.inf)
    np.divide(u, du, out=time, where=moving)
    np.negative(time, out=time, where=moving)
    slope = on.astype(float) if not op.negative_slope.any() else np.where(
        on, 1.0, op.negative_slope)
    return ElementwiseLocal(slope, None), _per_example_min(time)


def _maxpool_state(op: MaxPool, u: Array, du: Array, tol: Array) -> tuple[LocalMap, Array]:
    """A MaxPool's right-limit arg-max per output and the time to the next overtaking."""
    window = op.window
    padded = window.pad(u, value=-np.inf)
    dpadded = window.pad(du, value=0.0)
    lead = (slice(None), slice(None))
    offsets = list(window.offsets())
    slices = [lead + window.slices(offset) for offset in offsets]
    top = np.full(u.shape[:2] + window.out_spatial, -np.inf)
    for s in slices:
        top = np.maximum(top, padded[s])
    which = np.zeros(top.shape, dtype=np.int64)
    best = np.full(top.shape, -np.inf)
    best_slope = np.full(top.shape, -np.inf)
    threshold = top - tol
    for k, s in enumerate(slices):
        value, slope = padded[s], dpadded[s]
        better = (value >= threshold) & (slope > best_slope)
        which = np.where(better, k, which)
        best = np.where(better, value, best)
        best_slope = np.where(better, slope, best_slope)
    time = np.full(top.shape, np.inf)
    with np.errstate(invalid="ignore"):
        for s in slices:
            rate = dpadded[s] - best_slope
            overtakes = rate > 0
            gap = np.where(overtakes, best - padded[s], np.inf)
            time = np.minimum(time, np.where(overtakes, gap / np.where(overtakes, rate, 1.0),
                                             np.inf))
    return op.frozen(which, u.shape), _per_example_min(time)
