"""Ops reading a tensor whose batch is merged into another axis (docs/math.md §7.5), as
Swin's shifted-window attention writes them, hand-built.

A window partition reshapes `x [N, 4, 4, C]` into `[N * 4, 4, C]` (four 2x2 windows per
example, the batch the major factor of axis 0), a sequence-first layout reshapes
`[N, T, E]` into `[T * N, E]` (the batch the minor factor). Each graph applies the op
under test to the merged tensor and comes back to `[N, ...]` through a Reshape whose
target is folded from the input's Shape. `test_ops.verify` checks the forward against
onnxruntime at a batch of three different examples (so a mix-up of examples fails), the
decomposition and completeness for every rule, and `W^x` against central finite
differences of the float64 model run by `onnx.reference`. Then the refusals: an op
along the merged axis that would take some examples' elements only.
"""

from __future__ import annotations

import numpy as np
import pytest
from builders import f32, model, node
from test_ops import Case, verify

import bbp_ref
from bbp_ref.errors import UnsupportedOpError

C = 3  # channels per pixel
T, E = 3, 4  # sequence length, features
RNG_SEED = 23


def _i64(*values: int) -> np.ndarray:
    return np.array(values, np.int64)


def _constants(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "six": _i64(-1, 2, 2, 2, 2, C),
        "windows": _i64(-1, 4, C), "w": f32(rng, C, C),
        "zero": _i64(0), "one": _i64(1), "two": _i64(2), "minus_one": _i64(-1),
        "zero_s": np.array(0, np.int64), "one_s": np.array(1, np.int64),
        "four_s": np.array(4, np.int64), "t_s": np.array(T, np.int64),
        "rows": _i64(-1, E), "blocks4": _i64(-1, 4),
    }


def _partition() -> list:
    """x [N, 4, 4, C] -> windows [N * 4, 4, C] (window (a, b) of example n is row
    n * 4 + 2 a + b; pixel (i, j) is 2 i + j) -> MatMul -> "win". (onnxruntime's basic
    optimisations fuse a Reshape directly after the partition's wrongly.)"""
    return [
        node("Reshape", ["x", "six"], "x6"),
        node("Transpose", ["x6"], "x6t", perm=[0, 1, 3, 2, 4, 5]),
        node("Reshape", ["x6t", "windows"], "win0"),
        node("MatMul", ["win0", "w"], "win"),
    ]


def _per_example(source: str) -> list:
    """``source`` (batch merged or not) back to y [N, -1], the target [N, -1] folded from
    the input's Shape."""
    return [
        node("Shape", ["x"], "shape_x"),
        node("Slice", ["shape_x", "zero", "one"], "n1"),
        node("Concat", ["n1", "minus_one"], "flat_target", axis=0),
        node("Reshape", [source, "flat_target"], "y"),
    ]


def _verify(nodes: list, extra: dict | None = None, shape: tuple[int, ...] = (4, 4, C),
            seed: int = 0) -> bbp_ref.Model:
    rng = np.random.default_rng(RNG_SEED + seed)
    proto = model(nodes, ["N", *shape], {**_constants(rng), **(extra or {})})
    x = f32(rng, 3, *shape)
    m, explanations = verify(Case(proto, x))
    assert len(explanations) == 3
    return m


def _refused(nodes: list, extra: dict | None = None,
             shape: tuple[int, ...] = (4, 4, C)) -> str:
    rng = np.random.default_rng(RNG_SEED)
    proto = model(nodes, ["N", *shape], {**_constants(rng), **(extra or {})})
    with pytest.raises(UnsupportedOpError) as info:
        bbp_ref.load(proto).forward(f32(rng, 2, *shape))
    return str(info.value)


def _sequence_rows() -> list:
    """x [N, T, E] -> MatMul -> "r" [T * N, E] (the batch the minor factor of axis 0)."""
    return [node("MatMul", ["x", "w_seq"], "xw"),
            node("Transpose", ["xw"], "xt", perm=[1, 0, 2]),
            node("Reshape", ["xt", "rows"], "r")]


