"""Untrusted models and inputs (docs/security.md): each test builds a hostile file itself
and checks that bbp_ref refuses it with a `BBpError` naming the cause, quickly and without
reading outside the model's folder or allocating what the file merely declares."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from builders import f32, model, node
from onnx import TensorProto, helper, numpy_helper
from test_errors import X, mlp, watch_opens  # noqa: F401 - watch_opens is a fixture

import bbp_ref
from bbp_ref import BBpError, InputError, ModelLoadError, RuleError, Term, UnsupportedOpError
from bbp_ref.checks.onnxruntime_check import Unavailable, compare
from bbp_ref.checks.residuals import Checks, check_mode, relative_residual
from bbp_ref.cli import main


@contextlib.contextmanager
def within(seconds: int):
    """Fail (instead of hanging) if the block takes longer than ``seconds``."""

    def expire(*_):
        raise TimeoutError(f"took more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _with_constant_node(constant: onnx.NodeProto) -> onnx.ModelProto:
    """x[N, 4] + (a constant [4] made by ``constant``, output 'c') -> Relu."""
    graph = helper.make_graph(
        [constant, helper.make_node("Add", ["x", "c"], ["h"], name="add"),
         helper.make_node("Relu", ["h"], ["y"], name="relu")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _external(tensor: onnx.TensorProto, location: str, length: int = 16) -> None:
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value


def _sparse(values: np.ndarray, indices: list[int], dims: list[int],
            name: str = "") -> onnx.SparseTensorProto:
    return helper.make_sparse_tensor(numpy_helper.from_array(values, name),
                                     numpy_helper.from_array(np.array(indices, np.int64)), dims)


# -- 1. reads outside the model folder -----------------------------------------------


def _sparse_initializer_model() -> onnx.ModelProto:
    proto = _with_constant_node(helper.make_node("Identity", ["s"], ["c"], name="ident"))
    proto.graph.sparse_initializer.append(
        _sparse(np.array([1.0, -2.0], np.float32), [1, 3], [4], name="s"))
    return proto


def _sparse_value_model() -> onnx.ModelProto:
    sparse = _sparse(np.array([1.0, -2.0], np.float32), [1, 3], [4])
    return _with_constant_node(helper.make_node("Constant", [], ["c"], name="const",
                                                sparse_value=sparse))


def _subgraph_model() -> onnx.ModelProto:
    """A Constant with an external tensor inside an If branch nobody imports."""
    branch = helper.make_graph(
        [helper.make_node("Constant", [], ["k"], name="inner",
                          value=numpy_helper.from_array(np.ones(4, np.float32)))],
        "branch", [], [helper.make_tensor_value_info("k", TensorProto.FLOAT, [4])])
    proto = _with_constant_node(helper.make_node("Constant", [], ["c"], name="const",
                                                 value=numpy_helper.from_array(
                                                     np.ones(4, np.float32))))
    cond = numpy_helper.from_array(np.array(True), "cond")
    proto.graph.initializer.append(cond)
    proto.graph.node.append(helper.make_node("If", ["cond"], ["unused"], name="if",
                                             then_branch=branch, else_branch=branch))
    return proto


def _hostile(kind: str, location: str) -> onnx.ModelProto:
    if kind == "sparse_initializer":
        proto = _sparse_initializer_model()
        _external(proto.graph.sparse_initializer[0].values, location, 8)
    elif kind == "sparse_value":
        proto = _sparse_value_model()
        _external(proto.graph.node[0].attribute[0].sparse_tensor.values, location, 8)
    elif kind == "sparse_indices":
        proto = _sparse_initializer_model()
        _external(proto.graph.sparse_initializer[0].indices, location, 16)
    else:
        proto = _subgraph_model()
        if_node = proto.graph.node[-1]
        _external(if_node.attribute[0].g.node[0].attribute[0].t, location)
    return proto


KINDS = ["sparse_initializer", "sparse_value", "sparse_indices", "subgraph_constant"]


@pytest.mark.parametrize("kind", KINDS)
def test_external_data_of_every_tensor_field_is_guarded(tmp_path: Path, watch_opens,  # noqa: F811
                                                        monkeypatch, kind: str) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.arange(4, dtype=np.float32).tobytes() * 4)
    path = folder / "model.onnx"
    path.write_bytes(_hostile(kind, "../secret.bin").SerializeToString())
    monkeypatch.chdir(folder)  # onnx.reference/onnxruntime would resolve against the cwd
    opened = watch_opens(secret)
    with pytest.raises(ModelLoadError, match="outside the model's folder") as info:
        bbp_ref.explain(path, X)
    assert "refusing" in str(info.value) and opened == []
    # the message is the same whether or not the file exists
    secret.unlink()
    with pytest.raises(ModelLoadError) as missing:
        bbp_ref.load(path)
    assert str(missing.value) == str(info.value)


def test_external_data_inside_the_folder_loads_for_sparse_tensors(tmp_path: Path) -> None:
    proto = _sparse_initializer_model()
    values = proto.graph.sparse_initializer[0].values
    (tmp_path / "values.bin").write_bytes(values.raw_data)
    _external(values, "values.bin", 8)
    path = tmp_path / "model.onnx"
    path.write_bytes(proto.SerializeToString())
    np.testing.assert_array_equal(bbp_ref.load(path).forward(np.zeros(4)), [0, 1, 0, 0])


def test_very_long_external_location_is_a_load_error(tmp_path: Path) -> None:
    proto = _sparse_initializer_model()
    _external(proto.graph.sparse_initializer[0].values, "a" * 6000, 8)
    path = tmp_path / "model.onnx"
    path.write_bytes(proto.SerializeToString())
    with pytest.raises(ModelLoadError, match="6000 characters") as info:
        bbp_ref.load(path)
    assert len(str(info.value)) < 400


def test_hard_linked_external_data_is_refused(tmp_path: Path) -> None:
    proto = _sparse_initializer_model()
    values = proto.graph.sparse_initializer[0].values
    outside = tmp_path / "outside.bin"
    outside.write_bytes(values.raw_data)
    folder = tmp_path / "model"
    folder.mkdir()
    os.link(outside, folder / "values.bin")
    _external(values, "values.bin", 8)
    (folder / "model.onnx").write_bytes(proto.SerializeToString())
    with pytest.raises(ModelLoadError, match="hard links"):
        bbp_ref.load(folder / "model.onnx")


# -- 2. unbounded work while importing -------------------------------------------------


def test_loop_with_a_huge_trip_count_is_refused_at_once() -> None:
    body = helper.make_graph(
        [helper.make_node("Identity", ["v"], ["v_out"]),
         helper.make_node("Identity", ["cond"], ["cond_out"])], "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [4])])
    proto = _with_constant_node(helper.make_node("Loop", ["trips", "", "v0"], ["c"],
                                                 name="loop", body=body))
    proto.graph.initializer.extend([
        numpy_helper.from_array(np.array(10**12, np.int64), "trips"),
        numpy_helper.from_array(np.zeros(4, np.float32), "v0")])
    with within(20), pytest.raises(ModelLoadError, match="'loop' \\(Loop\\)"):
        bbp_ref.load(proto)


def test_regex_on_constants_is_refused() -> None:
    proto = _with_constant_node(helper.make_node("Identity", ["f"], ["c"], name="ident"))
    proto.graph.node.insert(0, helper.make_node("RegexFullMatch", ["s"], ["m"], name="regex",
                                                pattern="(a+)+$"))
    proto.graph.node.insert(1, helper.make_node("Where", ["m", "one", "zero"], ["f"],
                                                name="where"))
    proto.graph.initializer.extend([
        helper.make_tensor("s", TensorProto.STRING, [4], [b"a" * 40 + b"!"] * 4),
        numpy_helper.from_array(np.ones(4, np.float32), "one"),
        numpy_helper.from_array(np.zeros(4, np.float32), "zero")])
    proto.opset_import[0].version = 20
    with within(20), pytest.raises(ModelLoadError, match="RegexFullMatch"):
        bbp_ref.load(proto)


def test_pool_with_a_huge_kernel_is_refused() -> None:
    on_constant = _with_constant_node(helper.make_node(
        "MaxPool", ["big"], ["p"], name="pool", kernel_shape=[2500, 2500]))
    on_constant.graph.node.insert(1, helper.make_node("Reshape", ["p", "shape"], ["c"]))
    on_constant.graph.node[0].output[0] = "p"
    on_constant.graph.initializer.extend([
        numpy_helper.from_array(np.zeros((1, 1, 2500, 2500), np.float32), "big"),
        numpy_helper.from_array(np.array([4], np.int64), "shape")])
    with within(20), pytest.raises(ModelLoadError, match="MaxPool"):
        bbp_ref.load(on_constant, max_bytes=2**30)
    on_data = model([node("AveragePool", ["x"], "y", name="pool", kernel_shape=[2500, 2500])],
                    ["N", 1, 2500, 2500])
    with within(20), pytest.raises(UnsupportedOpError, match="offsets, more than the limit"):
        bbp_ref.load(on_data)


# -- 3. memory driven by declarations -------------------------------------------------


def test_constant_of_shape_is_checked_before_allocating() -> None:
    proto = _with_constant_node(helper.make_node("ConstantOfShape", ["shape"], ["big"],
                                                 name="fill"))
    proto.graph.node.insert(1, helper.make_node("ReduceSum", ["big"], ["c"], keepdims=0,
                                                name="sum"))
    proto.graph.node[0].output[0] = "big"
    proto.graph.initializer.append(numpy_helper.from_array(np.array([16000, 16000, 4]),
                                                           "shape"))
    assert len(proto.SerializeToString()) < 600
    with within(20), pytest.raises(ModelLoadError, match="'fill' \\(ConstantOfShape\\)") as info:
        bbp_ref.load(proto)
    assert "byte budget" in str(info.value)


def test_matrix_products_of_constants_fold_whatever_their_ranks() -> None:
    """The budget estimate of a folded MatMul broadcasts only the axes before the last
    two (a [1, 3, 3, 2] @ [2, 5] table, as Swin v2's relative-position MLP writes it), and
    a folded Gemm's output is [M, N] after its transposes ([2, 3] @ [4, 3]^T): both fold,
    and the result is the product computed here (to float32 rounding: onnx.reference
    folds in the constants' type)."""
    rng = np.random.default_rng(7)
    coords, mlp_w, a, b = f32(rng, 1, 3, 3, 2), f32(rng, 2, 5), f32(rng, 2, 3), f32(rng, 4, 3)
    cases = [
        (model([node("MatMul", ["coords", "mlp_w"], "table"), node("Add", ["x", "table"], "y")],
               ["N", 3, 3, 5], {"coords": coords, "mlp_w": mlp_w}),
         f32(rng, 2, 3, 3, 5), coords.astype(np.float64) @ mlp_w),
        (model([node("Gemm", ["a", "b"], "g", transB=1), node("Add", ["x", "g"], "y")],
               ["N", 2, 4], {"a": a, "b": b}),
         f32(rng, 2, 2, 4), a.astype(np.float64) @ b.T),
    ]
    for proto, x, product in cases:
        np.testing.assert_allclose(bbp_ref.load(proto).forward(x), x + product, rtol=0,
                                   atol=1e-6)


@pytest.mark.parametrize("dims", [[100000, 100000], [4, 1_000_000_000]])
def test_huge_declared_input_shape_is_refused_at_load(dims) -> None:
    proto = model([node("Relu", ["x"], "y", name="relu")], [1, *dims])
    with within(20), pytest.raises(ModelLoadError, match="input 'x'.*byte budget"):
        bbp_ref.load(proto)


def test_conv_with_huge_pads_is_refused() -> None:
    rng = np.random.default_rng(0)
    proto = model([node("Conv", ["x", "W"], "y", name="conv", pads=[10**9, 10**9, 10**9, 10**9],
                        dilations=[10**8, 10**8])],
                  ["N", 1, 4, 4], {"W": f32(rng, 1, 1, 3, 3)})
    with within(20), pytest.raises(BBpError, match="byte budget"):
        bbp_ref.load(proto)


def test_byte_budget_from_the_environment_and_argument(monkeypatch) -> None:
    proto = model([node("Relu", ["x"], "y", name="relu")], [1, 1000])
    monkeypatch.setenv("BBP_MAX_BYTES", "4000")
    with pytest.raises(ModelLoadError, match="byte budget of 3.91 KiB"):
        bbp_ref.load(proto)
    assert bbp_ref.load(proto, max_bytes=10**6).forward(np.ones(1000)).sum() == 1000
    monkeypatch.setenv("BBP_MAX_BYTES", "lots")
    with pytest.raises(ModelLoadError, match="BBP_MAX_BYTES"):
        bbp_ref.load(proto)


def test_batch_too_large_for_the_budget_is_an_input_error() -> None:
    loaded = bbp_ref.load(mlp(), max_bytes=10_000)
    loaded.forward(np.ones((10, 4)))
    with pytest.raises(InputError, match="batch of 1000"):
        loaded.forward(np.ones((1000, 4)))


def test_model_file_size_is_checked_before_reading(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "big.onnx"
    with open(path, "wb") as file:  # sparse: 3 GiB declared, nothing written
        file.truncate(3 * 2**30)
    with within(5), pytest.raises(ModelLoadError, match="2 GiB"):
        bbp_ref.load(path)


def test_npy_header_claiming_huge_array(tmp_path: Path) -> None:
    path = tmp_path / "x.npy"
    with open(path, "wb") as file:
        np.lib.format.write_array_header_1_0(
            file, {"descr": "<f8", "fortran_order": False, "shape": (10**6, 10**6)})
        file.write(b"\0" * 64)
    model_path = tmp_path / "m.onnx"
    model_path.write_bytes(mlp().SerializeToString())
    code, err = _cli(["explain", str(model_path), str(path)])
    assert code == 2 and "byte budget" in err and err.count("\n") == 1


def test_zip_bomb_candidate(tmp_path: Path, monkeypatch) -> None:
    bomb = tmp_path / "c.npz"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        with archive.open("gradient.npy", "w", force_zip64=True) as member:
            np.lib.format.write_array_header_1_0(
                member, {"descr": "<f8", "fortran_order": False, "shape": (2**24,)})
            member.write(bytes(2**27))
    assert bomb.stat().st_size < 2**20
    model_path = tmp_path / "m.onnx"
    model_path.write_bytes(mlp().SerializeToString())
    x = tmp_path / "x.npy"
    np.save(x, X)
    monkeypatch.setenv("BBP_MAX_BYTES", str(2**26))
    code, err = _cli(["verify", str(model_path), str(x), str(bomb)])
    assert code == 2 and "uncompressed" in err and "byte budget" in err


# -- 4, 5. non-finite values in the checks ---------------------------------------------


def test_onnxruntime_inf_or_nan_is_a_mismatch() -> None:
    engine = np.array([1.0, 2.0, 3.0])
    for bad in (np.inf, np.nan, -np.inf):
        reference = np.array([1.0, bad, 3.0])
        assert not compare("y", engine, reference).ok
        assert not compare("y", reference, engine).ok
    assert compare("y", engine, engine + 1e-9).ok


def test_nan_residual_fails_the_checks() -> None:
    ok = np.zeros(2)
    for bad in (np.nan, np.inf):
        checks = Checks(ok, np.array([0.0, bad]), ok)
        assert not checks.passed and "FAILED" in checks.summary()
    assert Checks(ok, ok, ok).passed
    # a NaN output (a Clip with a NaN bound used to give one) is an infinite residual,
    # not 0: NaN compares false with every tolerance
    nan, one = np.array([np.nan]), np.array([1.0])
    for total, expected, magnitude in ((nan, one, one), (one, nan, nan), (one, one, nan),
                                       (np.array([np.inf]), one, np.array([np.inf]))):
        assert relative_residual(total, expected, magnitude)[0] == np.inf


def test_nan_clip_bound_is_refused_at_load() -> None:
    with_attribute = model([node("Clip", ["x"], "y", name="clip", min=float("nan"), max=6.0)],
                           ["N", 4], opset=6)
    with pytest.raises(ModelLoadError, match="'min' of node 'clip'.*NaN"):
        bbp_ref.load(with_attribute)
    with_input = model([node("Clip", ["x", "lo", "hi"], "y", name="clip")], ["N", 4],
                       {"lo": np.array(np.nan, np.float32), "hi": np.array(6.0, np.float32)})
    with pytest.raises(ModelLoadError, match="'clip' \\(Clip\\) has a NaN bound"):
        bbp_ref.load(with_input)


def test_golden_refuses_non_finite_fields(tmp_path: Path, monkeypatch) -> None:
    from bbp_ref.checks import oracle

    monkeypatch.setattr(oracle, "golden_fields",
                        lambda *a, **k: {"output": np.array([np.nan]), "target": np.array(0)})
    path = tmp_path / "m.onnx"
    path.write_bytes(mlp().SerializeToString())
    with pytest.raises(InputError, match="'output' is not finite"):
        oracle.golden([oracle.GoldenCase("m", path, X)], tmp_path / "out")
    assert not (tmp_path / "out").exists()


# -- 6, 7. overflow and subnormal inputs ---------------------------------------------


def _identity_double(bias: float) -> onnx.ModelProto:
    return model([node("Gemm", ["x", "W", "b"], "h", name="fc1", transB=1),
                  node("Relu", ["h"], "y", name="relu")], ["N", 4],
                 {"W": np.eye(4), "b": np.array([bias, 0.0, 0.0, 0.0])},
                 elem_type=TensorProto.DOUBLE)


def test_overflowing_input_names_the_node() -> None:
    with pytest.raises(InputError, match="node 'fc1' \\(Gemm\\) is not finite"):
        bbp_ref.explain(_identity_double(1.5e308), np.array([1e308, 0, 0, 0]), check=False)


@pytest.mark.parametrize("rule", ["abs", "signed", "uniform"])
def test_bias_near_the_float64_limit_still_explains(rule: str) -> None:
    e = bbp_ref.explain(_identity_double(1.5e308), np.array([0.5, 0, 0, 0]), rule=rule,
                        target=0, check=False)
    assert e.checks.passed
    assert e.bias == 1.5e308 and e.bias_attribution.sum() == pytest.approx(1.5e308, rel=1e-12)


@pytest.mark.parametrize("rule", ["abs", "signed"])
def test_subnormal_input_explains_with_completeness(rule: str) -> None:
    proto = model([node("Gemm", ["x", "W", "b"], "y", name="fc", transB=1)], ["N", 4],
                  {"W": np.array([[2.0, 1.0, -1.0, 3.0]], np.float32),
                   "b": np.array([0.5], np.float32)})
    e = bbp_ref.explain(proto, np.array([1e-310, 0.0, 0.0, 0.0]), rule=rule, check=False)
    assert e.checks.passed
    # the only non-zero input takes the whole bias (hand computation: |z| = (2e-310, 0, 0, 0))
    np.testing.assert_array_equal(e.bias_attribution, [0.5, 0.0, 0.0, 0.0])


# -- 8. sparse initializers -------------------------------------------------------------


@pytest.mark.parametrize("build", [_sparse_initializer_model, _sparse_value_model])
def test_sparse_tensors_are_densified(build) -> None:
    proto = build()
    x = np.array([[0.5, -3.0, 1.0, 1.0]], np.float32)
    expected = np.maximum(x + np.array([0, 1.0, 0, -2.0]), 0)
    import onnxruntime as ort

    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"x": x})[0], expected)
    e = bbp_ref.explain(proto, x[0], target=3)
    assert e.checks.passed and e.checks.onnxruntime.ok
    np.testing.assert_allclose(bbp_ref.load(proto).forward(x), expected)


