"""Affine operators `h = A(u) + b` (docs/math.md §2), each in operator form with its own
vector-Jacobian product; no dense matrix is built for any of them."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from .operator import AffineOperator, Array, CoefficientMap, reduce_to_shape, sum_parts
from .windows import Window


def _batched(shape: tuple[int, ...], n: int) -> tuple[int, ...]:
    return (n, *shape)


class ManyAtOnce(AffineOperator):
    """An operator computed by its `linear_many` and `vjp_sum` (which share work between
    copies with other coefficients): its own forward and vector-Jacobian product are those
    with itself alone. Put it before the operator's class in the bases."""

    def linear(self, operands: Sequence[Array]) -> Array:
        return self.linear_many([self], operands)[0]

    def vjp(self, grad: Array) -> list[Array]:
        return self.vjp_sum([self], [grad])


class MatMul(AffineOperator):
    """`h = u @ W + b` (``side="right"``, Gemm and torch Linear) or `h = W @ u + b`
    (``side="left"``), NumPy matmul semantics on the per-example tensor."""

    def __init__(self, weight: Array, bias: Array | None, operand_shape: tuple[int, ...],
                 side: str = "right") -> None:
        self.weight = weight
        self.bias = bias
        self.operand_shape = operand_shape
        self.side = side
        self.coefficients = (weight,)

    def linear(self, operands: Sequence[Array]) -> Array:
        (u,) = operands
        return u @ self.weight if self.side == "right" else self.weight @ u

    def vjp(self, grad: Array) -> list[Array]:
        w_t = np.swapaxes(self.weight, -1, -2)
        g = grad @ w_t if self.side == "right" else w_t @ grad
        return [reduce_to_shape(g, _batched(self.operand_shape, grad.shape[0]))]

    def with_coefficients(self, coefficients: tuple[Array, ...]) -> MatMul:
        return MatMul(coefficients[0], None, self.operand_shape, self.side)

    def map_coefficients(self, fn: CoefficientMap) -> AffineOperator:
        """A large matrix's mapped copy (the rules' `|W|`, `W+`, `W-`) is not built: a
        `MappedMatMul` maps it block by block of rows as it multiplies."""
        if np.ndim(self.weight) == 2 and np.size(self.weight) >= MAPPED_BLOCKWISE:
            return MappedMatMul(self.weight, fn, self.operand_shape, self.side)
        return super().map_coefficients(fn)


# A matrix of at least this many elements is mapped block by block (`MappedMatMul`), each
# block holding at most MAPPED_BLOCK elements (float64: 2 MiB, so it stays in cache).
MAPPED_BLOCKWISE = 2**20
MAPPED_BLOCK = 2**18


