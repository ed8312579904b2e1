"""Resize (opsets 10-19) and Upsample (7-9) with constant scales or sizes (docs/math.md
§7.3). The interpolation is separable and, for constant scales, linear in the data: per
resized axis each output reads a few taps (`AxisTaps`). Nearest-neighbour is a route
(`IndexRoute`); linear and cubic are an affine `Interpolate` node.

Per axis, ``coordinate_transformation_mode`` maps an output index `y` to a source
coordinate `x`; the taps are the `n` input indices nearest to `x` (ties to the smaller),
clamped into the input (edge padding), with weights from the mode: nearest (`n = 2`,
one of them 1 by ``nearest_mode``), linear (`1 - r`, `r`), cubic (Keys' kernel with
``cubic_coeff_a``), widened by ``antialias`` when downscaling; ``exclude_outside`` zeroes
the taps outside the input and renormalises.
"""

from __future__ import annotations

import numpy as np

from ...engine.interpolation import AxisTaps, Interpolate
from ...engine.routes import IndexRoute
from ..context import NodeContext, handler
from ..values import Var

TRANSFORMS = ("half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners",
              "asymmetric", "tf_crop_and_resize", "tf_half_pixel_for_nn")
NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")


def source_coordinate(mode: str, y: np.ndarray, scale: float, size: int, out: int,
                      roi: tuple[float, float]) -> np.ndarray:
    """The source coordinate `x` of output indices ``y`` along one axis. The output
    length in align_corners, pytorch_half_pixel and tf_crop_and_resize is the integer
    ``out`` (as onnxruntime computes; onnx.reference takes `scale * size`)."""
    if mode == "align_corners":
        return np.zeros(out) if out == 1 else y * (size - 1) / (out - 1)
    if mode == "asymmetric":
        return y / scale
    if mode == "tf_half_pixel_for_nn":
        return (y + 0.5) / scale
    if mode == "pytorch_half_pixel":
        return np.zeros(out) if out == 1 else (y + 0.5) / scale - 0.5
    if mode == "half_pixel":
        return (y + 0.5) / scale - 0.5
    if mode == "half_pixel_symmetric":
        offset = size / 2 * (1 - out / (scale * size))
        return offset + (y + 0.5) / scale - 0.5
    start, end = roi  # tf_crop_and_resize
    if out == 1:
        return np.full(out, (end + start) * (size - 1) / 2)
    return y * (end - start) * (size - 1) / (out - 1) + start * (size - 1)


def _cubic(distance: np.ndarray, a: float) -> np.ndarray:
    """Keys' cubic convolution kernel."""
    d = np.abs(distance)
    near = ((a + 2) * d - (a + 3)) * d * d + 1
    far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    return np.where(d <= 1, near, np.where(d < 2, far, 0.0))


def axis_taps(axis: int, mode: str, transform: str, scale: float, size: int, out: int,
              roi: tuple[float, float], nearest_mode: str, cubic_a: float,
              antialias: bool, exclude_outside: bool) -> tuple[AxisTaps, np.ndarray | None]:
    """The taps of one axis, and (tf_crop_and_resize) which outputs are extrapolated."""
    y = np.arange(out, dtype=np.float64)
    x = source_coordinate(transform, y, scale, size, out, roi)
    extrapolated = ((x < 0) | (x > size - 1)) if transform == "tf_crop_and_resize" else None
    base = np.ceil(x).astype(np.int64) - 1  # the tap left of x; x itself if an integer
    ratio = x - base  # in (0, 1]
    if mode == "nearest":
        integer = ratio == 1.0
        up = {"round_prefer_floor": ratio > 0.5, "round_prefer_ceil": ratio >= 0.5,
              "floor": np.zeros(out, bool), "ceil": np.ones(out, bool)}[nearest_mode]
        index = base + (integer | up)
        weight = np.ones((out, 1))
        index = index[:, None]
    else:
        width = 1.0 if mode == "linear" else 2.0  # the kernel's half-width
        shrink = min(scale, 1.0) if antialias else 1.0
        start = int(np.floor(-width / shrink) + 1)
        offsets = np.arange(start, 2 - start)  # n = 2 - 2 start taps around x
        index = base[:, None] + offsets[None, :]
        distance = (offsets[None, :] - ratio[:, None]) * shrink
        if mode == "linear":
            weight = np.clip(1 - np.abs(distance), 0.0, 1.0)
        else:
            weight = _cubic(distance, cubic_a)
        if antialias and shrink < 1:
            weight = weight / weight.sum(axis=1, keepdims=True)
        if exclude_outside:
            weight = np.where((index < 0) | (index >= size), 0.0, weight)
            total = weight.sum(axis=1, keepdims=True)
            weight = weight / np.where(total == 0, 1.0, total)
    return AxisTaps(axis, np.clip(index, 0, size - 1), weight), extrapolated


