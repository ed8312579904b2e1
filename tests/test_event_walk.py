"""The exact-IG event walk against things it does not share code with: the sparse conv
products against the dense `Conv` operator, and the whole walk against `PathWalk` (two
full passes per piece) and against completeness."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from architectures import ARCHITECTURES
from builders import f32, model, node

import bbp_ref
from bbp_ref.attribution.baselines import baseline_batch, setup
from bbp_ref.attribution.event_walk import EventWalk, Schedule, Timetable
from bbp_ref.attribution.path_walk import BOUNDARY_RTOL, PathWalk
from bbp_ref.engine import sparse as sparse_module
from bbp_ref.engine.affine import Conv
from bbp_ref.engine.gates import MaxPool
from bbp_ref.engine.sparse import (
    Inverse,
    SparseConv,
    aggregate,
    aggregate_columns,
    columns_to_dense,
    conv_vjp_columns,
    distinct,
    distinct_inverse,
    distinct_sorted,
    from_dense,
    nonzero_rows,
    run_starts,
    to_dense,
    union,
    window_table,
)
from bbp_ref.engine.trace import forward
from bbp_ref.engine.windows import Window
from bbp_ref.errors import BBpError

TORCH_MODELS = sorted((Path(__file__).parent.parent / "models" / "torch").glob("*.ts17.onnx"))
DIGITS_CNN = Path(__file__).parent.parent / "bbp_ref" / "data" / "digits" / "cnn_bias.onnx"


def _geometries(rng, count):
    found = 0
    while found < count:
        nd = int(rng.integers(1, 4))
        draw = [tuple(int(v) for v in rng.integers(lo, hi, nd))
                for lo, hi in ((1, 4), (1, 3), (1, 3), (0, 3), (0, 3), (5, 9))]
        window = Window(draw[5], *draw[:5], ceil_mode=bool(rng.integers(2)))
        if all(o > 0 for o in window.out_spatial):
            found += 1
            yield window


def _sparse_tensor(rng, shape, density):
    t = np.zeros(shape)
    mask = rng.random(shape) < density
    t[mask] = rng.standard_normal(mask.sum())
    return t


@pytest.mark.parametrize("dense_fraction", [np.inf, SparseConv.DENSE_FRACTION],
                         ids=["always-sparse", "default"])
def test_sparse_conv_matches_the_dense_operator(dense_fraction, rng, monkeypatch):
    monkeypatch.setattr(SparseConv, "DENSE_FRACTION", dense_fraction)
    monkeypatch.setattr(sparse_module, "COLUMNS_DENSE_FRACTION", dense_fraction)
    for window in _geometries(rng, 40):
        groups = int(rng.choice([1, 2, 3]))
        cin, cout = groups * int(rng.integers(1, 3)), groups * int(rng.integers(1, 3))
        weight = rng.standard_normal((cout, cin // groups, *window.kernel))
        op = Conv(weight, None, window, groups, cin)
        sparse = SparseConv(op)
        for density in (0.02, 0.3, 1.0):
            u = _sparse_tensor(rng, (1, cin, *window.in_spatial), density)
            out = op.linear([u])
            np.testing.assert_allclose(to_dense(sparse.apply(from_dense(u)), out.shape[1:]),
                                       out, rtol=1e-12, atol=1e-12)
            g = _sparse_tensor(rng, out.shape, density)
            np.testing.assert_allclose(to_dense(sparse.vjp(from_dense(g)), u.shape[1:]),
                                       op.vjp(g)[0], rtol=1e-12, atol=1e-12)
            # several columns (the event walk's targets and weights): each one's vjp
            columns = _sparse_tensor(rng, (3, *out.shape[1:]), density)
            index = np.flatnonzero(np.any(columns.reshape(3, -1) != 0, axis=0))
            back = conv_vjp_columns(sparse, (index, columns.reshape(3, -1)[:, index].T))
            np.testing.assert_allclose(columns_to_dense(back, u.shape[1:]),
                                       op.vjp(columns)[0], rtol=1e-12, atol=1e-12)


def test_index_set_helpers_equal_numpy(rng):
    """The walk's replacements of `np.unique` / `np.union1d` / `np.any(axis=1)` give the
    same arrays as NumPy's own (empty, single, repeated, negative and 2-D inputs)."""
    draws = [np.zeros(0, dtype=np.int64), np.array([7]), np.array([3, 3, 3]),
             np.array([5, -2, 5, 0, -2, 9])]
    draws += [rng.integers(-50, 50, size=int(n)) for n in rng.integers(2, 300, 30)]
    draws += [rng.integers(0, 20, size=(int(n), 4)) for n in rng.integers(1, 30, 5)]
    for values in draws:
        unique, inverse = np.unique(values, return_inverse=True)
        np.testing.assert_array_equal(distinct(values), unique)
        np.testing.assert_array_equal(distinct_sorted(np.sort(values, axis=None)), unique)
        got_unique, got_inverse = distinct_inverse(values)
        np.testing.assert_array_equal(got_unique, unique)
        np.testing.assert_array_equal(got_inverse, inverse.ravel())
        ordered = np.sort(values, axis=None)
        np.testing.assert_array_equal(run_starts(ordered),
                                      np.r_[True, ordered[1:] != ordered[:-1]][:ordered.size])
        other = np.unique(rng.integers(-60, 60, size=int(rng.integers(0, 40))))
        if values.ndim == 1:
            np.testing.assert_array_equal(union(np.unique(values), other),
                                          np.union1d(values, other))
    times = np.sort(np.r_[rng.random(20), 0.5, 0.5, 0.0, 0.0])  # floats, repeated
    np.testing.assert_array_equal(distinct_sorted(times), np.unique(times))
    for columns in (1, 2, 5):
        dense = np.where(rng.random((200, columns)) < 0.2, rng.normal(size=(200, columns)), 0)
        dense[3] = [np.nan] + [0.0] * (columns - 1)  # (NaN is not zero)
        np.testing.assert_array_equal(nonzero_rows(dense),
                                      np.flatnonzero(np.any(dense != 0, axis=1)))


