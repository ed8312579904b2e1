"""The budget of canonical nodes that unrolling may create (recurrent ops unrolled over
the sequence, Loop/Scan unrolled over their trip count; docs/math.md §7.7, §7.8).

A model that would unroll into more nodes is refused when it is loaded, naming the
node, before any of them is made."""

from __future__ import annotations

from .context import NodeContext

MAX_UNROLLED_NODES = 20_000
"""At most this many canonical nodes are made by unrolling, over the whole model."""


def reserve_unrolled_nodes(ctx: NodeContext, count: int, what: str) -> None:
    """Count ``count`` more unrolled nodes for ``ctx``'s node (``what`` says why in the
    error); raise `UnsupportedOpError` past `MAX_UNROLLED_NODES`."""
    builder = ctx.builder
    total = builder.unrolled_nodes + count
    if total > MAX_UNROLLED_NODES:
        raise ctx.error(f"unrolling {what} makes about {count} canonical nodes "
                        f"({total} in the model so far), more than the limit of "
                        f"{MAX_UNROLLED_NODES} unrolled nodes")
    builder.unrolled_nodes = total
