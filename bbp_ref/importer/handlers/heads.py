"""Softmax and LogSoftmax: only allowed as the graph's final ops, where the model
signature strips them; anywhere else they are rejected."""

from __future__ import annotations

from ..context import NodeContext, handler
from ..values import Value


@handler("Softmax", "LogSoftmax")
def output_head(ctx: NodeContext) -> list[Value]:
    raise ctx.error("it is not piecewise linear; it is only supported as the graph's last "
                    "op, where its input (the logits) is explained instead")