def test_one_group_conv_products_sum_as_the_per_element_ones(rng, monkeypatch):
    """`SparseConv.apply` of a one-group conv (outputs numbered by position) gives the
    same elements and bitwise the same sums as `aggregate` of the per-element products
    (the forward sweep's kink times depend on it); its vjp by kernel offset equals the
    per-element vjp to rounding, and `windows_of` is the same with or without its index
    table."""
    for window in _geometries(rng, 30):
        cin, cout = int(rng.integers(1, 4)), int(rng.integers(1, 4))
        op = Conv(rng.standard_normal((cout, cin, *window.kernel)), None, window, 1, cin)
        sparse = SparseConv(op)
        for density in (0.05, 0.3, 0.9):
            u = from_dense(_sparse_tensor(rng, (1, cin, *window.in_spatial), density))
            if u[0].size > SparseConv.DENSE_FRACTION * cin * sparse.in_size:
                continue  # (the dense operator's path)
            channel, spatial = np.divmod(u[0], sparse.in_size)
            owner, position, offset = sparse.inverse.pairs(spatial)
            out_channel = np.arange(cout)
            value = u[1][owner, None] * sparse.kernel[out_channel, channel[owner, None],
                                                     offset[:, None]]
            expected = aggregate(out_channel * sparse.out_size + position[:, None], value,
                                 cout * sparse.out_size)
            got = sparse.apply(u)
            np.testing.assert_array_equal(got[0], expected[0])
            np.testing.assert_array_equal(got[1], expected[1])
            g = from_dense(_sparse_tensor(rng, (cout, *window.out_spatial), density))
            columns = (g[0], np.stack([g[1], -2.0 * g[1]], axis=1))
            monkeypatch.setattr(sparse_module, "BY_OFFSET_MIN", 0)
            by_offset = conv_vjp_columns(sparse, columns)
            monkeypatch.setattr(sparse_module, "BY_OFFSET_MIN", 10**9)
            monkeypatch.setattr(sparse_module, "COLUMNS_DENSE_FRACTION", np.inf)
            per_element = conv_vjp_columns(sparse, columns)
            monkeypatch.undo()
            shape = (cin, *window.in_spatial)
            np.testing.assert_allclose(columns_to_dense(by_offset, shape),
                                       columns_to_dense(per_element, shape),
                                       rtol=1e-13, atol=1e-13)
            with_table = sparse.windows_of(g[0])
            monkeypatch.setattr(sparse, "reads_at", None)
            without_table = sparse.windows_of(g[0])
            monkeypatch.undo()
            for a, b in zip(with_table, without_table):
                np.testing.assert_array_equal(a, b)
    # a sum that cancels exactly where `aggregate` sums densely (and drops it) and where
    # it sums by sorting (and keeps it)
    for size in (4, 8):
        window = Window((size, size), (1, 1), (1, 1), (1, 1), (0, 0), (0, 0))
        sparse = SparseConv(Conv(np.ones((4, 2, 1, 1)), None, window, 1, 2))
        u = (np.array([5, size * size + 5]), np.array([1.5, -1.5]))
        index, value = sparse.apply(u)
        cancelled = [] if size == 4 else 5 + size * size * np.arange(4)
        np.testing.assert_array_equal(index, cancelled)
        np.testing.assert_array_equal(value, np.zeros(len(cancelled)))