def test_sparse_tensor_too_large_for_the_budget() -> None:
    proto = _sparse_initializer_model()
    proto.graph.sparse_initializer[0].dims[:] = [10**10]
    with pytest.raises(ModelLoadError, match="sparse initializer 's'.*byte budget"):
        bbp_ref.load(proto)


# -- 9. errors that escaped as "internal error" -----------------------------------------


def test_candidate_target_as_string_is_an_input_error() -> None:
    with pytest.raises(InputError, match="'target' field must hold integer"):
        bbp_ref.oracle.compare(mlp(), X, {"target": np.array("two"), "bias": np.zeros(())})


def test_golden_into_an_existing_file_or_read_only_folder(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    path.write_bytes(mlp().SerializeToString())
    x = tmp_path / "x.npy"
    np.save(x, X)
    blocker = tmp_path / "file"
    blocker.write_text("keep")
    code, err = _cli(["golden", str(blocker), str(path), str(x)])
    assert code == 2 and "cannot create the golden folder" in err and "internal" not in err
    assert blocker.read_text() == "keep"
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as root: a read-only folder is writable")
        code, err = _cli(["golden", str(locked), str(path), str(x)])
        assert code == 2 and "cannot write" in err
        assert list(locked.iterdir()) == []  # nothing half-written
    finally:
        locked.chmod(0o700)


def test_integrated_gradients_with_absurd_n_steps() -> None:
    with within(20), pytest.raises(InputError, match="n_steps=1000000000000"):
        bbp_ref.integrated_gradients(mlp(), X, method="riemann_left", n_steps=10**12)


@pytest.mark.parametrize("rule, message", [
    (lambda view: "abs", "must return a list of bbp_ref.Term"),
    (lambda view: (_ for _ in ()).throw(KeyError("boom")), "KeyError: 'boom'"),
    (lambda view: [Term(np.abs, [np.full(u.shape, np.nan) for u in view.operands])], "NaN"),
    (lambda view: [Term(lambda w: np.full(np.shape(w), np.nan),
                        [np.abs(u) for u in view.operands])], "NaN"),
], ids=["string", "raises", "nan_factors", "nan_coefficients"])
def test_custom_rule_misbehaving_is_a_rule_error(rule, message: str) -> None:
    with pytest.raises(RuleError, match=message) as info:
        bbp_ref.explain(mlp(), X, rule=rule, check=False)
    assert "node 'fc" in str(info.value)


# -- 11, 12. CLI output paths and terminal safety ---------------------------------------


def _cli(argv: list[str]) -> tuple[int, str]:
    """Run the CLI in a subprocess; its exit code and stderr."""
    result = subprocess.run([sys.executable, "-m", "bbp_ref.cli", *argv], capture_output=True,
                            text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(Path(bbp_ref.__file__)
                                                                 .parent.parent)})
    return result.returncode, result.stderr


