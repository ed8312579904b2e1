"""Which of a sweep's candidate kinks the exact-IG event walk (`event_walk`) processes
together (docs/math.md §6).

The *cone* of a kink is the set of positions (`event_walk._positions`: the elements of
one channel) its change can reach in the nodes that reach a gate, whatever the gates'
states: a conv window's fan-out per layer, a MaxPool's window, a dense map's non-zero
columns. A kink waits for a later sweep if its cone meets the cone of a kink of an
earlier time among the candidates (processed or waiting itself: a waiting kink is
processed later at its earlier time, and must find its cone untouched).

A cone depends only on the gate and position of its kink, so it is computed once
(`_propagate`, through the nodes in order) and kept, as sorted *global* positions (each
node's positions numbered after the previous node's), up to `CACHE_LIMIT` entries in
all. The cones of a sweep's candidates are then gathered, and their meetings found with
one sort of all of them. A cone that reaches a dense map too large to follow
(`DENSE_REACH_LIMIT`) reaches everything after it: such a kink is processed only as the
earliest of its sweep, alone with the kinks of its own time; its cone is not kept.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..engine.operator import Array, LocalMap
from ..engine.sparse import EMPTY_INDEX, Inverse, Sparse, SparseConv, distinct, ranges
from ..graph import Node


class Cones:
    """The cones of the kinks of the gates ``gates`` (node names, in graph order;
    ``pools``: the spatial `Inverse` of each MaxPool among them) through ``reach_nodes``
    (the nodes that reach a gate, in graph order), and which node position the kink of
    each processed candidate reaches (``labels``: one array per node, -1 where none
    does, reset by `clear`)."""

    CACHE_LIMIT = 1 << 22  # cone entries kept (int64): 32 MiB
    DENSE_REACH_LIMIT = 1 << 20  # elements of a dense reach computation (else: global)

    def __init__(self, reach_nodes: Sequence[Node], gates: Sequence[str],
                 pools: Mapping[str, Inverse], sparse: Mapping[str, SparseConv],
                 maps: Mapping[str, LocalMap], shapes: Mapping[str, tuple[int, ...]],
                 positions: Mapping[str, int]) -> None:
        self.reach_nodes = reach_nodes
        self.gates = list(gates)
        self.pools = pools
        self.sparse = sparse
        self.maps = maps
        self.shapes = shapes
        self.positions = positions
        self.sizes = {name: int(np.prod(shape)) for name, shape in shapes.items()}
        sizes = [positions[node.name] for node in reach_nodes]
        self.offsets = dict(zip((node.name for node in reach_nodes),
                                np.cumsum([0, *sizes[:-1]]).tolist()))
        self.space = np.full(sum(sizes), -1, dtype=np.int64)  # every node's labels
        self.labels = {node.name: self.space[self.offsets[node.name]:][:positions[node.name]]
                       for node in reach_nodes}
        self.recorded = EMPTY_INDEX
        self.gate_offsets = np.cumsum([0, *(positions[name] for name in self.gates)])
        self.gate_positions = self.gate_offsets[1:] - self.gate_offsets[:-1]
        # the kept cones, one after another, and where each (gate, position)'s starts
        # (-1: not computed yet) and how long it is; ``unkept``: never kept (it reaches
        # everything, or the cache was full)
        self.kept = np.empty(1 << 12, dtype=np.int64)
        self.used = 0  # (entries of ``kept`` in use)
        self.start = np.full(int(self.gate_offsets[-1]), -1, dtype=np.int64)
        self.length = np.zeros(self.start.size, dtype=np.int64)
        self.unkept = np.zeros(self.start.size, dtype=bool)
        self.random = np.random.default_rng(0)

    def independent(self, gate_of: Array, element: Array, group: Array) -> Array:
        """Which candidates to process now: candidate ``i`` is element ``element[i]`` of
        gate ``gate_of[i]`` (a position in ``gates``), of time group ``group[i]``
        (sorted); a candidate waits if its cone meets the cone of an earlier group, and
        so does its whole group. The cones of those kept are recorded in ``labels``."""
        count = element.size
        where, label, global_labels = self._cones(gate_of, element)
        key = np.sort(where * count + label)  # (pairs are distinct: one cone per label)
        where, label = np.divmod(key, count)
        time_group = group[label]
        # sorted by position, then label (so then time): a time later than the one
        # before it at the same position meets the cone of an earlier time
        later = (where[1:] == where[:-1]) & (time_group[1:] > time_group[:-1])
        waiting = np.zeros(int(group[-1]) + 1, dtype=bool)
        waiting[time_group[1:][later]] = True
        if global_labels.size:  # reaches everything: processed only as the earliest
            first = int(group[global_labels].min())
            waiting[first + (1 if first == 0 else 0):] = True
        included = ~waiting[group]
        kept = included[label]
        self.recorded = where[kept]
        self.space[self.recorded] = label[kept]
        return included

    def clear(self) -> None:
        """Forget the positions recorded by the last `independent`."""
        self.space[self.recorded] = -1
        self.recorded = EMPTY_INDEX

    def _cones(self, gate_of: Array, element: Array) -> tuple[Array, Array, Array]:
        """``(global position, candidate)`` pairs of every candidate's cone, and the
        candidates whose cone reaches everything after a dense map (their pairs up to
        it are included): from the kept cones when all of them are kept, else carried
        through the nodes."""
        position = element % self.gate_positions[gate_of]
        cone = self.gate_offsets[gate_of] + position  # (every gate's positions, numbered)
        unknown = (self.start[cone] < 0) & ~self.unkept[cone]
        if unknown.any():  # each new cone once, kept if it can be
            cones, first = np.unique(cone[unknown], return_index=True)
            owners = np.flatnonzero(unknown)[first]
            where, label, global_owners = self._propagate(gate_of[owners], position[owners])
            self.unkept[cones[global_owners]] = True
            local = ~np.isin(label, global_owners)
            self._keep(cones, where[local], label[local], global_owners)
        if (self.start[cone] >= 0).all():
            owner, entry = ranges(self.start[cone], self.length[cone])
            return self.kept[entry], owner, EMPTY_INDEX
        return self._propagate(gate_of, position)

    def _keep(self, cones: Array, where: Array, label: Array, skip: Array) -> None:
        """Keep the cones ``cones`` (gate positions, numbered), given as pairs ``(global
        position, k)`` for cone ``cones[k]`` (but those ``skip``), if the cache has room
        for them all; otherwise they are never kept."""
        new = np.ones(cones.size, dtype=bool)
        new[skip] = False
        if self.used + where.size > self.CACHE_LIMIT:
            self.unkept[cones[new]] = True
            return
        order = np.lexsort((where, label))
        lengths = np.bincount(label, minlength=cones.size)
        self.start[cones[new]] = (self.used + np.cumsum(lengths) - lengths)[new]
        self.length[cones[new]] = lengths[new]
        end = self.used + where.size
        if end > self.kept.size:  # (grown by doubling: each entry copied O(1) times)
            grown = np.empty(min(max(2 * self.kept.size, end), self.CACHE_LIMIT),
                             dtype=np.int64)
            grown[:self.used] = self.kept[:self.used]
            self.kept = grown
        self.kept[self.used:end] = where[order]
        self.used = end

    def _propagate(self, gate_of: Array, position: Array) -> tuple[Array, Array, Array]:
        """The cones of kinks at positions ``position`` of gates ``gate_of``, carried
        through the nodes in order: ``(global position, kink)`` pairs, distinct, and the
        kinks whose cone reaches a dense map too large to follow (their pairs only up
        to it)."""
        count = position.size
        cones: dict[str, Sparse] = {}
        global_labels: list[Array] = []
        for node in self.reach_nodes:
            name = node.name
            incoming = [cones.get(source) for source in node.inputs]
            if name in self.gates:
                mine = np.flatnonzero(gate_of == self.gates.index(name))
                parts = []
                if incoming[0] is not None:
                    index, label = incoming[0]
                    inverse = self.pools.get(name)
                    if inverse is not None:
                        owner, window, _ = inverse.pairs(index)
                        parts.append((window, label[owner]))
                    elif mine.size == 0:  # the cone of its input
                        cones[name] = incoming[0]
                        continue
                    else:
                        parts.append((index, label))
                if mine.size:
                    parts.append((position[mine], mine))
                if not parts:
                    continue
                index = np.concatenate([p[0] for p in parts])
                label = np.concatenate([p[1] for p in parts])
            elif any(c is not None for c in incoming):
                reached = self._reach(node, incoming, count)
                if reached is None:  # too large to follow: reaches everything after it
                    global_labels.extend(c[1] for c in incoming if c is not None)
                    continue
                index, label = reached
            else:
                continue
            if index.size:
                key = distinct(index * count + label)
                cones[name] = (key // count, key % count)
        reaching_all = distinct(np.concatenate([EMPTY_INDEX, *global_labels]))
        if not cones:
            return EMPTY_INDEX, EMPTY_INDEX, reaching_all
        where = np.concatenate([self.offsets[name] + index for name, (index, _) in cones.items()])
        label = np.concatenate([label for _, label in cones.values()])
        return where, label, reaching_all

    def _reach(self, node: Node, incoming: Sequence[Sparse | None],
               count: int) -> Sparse | None:
        """``(position, kink)`` pairs of the cones through a non-gate node; None if the
        map is dense and too large to follow."""
        sparse = self.sparse.get(node.name)
        if sparse is not None and incoming[0] is not None:
            entry, output, _ = sparse.inverse.pairs(incoming[0][0])
            return output, incoming[0][1][entry]
        present = distinct(np.concatenate([c[1] for c in incoming if c is not None]))
        size = max(self.sizes[name] for name in (*node.inputs, node.name))
        if present.size * size > self.DENSE_REACH_LIMIT:
            return None
        # one row per kink, every channel of its positions: positive random values, so
        # an output the kink can reach is non-zero (an exact cancellation of random
        # values has probability zero)
        row = np.searchsorted(present, np.arange(count))
        operands = []
        for source, cone in zip(node.inputs, incoming):
            dense = np.zeros((present.size, self.sizes[source]))
            if cone is not None:
                spread = dense.reshape(present.size, -1, self.positions[source])
                spread[row[cone[1]], :, cone[0]] = (
                    0.5 + self.random.random((cone[0].size, spread.shape[1])))
            operands.append(dense.reshape((present.size, *self.shapes[source])))
        out = self.maps[node.name].apply(operands).reshape(
            present.size, -1, self.positions[node.name])
        rows, index = np.nonzero(np.any(out != 0, axis=1))
        return index, present[rows]