def test_inverse_pairs_of_uniform_tables_equal_the_general_ones(rng):
    """A table whose targets are all read the same number of times (a pool with stride
    = kernel) takes `Inverse`'s row-table path: the same pairs, in the same order, as
    the general path, which another table (a 3x3 conv's) takes."""
    pool = Window((6, 8), (2, 2), (2, 2), (1, 1), (0, 0), (0, 0))
    conv = Window((6, 8), (3, 3), (1, 1), (1, 1), (1, 1), (1, 1))
    for window, full in ((pool, True), (conv, False)):
        inverse = Inverse(window_table(window), 48)
        assert inverse.full == full
        targets = np.unique(rng.integers(0, 48, 20))
        general = Inverse(window_table(window), 48)
        general.full = False
        for a, b in zip(inverse.pairs(targets), general.pairs(targets)):
            np.testing.assert_array_equal(a, b)
        owner, row, column = inverse.pairs(targets)  # each pair reads its target
        np.testing.assert_array_equal(window_table(window)[row, column], targets[owner])


def test_timetable_due_is_every_schedule_due(rng):
    """The gates' schedules in one `Timetable`: `due` gives each gate's `Schedule.due`
    elements and times, by gate then element, and `earliest` the minimum; setting times
    through a gate's schedule is seen by the timetable. Times are kept position-major:
    `due` finds the elements whose times were set, in any layout."""
    sizes = [1, 300, 256, 700]
    schedules = [Schedule(n, channels) for n, channels in zip(sizes, (1, 3, 16, 7))]
    set_times = []
    for schedule, n in zip(schedules, sizes):
        set_times.append(rng.random(n))
        schedule.set(np.arange(n), set_times[-1])
        np.testing.assert_array_equal(schedule.time_of(np.arange(n)), set_times[-1])
        np.testing.assert_array_equal(schedule.due(0.5), np.flatnonzero(set_times[-1] <= 0.5))
    table = Timetable(schedules)
    for _ in range(5):
        k = int(rng.integers(len(sizes)))
        index = np.unique(rng.integers(0, sizes[k], 40))
        schedules[k].set(index, rng.random(index.size))
        t = float(rng.random()) * 0.3
        gate, element, times = table.due(t)
        expected = [schedule.due(t) for schedule in schedules]
        np.testing.assert_array_equal(gate, np.repeat(np.arange(len(sizes)),
                                                      [e.size for e in expected]))
        np.testing.assert_array_equal(element, np.concatenate(expected))
        np.testing.assert_array_equal(times, np.concatenate(
            [s.time_of(e) for s, e in zip(schedules, expected)]))
        assert table.earliest() == min(s.times.min() for s in schedules)


