"""Conv (1-, 2-, 3-D, groups, any padding) and the zero Pad folded into it."""

from __future__ import annotations

import numpy as np

from ...engine.affine import Conv
from ..context import NodeContext, handler
from ..values import PendingPad, Value, Var
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
    window = read_window(ctx, spatial, kernel, extra)
    bias = None
    if ctx.has_input(2):
        b = ctx.float_const(2, "B")
        if b.shape != (weight.shape[0],):
            raise ctx.error(f"bias of shape {list(b.shape)} must have one entry per "
                            "output channel")
        bias = b.reshape(1, -1, *([1] * len(spatial)))
    operator = Conv(weight, bias, window, groups, channels)
    return [ctx.add(operator, [source], (weight.shape[0], *window.out_spatial))]


def _pad_arguments(ctx: NodeContext, rank: int) -> tuple[np.ndarray, float, str]:
    if ctx.opset < 11:
        pads = np.asarray(ctx.attr("pads", []), dtype=np.int64)
        value = float(ctx.attr("value", 0.0))
    else:
        pads = np.asarray(ctx.const(1, "pads"), dtype=np.int64)
        value = float(np.asarray(ctx.optional_const(2, "constant_value", 0.0)).reshape(()))
        if ctx.has_input(3):
            axes = [int(a) % rank for a in np.asarray(ctx.const(3, "axes")).ravel()]
            full = np.zeros(2 * rank, dtype=np.int64)
            half = len(axes)
            for i, axis in enumerate(axes):
                full[axis], full[rank + axis] = pads[i], pads[half + i]
            pads = full
    return pads, value, ctx.attr("mode", "constant")


@handler("Pad")
def pad(ctx: NodeContext) -> list[Value]:
    data = ctx.var(0)
    pads, value, mode = _pad_arguments(ctx, data.rank)
    if mode != "constant" or value != 0.0:
        raise ctx.error(f"only a constant-zero Pad before a Conv is supported "
                        f"(mode={mode!r}, value={value})")
    if pads.shape != (2 * data.rank,) or (pads < 0).any():
        raise ctx.error(f"pads {pads.tolist()} must be {2 * data.rank} non-negative numbers")
    begin, end = pads[: data.rank], pads[data.rank:]
    if begin[:2].any() or end[:2].any():
        raise ctx.error("only the spatial axes may be padded (it folds into a Conv)")
    if not pads.any():
        return [data]
    return [PendingPad(data, tuple(int(p) for p in begin[2:]), tuple(int(p) for p in end[2:]),
                       ctx.name)]
