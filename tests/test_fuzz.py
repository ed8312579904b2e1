"""Fuzzing the importer, the input checks and the CLI with hypothesis: the only exceptions
that may escape are `BBpError` subclasses naming the cause, and the CLI never raises."""

from __future__ import annotations

import signal
from pathlib import Path

import numpy as np
import pytest
from builders import f32, model, node
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bbp_ref
from bbp_ref.cli import main

# element-wise ops with no handler (piecewise constant, or not in the tangent model's table;
# IsNaN of data has one: a constant false, docs/math.md §7.5)
UNSUPPORTED = ["Sign", "Floor", "Round", "Ceil", "Hardmax", "Tan", "Acos", "Asin", "Acosh",
               "Atanh", "Shrink", "IsInf"]
SUPPORTED = ["Relu", "LeakyRelu", "Gemm", "Identity", "Neg"]
FUZZ = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])


def _chain(ops, width=4):
    rng = np.random.default_rng(len(ops))
    nodes, inits, current = [], {}, "x"
    for i, op in enumerate(ops):
        out = "y" if i == len(ops) - 1 else f"t{i}"
        if op == "Gemm":
            inits[f"W{i}"], inits[f"b{i}"] = f32(rng, width, width), f32(rng, width)
            nodes.append(node("Gemm", [current, f"W{i}", f"b{i}"], out, name=f"n{i}",
                              transB=1))
        else:
            nodes.append(node(op, [current], out, name=f"n{i}"))
        current = out
    return model(nodes, ["N", width], inits, opset=20)


@FUZZ
@given(before=st.lists(st.sampled_from(SUPPORTED), max_size=4),
       bad=st.sampled_from(UNSUPPORTED),
       after=st.lists(st.sampled_from(SUPPORTED), max_size=4))
def test_random_graphs_with_an_unsupported_op_fail_at_load_naming_it(before, bad, after):
    proto = _chain([*before, bad, *after])
    with pytest.raises(bbp_ref.UnsupportedOpError) as caught:
        bbp_ref.load(proto)
    assert caught.value.op_type == bad
    assert caught.value.node_name == f"n{len(before)}"
    assert bad in str(caught.value) and f"n{len(before)}" in str(caught.value)


_MODEL = bbp_ref.load(_chain(["Gemm", "Relu", "Gemm"]))

arrays = st.one_of(
    st.builds(lambda shape, dtype, fill: np.full(shape, fill).astype(dtype)
              if dtype in (np.float16, np.float32, np.float64, object)
              else np.zeros(shape, dtype=dtype),
              st.lists(st.integers(0, 5), max_size=4).map(tuple),
              st.sampled_from([np.float16, np.float32, np.float64, np.int32, np.bool_,
                               np.complex64, object]),
              st.sampled_from([0.0, 1.5, -2.0, np.nan, np.inf, -np.inf])),
    st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=6),
    st.text(max_size=5), st.none())


@FUZZ
@given(x=arrays, target=st.one_of(st.none(), st.integers(-3, 6), st.floats(),
                                  st.lists(st.integers(-1, 5), max_size=3)),
       rule=st.sampled_from(["abs", "signed", "uniform", "bogus", 3]))
def test_random_inputs_give_a_result_or_a_bbp_error(x, target, rule):
    try:
        e = bbp_ref.explain(_MODEL, x, target=target, rule=rule, check=False)
    except bbp_ref.BBpError as exc:
        assert str(exc)
        return
    assert e.checks.passed


TOKENS = ["explain", "nodes", "verify", "golden", "reproduce", "digit-flip", "--target",
          "--rule", "abs", "--layers", "n0", "--out", "--plot", "-1", "7", "missing.onnx",
          "x.npy", "--no-check", "--rtol", "nan", "--pairs", "8:3", "--limit", "--data",
          "--bogus", ""]


@settings(FUZZ, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])
@given(argv=st.lists(st.sampled_from(TOKENS), max_size=6))
def test_the_cli_never_raises_and_errors_are_one_line(argv, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # reproduce and digit-flip would run in full on the package's models: point them to none
    for module in ("reproduce", "digit_flip"):
        monkeypatch.setattr(f"bbp_ref.experiments.{module}.models_dir",
                            lambda: tmp_path / "no-models")
    try:
        code = main(argv)
    except SystemExit as exc:  # only --help / --version may exit this way
        assert exc.code == 0
        return
    err = capsys.readouterr().err.strip().splitlines()
    assert code in (0, 1, 2)
    if code == 2:
        assert len(err) == 1 and err[0].startswith("bbp-ref: error:"), err


# -- mutated model bytes ---------------------------------------------------------------

_DATA = Path(__file__).resolve().parent.parent / "bbp_ref" / "data"
_SHIPPED = [_DATA / "digits_cnn.onnx", _DATA / "digits" / "mlp_bias.onnx"]
_SMALL_BUDGET = 2**26  # 64 MiB: a mutated declaration cannot make a case allocate more


def _alarm(seconds: int):
    def expire(*_):
        raise TimeoutError(f"a fuzz case took more than {seconds} s")

    signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(which=st.integers(0, len(_SHIPPED) - 1),
       edits=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)),
                      min_size=1, max_size=8),
       cut=st.one_of(st.none(), st.floats(0.5, 1)))
def test_mutated_model_bytes_give_a_bbp_error_or_a_checked_explanation(which, edits, cut):
    data = bytearray(_SHIPPED[which].read_bytes())
    for where, value in edits:
        data[int(where * len(data))] = value
    if cut is not None:
        data = data[:int(cut * len(data))]
    _alarm(30)
    try:
        loaded = bbp_ref.load(bytes(data), max_bytes=_SMALL_BUDGET)
        shape = [d or 1 for d in loaded.input_shape]
        x = np.random.default_rng(0).normal(size=shape)
        e = bbp_ref.explain(loaded, x)
    except bbp_ref.BBpError as exc:
        assert str(exc)
        return
    finally:
        signal.alarm(0)
    assert e.checks.passed, e.checks.summary()