def test_aggregate_columns_sums_repeated_rows(rng):
    """`aggregate_columns` against a dense sum: with and without repeated indices (the
    unrepeated ones are only sorted), in its sparse and dense regimes."""
    for n, size in ((1, 100), (30, 1000), (30, 40), (200, 1000)):
        for repeats in (False, True):
            index = (rng.integers(0, size, n) if repeats
                     else rng.choice(size, min(n, size), replace=False))
            value = rng.normal(size=(index.size, 3))
            expected = np.zeros((size, 3))
            np.add.at(expected, index, value)
            got_index, got_value = aggregate_columns(index, value, size)
            assert np.all(np.diff(got_index) > 0)
            dense = np.zeros((size, 3))
            dense[got_index] = got_value
            np.testing.assert_allclose(dense, expected, rtol=1e-14, atol=1e-14)


def test_window_table_reads_what_maxpool_reads(rng):
    """Each table row's largest element is MaxPool's output (-1 entries read padding)."""
    for window in _geometries(rng, 40):
        u = rng.standard_normal((1, 2, *window.in_spatial))
        table = window_table(window)
        flat = u.reshape(2, -1)
        gathered = np.where(table >= 0, flat[:, table], -np.inf).max(axis=2)
        np.testing.assert_array_equal(gathered.reshape(1, 2, *window.out_spatial),
                                      MaxPool(window).forward([u]))


def _walks(model, x, b, target, resync_every=4096):
    s = setup(model, x[None], target, linearize=False)
    base = baseline_batch(b, s.batch, s.single)
    events = EventWalk(s.graph, base, s.batch, s.seed, rtol=BOUNDARY_RTOL,
                       resync_every=resync_every)
    events.run(10**6)
    pieces = PathWalk(s.graph, base, s.batch, s.seed, rtol=BOUNDARY_RTOL)
    pieces.run(10**6)
    f = forward(s.graph, s.batch, linearize=False).output.reshape(-1)[target]
    fb = forward(s.graph, base, linearize=False).output.reshape(-1)[target]
    return events, pieces, s.batch - base, f - fb


def _check(events, pieces, d, change):
    scale = np.abs(pieces.total_gradient).max()
    np.testing.assert_allclose(events.total_gradient, pieces.total_gradient,
                               rtol=0, atol=1e-11 * scale)
    ig = d * events.total_gradient
    assert abs(ig.sum() - change) <= 1e-10 * (np.abs(ig).sum() + abs(change))
    # the counts may differ by pieces shorter than the tolerance, which one walk merges
    # into a neighbour and the other does not (docs/math.md §6)
    assert abs(events.pieces - pieces.pieces[0]) <= 0.01 * pieces.pieces[0] + 2


@pytest.mark.parametrize("name", ARCHITECTURES)
@pytest.mark.parametrize("bias", [True, False])
def test_event_walk_equals_path_walk_on_architectures(name, bias, rng):
    proto, shape = ARCHITECTURES[name](np.random.default_rng(1), bias=bias)
    model = bbp_ref.load(proto)
    for target in (0, 1):
        _check(*_walks(model, rng.normal(size=shape), 0.5 * rng.normal(size=shape), target))


@pytest.mark.parametrize("path", TORCH_MODELS, ids=lambda p: p.stem)
def test_event_walk_equals_path_walk_on_exported_models(path, rng):
    model = bbp_ref.load(path)
    x = rng.normal(size=model.graph.input_shape)
    _check(*_walks(model, x, 0.0, 0))


