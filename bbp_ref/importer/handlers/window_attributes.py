"""Reading the window attributes shared by Conv, MaxPool and AveragePool."""

from __future__ import annotations

import numpy as np

from ... import budget
from ...engine.windows import Window, auto_pads
from ..context import NodeContext


def read_window(ctx: NodeContext, in_spatial: tuple[int, ...], kernel: tuple[int, ...],
                extra_pads: tuple[tuple[int, ...], tuple[int, ...]] | None = None,
                ceil_mode: bool = False, allow_empty: bool = False) -> Window:
    """The window of a Conv or pool; with ``allow_empty`` (Conv) a window may lie
    entirely in the padding (its outputs read no input, docs/math.md §7.3)."""
    dims = len(kernel)
    strides = tuple(ctx.attr("strides", [1] * dims))
    dilations = tuple(ctx.attr("dilations", [1] * dims))
    auto_pad = ctx.attr("auto_pad", "NOTSET")
    if len(strides) != dims or len(dilations) != dims:
        raise ctx.error("strides and dilations must have one entry per spatial axis")
    if any(s < 1 for s in strides) or any(d < 1 for d in dilations):
        raise ctx.error("strides and dilations must be positive")
    extra_begin, extra_end = extra_pads or ((0,) * dims, (0,) * dims)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER", "VALID"):
        # VALID: only windows inside the input, whatever ceil_mode says (ONNX spec;
        # onnxruntime adds a window reaching past the end under ceil_mode)
        ceil_mode = ceil_mode and auto_pad != "VALID"
        # the op sees the input after a folded Pad: its auto pads follow the padded size
        padded = [n + b + e for n, b, e in zip(in_spatial, extra_begin, extra_end)]
        pairs = [auto_pads(auto_pad, n, k, s, d)
                 for n, k, s, d in zip(padded, kernel, strides, dilations)]
        begin = tuple(p[0] for p in pairs)
        end = tuple(p[1] for p in pairs)
    elif auto_pad in ("NOTSET", ""):
        pads = tuple(ctx.attr("pads", [0] * (2 * dims)))
        if len(pads) != 2 * dims or any(p < 0 for p in pads):
            raise ctx.error(f"pads {list(pads)} must be {2 * dims} non-negative numbers")
        begin, end = pads[:dims], pads[dims:]
    else:
        raise ctx.error(f"unknown auto_pad {auto_pad!r}")
    begin = tuple(a + b for a, b in zip(begin, extra_begin))
    end = tuple(a + b for a, b in zip(end, extra_end))
    window = Window(tuple(in_spatial), tuple(kernel), strides, dilations, tuple(begin),
                    tuple(end), ceil_mode)
    if any(n <= 0 for n in window.out_spatial):
        raise ctx.error(f"the window {list(kernel)} does not fit the input "
                        f"{list(in_spatial)} with these pads")
    _check_budget(ctx, window)
    if not allow_empty and not window.window_sum(np.ones(window.in_spatial)).all():
        raise ctx.error("some output windows lie entirely in the padding: those outputs "
                        "read no input, so their bias mass could not be attributed")
    return window


def _check_budget(ctx: NodeContext, window: Window) -> None:
    """The engine loops over the kernel's offsets and pads each input: both must be
    bounded (`budget`) before the first window sum below runs."""
    offsets = budget.count(window.kernel)
    if offsets > budget.MAX_WINDOW_OFFSETS:
        raise ctx.error(f"its kernel {list(window.kernel)} has {offsets} offsets, more than "
                        f"the limit of {budget.MAX_WINDOW_OFFSETS}")
    budget.check_elements(window.padded_spatial,
                          f"the padded input of node {ctx.name!r} ({ctx.op_type}), spatial "
                          f"shape {list(window.padded_spatial)}")
