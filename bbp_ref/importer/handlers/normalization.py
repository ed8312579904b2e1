"""Normalization ops expanded into primitives (docs/math.md §7.4), in the form PyTorch's
exporters write when they decompose them, so that a fused op and its decomposed export
give the same `W^x`, `b^x` and `B(x)` (invariant 9). With `m` and `v` the mean and
variance over the normalized axes:

    LayerNormalization        (x - m) * Reciprocal(Sqrt(v + eps)) * scale + B
    RMSNormalization          x * Reciprocal(Sqrt(ReduceMean(x^2) + eps)) * scale
    InstanceNormalization     the same over the spatial axes, scale and B per channel
    GroupNormalization        the same over each group of channels (a Reshape to
                              [G, -1] and back), scale and bias per channel
    MeanVarianceNormalization (x - m) * Reciprocal(Sqrt(v) + 1e-9)
    LpNormalization           x * Reciprocal(Sqrt(ReduceSum(x^2)))  (p = 2)
                              x * Reciprocal(ReduceSum(Abs(x)))     (p = 1)
    LRN                       x * (bias + alpha/size * window_sum(x^2))^(-beta)

where `v = ReduceMean((x - m)^2)` (the exporters' form, not the function body's
`E[x^2] - E[x]^2`, which cancels catastrophically for rows far from 0).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ...engine.windows import Window
from ..compose import Composer
from ..context import NodeContext, handler, per_example_axis
from ..values import Var

# ONNX attributes and the function bodies' constants are float32: the defaults are too
LAYER_NORM_EPSILON = float(np.float32(1e-5))
MVN_EPSILON = float(np.float32(1e-9))  # the constant of MVN's function body
LRN_ALPHA = float(np.float32(1e-4))
MVN_DEFAULT_AXES = (0, 2, 3)


def _centered_and_variance(c: Composer, x: Var, axes: Sequence[int]) -> tuple[Var, Var, Var]:
    """`m = ReduceMean(x)`, `x - m` and `v = ReduceMean((x - m)^2)` over ``axes``."""
    mean = c.reduce(x, axes, "mean", mean=True)
    centered = c.subtract(x, mean, "centered")
    variance = c.reduce(c.power(centered, 2.0, "square"), axes, "variance", mean=True)
    return mean, centered, variance


def _standardize(c: Composer, x: Var, axes: Sequence[int], epsilon: float,
                 part: str | None) -> tuple[Var, Var, Var]:
    """`(x - m) * Reciprocal(Sqrt(v + eps))`; also returns `m` and the reciprocal (the
    `Mean` and `InvStdDev` outputs of LayerNormalization)."""
    mean, centered, variance = _centered_and_variance(c, x, axes)
    std = c.sqrt(c.affine(variance, 1.0, epsilon, "variance_epsilon"), "std")
    inverse = c.reciprocal(std, "reciprocal")
    return c.multiply(centered, inverse, part), mean, inverse


def _epsilon(ctx: NodeContext, default: float) -> float:
    epsilon = float(ctx.attr("epsilon", default))
    if not np.isfinite(epsilon) or epsilon < 0:
        raise ctx.error(f"epsilon must be finite and non-negative, got {epsilon}")
    return epsilon


def _per_channel(ctx: NodeContext, index: int, what: str, channels: int,
                 rank: int) -> np.ndarray:
    """A constant input of shape [channels], shaped to broadcast over a per-example
    tensor of ``rank`` axes with the channels first."""
    value = ctx.float_const(index, what)
    if value.size != channels or value.ndim != 1:
        raise ctx.error(f"{what} of shape {list(value.shape)} must have shape [{channels}]")
    return value.reshape((channels,) + (1,) * (rank - 1))


def _channels_first(ctx: NodeContext, x: Var) -> tuple[int, tuple[int, ...]]:
    if len(x.shape) < 2:
        raise ctx.error(f"the input must be [N, C, D1, ...], got per-example shape "
                        f"{list(x.shape)}")
    return x.shape[0], x.shape[1:]


@handler("LayerNormalization", since=17)
def layer_normalization(ctx: NodeContext) -> list[Var]:
    """Normalizes over the axes from ``axis`` on; outputs `Y`, `Mean`, `InvStdDev`. The
    engine computes in float64 whatever ``stash_type`` asks (it only sets a precision)."""
    c = Composer(ctx)
    x = ctx.var(0, "X")
    first = per_example_axis(ctx, int(ctx.attr("axis", -1)), x.rank)
    axes = tuple(range(first, len(x.shape)))
    scale = ctx.float_const(1, "Scale")
    bias = ctx.optional_const(2, "B")
    normalized, mean, inverse = _standardize(c, x, axes, _epsilon(ctx, LAYER_NORM_EPSILON),
                                             "normalized")
    y = c.affine(normalized, scale, None if bias is None else np.asarray(bias), None)
    return [y, mean, inverse]


@handler("RMSNormalization", since=23)
def rms_normalization(ctx: NodeContext) -> list[Var]:
    """`x * Reciprocal(Sqrt(ReduceMean(x^2) + eps)) * scale` over the axes from ``axis``
    on (what the dynamo exporter writes for nn.RMSNorm below opset 23)."""
    c = Composer(ctx)
    x = ctx.var(0, "X")
    first = per_example_axis(ctx, int(ctx.attr("axis", -1)), x.rank)
    axes = tuple(range(first, len(x.shape)))
    scale = ctx.float_const(1, "scale")
    mean_square = c.reduce(c.power(x, 2.0, "square"), axes, "mean_square", mean=True)
    shifted = c.affine(mean_square, 1.0, _epsilon(ctx, LAYER_NORM_EPSILON), "epsilon")
    inverse = c.reciprocal(c.sqrt(shifted, "rms"), "reciprocal")
    return [c.affine(c.multiply(x, inverse, "normalized"), scale, None, None)]


@handler("InstanceNormalization")
def instance_normalization(ctx: NodeContext) -> list[Var]:
    """Normalizes each channel over the spatial axes; `scale` and `B` per channel."""
    c = Composer(ctx)
    x = ctx.var(0, "input")
    channels, spatial = _channels_first(ctx, x)
    scale = _per_channel(ctx, 1, "scale", channels, len(x.shape))
    bias = _per_channel(ctx, 2, "B", channels, len(x.shape))
    axes = tuple(range(1, len(x.shape)))
    normalized, _, _ = _standardize(c, x, axes, _epsilon(ctx, LAYER_NORM_EPSILON),
                                    "normalized")
    return [c.affine(normalized, scale, bias, None)]


@handler("GroupNormalization", since=21)
def group_normalization(ctx: NodeContext) -> list[Var]:
    """Normalizes each group of ``num_groups`` channels over its channels and spatial
    axes, as `Reshape(x, [G, -1])`, the normalization over the last axis, and a Reshape
    back (PyTorch's exporters write the same with InstanceNormalization in the
    middle); then `scale` and `bias` per channel. (Opset 18's version, with `scale`
    and `bias` per group, is deprecated: the ONNX checker refuses it at load.)"""
    c = Composer(ctx)
    x = ctx.var(0, "X")
    channels, spatial = _channels_first(ctx, x)
    groups = int(ctx.attr("num_groups", 0))
    if groups < 1 or channels % groups:
        raise ctx.error(f"num_groups={groups} does not divide the {channels} channels")
    scale = _per_channel(ctx, 1, "scale", channels, len(x.shape))
    bias = _per_channel(ctx, 2, "bias", channels, len(x.shape))
    grouped = c.reshape(x, (groups, channels // groups * int(np.prod(spatial))), "grouped")
    normalized, _, _ = _standardize(c, grouped, (1,), _epsilon(ctx, LAYER_NORM_EPSILON),
                                    "normalized")
    return [c.affine(c.reshape(normalized, x.shape, "ungrouped"), scale, bias, None)]


@handler("MeanVarianceNormalization", since=9)
def mean_variance_normalization(ctx: NodeContext) -> list[Var]:
    """`(x - m) / (Sqrt(v) + 1e-9)` over ``axes`` (default [0, 2, 3], which includes
    the batch axis and is therefore refused: name the per-example axes)."""
    c = Composer(ctx)
    x = ctx.var(0, "X")
    axes = tuple(sorted({per_example_axis(ctx, int(a), x.rank)
                         for a in ctx.attr("axes", list(MVN_DEFAULT_AXES))}))
    _, centered, variance = _centered_and_variance(c, x, axes)
    std = c.affine(c.sqrt(variance, "std"), 1.0, MVN_EPSILON, "std_epsilon")
    return [c.divide(centered, std, None)]


@handler("LpNormalization")
def lp_normalization(ctx: NodeContext) -> list[Var]:
    """`x / ||x||_p` along ``axis`` (default -1), ``p`` 1 or 2 (default 2)."""
    c = Composer(ctx)
    x = ctx.var(0, "input")
    axis = per_example_axis(ctx, int(ctx.attr("axis", -1)), x.rank)
    p = int(ctx.attr("p", 2))
    if p == 2:
        sum_of_squares = c.reduce(c.power(x, 2.0, "square"), (axis,), "sum", mean=False)
        norm = c.sqrt(sum_of_squares, "norm")
    elif p == 1:
        norm = c.reduce(c.absolute(x, "abs"), (axis,), "norm", mean=False)
    else:
        raise ctx.error(f"p must be 1 or 2, got {p}")
    return [c.divide(x, norm, None)]


@handler("LRN")
def local_response_normalization(ctx: NodeContext) -> list[Var]:
    """`x * (bias + alpha/size * S)^(-beta)` with `S[c]` the sum of `x^2` over the
    channels `c - floor((size-1)/2)` to `c + ceil((size-1)/2)` that exist: an
    AveragePool over the channel axis (its window average counts the missing channels,
    divisor `size`), written as PyTorch's exporters do, on `x^2` reshaped to
    [1, C, prod(spatial)]."""
    c = Composer(ctx)
    x = ctx.var(0, "X")
    channels, spatial = _channels_first(ctx, x)
    size = int(ctx.attr("size", 0))
    if size < 1:
        raise ctx.error(f"size must be a positive integer, got {size}")
    alpha, beta = float(ctx.attr("alpha", LRN_ALPHA)), float(ctx.attr("beta", 0.75))
    bias = float(ctx.attr("bias", 1.0))
    if not all(np.isfinite(v) for v in (alpha, beta, bias)):
        raise ctx.error("alpha, beta and bias must be finite")
    rows = (1, channels, int(np.prod(spatial)))
    before = (size - 1) // 2
    window = Window(rows[1:], (size, 1), (1, 1), (1, 1), (before, 0), (size - 1 - before, 0))
    squares = c.reshape(c.power(x, 2.0, "square"), rows, "channel_rows")
    average = c.reshape(c.window_average(squares, window, size, "window_average"),
                        x.shape, "window_average_reshaped")
    base = c.affine(average, alpha, bias, "base")
    return [c.multiply(x, c.power(base, -beta, "power"), None)]