def _skip_past_gates(rng, without_gates=False):
    """`y = W2 (x + relu(W1 x)) + W3 x`: the input and `W1 x` feed both gates and gate-free
    paths, so the gate-free prefix has consumers on both sides of the frontier."""
    nodes = [node("MatMul", ["x", "w1"], "h"), node("Add", ["h", "x"], "r")]
    if not without_gates:
        nodes[1:1] = [node("Relu", ["h"], "a")]
        nodes[2] = node("Add", ["a", "x"], "r")
    nodes += [node("MatMul", ["r", "w2"], "o"), node("MatMul", ["x", "w3"], "p"),
              node("Add", ["o", "p"], "y")]
    weights = {"w1": f32(rng, 5, 5), "w2": f32(rng, 5, 3), "w3": f32(rng, 5, 3)}
    return bbp_ref.load(model(nodes, ["N", 5], weights))


@pytest.mark.parametrize("without_gates", [False, True])
def test_gate_free_prefix_is_counted_once(without_gates, rng):
    m = _skip_past_gates(rng, without_gates)
    for target in range(3):
        events, pieces, d, change = _walks(m, rng.normal(size=5), rng.normal(size=5), target)
        _check(events, pieces, d, change)
        if without_gates:  # linear: the integral is the constant gradient
            np.testing.assert_allclose(events.total_gradient[0], m.jacobian(d)[0, target],
                                       rtol=1e-12)


@pytest.mark.parametrize("resync_every", [1, 5])
def test_resynchronising_changes_nothing_but_rounding(resync_every, rng):
    model = bbp_ref.load(DIGITS_CNN)
    x = rng.random((1, 8, 8))
    often, _, d, change = _walks(model, x, 0.0, 3, resync_every=resync_every)
    rarely, *_ = _walks(model, x, 0.0, 3)
    assert often.pieces == rarely.pieces
    np.testing.assert_allclose(often.total_gradient, rarely.total_gradient, rtol=0,
                               atol=1e-12 * np.abs(rarely.total_gradient).max())


def test_max_pieces_stops_the_event_walk(rng):
    model = bbp_ref.load(DIGITS_CNN)
    with pytest.raises(BBpError, match="more than 10 linear pieces"):
        bbp_ref.integrated_gradients(model, rng.random((1, 8, 8)), max_pieces=10)


def test_lock_step_batches_equal_one_example_at_a_time(rng):
    """`integrated_gradients` walks a batch of a small network in lock step (`PathWalk`)
    and single examples by events: the two give the same attributions."""
    from bbp_ref.attribution import integrated_gradients as ig_module

    m = bbp_ref.load(DIGITS_CNN)
    x = rng.random((ig_module.LOCK_STEP_MIN_BATCH, 1, 8, 8))
    assert sum(int(np.prod(n.shape)) for n in m.graph) <= ig_module.LOCK_STEP_MAX_VALUES
    batched = bbp_ref.integrated_gradients(m, x, target=np.arange(len(x)))
    for i in range(len(x)):
        single = bbp_ref.integrated_gradients(m, x[i], target=i)
        np.testing.assert_allclose(single.attribution, batched.attribution[i], rtol=0,
                                   atol=1e-10 * np.abs(batched.attribution[i]).max())
        assert abs(single.n_pieces - batched.n_pieces[i]) <= 0.01 * single.n_pieces + 2


def test_a_maximum_that_lands_on_a_constant_zero_turns_the_relu_off():
    """GlobalMaxPool then Relu; along the path the winner falls to 0 and hands over to an
    element that is 0 throughout, so the Relu's input stays exactly 0 (off, the engine's
    convention) for the rest of the path. The path walk once took the rounding residue of
    the Relu input for a value above 0 (its tolerance was scaled by the near-zero tensor
    itself); a hypothesis example found it."""
    m = bbp_ref.load(model([node("GlobalMaxPool", ["x"], "p"), node("Relu", ["p"], "y")],
                           ["N", 1, 3]))
    b = np.array([[0.0, 0.45781684, -0.45017439]], np.float32).astype(np.float64)
    x = np.array([[0.0, -0.77307123, 0.0]], np.float32).astype(np.float64)
    events, pieces, d, change = _walks(m, x, b, 0)
    crossing = b[0, 1] / (b[0, 1] - x[0, 1])  # element 1 reaches 0
    expected = np.array([[[0.0, crossing, 0.0]]])
    np.testing.assert_allclose(events.total_gradient, expected, rtol=0, atol=1e-15)
    np.testing.assert_allclose(pieces.total_gradient, expected, rtol=0, atol=1e-15)


