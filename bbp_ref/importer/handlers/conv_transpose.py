"""ConvTranspose (1-, 2-, 3-D; groups, strides, dilations, pads, auto_pad,
output_padding, output_shape): the adjoint of a Conv (docs/math.md §7.3)."""

from __future__ import annotations

from ...engine.conv_transpose import ConvTranspose
from ...engine.windows import Window
from ..context import NodeContext, handler
from ..values import Var


def _pads(ctx: NodeContext, natural: list[int], in_spatial: tuple[int, ...],
          strides: list[int]) -> tuple[list[int], list[int]]:
    """Begin and end pads of each spatial axis (as onnxruntime computes them)."""
    dims = len(natural)
    auto_pad = ctx.attr("auto_pad", "NOTSET")
    output_shape = ctx.attr("output_shape")
    if output_shape is not None:
        output_shape = [int(n) for n in output_shape][-dims:]
        if len(output_shape) != dims:
            raise ctx.error(f"output_shape {output_shape} must give {dims} spatial sizes")
        totals = [n - o for n, o in zip(natural, output_shape)]
        if min(totals) < 0:
            raise ctx.error(f"output_shape {output_shape} is larger than the natural output "
                            f"{natural}: not supported")
        upper = auto_pad == "SAME_UPPER"
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        totals = [max(0, n - i * s) for n, i, s in zip(natural, in_spatial, strides)]
        upper = auto_pad == "SAME_UPPER"
    elif auto_pad in ("NOTSET", "", "VALID"):
        pads = [int(p) for p in ctx.attr("pads", [0] * (2 * dims))]
        if auto_pad == "VALID":
            pads = [0] * (2 * dims)
        if len(pads) != 2 * dims or min(pads) < 0:
            raise ctx.error(f"pads {pads} must be {2 * dims} non-negative numbers")
        return pads[:dims], pads[dims:]
    else:
        raise ctx.error(f"unknown auto_pad {auto_pad!r}")
    if upper:  # the odd element at the end (onnxruntime's convention)
        return [t // 2 for t in totals], [t - t // 2 for t in totals]
    return [t - t // 2 for t in totals], [t // 2 for t in totals]


@handler("ConvTranspose")
def conv_transpose(ctx: NodeContext) -> list[Var]:
    data = ctx.var(0, "X")
    if len(data.shape) < 2:
        raise ctx.error(f"X must be [N, C, spatial...], got per-example {list(data.shape)}")
    weight = ctx.float_const(1, "W")
    groups = int(ctx.attr("group", 1))
    channels, in_spatial = data.shape[0], data.shape[1:]
    dims = len(in_spatial)
    if weight.ndim != data.rank or weight.shape[0] != channels or channels % groups:
        raise ctx.error(f"weight of shape {list(weight.shape)} with group={groups} does not "
                        f"fit an input with {channels} channels and {dims} spatial axes")
    kernel = [int(k) for k in ctx.attr("kernel_shape", weight.shape[2:])]
    if kernel != list(weight.shape[2:]):
        raise ctx.error(f"kernel_shape {kernel} differs from the weight's "
                        f"{list(weight.shape[2:])}")
    strides = [int(s) for s in ctx.attr("strides", [1] * dims)]
    dilations = [int(d) for d in ctx.attr("dilations", [1] * dims)]
    output_padding = [int(p) for p in ctx.attr("output_padding", [0] * dims)]
    if not len(strides) == len(dilations) == len(output_padding) == dims:
        raise ctx.error("strides, dilations and output_padding need one entry per spatial axis")
    if min(strides) < 1 or min(dilations) < 1:
        raise ctx.error("strides and dilations must be positive")
    if any(not 0 <= p < s for p, s in zip(output_padding, strides)):
        raise ctx.error(f"output_padding {output_padding} must be non-negative and below "
                        f"the strides {strides}")
    natural = [s * (i - 1) + p + (k - 1) * d + 1 for s, i, p, k, d in
               zip(strides, in_spatial, output_padding, kernel, dilations)]
    ctx.check_size([weight.shape[1] * groups, *natural])
    begin, end = _pads(ctx, natural, in_spatial, strides)
    out_spatial = tuple(n - b - e for n, b, e in zip(natural, begin, end))
    if min(out_spatial) < 1:
        raise ctx.error(f"the pads {begin + end} leave an empty output")
    # the adjoint Conv reads the output (its input) padded by `pads`; output_padding
    # only lengthens that input, so the Conv still has `in_spatial` outputs
    window = Window(out_spatial, tuple(kernel), tuple(strides), tuple(dilations),
                    tuple(begin), tuple(end))
    if window.out_spatial != tuple(in_spatial):
        raise ctx.error(f"internal geometry mismatch {window.out_spatial} != {in_spatial}")
    bias = None
    out_channels = weight.shape[1] * groups
    if ctx.has_input(2):
        b = ctx.float_const(2, "B")
        if b.shape != (out_channels,):
            raise ctx.error(f"bias of shape {list(b.shape)} must have one entry per "
                            "output channel")
        bias = b.reshape(1, -1, *([1] * dims))
    orphans = ConvTranspose.unreached(window, 1)
    operator = ConvTranspose(weight, bias, window, groups, channels, orphans)
    return [ctx.add(operator, [data], (out_channels, *out_spatial))]

