"""Pad of a data tensor, every mode (docs/math.md §7.3).

* A constant-zero Pad of the spatial axes whose every consumer is a Conv or an
  AveragePool folds into their padding (a `PendingPad`; §2, §7.4).
* Otherwise a constant Pad is an `Embed` node: the border elements are constants, local
  bias connected for the rules to the whole input (§7.2 decision 6).
* ``reflect``, ``edge`` and ``wrap`` are routes (`IndexRoute`): each border element
  copies an input element.

Negative pads crop. The batch axis cannot be padded or cropped.
"""

from __future__ import annotations

import numpy as np
import onnx

from ...engine.embed import Embed
from ...engine.routes import IndexRoute
from ..context import NodeContext, handler
from ..values import PendingPad, Value

MODES = ("constant", "reflect", "edge", "wrap")
WINDOW_READERS = ("Conv", "AveragePool")  # ops a zero Pad folds into


def _arguments(ctx: NodeContext, rank: int) -> tuple[np.ndarray, float, str]:
    """``pads`` as [begin_0, ..., begin_r-1, end_0, ..., end_r-1], the constant value
    and the mode, whatever the opset."""
    if ctx.opset < 11:
        pads = np.asarray(ctx.attr("pads", []), dtype=np.int64)
        value = float(ctx.attr("value", 0.0))
    else:
        pads = np.asarray(ctx.const(1, "pads"), dtype=np.int64).ravel()
        constant = np.asarray(ctx.optional_const(2, "constant_value", 0.0))
        if constant.size != 1:
            raise ctx.error("constant_value must be a scalar")
        value = float(constant.reshape(()))
        if ctx.has_input(3):
            axes = [int(a) for a in np.asarray(ctx.const(3, "axes")).ravel()]
            if any(not -rank <= a < rank for a in axes) or pads.size != 2 * len(axes):
                raise ctx.error(f"axes {axes} and pads {pads.tolist()} do not fit a tensor "
                                f"of rank {rank}")
            full = np.zeros(2 * rank, dtype=np.int64)
            for i, axis in enumerate(axes):
                full[axis % rank], full[rank + axis % rank] = pads[i], pads[len(axes) + i]
            pads = full
    mode = ctx.attr("mode", "constant")
    if mode not in MODES or (mode == "wrap" and ctx.opset < 19):
        raise ctx.error(f"unknown mode {mode!r}")
    if pads.shape != (2 * rank,):
        raise ctx.error(f"pads {pads.tolist()} must be {2 * rank} numbers")
    return pads, value, mode


def _folds_into_window(ctx: NodeContext, pads: np.ndarray, value: float, mode: str,
                       rank: int) -> bool:
    """Whether this Pad folds into the padding of the Convs and AveragePools reading it:
    a zero Pad of the spatial axes only, read by those only (as their input X). (An
    AveragePool counts the folded zeros in its divisor: LRN's exported form, §7.4.)"""
    if mode != "constant" or value != 0.0 or (pads < 0).any():
        return False
    if pads[:2].any() or pads[rank:rank + 2].any():
        return False
    tensor = ctx.node.output[0]
    builder = ctx.builder
    if tensor == builder.signature.explained:
        return False
    readers = [builder.model.graph.node[i] for i in sorted(builder.needed)
               if tensor in builder.model.graph.node[i].input]
    return bool(readers) and all(n.op_type in WINDOW_READERS
                                 and list(n.input).index(tensor) == 0
                                 and list(n.input).count(tensor) == 1
                                 and not _ceil_mode(n) for n in readers)


def _ceil_mode(node: onnx.NodeProto) -> bool:
    """A pool with ceil_mode drops a last window that starts in its end padding: after
    folding, the Pad's zeros would count as padding there, so such a pool is not folded."""
    return any(a.name == "ceil_mode" and a.i for a in node.attribute)


def pad_table(shape: tuple[int, ...], begin: np.ndarray, end: np.ndarray,
              mode: str) -> np.ndarray:
    """The flat input index each output element copies (-1: a constant border
    element), by padding ``np.arange`` in ``mode`` and cropping negative pads."""
    table = np.arange(int(np.prod(shape))).reshape(shape)
    widths = [(max(int(b), 0), max(int(e), 0)) for b, e in zip(begin, end)]
    if mode == "constant":
        table = np.pad(table, widths, constant_values=-1)
    else:
        table = np.pad(table, widths, mode=mode)  # type: ignore[call-overload]
    crop = tuple(slice(max(-int(b), 0), table.shape[a] - max(-int(e), 0))
                 for a, (b, e) in enumerate(zip(begin, end)))
    return table[crop]


@handler("Pad", merged_batch=True)
def pad(ctx: NodeContext) -> list[Value]:
    """With a batch merged into an axis (docs/math.md §7.5), the per-example axes are
    the ONNX ones and the merged axis cannot be padded or cropped (a pad there would
    reach the first or the last example only)."""
    data = ctx.var(0)
    rank = data.onnx_rank
    pads, value, mode = _arguments(ctx, rank)
    begin, end = pads[:rank], pads[rank:]
    batch = 0 if data.merged is None else data.merged.axis
    if begin[batch] or end[batch]:
        if data.merged is not None:
            raise ctx.error(f"padding or cropping ONNX axis {batch}, which holds the batch "
                            f"({data.where_batch}), would pad the first or the last "
                            "example only")
        raise ctx.error("padding or cropping the batch axis is not supported")
    if not pads.any():
        return [data]
    if data.merged is None and _folds_into_window(ctx, pads, value, mode, rank):
        return [PendingPad(data, tuple(int(p) for p in begin[2:]),
                           tuple(int(p) for p in end[2:]), ctx.name)]
    if data.merged is not None:  # the per-example axes are the ONNX ones
        begin, end = np.concatenate([[0], begin]), np.concatenate([[0], end])
    if mode == "reflect":
        short = [a for a in range(1, len(begin)) if max(begin[a], end[a]) > 0
                 and data.shape[a - 1] < 2]
        if short:
            raise ctx.error(f"mode 'reflect' needs at least 2 elements along padded axis "
                            f"{short[0]}")
    ctx.check_size([max(n + int(b) + int(e), 0)
                    for n, b, e in zip(data.shape, begin[1:], end[1:])])
    table = pad_table(data.shape, begin[1:], end[1:], mode)
    if table.size == 0:
        raise ctx.error(f"pads {pads.tolist()} crop the whole tensor")
    if mode != "constant" or not (table < 0).any():
        return [ctx.add(IndexRoute([data.shape], table), [data], table.shape)]
    bias = np.where(table < 0, value, 0.0)[None]
    return [ctx.add(Embed([data.shape], table, bias), [data], table.shape)]