def _is_identity(taps: AxisTaps, size: int) -> bool:
    out = taps.index.shape[0]
    if out != size:
        return False
    hit = (taps.index == np.arange(out)[:, None]) & (taps.weight != 0)
    return bool(((taps.weight == 0) | hit).all() and
                np.allclose((taps.weight * hit).sum(axis=1), 1.0, rtol=0, atol=0))


def _read_scales_sizes(ctx: NodeContext, rank: int) -> tuple[list[float], list[int] | None]:
    """Per ONNX axis: the scales, and the output sizes if given (else from scales)."""
    if ctx.op_type == "Upsample" and ctx.opset < 9:
        scales = ctx.attr("scales")
        return [float(s) for s in scales], None
    if ctx.op_type == "Upsample" or ctx.opset < 11:
        return [float(s) for s in np.asarray(ctx.const(1, "scales")).ravel()], None
    scales = ctx.optional_const(2, "scales")
    sizes = ctx.optional_const(3, "sizes")
    scales = None if scales is None or np.asarray(scales).size == 0 else scales
    sizes = None if sizes is None or np.asarray(sizes).size == 0 else sizes
    if (scales is None) == (sizes is None):
        raise ctx.error("exactly one of scales and sizes must be given")
    axes = ctx.attr("axes") if ctx.opset >= 18 else None
    axes = list(range(rank)) if axes is None else [int(a) % rank for a in axes]
    full_scales = [1.0] * rank
    if scales is not None:
        values = [float(s) for s in np.asarray(scales).ravel()]
        if len(values) != len(axes):
            raise ctx.error(f"{len(values)} scales for {len(axes)} axes")
        for a, s in zip(axes, values):
            full_scales[a] = s
        return full_scales, None
    lengths = [int(s) for s in np.asarray(sizes).ravel()]
    if len(lengths) != len(axes):
        raise ctx.error(f"{len(lengths)} sizes for {len(axes)} axes")
    return _sizes_to_scales(ctx, lengths, axes, rank)


def _sizes_to_scales(ctx: NodeContext, values: list[int], axes: list[int],
                     rank: int) -> tuple[list[float], list[int]]:
    shape = (1, *ctx.var(0).shape)
    sizes = list(shape)
    for a, n in zip(axes, values):
        sizes[a] = n
    sizes[0] = 1  # the batch entry: folded shape subgraphs give the batch as 1
    scales = [sizes[a] / shape[a] for a in range(rank)]
    policy = ctx.attr("keep_aspect_ratio_policy", "stretch") if ctx.opset >= 18 else "stretch"
    if policy != "stretch":
        if policy not in ("not_larger", "not_smaller"):
            raise ctx.error(f"unknown keep_aspect_ratio_policy {policy!r}")
        chosen = [scales[a] for a in axes if a != 0]
        scale = min(chosen) if policy == "not_larger" else max(chosen)
        scales = [scale if a in axes and a != 0 else 1.0 for a in range(rank)]
        sizes = [int(scale * shape[a] + 0.5) if a in axes and a != 0 else shape[a]
                 for a in range(rank)]
    return scales, sizes


