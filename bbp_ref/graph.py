"""The canonical piecewise-linear graph that the importer builds and the engine runs.

Every node produces one tensor `h_v` (per example; the engine adds a leading batch
axis) and is one of the kinds of docs/math.md §2: ``affine``, ``gate`` or ``route``; the model
input is the single node of kind ``input``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

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
    shape; ``tensor``: the ONNX tensor whose value this node holds.
    """

    name: str
    op: str
    operator: Operator | None
    inputs: tuple[str, ...]
    shape: tuple[int, ...]
    tensor: str

    @property
    def kind(self) -> str:
        return INPUT_KIND if self.operator is None else self.operator.kind

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