def _sequence_extra(rng_seed: int = 0) -> dict[str, np.ndarray]:
    return {"w_seq": f32(np.random.default_rng(RNG_SEED + 100 + rng_seed), E, E)}


# -- accepted ------------------------------------------------------------------------------
def test_the_partition_and_its_inverse_reproduce_the_input_per_example() -> None:
    m = _verify([*_partition(), *_per_example("win")], seed=1)
    x = f32(np.random.default_rng(1), 2, 4, 4, C)
    windows = x.astype(np.float64).reshape(2, 2, 2, 2, 2, C).transpose(0, 1, 3, 2, 4, 5)
    w = _constants(np.random.default_rng(RNG_SEED + 1))["w"].astype(np.float64)
    np.testing.assert_allclose(m.forward(x), (windows @ w).reshape(2, -1), rtol=0,
                               atol=1e-12)


def test_gather_off_the_merged_axis() -> None:
    """Pixels [3, 0, 2] of every window, then channel 1 (a scalar index drops the axis)."""
    extra = {"pixels": _i64(3, 0, 2), "channel": np.array(1, np.int64)}
    _verify([*_partition(), node("Gather", ["win", "pixels"], "g1", axis=1),
             node("Gather", ["g1", "channel"], "g2", axis=2), *_per_example("g2")], extra,
            seed=2)


def test_gather_before_the_merged_axis_moves_it() -> None:
    """[4, N * 4, C] gathered along axis 0 with 2-D indices: [2, 2, N * 4, C], the batch
    merged into axis 2; a Transpose brings it first again."""
    extra = {"pairs": _i64(3, 1, 0, 2).reshape(2, 2)}
    _verify([*_partition(), node("Transpose", ["win"], "wt", perm=[1, 0, 2]),
             node("Gather", ["wt", "pairs"], "g", axis=0),
             node("Transpose", ["g"], "gt", perm=[2, 0, 1, 3]), *_per_example("gt")], extra,
            seed=3)


def _block_indices(reverse_within: bool) -> list:
    """Indices along the merged axis of "win" folded from its Shape: arange(N * 4) as
    [N, 4] ("blocks"), each example's windows reversed if ``reverse_within``."""
    nodes = [node("Shape", ["win"], "shape_win"),
             node("Gather", ["shape_win", "zero_s"], "length", axis=0),
             node("Range", ["zero_s", "length", "one_s"], "arange"),
             node("Reshape", ["arange", "blocks4"], "blocks")]
    if reverse_within:
        nodes.append(node("Slice", ["blocks", "minus_one", "minus_big", "one", "minus_one"],
                          "chosen"))
    else:
        nodes.append(node("Identity", ["blocks"], "chosen"))
    return nodes


def test_gather_along_the_merged_axis_taking_whole_example_blocks() -> None:
    """As the torch.export-based exporter writes `as_strided`: indices [N, 4] folded from
    the Shape, here with each example's windows reversed; the result [N, 4, 4, C] has
    the batch first again."""
    extra = {"minus_big": _i64(-(2**62))}
    for reverse in (False, True):
        _verify([*_partition(), *_block_indices(reverse),
                 node("Gather", ["win", "chosen"], "g", axis=0), *_per_example("g")], extra,
                seed=4)


def test_slice_off_and_along_the_merged_axis() -> None:
    """Pixels 1:3 (off the axis); then along [T * N, E] rows 1 * N to 3 * N (steps of
    whole per-example blocks, the bounds folded from the Shape)."""
    _verify([*_partition(), node("Slice", ["win", "one", "two", "one"], "s"),
             *_per_example("s")], seed=5)
    nodes = [*_sequence_rows(), node("Shape", ["r"], "shape_r"),
             node("Gather", ["shape_r", "zero"], "tn", axis=0),
             node("Div", ["tn", "t_arr"], "n_arr"), node("Mul", ["n_arr", "three"], "end"),
             node("Slice", ["r", "n_arr", "end", "zero"], "rs"),
             node("Reshape", ["rs", "two_rows"], "rs3"),
             node("Transpose", ["rs3"], "rs3t", perm=[1, 0, 2]), *_per_example("rs3t")]
    extra = {**_sequence_extra(), "t_arr": _i64(T), "three": _i64(3),
             "two_rows": _i64(2, -1, E)}
    _verify(nodes, extra, shape=(T, E), seed=6)