def _conv_chain(rng, size, channels=(3, 4, 6, 8), classes=5):
    """The small CNN of `benchmarks/bench_exact_ig.py` in miniature: three 3x3 convs
    (the first with stride 2) with bias, each followed by Relu and a 2x2/2 MaxPool, then
    GlobalAveragePool and Gemm. Kinks far apart in the image have disjoint cones, so the
    event walk processes several in one sweep."""
    nodes, inits, source = [], {}, "x"
    for k, (cin, cout) in enumerate(zip(channels, channels[1:])):
        inits[f"C{k}"] = f32(rng, cout, cin, 3, 3, scale=0.5)
        inits[f"c{k}"] = f32(rng, cout, scale=0.3)
        nodes += [node("Conv", [source, f"C{k}", f"c{k}"], f"h{k}", pads=[1, 1, 1, 1],
                       strides=[2, 2] if k == 0 else [1, 1]),
                  node("Relu", [f"h{k}"], f"a{k}"),
                  node("MaxPool", [f"a{k}"], f"p{k}", kernel_shape=[2, 2], strides=[2, 2])]
        source = f"p{k}"
    inits["F"] = f32(rng, classes, channels[-1], scale=0.5)
    inits["f"] = f32(rng, classes, scale=0.3)
    nodes += [node("GlobalAveragePool", [source], "g"), node("Flatten", ["g"], "v"),
              node("Gemm", ["v", "F", "f"], "y", transB=1)]
    return bbp_ref.load(model(nodes, ["N", channels[0], size, size], inits)), (
        channels[0], size, size)


def _event_walk(m, x, b, targets, **options):
    s = setup(m, x[None], None, linearize=False)
    base = baseline_batch(b, s.batch, s.single)
    seeds = np.zeros((len(targets), s.logits.size))
    seeds[np.arange(len(targets)), targets] = 1.0
    walk = EventWalk(s.graph, base, s.batch, seeds.reshape(len(targets), *s.logits.shape[1:]),
                     rtol=BOUNDARY_RTOL, **options)
    walk.run(10**6)
    return walk


def _models(rng):
    for name in ARCHITECTURES:
        proto, shape = ARCHITECTURES[name](np.random.default_rng(1), bias=True)
        yield name, bbp_ref.load(proto), shape
    yield "digits_cnn", bbp_ref.load(DIGITS_CNN), (1, 8, 8)
    yield ("conv_chain", *_conv_chain(np.random.default_rng(2), 40))


def test_several_targets_in_one_walk_equal_one_walk_per_target(rng):
    """One walk carries every target's gradient (the reverse sweep batched over the
    targets): the same integrals as one walk per target, and as `PathWalk` per target."""
    for name, m, shape in _models(rng):
        x, b = rng.normal(size=shape), 0.5 * rng.normal(size=shape)
        outputs = int(np.prod(m.graph.output_shape))
        targets = [outputs - 1, 0, 1]
        together = _event_walk(m, x, b, targets)
        assert together.total_gradient.shape == (3, *shape)
        for k, target in enumerate(targets):
            alone = _event_walk(m, x, b, [target])
            scale = np.abs(alone.total_gradient).max()
            np.testing.assert_allclose(together.total_gradient[k], alone.total_gradient[0],
                                       rtol=0, atol=1e-12 * scale, err_msg=name)
            assert together.pieces == alone.pieces, name
            if k == 0 and name != "conv_chain":  # (PathWalk takes minutes there)
                pieces = _walks(m, x, b, target)[1]
                np.testing.assert_allclose(together.total_gradient[k],
                                           pieces.total_gradient[0], rtol=0,
                                           atol=1e-11 * scale, err_msg=name)


