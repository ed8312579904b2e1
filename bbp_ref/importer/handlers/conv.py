"""Conv (1-, 2-, 3-D, groups, any padding), with a zero Pad before it folded into its
padding (`handlers.pad` decides when)."""

from __future__ import annotations

import numpy as np

from ...engine.affine import Conv
from ...engine.operator import AffineOperator
from ...engine.orphans import WithEmptyOutputs
from ..context import NodeContext, handler
from ..values import PendingPad, Var
from .window_attributes import read_window


@handler("Conv")
def conv(ctx: NodeContext) -> list[Var]:
    source = ctx.inputs[0]
    extra = None
    if isinstance(source, PendingPad):
        extra = (source.pads_begin, source.pads_end)
        source = source.source
    if not isinstance(source, Var):
        raise ctx.error("input 0 (X) must depend on the model input")
    if len(source.shape) < 2:
        raise ctx.error(f"X must be [N, C, spatial...], got per-example {list(source.shape)}")
    weight = ctx.float_const(1, "W")
    groups = int(ctx.attr("group", 1))
    channels, spatial = source.shape[0], source.shape[1:]
    if weight.ndim != source.rank or weight.shape[1] * groups != channels \
            or weight.shape[0] % groups:
        raise ctx.error(f"weight of shape {list(weight.shape)} with group={groups} does not "
                        f"fit an input with {channels} channels and {len(spatial)} spatial axes")
    kernel = tuple(ctx.attr("kernel_shape", weight.shape[2:]))
    if kernel != weight.shape[2:]:
        raise ctx.error(f"kernel_shape {list(kernel)} differs from the weight's "
                        f"{list(weight.shape[2:])}")
    window = read_window(ctx, spatial, kernel, extra, allow_empty=True)
    bias = None
    if ctx.has_input(2):
        b = ctx.float_const(2, "B")
        if b.shape != (weight.shape[0],):
            raise ctx.error(f"bias of shape {list(b.shape)} must have one entry per "
                            "output channel")
        bias = b.reshape(1, -1, *([1] * len(spatial)))
    operator: AffineOperator = Conv(weight, bias, window, groups, channels)
    empty = window.window_sum(np.ones((1, 1, *spatial))) == 0
    if empty.any():  # windows entirely in the padding: outputs that read no input
        operator = WithEmptyOutputs(operator, empty.astype(np.float64), [source.shape])
    return [ctx.add(operator, [source], (weight.shape[0], *window.out_spatial))]
