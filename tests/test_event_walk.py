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
from bbp_ref.attribution.event_walk import EventWalk
from bbp_ref.attribution.path_walk import BOUNDARY_RTOL, PathWalk
from bbp_ref.engine.affine import Conv
from bbp_ref.engine.gates import MaxPool
from bbp_ref.engine.sparse import SparseConv, from_dense, to_dense, window_table
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