def test_batched_events_equal_one_event_at_a_time(rng):
    """Several independent kinks per sweep (docs/math.md §6) give the walk of one kink
    time per sweep: the same integrals (1e-12) and pieces, in fewer sweeps where the
    network has room for independent kinks."""
    batched_somewhere = False
    for name, m, shape in _models(rng):
        x, b = rng.normal(size=shape), 0.5 * rng.normal(size=shape)
        one = _event_walk(m, x, b, [0, 1], batch_events=1)
        assert one.batches == one.pieces - 1  # one kink time per sweep
        for batch_events in (4, 64):
            many = _event_walk(m, x, b, [0, 1], batch_events=batch_events)
            scale = np.abs(one.total_gradient).max()
            np.testing.assert_allclose(many.total_gradient, one.total_gradient, rtol=0,
                                       atol=1e-12 * scale, err_msg=name)
            assert many.pieces == one.pieces, name
            batched_somewhere |= many.batches < many.pieces - 1
            if name == "conv_chain" and batch_events == 64:  # (1,332 sweeps, 1,588 pieces)
                assert many.batches < 0.9 * many.pieces, (many.batches, many.pieces)
    assert batched_somewhere


def test_integrated_gradients_takes_several_targets(rng):
    """`integrated_gradients(target=[...])`: a target axis after the batch axis, each
    slice the single-target result (to 1e-12), with completeness per target; the
    quadrature rules take several targets too."""
    m = bbp_ref.load(DIGITS_CNN)
    x = rng.random((2, 1, 8, 8))
    targets = np.array([[3, 0, 9], [1, 1, 4]])
    for method in ("exact", "riemann_middle"):
        r = bbp_ref.integrated_gradients(m, x, target=targets, method=method, n_steps=8)
        assert r.attribution.shape == (2, 3, 1, 8, 8) and r.target.shape == (2, 3)
        for i in range(2):
            for k in range(3):
                alone = bbp_ref.integrated_gradients(m, x[i], target=int(targets[i, k]),
                                                     method=method, n_steps=8)
                scale = np.abs(alone.attribution).max()
                np.testing.assert_allclose(r.attribution[i, k], alone.attribution, rtol=0,
                                           atol=1e-12 * scale)
                assert r.target[i, k] == targets[i, k]
                np.testing.assert_allclose(r.output[i, k], alone.output, rtol=1e-12)
                np.testing.assert_allclose(r.delta[i, k], alone.delta, rtol=0, atol=1e-13)
        if method == "exact":
            assert (np.abs(r.delta) <= 1e-12 * np.abs(r.attribution).sum(axis=(2, 3, 4))).all()
    one = bbp_ref.integrated_gradients(m, x[0], target=[2, 5])
    assert one.attribution.shape == (2, 1, 8, 8) and one.target.tolist() == [2, 5]
    assert np.ndim(one.n_pieces) == 0


def _cone_pairs(where, label):
    return sorted(zip(where.tolist(), label.tolist()))


def test_kept_cones_are_the_cones_carried_through_the_nodes(rng):
    """`Cones` keeps the cone of each (gate, position) once it has carried it through
    the nodes: for random candidates (repeated positions, other channels of a position
    already kept) the kept cones gathered are the pairs `_propagate` gives for them,
    and every one of them is kept."""
    for name, m, shape in _models(rng):
        cones = _event_walk(m, rng.normal(size=shape), 0.0, [0], batch_events=1).cones
        sizes = [int(np.prod(cones.shapes[gate])) for gate in cones.gates]
        for _ in range(3):
            gate_of = np.sort(rng.integers(len(sizes), size=30))
            element = np.array([rng.integers(sizes[k]) for k in gate_of])
            element[-1] = element[0]  # (a repeated candidate)
            gate_of[-1] = gate_of[0]
            where, label, everything = cones._cones(gate_of, element)
            position = element % cones.gate_positions[gate_of]
            assert (cones.start[cones.gate_offsets[gate_of] + position] >= 0).all(), name
            expected = cones._propagate(gate_of, position)
            assert everything.size == 0 and expected[2].size == 0
            assert _cone_pairs(where, label) == _cone_pairs(*expected[:2]), name