def _resize(ctx: NodeContext) -> list[Var]:
    data = ctx.var(0, "X")
    rank = data.rank
    shape = (1, *data.shape)
    scales, sizes = _read_scales_sizes(ctx, rank)
    if len(scales) != rank:
        raise ctx.error(f"{len(scales)} scales for a tensor of rank {rank}")
    if scales[0] != 1.0:
        raise ctx.error("resizing the batch axis would mix examples")
    if any(s <= 0 for s in scales):
        raise ctx.error(f"scales {scales} must be positive")
    if sizes is None:
        sizes = [int(s * n) for s, n in zip(scales, shape)]
    if any(n < 1 for n in sizes):
        raise ctx.error(f"the output size {sizes} is empty")
    ctx.check_size(sizes[1:])
    mode = ctx.attr("mode", "nearest")
    if mode not in ("nearest", "linear", "cubic") or (mode == "cubic" and ctx.opset < 11):
        raise ctx.error(f"unknown mode {mode!r}")
    legacy = ctx.op_type == "Upsample" or ctx.opset < 11
    transform = "asymmetric" if legacy else ctx.attr("coordinate_transformation_mode",
                                                     "half_pixel")
    if transform not in TRANSFORMS:
        raise ctx.error(f"unknown coordinate_transformation_mode {transform!r}")
    nearest_mode = "floor" if legacy else ctx.attr("nearest_mode", "round_prefer_floor")
    if nearest_mode not in NEAREST_MODES:
        raise ctx.error(f"unknown nearest_mode {nearest_mode!r}")
    roi = _roi(ctx, rank, transform)
    antialias = bool(ctx.attr("antialias", 0)) if ctx.opset >= 18 else False
    taps, extrapolated = [], None
    for a in range(1, rank):
        axis, extra = axis_taps(a - 1, mode, transform, scales[a], shape[a], sizes[a],
                                roi[a], nearest_mode, float(ctx.attr("cubic_coeff_a", -0.75)),
                                antialias and mode != "nearest",
                                bool(ctx.attr("exclude_outside", 0)))
        if extra is not None and extra.any():
            mask = extra.reshape([1] * a + [-1] + [1] * (rank - a - 1))
            extrapolated = mask if extrapolated is None else extrapolated | mask
        if extra is None and _is_identity(axis, shape[a]):
            continue
        taps.append(axis)
    out_shape = tuple(sizes[1:])
    if mode == "nearest" and extrapolated is None:
        table = np.arange(int(np.prod(data.shape))).reshape(data.shape)
        for axis in taps:
            table = np.take(table, axis.index[:, 0], axis=axis.axis)
        if not taps:
            return [data]
        return [ctx.add(IndexRoute([data.shape], table), [data], out_shape)]
    if not taps and extrapolated is None:
        return [data]
    value = float(ctx.attr("extrapolation_value", 0.0))
    if extrapolated is not None:
        extrapolated = np.broadcast_to(extrapolated, (1, *out_shape))
    taps_per_output = int(np.prod([axis.weight.shape[1] for axis in taps]))
    ctx.check_size((taps_per_output, *out_shape), "the interpolation weights")
    operator = Interpolate.build(data.shape, taps, extrapolated, value)
    return [ctx.add(operator, [data], out_shape)]


def _roi(ctx: NodeContext, rank: int, transform: str) -> list[tuple[float, float]]:
    if transform != "tf_crop_and_resize":
        return [(0.0, 1.0)] * rank
    roi = np.asarray(ctx.const(1, "roi"), dtype=np.float64).ravel()
    axes = ctx.attr("axes") if ctx.opset >= 18 else None
    axes = list(range(rank)) if axes is None else [int(a) % rank for a in axes]
    if roi.size != 2 * len(axes):
        raise ctx.error(f"roi of {roi.size} numbers for {len(axes)} axes")
    full = [(0.0, 1.0)] * rank
    for i, a in enumerate(axes):
        full[a] = (float(roi[i]), float(roi[len(axes) + i]))
    if full[0] != (0.0, 1.0):
        raise ctx.error("a roi that crops the batch axis would mix examples")
    return full


@handler("Resize", since=10)
def resize(ctx: NodeContext) -> list[Var]:
    return _resize(ctx)


@handler("Upsample", since=7)
def upsample(ctx: NodeContext) -> list[Var]:
    return _resize(ctx)