def test_concat_off_and_along_the_merged_axis() -> None:
    """Windows with themselves doubled, along the channels and along the windows
    ([2 * N * 4, 4, C]: all examples' windows, then all doubled ones, brought back by
    [2, N, 4, 4, C]); rows [T * N, E] with their first block of N rows again
    ([(T + 1) * N, E], every example's rows in order)."""
    extra = {"double": np.array(2.0, np.float32), "twice": _i64(2, -1, 4, 4, C)}
    _verify([*_partition(), node("Mul", ["win", "double"], "win2"),
             node("Concat", ["win", "win2"], "c", axis=2), *_per_example("c")], extra,
            seed=7)
    _verify([*_partition(), node("Mul", ["win", "double"], "win2"),
             node("Concat", ["win", "win2"], "c", axis=0),
             node("Reshape", ["c", "twice"], "c5"),
             node("Transpose", ["c5"], "c5t", perm=[1, 0, 2, 3, 4]), *_per_example("c5t")],
            extra, seed=12)
    nodes = [*_sequence_rows(), node("Shape", ["r"], "shape_r"),
             node("Gather", ["shape_r", "zero"], "tn", axis=0),
             node("Div", ["tn", "t_arr"], "n_arr"),
             node("Slice", ["r", "zero", "n_arr", "zero"], "first"),
             node("Concat", ["r", "first"], "c", axis=0),
             node("Reshape", ["c", "more_rows"], "c3"),
             node("Transpose", ["c3"], "c3t", perm=[1, 0, 2]), *_per_example("c3t")]
    extra = {**_sequence_extra(1), "t_arr": _i64(T), "more_rows": _i64(T + 1, -1, E)}
    _verify(nodes, extra, shape=(T, E), seed=8)


def test_split_off_and_along_the_merged_axis() -> None:
    """Windows split along the channels [1, 2] and added back crosswise; rows [T * N, E]
    split into T equal parts (one block of N rows each), concatenated in reverse."""
    extra = {"sizes": _i64(1, 2), "pick": _i64(0, 1)}
    _verify([*_partition(), node("Split", ["win", "sizes"], ["a", "b"], axis=2),
             node("Gather", ["b", "pick"], "b0", axis=2), node("Mul", ["a", "b0"], "ab"),
             *_per_example("ab")], extra, seed=9)
    nodes = [*_sequence_rows(), node("Split", ["r"], ["p0", "p1", "p2"], axis=0),
             node("Concat", ["p2", "p0", "p1"], "c", axis=0),
             node("Reshape", ["c", "all_rows"], "c3"),
             node("Transpose", ["c3"], "c3t", perm=[1, 0, 2]), *_per_example("c3t")]
    extra = {**_sequence_extra(2), "all_rows": _i64(T, -1, E)}
    _verify(nodes, extra, shape=(T, E), seed=10)


def test_pad_squeeze_unsqueeze_and_constants_against_the_merged_axis() -> None:
    """Windows padded with 0.5 (pixels) and edge-padded (channels), an axis inserted and
    removed, and constants broadcast along the merged axis (length 1 there) added and
    multiplied."""
    extra = {"pads_px": _i64(0, 1, 0, 0, 2, 0), "pad_value": np.array(0.5, np.float32),
             "pads_ch": _i64(0, 0, 1, 0, 0, 2),
             "bias": f32(np.random.default_rng(5), 1, 7, C + 3),
             "scale": f32(np.random.default_rng(6), 7, 1)}
    _verify([*_partition(), node("Pad", ["win", "pads_px", "pad_value"], "p1"),
             node("Pad", ["p1", "pads_ch"], "p2", mode="edge"),
             node("Unsqueeze", ["p2", "two"], "u"), node("Squeeze", ["u", "two"], "q"),
             node("Add", ["q", "bias"], "qa"), node("Mul", ["qa", "scale"], "qm"),
             node("Relu", ["qm"], "qr"), *_per_example("qr")], extra, seed=11)