def _saved_model(tmp_path: Path, proto: onnx.ModelProto) -> tuple[str, str]:
    path, x = tmp_path / "m.onnx", tmp_path / "x.npy"
    path.write_bytes(proto.SerializeToString())
    np.save(x, X)
    return str(path), str(x)


def test_out_writes_exactly_the_given_path(tmp_path: Path, capsys) -> None:
    m, x = _saved_model(tmp_path, mlp())
    out = tmp_path / "result"
    assert main(["explain", m, x, "--out", str(out)]) == 0
    assert out.is_file() and not (tmp_path / "result.npz").exists()
    assert f"saved        {out}" in capsys.readouterr().out
    with np.load(out) as archive:
        np.testing.assert_allclose(archive["bias"], bbp_ref.explain(m, X).bias)


@pytest.mark.parametrize("target", ["dir", "device", "symlink"])
def test_out_refuses_directories_devices_and_symlinks(tmp_path: Path, capsys,
                                                      target: str) -> None:
    m, x = _saved_model(tmp_path, mlp())
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = {"dir": tmp_path, "device": Path("/dev/full"), "symlink": tmp_path / "link"}[target]
    if target == "symlink":
        out.symlink_to(victim)
    assert main(["explain", m, x, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "refusing to write" in err and err.count("\n") == 1
    assert victim.read_text() == "precious"
    assert not Path(str(out) + ".npz").exists()


def test_out_member_names_are_sanitised(tmp_path: Path) -> None:
    proto = mlp()
    proto.graph.node[0].name = "fc1/../../x"
    m, x = _saved_model(tmp_path, proto)
    out = tmp_path / "r.npz"
    assert main(["explain", m, x, "--out", str(out)]) == 0
    with zipfile.ZipFile(out) as archive:
        names = archive.namelist()
    assert "layer_bias/fc1%2F..%2F..%2Fx.npy" in names
    assert all(n.count("/") <= 1 and ".." not in n.split("/")[0] for n in names)
    # the file is a verify-able candidate: the encoded name resolves to the node
    report = bbp_ref.oracle.compare(m, X, {"layer_bias/fc1%2F..%2F..%2Fx":
                                           bbp_ref.explain(m, X).layer_bias["fc1/../../x"]})
    assert report.passed


def test_node_names_are_escaped_on_the_terminal(tmp_path: Path, capsys) -> None:
    proto = mlp()
    proto.graph.node[0].name = "fc1\n\x1b[31mforged line"
    m, _ = _saved_model(tmp_path, proto)
    assert main(["nodes", m]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "forged" in out
    lines = out.splitlines()
    start = lines.index("canonical nodes (name, kind, op, per-example shape):")
    end = lines.index("tensors --wrt can name (type, shape):")
    assert end - start - 1 == len(bbp_ref.load(m).nodes)  # no forged line


# -- 13. onnxruntime unavailable ---------------------------------------------------------


def _old_opset_model() -> onnx.ModelProto:
    """A valid opset-6 Gemm model that onnxruntime no longer implements."""
    rng = np.random.default_rng(0)
    return model([node("Gemm", ["x", "W", "b"], "h", name="fc", transB=1, broadcast=1),
                  node("Relu", ["h"], "y", name="relu")], [2, 4],
                 {"W": f32(rng, 3, 4), "b": f32(rng, 3)}, opset=6, initializers_as_inputs=True)


def test_model_onnxruntime_cannot_load_is_explained(tmp_path: Path) -> None:
    proto = _old_opset_model()
    x = np.ones((2, 4))
    e = bbp_ref.explain(proto, x)
    assert isinstance(e.checks.onnxruntime, Unavailable)
    assert "onnxruntime cannot load the model" in e.checks.onnxruntime.reason
    assert "\n" not in e.checks.onnxruntime.reason
    assert e.checks.passed and "unavailable" in e.checks.summary()
    strict = bbp_ref.explain(proto, x, check="strict")
    assert not strict.checks.passed and "required" in strict.checks.summary()
    # the engine agrees with a hand computation of the same network
    W, b = (numpy_helper.to_array(t).astype(float) for t in proto.graph.initializer)
    np.testing.assert_allclose(e.logits, np.maximum(x @ W.T + b, 0), rtol=1e-12)
    m, xs = _saved_model(tmp_path, proto)
    np.save(xs, x)
    assert _cli(["explain", m, xs]) == (0, "")
    code, err = _cli(["explain", m, xs, "--strict"])
    assert code == 1 and err == ""


def test_check_mode() -> None:
    assert [check_mode(c) for c in (True, False, "strict")] == ["on", "off", "strict"]
    for bad in ("full-ish", None, 2):
        with pytest.raises(InputError, match="check must be"):
            check_mode(bad)


def test_onnxruntime_logs_nothing_on_stderr(tmp_path: Path) -> None:
    m, x = _saved_model(tmp_path, _old_opset_model())
    np.save(x, np.ones((2, 4)))
    code, err = _cli(["explain", m, x, "--strict"])
    assert err == "" and code == 1


# -- 14. float16 models --------------------------------------------------------------


def test_float16_model_passes_the_onnxruntime_check_and_catches_a_wrong_weight() -> None:
    rng = np.random.default_rng(3)
    weights = {"W1": rng.normal(size=(16, 8)).astype(np.float16),
               "b1": rng.normal(size=16).astype(np.float16),
               "W2": rng.normal(size=(5, 16)).astype(np.float16),
               "b2": rng.normal(size=5).astype(np.float16)}
    nodes = [node("Gemm", ["x", "W1", "b1"], "h", name="fc1", transB=1),
             node("Relu", ["h"], "r", name="relu"),
             node("Gemm", ["r", "W2", "b2"], "y", name="fc2", transB=1)]
    proto = model(nodes, ["N", 8], weights, elem_type=TensorProto.FLOAT16)
    x = rng.normal(size=(6, 8))
    e = bbp_ref.explain(proto, x)
    assert e.checks.onnxruntime.ok and e.checks.passed
    # the same check with float32's tolerances fails: the wider one is needed ...
    assert not compare("y", e.logits, _ort(proto, x)).ok
    # ... and still catches a weight changed by 5 % (onnxruntime sees it, the engine not)
    wrong = bbp_ref.load(proto)
    wrong.proto.graph.initializer[0].CopyFrom(numpy_helper.from_array(
        weights["W1"] * np.float16(1.05), "W1"))
    assert not bbp_ref.explain(wrong, x).checks.onnxruntime.ok


def _ort(proto: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x.astype(np.float16)})[0].astype(np.float64)


# -- 15. the onnx floor -------------------------------------------------------------------


def test_declared_floor_is_at_least_the_hardened_onnx() -> None:
    text = (Path(__file__).resolve().parent.parent / "pyproject.toml").read_text()
    assert '"onnx>=1.21.0"' in text
    major, minor = (int(n) for n in onnx.__version__.split(".")[:2])
    assert (major, minor) >= (1, 21)