@pytest.mark.parametrize("limit", [0, 300])
def test_walks_without_kept_cones_are_the_same_walk(limit, rng, monkeypatch):
    """With no cone kept (every sweep carries its candidates' cones through the nodes)
    or with the cache full part way, the walk decides the same sweeps: the same
    integrals, bitwise, the same pieces and sweeps."""
    from bbp_ref.attribution.event_cones import Cones

    for name, m, shape in _models(rng):
        x, b = rng.normal(size=shape), 0.5 * rng.normal(size=shape)
        kept = _event_walk(m, x, b, [0, 1])
        monkeypatch.setattr(Cones, "CACHE_LIMIT", limit)
        carried = _event_walk(m, x, b, [0, 1])
        monkeypatch.undo()
        assert carried.cones.used <= limit and (limit > 0 or carried.cones.used == 0)
        np.testing.assert_array_equal(carried.total_gradient, kept.total_gradient,
                                      err_msg=name)
        assert (carried.pieces, carried.batches) == (kept.pieces, kept.batches), name


def test_cones_through_dense_maps_too_large_to_follow(rng, monkeypatch):
    """A cone that reaches a dense map too large to follow reaches everything after
    it: such a kink is processed only first in its sweep, and the walk still equals
    one kink time per sweep (1e-12), in more sweeps than with the dense maps followed."""
    from bbp_ref.attribution.event_cones import Cones

    dense_somewhere = more_sweeps = False
    for name, m, shape in _models(rng):
        x, b = rng.normal(size=shape), 0.5 * rng.normal(size=shape)
        one = _event_walk(m, x, b, [0], batch_events=1)
        followed = _event_walk(m, x, b, [0])
        monkeypatch.setattr(Cones, "DENSE_REACH_LIMIT", 0)
        unfollowed = _event_walk(m, x, b, [0])
        monkeypatch.undo()
        scale = np.abs(one.total_gradient).max()
        np.testing.assert_allclose(unfollowed.total_gradient, one.total_gradient, rtol=0,
                                   atol=1e-12 * scale, err_msg=name)
        assert unfollowed.pieces == one.pieces, name
        assert unfollowed.batches >= followed.batches, name
        if unfollowed.cones.unkept.any():
            dense_somewhere = True
            more_sweeps |= unfollowed.batches > followed.batches
    assert dense_somewhere and more_sweeps


def test_is_distinct_finds_repeated_indices(rng):
    """`is_distinct` against a sort, whatever the scratch array holds; and
    `concatenate_columns` with a scratch array returns distinct rows as they are and
    sums repeated ones."""
    from bbp_ref.engine.sparse import concatenate_columns, is_distinct

    scratch = rng.integers(-5, 50, 50)
    for n in (0, 1, 2, 10, 40):
        for _ in range(20):
            index = rng.integers(0, 50, n)
            assert is_distinct(index, scratch) == (np.unique(index).size == n)
    index = rng.permutation(50)[:20]
    value = rng.normal(size=(20, 2))
    parts = [(index[:8], value[:8]), (index[8:], value[8:])]
    got_index, got_value = concatenate_columns(parts, 50, scratch)
    np.testing.assert_array_equal(got_index, index)
    np.testing.assert_array_equal(got_value, value)
    parts.append((index[:3], value[:3]))  # repeated: summed, sorted
    got_index, got_value = concatenate_columns(parts, 50, scratch)
    expected = np.zeros((50, 2))
    np.add.at(expected, np.concatenate([index, index[:3]]),
              np.concatenate([value, value[:3]]))
    np.testing.assert_array_equal(got_index, np.sort(index))
    np.testing.assert_allclose(got_value, expected[np.sort(index)], rtol=1e-15)