class MappedMatMul(ManyAtOnce, MatMul):
    """`h = u @ fn(W)` (or `fn(W) @ u`) for an element-wise coefficient map ``fn``, with
    `fn(W)` applied to one block of rows of `W` at a time and never held whole: VGG-16's
    first Gemm has 102 M weights, whose `W+` and `W-` copies would take 1.6 GB and most of
    the rule's time, spent in fresh memory. The products are summed block after block (the
    same sums as `MatMul`'s in another order). ``coefficients`` builds `fn(W)` whole; only
    the checks of a user rule's mapped coefficients read it."""

    def __init__(self, source: Array, fn: CoefficientMap, operand_shape: tuple[int, ...],
                 side: str) -> None:
        self.source = source
        self.fn = fn
        self.bias = None
        self.operand_shape = operand_shape
        self.side = side

    @property
    def weight(self) -> Array:  # type: ignore[override]
        return np.asarray(self.fn(self.source))

    @property
    def coefficients(self) -> tuple[Array, ...]:  # type: ignore[override]
        return (self.weight,)

    def _blocks(self) -> list[slice]:
        """Row blocks of `W` (`[K, M]`, rows `K` for ``side="right"``; `[M, K]`, rows `M`
        for ``side="left"``)."""
        rows, columns = self.source.shape
        step = max(1, MAPPED_BLOCK // max(columns, 1))
        return [slice(start, min(start + step, rows)) for start in range(0, rows, step)]

    def linear_many(self, operators: Sequence[AffineOperator],
                    operands: Sequence[Array]) -> list[Array]:
        """Each map's product, every block of `W` read once for all of them."""
        fns = _mapped_fns(self, operators)
        if fns is None:
            return super().linear_many(operators, operands)
        (u,) = operands
        rows = self.source.shape[0]
        outs: list[Array] = []
        for i, block in enumerate(self._blocks()):
            source = self.source[block]
            for j, fn in enumerate(fns):
                mapped = np.asarray(fn(source), dtype=float)
                if self.side == "right":  # u @ W: sum over W's rows
                    part = u[..., block] @ mapped
                    if i == 0:
                        outs.append(part)
                    else:
                        outs[j] += part
                else:  # W @ u: W's rows are output rows
                    if i == 0:
                        outs.append(np.empty((*u.shape[:-2], rows, u.shape[-1])))
                    outs[j][..., block, :] = mapped @ u
        return outs

    def vjp_sum(self, operators: Sequence[AffineOperator],
                grads: Sequence[Array]) -> list[Array]:
        """`sum_i fn_i(W)^T g_i`, every block of `W` read once for all maps."""
        fns = _mapped_fns(self, operators)
        if fns is None:
            return super().vjp_sum(operators, grads)
        rows = self.source.shape[0]
        total: Array | None = None
        for block in self._blocks():
            source = self.source[block]
            for fn, grad in zip(fns, grads):
                mapped = np.asarray(fn(source), dtype=float)
                if self.side == "right":  # g @ W^T: W's rows are the operand's last axis
                    if total is None:
                        total = np.zeros((*grad.shape[:-1], rows))
                    total[..., block] += grad @ mapped.T
                else:  # W^T @ g: sum over W's rows
                    part = mapped.T @ grad[..., block, :]
                    if total is None:
                        total = part
                    else:
                        total += part
        assert total is not None
        return [reduce_to_shape(total, _batched(self.operand_shape, grads[0].shape[0]))]


def _mapped_fns(first: MappedMatMul,
                operators: Sequence[AffineOperator]) -> list[CoefficientMap] | None:
    """The maps of ``operators`` if they all map ``first``'s matrix, else None."""
    if all(isinstance(op, MappedMatMul) and op.source is first.source and op.side == first.side
           for op in operators):
        return [op.fn for op in operators]  # type: ignore[attr-defined]
    return None


# A window op's batch is processed in groups of examples whose output holds at most this
# many elements: each kernel offset adds into the whole output, which should stay in cache
# (a larger batch then costs per example what one example does, no more).
GROUP_ELEMENTS = 2**19


def _in_example_groups(fn: Callable[[Array], Array], x: Array, per_example: int) -> Array:
    """``fn(x)`` computed on consecutive groups of examples of ``x`` (see GROUP_ELEMENTS)."""
    n = x.shape[0]
    size = max(1, GROUP_ELEMENTS // max(per_example, 1))
    if n <= size:
        return fn(x)
    return np.concatenate([fn(x[start:start + size]) for start in range(0, n, size)])


class Conv(AffineOperator):
    """N-D grouped convolution `h = W * u + b` (ONNX Conv; cross-correlation), computed
    as one matrix product per kernel offset."""

    def __init__(self, weight: Array, bias: Array | None, window: Window, groups: int,
                 in_channels: int) -> None:
        self.weight = weight
        self.bias = bias
        self.window = window
        self.groups = groups
        self.in_channels = in_channels
        self.coefficients = (weight,)

    def _grouped_kernel(self) -> Array:
        out_channels = self.weight.shape[0]
        g = self.groups
        return self.weight.reshape(g, out_channels // g, self.in_channels // g, -1)

    def linear(self, operands: Sequence[Array]) -> Array:
        (u,) = operands
        return _in_example_groups(self._linear_block, u, self._output_size())

    def vjp(self, grad: Array) -> list[Array]:
        return [_in_example_groups(self._vjp_block, grad, self._output_size())]

    def _output_size(self) -> int:
        """Elements of one example's output."""
        return self.weight.shape[0] * int(np.prod(self.window.out_spatial))

    def _linear_block(self, u: Array) -> Array:
        n = u.shape[0]
        g, out_per_group, in_per_group, _ = (kernel := self._grouped_kernel()).shape
        out_spatial = self.window.out_spatial
        positions = n * int(np.prod(out_spatial))
        # channels first, batch second: each slice reshapes to [G, Cg, N*S] in one copy
        padded = np.ascontiguousarray(np.moveaxis(self.window.pad(u), 1, 0))
        out = np.zeros((g, out_per_group, positions))
        for k, offset in enumerate(self.window.offsets()):
            window = padded[(slice(None), slice(None)) + self.window.slices(offset)]
            columns = window.reshape(g, in_per_group, positions)
            weights = kernel[:, :, :, k]
            if in_per_group == 1:
                out += weights * columns
            else:
                out += weights @ columns
        out = out.reshape(g * out_per_group, n, *out_spatial)
        return np.moveaxis(out, 0, 1)

    def _vjp_block(self, grad: Array) -> Array:
        n = grad.shape[0]
        kernel = self._grouped_kernel()
        g, out_per_group, in_per_group, _ = kernel.shape
        positions = n * int(np.prod(self.window.out_spatial))
        grad_columns = np.moveaxis(grad, 1, 0).reshape(g, out_per_group, positions)
        padded = np.zeros((self.in_channels, n) + self.window.padded_spatial)
        for k, offset in enumerate(self.window.offsets()):
            weights_t = np.swapaxes(kernel[:, :, :, k], 1, 2)  # [G, Cg, Og]
            if in_per_group == 1 and out_per_group == 1:
                part = weights_t * grad_columns
            else:
                part = weights_t @ grad_columns
            target = padded[(slice(None), slice(None)) + self.window.slices(offset)]
            target += part.reshape(target.shape)
        return np.moveaxis(self.window.crop(padded), 0, 1)

    def gathered(self) -> GatheredConv:
        """This convolution, bias included, computed by `GatheredConv` (for the reverse
        pass of the bias backpropagation, `attribution.bbp`)."""
        return GatheredConv(self.weight, self.bias, self.window, self.groups, self.in_channels)

    def with_coefficients(self, coefficients: tuple[Array, ...]) -> GatheredConv:
        """The attribution rules' copy, of a `Conv` or a `GatheredConv`: a `GatheredConv`
        (the same map, summed in another order; the node's own forward and vector-Jacobian
        product keep this class's)."""
        return GatheredConv(coefficients[0], None, self.window, self.groups, self.in_channels)


# A gathered convolution's window matrix holds at most this many elements (float64: 4 MiB),
# or MIN_POSITIONS output positions if that is more (the matrix products stay wide; VGG-16's
# 512-channel layers: 18 MiB): a batch, or one large example, is processed in slices of
# examples or of output rows. Chosen by timing VGG-16's and ResNet's 3x3 layers (the
# products with 512 columns are 5-8 % faster than with 256, docs/math.md §8).
COLUMN_ELEMENTS = 2**19
MIN_POSITIONS = 512


class GatheredConv(ManyAtOnce, Conv):
    """The convolution of `Conv` computed with gathered windows: for a slice of output
    positions, the windows are copied into one matrix `U` [G, Cg K, P] (channel-major,
    kernel offset second) and `h = W U` is one matrix product [Og, Cg K] x [Cg K, P] per
    group; the vector-Jacobian product is `W^T g` [Cg K, P], added back window by window.
    No matrix of size output x input is built: the slices are bounded by COLUMN_ELEMENTS
    (or MIN_POSITIONS output positions).

    It sums each output over `(c, k)` in one product where `Conv` adds one product per
    kernel offset `k`: the same numbers up to rounding; about three times faster for few
    input channels (an image's three) and a third faster for small images (ResNet's 7x7
    stage), the same elsewhere. The attribution rules use it (`with_coefficients`) and so
    does the reverse pass of the bias backpropagation (`Conv.gathered`). A node's own
    forward and vector-Jacobian product (the trace, `model.forward`, the integrated-gradients
    walks) keep `Conv`: the exact integrated-gradients walk finds its kinks from forward
    values, and another rounding moves near-tie kinks (docs/math.md §8)."""

    def linear_many(self, operators: Sequence[AffineOperator],
                    operands: Sequence[Array]) -> list[Array]:
        """Each convolution's output, the windows of ``operands`` gathered once per slice
        of positions for all of them (``operators``: this convolution with other kernels)."""
        convs = _gathered(self, operators)
        if convs is None or self._depthwise():
            return [Conv.linear(op, operands) if isinstance(op, GatheredConv) else
                    op.linear(operands) for op in operators]
        (u,) = operands
        if self._pointwise():
            columns = self._pointwise_columns(u)  # [N, G, Cg, P]
            shape = (u.shape[0], self.weight.shape[0], *self.window.out_spatial)
            return [(conv._kernel_matrix() @ columns).reshape(shape) for conv in convs]
        n = u.shape[0]
        g, out_per_group = self._grouped_kernel().shape[:2]
        weights = [conv._kernel_matrix() for conv in convs]
        padded = np.ascontiguousarray(np.moveaxis(self.window.pad(u), 1, 0))  # [C, N, *P]
        outs = [np.empty((g, out_per_group, n, *self.window.out_spatial)) for _ in convs]
        for examples, rows in self._slices(n):
            columns = self._gather(padded, examples, rows)  # [G, Cg K, P]
            for out, kernel in zip(outs, weights):
                block = out[:, :, examples][(slice(None),) * 3 + (rows,)]
                block[...] = (kernel @ columns).reshape(block.shape)
        return [np.moveaxis(out.reshape(g * out_per_group, n, *self.window.out_spatial), 0, 1)
                for out in outs]

    def vjp_sum(self, operators: Sequence[AffineOperator],
                grads: Sequence[Array]) -> list[Array]:
        """`sum_i W_i^T g_i`: per slice of positions the products are summed as columns
        [G, Cg K, P] and added back window by window once."""
        convs = _gathered(self, operators)
        if convs is None or self._depthwise():
            return sum_parts(Conv.vjp(op, grad) if isinstance(op, GatheredConv) else
                             op.vjp(grad) for op, grad in zip(operators, grads))
        n = grads[0].shape[0]
        g, out_per_group = self._grouped_kernel().shape[:2]
        transposed = [np.swapaxes(conv._kernel_matrix(), 1, 2) for conv in convs]
        if self._pointwise():
            (summed,) = sum_parts([kernel_t @ grad.reshape(n, g, out_per_group, -1)]
                                  for kernel_t, grad in zip(transposed, grads))
            return [self._pointwise_scatter(summed, n)]
        spatial = self.window.out_spatial
        grads_cf = [np.moveaxis(grad, 1, 0).reshape(g, out_per_group, n, *spatial)
                    for grad in grads]
        padded = np.zeros((self.in_channels, n) + self.window.padded_spatial)
        for examples, rows in self._slices(n):
            columns = None
            for kernel_t, grad_cf in zip(transposed, grads_cf):
                block = grad_cf[:, :, examples][(slice(None),) * 3 + (rows,)]
                part = kernel_t @ block.reshape(g, out_per_group, -1)  # [G, Cg K, P]
                if columns is None:
                    columns = part
                else:
                    columns += part
            assert columns is not None
            self._scatter(padded, columns, examples, rows)
        return [np.moveaxis(self.window.crop(padded), 0, 1)]

    def _kernel_matrix(self) -> Array:
        """The kernel as [G, Og, Cg K], contiguous (the rules' connectivity kernel is a
        broadcast view, which the matrix product would not hand to BLAS)."""
        g, out_per_group, in_per_group, size = self._grouped_kernel().shape
        return np.ascontiguousarray(
            self._grouped_kernel().reshape(g, out_per_group, in_per_group * size))

    def _pointwise(self) -> bool:
        """A 1x1 kernel with no padding: the windows are (a strided view of) the input,
        so each example's output is one matrix product, with nothing to gather."""
        return self.window.size == 1 and not any(self.window.pads_begin) \
            and self.window.padded_spatial == self.window.in_spatial

    def _pointwise_columns(self, u: Array) -> Array:
        """The windows of a pointwise convolution: [N, G, Cg, P] (a copy only if strided)."""
        first = next(self.window.offsets())
        windows = u[(slice(None),) * 2 + self.window.slices(first)]
        return windows.reshape(u.shape[0], self.groups, self.in_channels // self.groups, -1)

    def _pointwise_scatter(self, columns: Array, n: int) -> Array:
        """The adjoint of `_pointwise_columns`: [N, C, *in_spatial] from [N, G, Cg, P]."""
        spatial = self.window.out_spatial
        values = columns.reshape(n, self.in_channels, *spatial)
        if spatial == self.window.in_spatial:
            return values
        out = np.zeros((n, self.in_channels, *self.window.in_spatial))
        out[(slice(None),) * 2 + self.window.slices(next(self.window.offsets()))] = values
        return out

    def _depthwise(self) -> bool:
        """One input channel per group: the per-offset products are element-wise already."""
        return self.in_channels // self.groups == 1

    def _slices(self, n: int) -> list[tuple[slice, slice]]:
        """Consecutive (examples, first-axis output rows) blocks of at most
        max(COLUMN_ELEMENTS / (C K), MIN_POSITIONS) output positions (at least one row)."""
        out_spatial = self.window.out_spatial
        rows_total = out_spatial[0] if out_spatial else 1
        row_positions = int(np.prod(out_spatial[1:], dtype=np.int64))
        positions = max(COLUMN_ELEMENTS // (self.in_channels * self.window.size),
                        MIN_POSITIONS)
        example_positions = row_positions * rows_total
        if example_positions <= positions:
            step = max(1, positions // max(example_positions, 1))
            return [(slice(start, min(start + step, n)), slice(None))
                    for start in range(0, n, step)]
        rows = max(1, positions // max(row_positions, 1))
        return [(slice(i, i + 1), slice(r, min(r + rows, rows_total)))
                for i in range(n) for r in range(0, rows_total, rows)]

    def _windows(self, padded: Array, examples: slice, rows: slice) -> list[Array]:
        """For each kernel offset, the view of ``padded`` [C, N, *padded spatial] read by
        the output positions (``examples``, ``rows``): [C, n, rows, ...]."""
        lead = (slice(None), examples)
        return [padded[lead + self.window.slices(offset)][(slice(None),) * 2 + (rows,)]
                for offset in self.window.offsets()]

    def _gather(self, padded: Array, examples: slice, rows: slice) -> Array:
        windows = self._windows(padded, examples, rows)
        g = self.groups
        shape = windows[0].shape
        columns = np.empty((self.in_channels, len(windows), *shape[1:]))
        for k, window in enumerate(windows):
            columns[:, k] = window
        return columns.reshape(g, -1, int(np.prod(shape[1:], dtype=np.int64)))

    def _scatter(self, padded: Array, columns: Array, examples: slice, rows: slice) -> None:
        windows = self._windows(padded, examples, rows)
        parts = columns.reshape(self.in_channels, len(windows), *windows[0].shape[1:])
        for k, window in enumerate(windows):
            window += parts[:, k]


def _gathered(first: GatheredConv,
              operators: Sequence[AffineOperator]) -> list[GatheredConv] | None:
    """``operators`` if they are all gathered convolutions of ``first``'s geometry."""
    convs = [op for op in operators if isinstance(op, GatheredConv)
             and op.window is first.window and op.groups == first.groups
             and op.in_channels == first.in_channels]
    return convs if len(convs) == len(operators) else None


class Scale(AffineOperator):
    """Element-wise `h = s * u + b` with constants broadcast against the per-example
    tensor: BatchNormalization (unfolded), Add/Sub/Mul/Div by a constant."""

    def __init__(self, scale: Array, bias: Array | None, operand_shape: tuple[int, ...]) -> None:
        self.scale = scale
        self.bias = bias
        self.operand_shape = operand_shape
        self.coefficients = (scale,)

    def linear(self, operands: Sequence[Array]) -> Array:
        (u,) = operands
        return u * self.scale

    def vjp(self, grad: Array) -> list[Array]:
        shape = _batched(self.operand_shape, grad.shape[0])
        return [reduce_to_shape(grad * self.scale, shape)]

    def with_coefficients(self, coefficients: tuple[Array, ...]) -> Scale:
        return Scale(coefficients[0], None, self.operand_shape)


class Sum(AffineOperator):
    """`h = sum_j c_j u_j + b` over several structural tensors, broadcast together
    (residual Add, Sub, Sum); ``coefficients`` are the scalars `c_j` (+1 or -1)."""

    def __init__(self, signs: Sequence[Array], bias: Array | None,
                 operand_shapes: Sequence[tuple[int, ...]]) -> None:
        self.coefficients = tuple(np.asarray(s, dtype=float) for s in signs)
        self.bias = bias
        self.operand_shapes = tuple(operand_shapes)

    def linear(self, operands: Sequence[Array]) -> Array:
        terms = [(c, u) for c, u in zip(self.coefficients, operands) if not _is_scalar(c, 0.0)]
        if not terms:  # the rules' W- of a sum of +1s: all coefficients 0
            return np.zeros(np.broadcast_shapes(*(np.shape(u) for u in operands)))
        out = _times_sign(*terms[0], copy=len(terms) == 1)
        for c, u in terms[1:]:
            out = out + _times_sign(c, u)
        return out

    def vjp(self, grad: Array) -> list[Array]:
        n = grad.shape[0]
        return [np.zeros(_batched(shape, n)) if _is_scalar(c, 0.0)
                else reduce_to_shape(grad * c, _batched(shape, n))
                for c, shape in zip(self.coefficients, self.operand_shapes)]

    def with_coefficients(self, coefficients: tuple[Array, ...]) -> Sum:
        return Sum(coefficients, None, self.operand_shapes)


def _is_scalar(c: Array, value: float) -> bool:
    return np.ndim(c) == 0 and float(c) == value


def _times_sign(c: Array, u: Array, copy: bool = False) -> Array:
    """`c u` for a coefficient of a `Sum`, without the product where `c` is the scalar 1 or
    -1 (the same numbers: multiplying by 1 or -1 is exact); ``copy`` returns a new array
    even for `c = 1`."""
    if _is_scalar(c, 1.0):
        return np.array(u, copy=True) if copy else u
    if _is_scalar(c, -1.0):
        return np.negative(u)
    return c * u


class AveragePool(AffineOperator):
    """Window average: window sum times a per-position ``scale`` (1 / divisor)."""

    def __init__(self, window: Window, scale: Array) -> None:
        self.window = window
        self.scale = scale
        self.bias = None
        self.coefficients = (scale,)

    def linear(self, operands: Sequence[Array]) -> Array:
        (u,) = operands
        return self.window.window_sum(u) * self.scale

    def vjp(self, grad: Array) -> list[Array]:
        return [self.window.window_sum_transpose(grad * self.scale)]

    def with_coefficients(self, coefficients: tuple[Array, ...]) -> AveragePool:
        return AveragePool(self.window, coefficients[0])


class Reduction(AffineOperator):
    """A scaled sum over per-example ``axes``: GlobalAveragePool and ReduceMean
    (``scale`` = 1 / number of elements reduced), ReduceSum (``scale`` = 1)."""

    def __init__(self, axes: tuple[int, ...], keepdims: bool, operand_shape: tuple[int, ...],
                 scale: Array) -> None:
        self.axes = axes
        self.keepdims = keepdims
        self.operand_shape = operand_shape
        self.scale = scale
        self.bias = None
        self.coefficients = (scale,)

    def _batched_axes(self) -> tuple[int, ...]:
        return tuple(a + 1 for a in self.axes)

    def linear(self, operands: Sequence[Array]) -> Array:
        (u,) = operands
        return u.sum(axis=self._batched_axes(), keepdims=self.keepdims) * self.scale

    def vjp(self, grad: Array) -> list[Array]:
        g = grad * self.scale
        if not self.keepdims:
            g = np.expand_dims(g, self._batched_axes())
        return [np.broadcast_to(g, _batched(self.operand_shape, grad.shape[0])).copy()]

    def with_coefficients(self, coefficients: tuple[Array, ...]) -> Reduction:
        return Reduction(self.axes, self.keepdims, self.operand_shape, coefficients[0])
