"""The exact integrated-gradients walk as a sequence of *events*: each kink of the path
changes one gate (or a few at the same `t`), and only what that change reaches is
updated, instead of two passes through the whole network per piece (`path_walk`).

It walks the same pieces with the same rules as `path_walk.PathWalk` (read its module
docstring first: the right-limit state at a kink, the tolerance, the exit times); what
differs is the bookkeeping, for one example at a time:

* every gate keeps, per element of its input, the value `u` at a reference time, the
  directional derivative `du` (constant inside a piece), its state, and the *absolute*
  time of its next breakpoint; MaxPool keeps these per window. The next event is the
  smallest of these times (every gate's times in one `Timetable`, so the due elements of all
  gates are found in a few array operations).
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

*Several targets* share the walk: the kinks do not depend on the target, so `lambda` is
kept as one column per target and the reverse sweep carries all of them at once.

*Several kinks per sweep* (docs/math.md §6): a sweep takes the earliest due elements
(`BATCH_EVENTS` of them, whole groups of equal time) and processes together those whose
*cones* (the positions their change can reach, whatever the states; `event_cones.Cones`,
which keeps each cone once computed) meet no cone of an earlier kink among them; each change
carries the time of its kink, and the reverse sweep carries per element the change of
`lambda` and that change times `1 - t`.
Kinks that meet an earlier one's cone wait for a later sweep. With ``batch_events=1`` a
sweep is one kink time, as in time order.

All values are recomputed from the network's own forward pass at `x(t)`, and `du` and
`lambda` by full passes through the frozen maps, every ``resync_every`` kinks (at a time
no pending kink precedes: when a sync is due the walk takes one kink time per sweep
until then), so the sparse updates cannot drift. The tolerance's scale (`max |u| +
max |du|` of a gate's input) is the running maximum over these syncs; the path walk takes
it at every piece. The cost of an event is the size of the region its change reaches (a
conv window's fan-out per layer) instead of the whole network: on a small 224x224 CNN
this is what makes exact integrated gradients feasible (docs/math.md §6).

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
    EMPTY_INDEX,
    Inverse,
    Sparse,
    SparseConv,
    concatenate_columns,
    conv_vjp_columns,
    dense_apply,
    dense_vjp_columns,
    distinct,
    distinct_sorted,
    nonzero_rows,
    run_starts,
    union,
    window_table,
)
from ..engine.trace import Trace, backward, forward
from ..errors import BBpError
from ..graph import Graph, Node
from .event_cones import Cones
from .path_walk import above


class Schedule:
    """Absolute times of the next state change of a gate's elements, with the minimum
    of each block of `BLOCK` elements kept, so the earliest time and the elements due
    are found without scanning every element at every event. A `set` only marks its
    blocks *stale*; their minima are recomputed when next asked for (`refresh`), once
    per block however many sets of a sweep touched it.

    The times are kept *position-major*: element ``c * positions + p`` of a gate with
    ``channels`` channels (flat, channel-major, as everywhere else) at slot
    ``p * channels + c``, so that the elements of one position, which an event changes
    in every channel at once, share blocks."""

    BLOCK = 256

    def __init__(self, size: int, channels: int = 1) -> None:
        blocks = -(-size // self.BLOCK)
        if size == 0 or channels < 1:  # (nothing to lay out)
            channels = 1
        self.channels, self.positions = channels, size // channels
        self.times = np.full(blocks * self.BLOCK, np.inf)
        self.minima = np.full(blocks, np.inf)
        self.stale = np.zeros(blocks, dtype=bool)

    def slot(self, index: Array) -> Array:
        """Where the times of elements ``index`` are kept."""
        if self.channels == 1:
            return index
        channel, position = np.divmod(index, self.positions)
        return position * self.channels + channel

    def set(self, index: Array, times: Array) -> None:
        """New times of elements ``index`` (distinct)."""
        slot = self.slot(index)
        self.times[slot] = times
        self.stale[slot // self.BLOCK] = True

    def time_of(self, index: Array) -> Array:
        return self.times[self.slot(index)]

    def refresh(self) -> None:
        """Recompute the minima of the stale blocks."""
        _refresh(self.times, self.minima, self.stale)

    def earliest(self) -> float:
        self.refresh()
        return float(self.minima.min(initial=np.inf))

    def due(self, t: float) -> Array:
        """The elements whose time is ``t`` or earlier, sorted."""
        self.refresh()
        blocks = np.flatnonzero(self.minima <= t)
        rows, columns = np.nonzero(self.times.reshape(-1, self.BLOCK)[blocks] <= t)
        position, channel = np.divmod(blocks[rows] * self.BLOCK + columns, self.channels)
        return np.sort(channel * self.positions + position)

    def adopt(self, times: Array, minima: Array, stale: Array) -> None:
        """Keep the times in ``times``, ``minima`` and ``stale`` (views of a `Timetable`'s
        arrays, of this schedule's sizes) from now on."""
        times[:], minima[:], stale[:] = self.times, self.minima, self.stale
        self.times, self.minima, self.stale = times, minima, stale


def _refresh(times: Array, minima: Array, stale: Array) -> None:
    """The minima of the stale blocks of ``times`` recomputed (and no longer stale)."""
    blocks = np.flatnonzero(stale)
    if blocks.size:
        minima[blocks] = times.reshape(-1, Schedule.BLOCK)[blocks].min(axis=1)
        stale[blocks] = False


class Timetable:
    """The `Schedule`s of all gates in one set of arrays (each gate's segment a whole
    number of blocks, in the order given), so the earliest time and the due elements of
    every gate are found with a few array operations instead of a few per gate."""

    def __init__(self, schedules: Sequence[Schedule]) -> None:
        sizes = [schedule.times.size for schedule in schedules]
        block = Schedule.BLOCK
        self.times = np.full(sum(sizes), np.inf)
        self._minima = np.full(sum(sizes) // block, np.inf)
        self.stale = np.zeros(self._minima.size, dtype=bool)
        self.starts = np.cumsum([0, *sizes[:-1]], dtype=np.int64)  # each gate's first slot
        self.channels = np.array([schedule.channels for schedule in schedules])
        self.positions = np.array([schedule.positions for schedule in schedules])
        for schedule, start, size in zip(schedules, self.starts, sizes):
            blocks = slice(start // block, (start + size) // block)
            schedule.adopt(self.times[start:start + size], self._minima[blocks],
                           self.stale[blocks])

    @property
    def minima(self) -> Array:
        """The minimum time of each block (every gate's blocks, in order)."""
        _refresh(self.times, self._minima, self.stale)
        return self._minima

    def earliest(self) -> float:
        return float(self.minima.min(initial=np.inf))

    def due(self, t: float) -> tuple[Array, Array, Array]:
        """The elements whose time is ``t`` or earlier: their gates (positions in the
        order given), their flat indices in their gates and their times, by gate, then
        by element (`Schedule.due` of each gate, concatenated)."""
        block = Schedule.BLOCK
        blocks = np.flatnonzero(self.minima <= t)
        rows, columns = np.nonzero(self.times.reshape(-1, block)[blocks] <= t)
        slot = blocks[rows] * block + columns
        gate = np.searchsorted(self.starts, slot, side="right") - 1
        position, channel = np.divmod(slot - self.starts[gate], self.channels[gate])
        element = channel * self.positions[gate] + position
        order = np.lexsort((element, gate))
        return gate[order], element[order], self.times[slot[order]]


class _Gate(ABC):
    """What the walk keeps of one gate, flat over one example: the input's value `u` at
    time ``since`` and its directional derivative ``du`` per element, the output's
    ``du_out``, the gradient ``grad`` (`lambda`, one column per target), the state, and
    its ``exit`` times. Times ``t`` of the methods are per element (or one number)."""

    def __init__(self, in_size: int, out_size: int, targets: int, channels: int) -> None:
        self.u = np.zeros(in_size)
        self.since = np.zeros(in_size)
        self.du = np.zeros(in_size)
        self.du_out = np.zeros(out_size)
        self.grad = np.zeros((out_size, targets))
        self.exit = Schedule(out_size, channels)
        self.tol = 0.0

    def value(self, index: Array, t: Array | float) -> Array:
        return self.u[index] + (t - self.since[index]) * self.du[index]

    def move(self, change: Sparse, t: Array | float) -> None:
        """Add ``change`` to `du`, first carrying `u` to ``t`` where it changes."""
        index, value = change
        du = self.du[index]
        self.u[index] = self.u[index] + (t - self.since[index]) * du  # (`value`)
        self.since[index] = t
        self.du[index] = du + value

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
    def touched(self, index: Array) -> Array:
        """The (output) elements whose state a change of input elements ``index`` can
        change: their sorted flat indices."""

    @abstractmethod
    def event(self, elements: Array, t: Array) -> tuple[Sparse, Sparse]:
        """Re-decide the states of ``elements`` (sorted, unique), each at its own time
        ``t`` (the input's changes already `move`d in). Returns the change of the
        output's `du` and the input's *seed*: the change of its gradient the new states
        cause (`lambda_out` taken before this event's updates), values ``[n, 2 T]``: the
        change, then the change times `1 - t` (what the integral gains)."""

    @abstractmethod
    def pull_back(self, index: Array, value: Array) -> Sparse:
        """Add a change of the output's gradient (the first `T` of the ``2 T`` columns of
        ``value``) and return the input's (all columns)."""

    def seed(self, index: Array, change: Array, t: Array) -> Array:
        """``[n, 2 T]`` seed values: ``change`` ``[n, T]``, then times `1 - t`."""
        return np.concatenate([change, change * (1.0 - t)[:, None]], axis=1)


class _Elementwise(_Gate):
    """Relu / LeakyRelu / PRelu / Clip: the state is the region of `u` between the
    sorted breakpoints (0 for the ReLU types; Clip's bounds)."""

    def __init__(self, op: PiecewiseLinear, shape: tuple[int, ...], targets: int) -> None:
        size = int(np.prod(shape))
        super().__init__(size, size, targets, shape[0] if len(shape) > 1 else 1)
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
        self.upper = np.array([*self.breakpoints, np.inf])  # each region's bounds
        self.lower = np.array([-np.inf, *self.breakpoints])

    def decide(self, index: Array, t: Array | float) -> Array:
        """Right-limit regions at ``t`` of elements ``index``; returns the new slopes and
        sets the regions and exit times."""
        du = self.du[index]
        u = self.u[index] + (t - self.since[index]) * du  # (`value`)
        region = np.zeros(index.size, dtype=np.int64)
        rising = du > 0
        for c in self.breakpoints:
            region += above(u, du, c, self.tol, rising)
        self.region[index] = region
        self.exit.set(index, t + self._time(region, u, du))
        return self.slopes.ravel()[region * self.region.size + index]  # ([region, index])

    def sync_states(self, t: float, decide: bool) -> None:
        index = np.arange(self.region.size)
        if decide:
            self.slope = self.decide(index, t)
        else:
            self.exit.set(index, t + self._time(self.region, self.value(index, t), self.du))

    def local_map(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> LocalMap:
        return ElementwiseLocal(self.slope.reshape((1, *in_shape)), None)

    def touched(self, index: Array) -> Array:
        return index

    def event(self, elements: Array, t: Array) -> tuple[Sparse, Sparse]:
        slope = self.decide(elements, t)
        old = self.slope[elements]
        self.slope[elements] = slope
        out = slope * self.du[elements]
        delta = out - self.du_out[elements]
        self.du_out[elements] = out
        moved = delta != 0
        flipped = np.flatnonzero(slope != old)
        index = elements[flipped]
        change = (slope - old)[flipped, None] * self.grad[index]
        return (elements[moved], delta[moved]), (index, self.seed(index, change, t[flipped]))

    def pull_back(self, index: Array, value: Array) -> Sparse:
        self.grad[index] += value[:, :self.grad.shape[1]]
        return index, self.slope[index, None] * value

    def _time(self, region: Array, u: Array, du: Array) -> Array:
        """Time from `u` to the breakpoint ``du`` moves it to (its region's upper one
        when rising, lower one when falling); inf where there is none or ``du = 0``."""
        bound = np.where(du > 0, self.upper[region], self.lower[region])
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            time = (bound - u) / du
        time[~np.isfinite(time)] = np.inf
        return np.maximum(time, 0.0, out=time)


class _MaxPool(_Gate):
    """MaxPool: the state of a window is its winner (a flat input index)."""

    def __init__(self, op: MaxPool, in_shape: tuple[int, ...], targets: int) -> None:
        window = op.window
        channels = int(np.prod(in_shape[:len(in_shape) - len(window.kernel)]))
        self.spatial = int(np.prod(window.in_spatial))
        table = window_table(window)
        rows = np.arange(channels)[:, None, None] * self.spatial
        self.table = np.where(table >= 0, rows + table, -1).reshape(-1, window.size)
        super().__init__(channels * self.spatial, self.table.shape[0], targets, channels)
        self.inverse = Inverse(self.table, channels * self.spatial)
        self.spatial_inverse = Inverse(table.reshape(-1, window.size), self.spatial)
        self.winner = np.zeros(self.table.shape[0], dtype=np.int64)
        self.padded = bool((self.table < 0).any())  # some window reads padding
        self.channel_start = np.repeat(np.arange(channels) * self.spatial,
                                       self.table.shape[0] // channels)

    def decide(self, windows: Array, t: Array | float, keep: bool = False) -> Array:
        """Right-limit winners at ``t`` of ``windows`` (or, with ``keep``, the current
        winners); sets winners and exit times, returns the winners."""
        read = self.table[windows]
        t_column = np.reshape(t, (-1, 1))
        if self.padded:
            valid = read >= 0
            safe = np.where(valid, read, 0)
            u = np.where(valid, self.value(safe, t_column), -np.inf)
            du = np.where(valid, self.du[safe], 0.0)
        else:  # (the same, without the padding's entries)
            du = self.du[read]
            u = self.u[read] + (t_column - self.since[read]) * du
        if keep:
            which = np.argmax(read == self.winner[windows, None], axis=1)
        else:
            # of the elements within the tolerance of the maximum, the first of the
            # largest `du`
            threshold = u.max(axis=1) - self.tol
            which = np.argmax(np.where(u >= threshold[:, None], du, -np.inf), axis=1)
        pick = np.arange(0, read.size, read.shape[1]) + which  # (flat: row i, `which[i]`)
        best, best_slope = u.reshape(-1)[pick], du.reshape(-1)[pick]
        rate = du - best_slope[:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            time = np.where(rate > 0, (best[:, None] - u) / rate, np.inf)
        self.exit.set(windows, t + np.maximum(time.min(axis=1), 0.0))
        winners = read.reshape(-1)[pick]
        self.winner[windows] = winners
        return winners

    def sync_states(self, t: float, decide: bool) -> None:
        self.decide(np.arange(self.winner.size), t, keep=not decide)

    def local_map(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> LocalMap:
        local_index = self.winner - self.channel_start  # flat spatial, per channel
        return MaxPoolLocal(local_index.reshape((1, *out_shape)), (1, *in_shape))

    def touched(self, index: Array) -> Array:
        return distinct(self.inverse.pairs(index)[1])

    def event(self, elements: Array, t: Array) -> tuple[Sparse, Sparse]:
        old = self.winner[elements]
        new = self.decide(elements, t)
        out = self.du[new]
        delta = out - self.du_out[elements]
        self.du_out[elements] = out
        moved = delta != 0
        flipped = np.flatnonzero(new != old)
        grad = self.grad[elements[flipped]]
        index = np.concatenate([old[flipped], new[flipped]])
        times = np.concatenate([t[flipped], t[flipped]])
        seed = (index, self.seed(index, np.concatenate([-grad, grad]), times))
        return (elements[moved], delta[moved]), seed

    def pull_back(self, index: Array, value: Array) -> Sparse:
        self.grad[index] += value[:, :self.grad.shape[1]]
        return self.winner[index], value


def _make_gate(node: Node, in_shape: tuple[int, ...], targets: int) -> _Gate:
    op = node.operator
    if isinstance(op, MaxPool):
        return _MaxPool(op, in_shape, targets)
    if isinstance(op, PiecewiseLinear):
        return _Elementwise(op, in_shape, targets)
    raise BBpError(f"exact integrated gradients has no rule for gate {node.op} "
                   f"({node.name!r})")


class _Batch:
    """The events one sweep processes: ``elements[g]``, the elements of gate ``g`` whose
    time has come, and the time of the event that reaches each element of a node
    (`time_at`). ``times`` are the distinct event times (each one a piece)."""

    def __init__(self, elements: dict[str, Array], label_times: Array, times: Array,
                 labels: dict[str, Array] | None, positions: dict[str, int]) -> None:
        self.positions = positions
        self.elements = elements
        self.label_times = label_times
        self.times = times
        self.labels = labels  # None: one event time, every element at it

    def time_at(self, name: str, index: Array) -> Array:
        """The time of the event that reaches elements ``index`` of node ``name``."""
        if self.labels is None:
            return np.full(index.size, self.times[0])
        labels = self.labels[name][index % self.positions[name]]
        if labels.size and labels.min() < 0:
            raise BBpError(f"exact integrated gradients: an event reached node {name!r} outside "
                           "its predicted cone (an internal error of the several-kinks sweep, "
                           "docs/math.md §6; please report it with the model)")
        return self.label_times[labels]


class EventWalk:
    """The exact walk for one example: ``start`` and ``end`` batches of one, ``seed``
    ``[T, *output]``, one one-hot `do/dh` per target. `run` fills ``total_gradient``
    (`int_0^1 g dt` per target, ``[T, *input]``) and ``pieces``. ``batch_events``: how
    many of the earliest kinks a sweep considers at once (docs/math.md §6: the independent
    ones among them are processed together); 1 processes one event time per sweep."""

    BATCH_EVENTS = 64

    def __init__(self, graph: Graph, start: Array, end: Array, seed: Array, *,
                 rtol: float, resync_every: int = 4096,
                 batch_events: int | None = None) -> None:
        self.graph = graph
        self.start = start
        self.direction = end - start
        self.seed = seed
        self.targets = seed.shape[0]
        self.rtol = rtol
        self.resync_every = resync_every
        self.batch_events = self.BATCH_EVENTS if batch_events is None else batch_events
        self.nodes = [node for node in graph if node.operator is not None]
        self.shapes = {node.name: node.shape for node in graph}
        self.sizes = {node.name: int(np.prod(node.shape)) for node in graph}
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
        self.batches = 0
        self.forward_needed = _reaching_gates(graph)
        self.reach_nodes = [node for node in self.nodes if node.name in self.forward_needed]
        self.positions = {node.name: _positions(node.shape) for node in graph}
        self.prefix = _gate_free_prefix(graph)
        self.prefix_names = {node.name for node in self.prefix}
        consumers = graph.consumers()
        self.frontier_names = {node.name for node in self.prefix if node.name == graph.output
                               or any(c not in self.prefix_names for c in consumers[node.name])}
        self.reverse_order = [node for node in reversed(list(graph))
                              if node.name not in self.prefix_names
                              or node.name in self.frontier_names]
        self.frontier: dict[str, Array] = {}
        # (`concatenate_columns`' scratch: the reverse sweep's indices need only be distinct)
        self._scratch = np.empty(max(self.sizes.values()), dtype=np.intp)
        self._sync(decide=True)
        self.cones = Cones(self.reach_nodes, list(self.gates),
                           {name: gate.spatial_inverse for name, gate in self.gates.items()
                            if isinstance(gate, _MaxPool)},
                           self.sparse, self.maps, self.shapes, self.positions)
        self.timetable = Timetable([gate.exit for gate in self.gates.values()])
        self.integral = {name: grad.copy() for name, grad in self.frontier.items()}

    @property
    def total_gradient(self) -> Array:
        """`int_0^1 g dt` at the input per target, ``[T, *input]``: the frontier's
        integrals pulled back through the gate-free maps between the input and the
        frontier (one dense pass, the targets as its batch)."""
        grads = {name: value.T.reshape((self.targets, *self.shapes[name]))
                 for name, value in self.integral.items()}
        shape = (self.targets, *self.start.shape[1:])
        for node in reversed(self.prefix):
            grad = grads.pop(node.name, None)
            if node.operator is None:
                return np.zeros(shape) if grad is None else grad.reshape(shape)
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
                    gate = self.gates[node.name] = _make_gate(node, in_shape, self.targets)
                gate.sync(values[node.inputs[0]].reshape(-1), operands[0].reshape(-1), t,
                          self.rtol, decide)
                local[node.name] = gate.local_map(in_shape, node.shape)
            dvalues[node.name] = local[node.name].apply(operands)
            if node.name in self.gates:
                self.gates[node.name].du_out = dvalues[node.name].reshape(-1).copy()
        # a frontier node keeps only the gradient its consumers past the frontier send it
        # (what its gate-free consumers send is added by `total_gradient`'s final pass)
        frontier = {name: np.zeros((self.sizes[name], self.targets))
                    for name in self.frontier_names}
        trace = Trace(self.graph, values, local)
        for k in range(self.targets):
            seed = self.seed[k:k + 1]
            if self.graph.output in frontier:
                frontier[self.graph.output][:, k] += seed.reshape(-1)
            for node, grad in backward(trace, seed):
                if node.name in self.gates:
                    self.gates[node.name].grad[:, k] = grad.reshape(-1)
                if node.name in self.prefix_names or not any(n in frontier
                                                             for n in node.inputs):
                    continue  # (only the frontier's consumers are pulled back a second time)
                for source, part in zip(node.inputs, local[node.name].vjp(grad)):
                    if source in frontier:
                        frontier[source][:, k] += part.reshape(-1)
        self.frontier = frontier

    # -- events ------------------------------------------------------------------------

    def next_time(self) -> float:
        return self.timetable.earliest()

    def run(self, max_pieces: int | None) -> None:
        since_sync = 0
        while self.next_time() < 1.0:
            if max_pieces is not None and self.pieces >= max_pieces:
                raise BBpError(f"exact integrated gradients: more than {max_pieces} linear "
                               f"pieces (t = {self.t:.6g} of 1 reached); raise max_pieces or "
                               "use a quadrature method")
            limit = None if max_pieces is None else max_pieces - self.pieces
            # a sync is due: one kink time per sweep, in time order, until none is pending
            # before `self.t` (processing out of order never ends at a consistent time)
            batch = self._next_batch(limit, since_sync >= self.resync_every)
            self._sweep(batch)
            self.t = max(self.t, float(batch.times[-1]))
            self.pieces += batch.times.size
            self.batches += 1
            since_sync += batch.times.size
            # resynchronise only at a consistent time: no event left before `self.t`
            if since_sync >= self.resync_every and self.next_time() >= self.t:
                old = self.frontier
                self._sync(decide=False)
                for name, grad in self.frontier.items():
                    self.integral[name] += (grad - old[name]) * (1.0 - self.t)
                since_sync = 0

    def _next_batch(self, limit: int | None, in_order: bool = False) -> _Batch:
        """The earliest ``batch_events`` (at most; with ``in_order`` one kink time) due
        elements, and of them the events this sweep processes: every one whose cone meets
        no earlier one's."""
        names = list(self.gates)
        minima = self.timetable.minima
        count = min(1 if in_order else self.batch_events, minima.size)
        horizon = min(float(np.partition(minima, count - 1)[count - 1]),
                      float(np.nextafter(1.0, 0.0)))  # (only times before 1 are events)
        gate_of, element, time = self.timetable.due(horizon)
        keep = time < 1.0
        order = np.argsort(time[keep], kind="stable")
        gate_of, element, time = gate_of[keep][order], element[keep][order], time[keep][order]
        group = np.cumsum(run_starts(time)) - 1  # (`time` is sorted)
        groups = int(group[-1]) + 1
        if limit is not None:
            groups = min(groups, limit)
        if time.size > count:  # whole groups (equal times) up to the count-th element
            groups = min(groups, int(group[count - 1]) + 1)
        chosen = group < groups
        gate_of, element, time, group = (gate_of[chosen], element[chosen], time[chosen],
                                         group[chosen])
        included = (group == 0 if groups == 1
                    else self.cones.independent(gate_of, element, group))
        labels = np.flatnonzero(included)
        elements = {}
        for k, name in enumerate(names):
            mine = labels[gate_of[labels] == k]
            if mine.size:
                elements[name] = np.sort(element[mine])
        single = group[labels[-1]] == 0  # one event time: no cones needed
        return _Batch(elements, time, distinct_sorted(time[labels]),
                      None if single else self.cones.labels, self.positions)

    def _sweep(self, batch: _Batch) -> None:
        """One forward sweep through the nodes the batch's changes reach, then one
        reverse sweep of the seeds."""
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
            elements = batch.elements.get(node.name, EMPTY_INDEX)
            if change is not None:
                gate.move(change, batch.time_at(node.inputs[0], change[0]))
                elements = union(elements, gate.touched(change[0]))
            if elements.size == 0:
                continue
            out_change, seed = gate.event(elements, batch.time_at(node.name, elements))
            if out_change[0].size:
                changes[node.name] = out_change
            if seed[0].size:
                seeds.setdefault(node.inputs[0], []).append(seed)
        if seeds:
            self._reverse(seeds)
        self.cones.clear()  # (also after a sweep of one time that chose among cones)

    def _apply(self, node: Node, incoming: Sequence[Sparse | None]) -> Sparse:
        sparse = self.sparse.get(node.name)
        if sparse is not None and incoming[0] is not None:
            return sparse.apply(incoming[0])
        shapes = [self.shapes[name] for name in node.inputs]
        return dense_apply(self.maps[node.name], incoming, shapes)

    def _reverse(self, seeds: dict[str, list[Sparse]]) -> None:
        pending = seeds
        targets = self.targets
        for node in self.reverse_order:
            parts = pending.pop(node.name, None)
            if parts is None:
                continue
            index, value = concatenate_columns(parts, self.sizes[node.name], self._scratch)
            # rows that are 0 in every column add nothing here or upstream (a gate that is
            # off, a pooled element that is not its window's winner): dropped
            nonzero = nonzero_rows(value)
            if nonzero.size < index.size:
                if nonzero.size == 0:
                    continue
                index, value = index[nonzero], value[nonzero]
            if node.name in self.frontier_names:
                self.frontier[node.name][index] += value[:, :targets]
                self.integral[node.name][index] += value[:, targets:]
                continue
            gate = self.gates.get(node.name)
            if gate is not None:
                back = [gate.pull_back(index, value)]
            elif node.name in self.sparse:
                back = [conv_vjp_columns(self.sparse[node.name], (index, value))]
            else:
                back = dense_vjp_columns(self.maps[node.name], (index, value), node.shape)
            for source, part in zip(node.inputs, back):
                if part[0].size:
                    pending.setdefault(source, []).append(part)


def _positions(shape: tuple[int, ...]) -> int:
    """The number of *positions* of a node of per-example ``shape``: the elements of
    one channel (all but the first axis; one position for a vector). The event walk's
    cones are sets of positions: an event reaches a position in every channel."""
    return int(np.prod(shape[1:])) if len(shape) > 1 else 1


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
