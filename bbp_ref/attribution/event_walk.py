"""The exact integrated-gradients walk as a sequence of *events*: each kink of the path
changes one gate (or a few at the same `t`), and only what that change reaches is
updated, instead of two passes through the whole network per piece (`path_walk`).

It walks the same pieces with the same rules as `path_walk.PathWalk` (read its module
docstring first: the right-limit state at a kink, the tolerance, the exit times); what
differs is the bookkeeping, for one example at a time:

* every gate keeps, per element of its input, the value `u` at a reference time, the
  directional derivative `du` (constant inside a piece), its state, and the *absolute*
  time of its next breakpoint; MaxPool keeps these per window. The next event is the
  smallest of these times.
* At an event at `t`, a forward sweep re-decides the state of the elements whose time
  has come and carries the change of their output's `du` to the nodes it reaches, as a
  sparse vector (`bbp_ref.engine.sparse`): a changed `du` moves the gate elements it
  reaches (their state is re-decided at `t` too, which settles simultaneous kinks
  lexicographically, as the path walk does), and so on downstream.
* A reverse sweep then updates the gradient `lambda` of the target at every gate's
  output and at the input: a gate element whose slope changed by `ds` sends
  `ds * lambda_out` (taken before this event's updates) to its input, MaxPool moves
  `lambda_out` from the old winner to the new one, and these changes travel upstream
  through the (new) frozen maps. Integrated gradients needs only
  `int_0^1 lambda_in dt = lambda_in(0) + sum_events d(lambda_in) (1 - t_event)`. The
  changes stop at the *frontier*: the nodes with no gate before them (their maps never
  change) that feed a node past them; the integral is accumulated there and pulled back
  through the gate-free maps once, at the end (`total_gradient`).

All values are recomputed from the network's own forward pass at `x(t)`, and `du` and
`lambda` by full passes through the frozen maps, every ``resync_every`` events, so the
sparse updates cannot drift. The tolerance's scale (`max |u| + max |du|` of a gate's
input) is the running maximum over these syncs; the path walk takes it at every piece. The
cost of an event is the size of the region its change reaches (a conv window's fan-out per
layer) instead of the whole network: on a small 224x224 CNN this is what makes exact
integrated gradients feasible (docs/math.md §6).

Supported gates are the element-wise ones (Relu, LeakyRelu, PRelu, Clip) and MaxPool;
`Conv` has sparse products, every other map is applied densely to the sparse change.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np

from ..engine.affine import Conv
from ..engine.gates import ElementwiseLocal, MaxPool, MaxPoolLocal, PiecewiseLinear
from ..engine.operator import GATE, AffineLocal, AffineOperator, Array, LocalMap
from ..engine.sparse import (
    Inverse,
    Sparse,
    SparseConv,
    concatenate,
    dense_apply,
    dense_vjp,
    window_table,
)
from ..engine.trace import Trace, backward, forward
from ..errors import BBpError
from ..graph import Graph, Node
from .path_walk import above


class Schedule:
    """Absolute times of the next state change of a gate's elements, with the minimum
    of each block of `BLOCK` elements kept, so the earliest time and the elements due
    are found without scanning every element at every event."""

    BLOCK = 256

    def __init__(self, size: int) -> None:
        blocks = -(-size // self.BLOCK)
        self.times = np.full(blocks * self.BLOCK, np.inf)
        self.minima = np.full(blocks, np.inf)

    def set(self, index: Array, times: Array) -> None:
        self.times[index] = times
        blocks = np.unique(index // self.BLOCK)
        self.minima[blocks] = self.times.reshape(-1, self.BLOCK)[blocks].min(axis=1)

    def earliest(self) -> float:
        return float(self.minima.min(initial=np.inf))

    def due(self, t: float) -> Array:
        """The elements whose time is ``t`` or earlier."""
        blocks = np.flatnonzero(self.minima <= t)
        rows, columns = np.nonzero(self.times.reshape(-1, self.BLOCK)[blocks] <= t)
        return blocks[rows] * self.BLOCK + columns


class _Gate(ABC):
    """What the walk keeps of one gate, flat over one example: the input's value `u` at
    time ``since`` and its directional derivative ``du`` per element, the output's
    ``du_out`` and gradient ``grad`` (`lambda`), the state, and its ``exit`` times."""

    def __init__(self, in_size: int, out_size: int) -> None:
        self.u = np.zeros(in_size)
        self.since = np.zeros(in_size)
        self.du = np.zeros(in_size)
        self.du_out = np.zeros(out_size)
        self.grad = np.zeros(out_size)
        self.exit = Schedule(out_size)
        self.tol = 0.0

    def value(self, index: Array, t: float) -> Array:
        return self.u[index] + (t - self.since[index]) * self.du[index]

    def move(self, change: Sparse, t: float) -> None:
        """Add ``change`` to `du`, first carrying `u` to ``t`` where it changes."""
        index, value = change
        self.u[index] = self.value(index, t)
        self.since[index] = t
        self.du[index] += value

    def sync(self, u: Array, du: Array, t: float, rtol: float, decide: bool) -> None:
        """Take the input's values and `du` from full passes at ``t``; with ``decide``
        choose every state, else keep them and recompute the exit times."""
        self.u, self.du = u.copy(), du.copy()
        self.since = np.full(u.size, t)
        scale = float(np.abs(u).max(initial=0.0)) + float(np.abs(du).max(initial=0.0))
        self.tol = max(self.tol, rtol * scale)
        self.sync_states(t, decide)

    @abstractmethod
    def sync_states(self, t: float, decide: bool) -> None:
        """The states (with ``decide``) and exit times of every element."""

    @abstractmethod
    def local_map(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> LocalMap:
        """The frozen map of the current states, for a batch of one."""

    @abstractmethod
    def event(self, change: Sparse | None, t: float) -> tuple[Sparse, Sparse] | None:
        """At an event at ``t``, with ``change`` to the input's `du` (already `move`d
        in): re-decide the elements due or touched. Returns the change of the output's
        `du` and the change of the input's gradient the new states cause (`lambda_out`
        taken before this event's updates), or None if nothing was re-decided."""

    @abstractmethod
    def pull_back(self, index: Array, value: Array) -> Sparse:
        """Add a change of the output's gradient and return the input's."""


