"""The canonical graph that the importer builds and the engine runs.

Every node produces one tensor `h_v` (per example; the engine adds a leading batch
axis) and is one of the kinds of docs/math.md: ``affine``, ``gate`` or ``route`` (§2,
piecewise linear), ``smooth`` or ``product`` (§7, the tangent model); the model input is
the single node of kind ``input``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .engine.operator import PIECEWISE_LINEAR_KINDS

if TYPE_CHECKING:
    from .engine.operator import Operator

INPUT_KIND = "input"


@dataclass(frozen=True)
class Node:
    """One canonical node.

    ``name``: unique name (the ONNX node's name where it had one); ``op``: the ONNX op
    type(s) it was made from, e.g. ``"Conv+BatchNormalization"``; ``operator``: the
    engine object that computes it (None for the input); ``inputs``: names of the
    nodes whose outputs are its structural inputs; ``shape``: per-example output
    shape; ``tensor``: the ONNX tensor whose value this node holds ("" for an
    intermediate node of an expanded op); ``context``: nodes whose values the operator
    also reads but that are not structural inputs (no gradient and no mass flow to
    them: the maximum a `ShiftedLog` adds back).
    """

    name: str
    op: str
    operator: Operator | None
    inputs: tuple[str, ...]
    shape: tuple[int, ...]
    tensor: str
    context: tuple[str, ...] = ()

    @property
    def kind(self) -> str:
        return INPUT_KIND if self.operator is None else self.operator.kind

    @property
    def piecewise_linear(self) -> bool:
        """Whether the node is of a kind of §2 (affine, gate, route, input): its local
        map holds on a whole region, not only at the point."""
        return self.kind in PIECEWISE_LINEAR_KINDS or self.operator is None

    @property
    def has_bias(self) -> bool:
        """Whether the node can have a non-zero local bias `b_v^x`."""
        return self.operator is not None and self.operator.has_bias


@dataclass
class Graph:
    """Nodes in topological order; the first is the input, ``output`` names the node
    whose value is explained (the logits, after any stripped head)."""

    nodes: dict[str, Node]
    input: str
    output: str
    stripped: tuple[str, ...] = ()
    aliases: dict[str, str] = field(default_factory=dict)

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes.values())

    def __len__(self) -> int:
        return len(self.nodes)

    def __getitem__(self, name: str) -> Node:
        return self.nodes[name]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.nodes[self.input].shape

    @property
    def output_shape(self) -> tuple[int, ...]:
        return self.nodes[self.output].shape

    @property
    def tangent_nodes(self) -> tuple[str, ...]:
        """Names of the nodes that are not piecewise linear (smooth gates, products):
        with any of them, `f(x) = W^x x + b^x` is the tangent model at `x` only."""
        return tuple(node.name for node in self if not node.piecewise_linear)

    @property
    def piecewise_linear(self) -> bool:
        """Whether `W^x` holds on a whole linear region (docs/math.md §1) rather than
        at `x` only (§7)."""
        return not self.tangent_nodes

    def consumers(self) -> Mapping[str, list[str]]:
        users: dict[str, list[str]] = {name: [] for name in self.nodes}
        for node in self:
            for source in node.inputs:
                users[source].append(node.name)
        return users

    def resolve(self, name: str) -> str | None:
        """The canonical name for a node name or an alias (an ONNX node folded into
        another, e.g. a BatchNormalization folded into its Conv)."""
        if name in self.nodes:
            return name
        return self.aliases.get(name)