# -- refused -------------------------------------------------------------------------------
def test_gather_along_the_merged_axis_with_literal_indices_is_refused() -> None:
    message = _refused([*_partition(), node("Gather", ["win", "pixels"], "y", axis=0)],
                       {"pixels": _i64(1, 0)})
    assert "Gather" in message and "would pick examples" in message


def test_gather_reversing_the_whole_merged_axis_is_refused() -> None:
    """Reversing all N * 4 windows, as [N, 4] indices, gives example 0 the windows of
    example N - 1 (for a batch of one the indices reverse each example's windows)."""
    nodes = [*_partition(), node("Shape", ["win"], "shape_win"),
             node("Gather", ["shape_win", "zero_s"], "length", axis=0),
             node("Sub", ["length", "one_s"], "last"),
             node("Range", ["last", "minus_one_s", "minus_one_s"], "backwards"),
             node("Reshape", ["backwards", "blocks4"], "blocks"),
             node("Gather", ["win", "blocks"], "g", axis=0), *_per_example("g")]
    message = _refused(nodes, {"minus_one_s": np.array(-1, np.int64)})
    assert "whole per-example blocks" in message and "gather_g" in message


def test_slice_along_the_merged_axis_not_in_whole_blocks_is_refused() -> None:
    """Windows 0:2 of [N * 4, 4, C] for a batch of one are 0:2 of example 0 only for a
    batch of two (a literal); a bound folded from the Shape halving N * 4 is a block of
    the first example(s), not 2 windows of each."""
    message = _refused([*_partition(), node("Slice", ["win", "zero", "two", "zero"], "s"),
                        *_per_example("s")])
    assert "whole blocks of 4 elements" in message and "slice_s" in message
    nodes = [*_partition(), node("Shape", ["win"], "shape_win"),
             node("Gather", ["shape_win", "zero"], "length", axis=0),
             node("Div", ["length", "two"], "half"),
             node("Slice", ["win", "zero", "half", "zero"], "s"), *_per_example("s")]
    assert "whole blocks of 4 elements" in _refused(nodes)


def test_slice_along_the_merged_axis_written_for_a_batch_of_one_is_refused() -> None:
    """Whole blocks for a batch of one but literal bounds: windows 0:4 of [N * 4, 4, C]
    are example 0's only for a batch of two, rows 0:2 of [T * N, E] its first 2 rows."""
    message = _refused([*_partition(), node("Slice", ["win", "zero", "four"], "s"),
                        *_per_example("s")], {"four": _i64(4)})
    assert "for a batch of two from 0 to 4" in message
    message = _refused([*_sequence_rows(), node("Slice", ["r", "zero", "two"], "rs"),
                        node("Reshape", ["rs", "two_rows"], "y")],
                       {**_sequence_extra(), "two_rows": _i64(2, -1, E)}, shape=(T, E))
    assert "for a batch of two from 0 to 2" in message


def test_split_along_the_merged_axis_not_in_whole_blocks_is_refused() -> None:
    """Literal sizes cannot grow with the batch; two equal halves of [N * 4, 4, C] are,
    for a batch of two, example 0's windows and example 1's."""
    message = _refused([*_partition(), node("Split", ["win", "sizes"], ["a", "b"], axis=0),
                        node("Add", ["a", "a"], "y")], {"sizes": _i64(2, 2)})
    assert "Split" in message and "some examples only" in message
    message = _refused([*_partition(), node("Split", ["win"], ["a", "b"], axis=0),
                        node("Add", ["a", "a"], "y")])
    assert "into [2, 2] (for a batch of two [4, 4])" in message


def test_pad_of_the_merged_axis_is_refused() -> None:
    message = _refused([*_partition(), node("Pad", ["win", "pads"], "p"),
                        *_per_example("p")], {"pads": _i64(1, 0, 0, 0, 0, 0)})
    assert "Pad" in message and "first or the last example" in message


def test_concat_of_a_constant_with_a_merged_batch_is_refused() -> None:
    message = _refused([*_partition(), node("Concat", ["win", "extra"], "c", axis=2),
                        *_per_example("c")], {"extra": np.ones((4, 4, 1), np.float32)})
    assert "Concat" in message and "constant operand" in message