class _Elementwise(_Gate):
    """Relu / LeakyRelu / PRelu / Clip: the state is the region of `u` between the
    sorted breakpoints (0 for the ReLU types; Clip's bounds)."""

    def __init__(self, op: PiecewiseLinear, shape: tuple[int, ...]) -> None:
        size = int(np.prod(shape))
        super().__init__(size, size)
        if op.is_clip:
            lower, upper = op.lower, op.upper
            if lower is not None and upper is not None and lower >= upper:
                self.breakpoints, slopes = [], [0.0]  # every output is `max` (saturated)
            else:
                self.breakpoints = [float(b) for b in (lower, upper) if b is not None]
                slopes = ([0.0] if lower is not None else []) + [1.0] + (
                    [0.0] if upper is not None else [])
            self.slopes = np.tile(np.array(slopes)[:, None], (1, size))
        else:
            negative = np.broadcast_to(op.negative_slope, (1, *shape)).reshape(-1)
            self.breakpoints = [0.0]
            self.slopes = np.stack([negative, np.ones(size)])
        self.region = np.zeros(size, dtype=np.int64)
        self.slope = np.zeros(size)

    def decide(self, index: Array, t: float) -> Array:
        """Right-limit regions at ``t`` of elements ``index``; returns the new slopes and
        sets the regions and exit times."""
        u, du = self.value(index, t), self.du[index]
        region = np.zeros(index.size, dtype=np.int64)
        rising = du > 0
        for c in self.breakpoints:
            region += above(u, du, c, self.tol, rising)
        self.region[index] = region
        self.exit.set(index, t + self._time(region, u, du))
        return self.slopes[region, index]

    def sync_states(self, t: float, decide: bool) -> None:
        index = np.arange(self.region.size)
        if decide:
            self.slope = self.decide(index, t)
        else:
            self.exit.set(index, t + self._time(self.region, self.value(index, t), self.du))

    def local_map(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> LocalMap:
        return ElementwiseLocal(self.slope.reshape((1, *in_shape)), None)

    def event(self, change: Sparse | None, t: float) -> tuple[Sparse, Sparse] | None:
        due = self.exit.due(t)
        if change is not None:
            due = np.union1d(due, change[0])
        if due.size == 0:
            return None
        slope = self.decide(due, t)
        old = self.slope[due]
        self.slope[due] = slope
        out = slope * self.du[due]
        delta = out - self.du_out[due]
        self.du_out[due] = out
        moved = delta != 0
        flipped = slope != old
        return ((due[moved], delta[moved]),
                (due[flipped], (slope - old)[flipped] * self.grad[due[flipped]]))

    def pull_back(self, index: Array, value: Array) -> Sparse:
        self.grad[index] += value
        return index, self.slope[index] * value

    def _time(self, region: Array, u: Array, du: Array) -> Array:
        time = np.full(u.shape, np.inf)
        points = np.array(self.breakpoints + [np.inf])
        lower = np.array([-np.inf] + self.breakpoints)
        with np.errstate(divide="ignore", invalid="ignore"):
            up = (points[region] - u) / du
            down = (lower[region] - u) / du
        np.copyto(time, up, where=(du > 0) & np.isfinite(up))
        np.copyto(time, down, where=(du < 0) & np.isfinite(down))
        return np.maximum(time, 0.0)


class _MaxPool(_Gate):
    """MaxPool: the state of a window is its winner (a flat input index)."""

    def __init__(self, op: MaxPool, in_shape: tuple[int, ...]) -> None:
        window = op.window
        channels = int(np.prod(in_shape[:len(in_shape) - len(window.kernel)]))
        self.spatial = int(np.prod(window.in_spatial))
        table = window_table(window)
        rows = np.arange(channels)[:, None, None] * self.spatial
        self.table = np.where(table >= 0, rows + table, -1).reshape(-1, window.size)
        super().__init__(channels * self.spatial, self.table.shape[0])
        self.inverse = Inverse(self.table, channels * self.spatial)
        self.winner = np.zeros(self.table.shape[0], dtype=np.int64)
        self.channel_start = np.repeat(np.arange(channels) * self.spatial,
                                       self.table.shape[0] // channels)

    def decide(self, windows: Array, t: float, keep: bool = False) -> Array:
        """Right-limit winners at ``t`` of ``windows`` (or, with ``keep``, the current
        winners); sets winners and exit times, returns the winners."""
        read = self.table[windows]
        valid = read >= 0
        safe = np.where(valid, read, 0)
        u = np.where(valid, self.value(safe, t), -np.inf)
        du = np.where(valid, self.du[safe], 0.0)
        if keep:
            which = np.argmax(read == self.winner[windows, None], axis=1)
        else:
            threshold = u.max(axis=1) - self.tol
            which = np.zeros(windows.size, dtype=np.int64)
            best_slope = np.full(windows.size, -np.inf)
            for k in range(read.shape[1]):
                better = (u[:, k] >= threshold) & (du[:, k] > best_slope)
                which = np.where(better, k, which)
                best_slope = np.where(better, du[:, k], best_slope)
        rows = np.arange(windows.size)
        best, best_slope = u[rows, which], du[rows, which]
        rate = du - best_slope[:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            time = np.where(rate > 0, (best[:, None] - u) / rate, np.inf)
        self.exit.set(windows, t + np.maximum(time.min(axis=1), 0.0))
        self.winner[windows] = read[rows, which]
        return self.winner[windows]

    def sync_states(self, t: float, decide: bool) -> None:
        self.decide(np.arange(self.winner.size), t, keep=not decide)

    def local_map(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> LocalMap:
        local_index = self.winner - self.channel_start  # flat spatial, per channel
        return MaxPoolLocal(local_index.reshape((1, *out_shape)), (1, *in_shape))

    def event(self, change: Sparse | None, t: float) -> tuple[Sparse, Sparse] | None:
        due = self.exit.due(t)
        if change is not None:
            due = np.union1d(due, np.unique(self.inverse.pairs(change[0])[1]))
        if due.size == 0:
            return None
        old = self.winner[due]
        new = self.decide(due, t)
        out = self.du[new]
        delta = out - self.du_out[due]
        self.du_out[due] = out
        moved = delta != 0
        flipped = new != old
        grad = self.grad[due[flipped]]
        seed = (np.concatenate([old[flipped], new[flipped]]), np.concatenate([-grad, grad]))
        return (due[moved], delta[moved]), seed

    def pull_back(self, index: Array, value: Array) -> Sparse:
        self.grad[index] += value
        return self.winner[index], value


def _make_gate(node: Node, in_shape: tuple[int, ...]) -> _Gate:
    op = node.operator
    if isinstance(op, MaxPool):
        return _MaxPool(op, in_shape)
    if isinstance(op, PiecewiseLinear):
        return _Elementwise(op, in_shape)
    raise BBpError(f"exact integrated gradients has no rule for gate {node.op} "
                   f"({node.name!r})")


class EventWalk:
    """The exact walk for one example: ``start`` and ``end`` batches of one, ``seed``
    the one-hot `do/dh` at the output. `run` fills ``total_gradient`` (`int_0^1 g dt`,
    shaped like ``start``) and ``pieces``."""

    def __init__(self, graph: Graph, start: Array, end: Array, seed: Array, *,
                 rtol: float, resync_every: int = 4096) -> None:
        self.graph = graph
        self.start = start
        self.direction = end - start
        self.seed = seed
        self.rtol = rtol
        self.resync_every = resync_every
        self.nodes = [node for node in graph if node.operator is not None]
        self.shapes = {node.name: node.shape for node in graph}
        self.gates: dict[str, _Gate] = {}
        self.sparse: dict[str, SparseConv] = {}
        self.maps: dict[str, LocalMap] = {}
        for node in self.nodes:
            op = node.operator
            if isinstance(op, Conv):
                self.sparse[node.name] = SparseConv(op)
            if isinstance(op, AffineOperator):
                self.maps[node.name] = AffineLocal(op, ())
            elif op is not None and op.kind != GATE:
                self.maps[node.name] = op.linearize([])
        self.t = 0.0
        self.pieces = 1
        self.forward_needed = _reaching_gates(graph)
        self.prefix = _gate_free_prefix(graph)
        self.prefix_names = {node.name for node in self.prefix}
        consumers = graph.consumers()
        self.frontier_names = {node.name for node in self.prefix if node.name == graph.output
                               or any(c not in self.prefix_names for c in consumers[node.name])}
        self.reverse_order = [node for node in reversed(list(graph))
                              if node.name not in self.prefix_names
                              or node.name in self.frontier_names]
        self.frontier: dict[str, Array] = {}
        self._sync(decide=True)
        self.integral = {name: grad.copy() for name, grad in self.frontier.items()}

    @property
    def total_gradient(self) -> Array:
        """`int_0^1 g dt` at the input: the frontier's integrals pulled back through the
        gate-free maps between the input and the frontier (one dense pass)."""
        grads = {name: value.reshape((1, *self.shapes[name]))
                 for name, value in self.integral.items()}
        for node in reversed(self.prefix):
            grad = grads.pop(node.name, None)
            if node.operator is None:
                return (np.zeros(self.start.shape) if grad is None
                        else grad.reshape(self.start.shape))
            if grad is None:
                continue
            for source, part in zip(node.inputs, self.maps[node.name].vjp(grad)):
                grads[source] = part if source not in grads else grads[source] + part
        raise AssertionError("graph has no input node")

    # -- full passes -------------------------------------------------------------------

    def _sync(self, decide: bool) -> None:
        """Values from the forward pass at `x(t)`, `du` and `lambda` by full passes through
        the frozen maps; with ``decide`` the states are chosen too (the start)."""
        t = self.t
        values = forward(self.graph, self.start + t * self.direction, linearize=False).values
        dvalues: dict[str, Array] = {self.graph.input: self.direction}
        local: dict[str, LocalMap] = {}
        for node in self.nodes:
            operands = [dvalues[name] for name in node.inputs]
            if node.name in self.maps:
                local[node.name] = self.maps[node.name]
            else:
                in_shape = self.shapes[node.inputs[0]]
                gate = self.gates.get(node.name)
                if gate is None:
                    gate = self.gates[node.name] = _make_gate(node, in_shape)
                gate.sync(values[node.inputs[0]].reshape(-1), operands[0].reshape(-1), t,
                          self.rtol, decide)
                local[node.name] = gate.local_map(in_shape, node.shape)
            dvalues[node.name] = local[node.name].apply(operands)
            if node.name in self.gates:
                self.gates[node.name].du_out = dvalues[node.name].reshape(-1).copy()
        # a frontier node keeps only the gradient its consumers past the frontier send it
        # (what its gate-free consumers send is added by `total_gradient`'s final pass)
        frontier = {name: np.zeros(int(np.prod(self.shapes[name])))
                    for name in self.frontier_names}
        if self.graph.output in frontier:
            frontier[self.graph.output] += self.seed.reshape(-1)
        trace = Trace(self.graph, values, local)
        for node, grad in backward(trace, self.seed):
            if node.name in self.gates:
                self.gates[node.name].grad = grad.reshape(-1).copy()
            if node.name in self.prefix_names or not any(n in frontier for n in node.inputs):
                continue  # (only the frontier's consumers are pulled back a second time)
            for source, part in zip(node.inputs, local[node.name].vjp(grad)):
                if source in frontier:
                    frontier[source] += part.reshape(-1)
        self.frontier = frontier

    # -- events ------------------------------------------------------------------------

    def next_time(self) -> float:
        return min((g.exit.earliest() for g in self.gates.values()), default=np.inf)

    def run(self, max_pieces: int | None) -> None:
        since_sync = 0
        while (t := self.next_time()) < 1.0:
            if max_pieces is not None and self.pieces >= max_pieces:
                raise BBpError(f"exact integrated gradients: more than {max_pieces} linear "
                               f"pieces (t = {self.t:.6g} of 1 reached); raise max_pieces or "
                               "use a quadrature method")
            self.t = t
            self._event(t)
            self.pieces += 1
            since_sync += 1
            if since_sync >= self.resync_every:
                old = self.frontier
                self._sync(decide=False)
                for name, grad in self.frontier.items():
                    self.integral[name] += (grad - old[name]) * (1.0 - t)
                since_sync = 0

    def _event(self, t: float) -> None:
        changes: dict[str, Sparse] = {}
        seeds: dict[str, list[Sparse]] = {}
        for node in self.nodes:
            incoming = [changes.get(name) for name in node.inputs]
            gate = self.gates.get(node.name)
            if gate is None:
                if node.name in self.forward_needed and any(c is not None for c in incoming):
                    changes[node.name] = self._apply(node, incoming)
                continue
            change = incoming[0]
            if change is not None:
                gate.move(change, t)
            result = gate.event(change, t)
            if result is None:
                continue
            out_change, seed = result
            if out_change[0].size:
                changes[node.name] = out_change
            if seed[0].size:
                seeds.setdefault(node.inputs[0], []).append(seed)
        if seeds:
            self._reverse(seeds, t)

    def _apply(self, node: Node, incoming: Sequence[Sparse | None]) -> Sparse:
        sparse = self.sparse.get(node.name)
        if sparse is not None and incoming[0] is not None:
            return sparse.apply(incoming[0])
        shapes = [self.shapes[name] for name in node.inputs]
        return dense_apply(self.maps[node.name], incoming, shapes)

    def _reverse(self, seeds: dict[str, list[Sparse]], t: float) -> None:
        pending = seeds
        for node in self.reverse_order:
            parts = pending.pop(node.name, None)
            if parts is None:
                continue
            index, value = concatenate(parts, int(np.prod(node.shape)))
            if node.name in self.frontier_names:
                self.integral[node.name][index] += value * (1.0 - t)
                self.frontier[node.name][index] += value
                continue
            gate = self.gates.get(node.name)
            if gate is not None:
                back = [gate.pull_back(index, value)]
            elif node.name in self.sparse:
                back = [self.sparse[node.name].vjp((index, value))]
            else:
                back = dense_vjp(self.maps[node.name], (index, value), node.shape)
            for source, part in zip(node.inputs, back):
                if part[0].size:
                    pending.setdefault(source, []).append(part)


def _reaching_gates(graph: Graph) -> set[str]:
    """The nodes from which some gate is reachable: only their `du` is ever needed."""
    reaching: set[str] = set()
    for node in reversed(list(graph)):
        if node.operator is not None and node.operator.kind == GATE:
            reaching.add(node.name)
        if node.name in reaching:
            reaching.update(node.inputs)
    return reaching


def _gate_free_prefix(graph: Graph) -> list[Node]:
    """The input and the nodes none of whose ancestors is a gate, in topological order:
    their maps never change along the path."""
    prefix: list[Node] = []
    names: set[str] = set()
    for node in graph:
        if node.operator is None or (node.operator.kind != GATE
                                     and all(name in names for name in node.inputs)):
            prefix.append(node)
            names.add(node.name)
    return prefix
