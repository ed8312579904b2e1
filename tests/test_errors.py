"""Every error path of the public API (`load`, `Model.forward`, `Model.jacobian`,
`explain`): each raises the right `BBpError` subclass with a message naming the cause,
never a stray KeyError/IndexError/ValueError from numpy or onnx."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from builders import f32, model, node
from onnx import TensorProto, external_data_helper, helper

import bbp_ref
from bbp_ref import (
    BBpError,
    InputError,
    ModelLoadError,
    RuleError,
    Term,
    UnsupportedOpError,
)

# -- models --------------------------------------------------------------------------


def mlp(seed: int = 0, batch: object = "N") -> onnx.ModelProto:
    """x[N, 4] -> Gemm fc1 (5) -> Relu -> Gemm fc2 (3)."""
    rng = np.random.default_rng(seed)
    return model(
        [node("Gemm", ["x", "W1", "b1"], "h", name="fc1", transB=1),
         node("Relu", ["h"], "r", name="relu"),
         node("Gemm", ["r", "W2", "b2"], "y", name="fc2", transB=1)],
        [batch, 4],
        {"W1": f32(rng, 5, 4), "b1": f32(rng, 5), "W2": f32(rng, 3, 5), "b2": f32(rng, 3)})


def conv_net(seed: int = 0) -> onnx.ModelProto:
    """x[N, 1, 4, 4] -> Conv -> Relu -> MaxPool -> Flatten -> Gemm (3)."""
    rng = np.random.default_rng(seed)
    return model(
        [node("Conv", ["x", "W", "B"], "c", name="conv", pads=[1, 1, 1, 1]),
         node("Relu", ["c"], "r", name="relu"),
         node("MaxPool", ["r"], "p", name="pool", kernel_shape=[2, 2], strides=[2, 2]),
         node("Flatten", ["p"], "f", name="flatten"),
         node("Gemm", ["f", "W2", "b2"], "y", name="fc", transB=1)],
        ["N", 1, 4, 4],
        {"W": f32(rng, 2, 1, 3, 3), "B": f32(rng, 2), "W2": f32(rng, 3, 8), "b2": f32(rng, 3)})


X = np.array([0.5, -1.0, 2.0, 0.25])
BATCH = np.stack([X, -X, 2 * X])


# -- load: unreadable models ---------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.onnx"
    with pytest.raises(ModelLoadError, match="not found") as info:
        bbp_ref.load(path)
    assert str(path) in str(info.value)
    with pytest.raises(ModelLoadError, match="not found"):
        bbp_ref.explain(str(path), X)


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="is a directory") as info:
        bbp_ref.load(tmp_path)
    assert str(tmp_path) in str(info.value)


@pytest.mark.parametrize("data", [b"", b"\x00" * 64, b"not an onnx model at all\n",
                                  np.random.default_rng(7).bytes(1000)],
                         ids=["empty", "zeros", "text", "random"])
def test_not_a_model(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "junk.onnx"
    path.write_bytes(data)
    with pytest.raises(ModelLoadError, match="not an ONNX model|invalid ONNX model") as info:
        bbp_ref.load(path)
    assert "junk.onnx" in str(info.value) or "invalid ONNX model" in str(info.value)
    with pytest.raises(ModelLoadError, match="not an ONNX model|invalid ONNX model"):
        bbp_ref.load(data)


def _only_bbp_errors(data: bytes, x: np.ndarray) -> str:
    """Load and explain ``data``; any exception other than a BBpError fails."""
    try:
        loaded = bbp_ref.load(data)
        bbp_ref.explain(loaded, x, check=False)
    except BBpError as exc:
        assert str(exc)
        return type(exc).__name__
    return "ok"


@pytest.mark.parametrize("make, x", [(mlp, X), (conv_net, np.ones((1, 4, 4)))],
                         ids=["mlp", "conv"])
def test_truncated_and_bit_flipped(make, x: np.ndarray) -> None:
    data = make().SerializeToString()
    assert _only_bbp_errors(data, x) == "ok"
    outcomes = set()
    with np.errstate(all="ignore"):
        for cut in range(0, len(data), 3):
            outcomes.add(_only_bbp_errors(data[:cut], x))
        for position in range(len(data)):
            for mask in (0x01, 0x80) if position % 2 else (0x10, 0xFF):
                flipped = bytearray(data)
                flipped[position] ^= mask
                outcomes.add(_only_bbp_errors(bytes(flipped), x))
    assert {"ok", "ModelLoadError"} <= outcomes


@pytest.mark.parametrize("obj", [None, 3, 2.5, ["model.onnx"], {"graph": 1}, object()])
def test_wrong_type(obj: object) -> None:
    with pytest.raises(ModelLoadError, match="cannot load a model from") as info:
        bbp_ref.load(obj)
    assert type(obj).__name__ in str(info.value)


def test_two_data_inputs_without_a_binding() -> None:
    """Several inputs load; explaining needs inputs= for all but one (test_binding.py)."""
    proto = mlp()
    proto.graph.input.append(helper.make_tensor_value_info("x2", TensorProto.FLOAT, ["N", 4]))
    loaded = bbp_ref.load(proto)
    with pytest.raises(InputError, match="several inputs not given") as info:
        bbp_ref.explain(loaded, np.ones(4, np.float32))
    assert "x " in str(info.value) and "x2 " in str(info.value)


def test_no_data_input() -> None:
    proto = mlp()
    del proto.graph.input[:]
    with pytest.raises(ModelLoadError):
        bbp_ref.load(proto)


def test_no_float_output() -> None:
    proto = mlp()
    proto.graph.node.append(helper.make_node("ArgMax", ["y"], ["k"], name="argmax", axis=1))
    del proto.graph.output[:]
    proto.graph.output.append(helper.make_tensor_value_info("k", TensorProto.INT64, ["N", 1]))
    with pytest.raises(ModelLoadError, match="no float output") as info:
        bbp_ref.load(proto)
    assert "'k'" in str(info.value)


def test_integer_input() -> None:
    proto = model([node("Cast", ["x"], "y", name="cast", to=TensorProto.FLOAT)], ["N", 4],
                  elem_type=TensorProto.INT64)
    proto.graph.output[0].type.tensor_type.elem_type = TensorProto.FLOAT
    with pytest.raises(ModelLoadError, match="input 'x' has element type int64"):
        bbp_ref.load(proto)


def test_unknown_output_name() -> None:
    with pytest.raises(InputError, match="'logits' is no tensor of the model"):
        bbp_ref.load(mlp(), output="logits")


def test_output_not_depending_on_input() -> None:
    proto = model([node("Relu", ["x"], "r", name="relu"),
                   node("Identity", ["c"], "y", name="const_out")], ["N", 4],
                  {"c": np.ones(4, np.float32)})
    with pytest.raises(ModelLoadError, match="does not depend on the model input"):
        bbp_ref.load(proto)


@pytest.mark.parametrize("opset", [1, 5])
def test_opset_too_old(opset: int) -> None:
    proto = model([node("Relu", ["x"], "y", name="relu")], ["N", 4], opset=opset)
    with pytest.raises(ModelLoadError, match=f"opset {opset}; bbp_ref supports opsets 6"):
        bbp_ref.load(proto)


def test_opset_too_new() -> None:
    proto = mlp()
    proto.opset_import[0].version = onnx.defs.onnx_opset_version() + 1
    with pytest.raises(ModelLoadError, match="bbp_ref supports opsets"):
        bbp_ref.load(proto)


def test_invalid_graph() -> None:
    proto = mlp()
    proto.graph.node[1].input[0] = "missing_tensor"
    with pytest.raises(ModelLoadError, match="invalid ONNX model|missing_tensor"):
        bbp_ref.load(proto)


def test_undecodable_initializer() -> None:
    proto = mlp()
    proto.graph.initializer[1].dims[0] = 6  # b1 keeps 5 values
    with pytest.raises(BBpError, match="b1"):
        bbp_ref.load(proto)


# -- load: unsupported ops (all rejected at load time) -------------------------------


def _gemm_then(*nodes: onnx.NodeProto, **inits: np.ndarray) -> onnx.ModelProto:
    """x[N, 4] -> Gemm fc (4) -> nodes ... -> y."""
    rng = np.random.default_rng(3)
    return model([node("Gemm", ["x", "W", "b"], "h", name="fc", transB=1), *nodes], ["N", 4],
                 {"W": f32(rng, 4, 4), "b": f32(rng, 4), **inits})


def _unsupported_models() -> list[tuple[str, onnx.ModelProto, str, str, str]]:
    """(id, model, op type, node name, what the message must also say)."""
    rng = np.random.default_rng(5)
    pads = np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)
    conv_w = f32(rng, 2, 1, 3, 3)
    custom = _gemm_then(node("Identity", ["h"], "y", name="frob"))
    custom.graph.node[1].op_type, custom.graph.node[1].domain = "Frobnicate", "com.example"
    custom.opset_import.append(helper.make_opsetid("com.example", 1))
    maxpool_indices = model(
        [helper.make_node("MaxPool", ["x"], ["p", "idx"], name="pool", kernel_shape=[2, 2],
                          strides=[2, 2]),
         node("Cast", ["idx"], "ci", name="cast", to=TensorProto.FLOAT),
         node("Add", ["p", "ci"], "y", name="add")], ["N", 1, 4, 4])
    bn_stats = {"g": np.ones(4, np.float32), "be": np.zeros(4, np.float32),
                "m": np.zeros(4, np.float32), "v": np.ones(4, np.float32)}
    return [
        ("sign", _gemm_then(node("Sign", ["h"], "y", name="act")), "Sign", "act",
         "not supported"),
        ("softmax_batch_axis", _gemm_then(node("Softmax", ["h"], "s", name="sm", axis=0),
                                          node("Relu", ["s"], "y", name="relu")),
         "Softmax", "sm", "batch axis"),
        ("mul_data_ranks", model([node("Unsqueeze", ["x", "ax"], "u", name="unsq"),
                                  node("Mul", ["x", "u"], "y", name="outer")], ["N", 3],
                                 {"ax": np.array([1], np.int64)}),
         "Mul", "outer", "different ranks"),
        ("matmul_data_rank2", model([node("MatMul", ["x", "x"], "y", name="xx")], ["N", 3]),
         "MatMul", "xx", "same rank >= 3"),
        ("custom_domain", custom, "Frobnicate", "frob", "com.example"),
        # every Pad mode is supported (docs/math.md §7.3), but not of the batch axis
        ("pad_batch_axis", model([node("Pad", ["x", "pads"], "p", name="pad"),
                                  node("Conv", ["p", "w"], "y", name="conv")],
                                 ["N", 1, 4, 4], {"pads": np.roll(pads, -2), "w": conv_w}),
         "Pad", "pad", "batch axis"),
        ("gather_data_indices", model([node("Cast", ["x"], "i", to=TensorProto.INT64),
                                       node("Gather", ["x", "i"], "y", name="gather",
                                            axis=1)], ["N", 4]),
         "Cast", "cast_i", "not piecewise linear"),
        ("transpose_batch", model([node("Transpose", ["x"], "y", name="tr", perm=[1, 0, 2])],
                                  ["N", 3, 4]),
         "Transpose", "tr", "batch axis"),
        ("flatten_axis0", model([node("Flatten", ["x"], "y", name="flat", axis=0)], ["N", 3, 4]),
         "Flatten", "flat", "batch axis"),
        ("reshape_batch", model([node("Reshape", ["x", "shape"], "y", name="rs")], ["N", 3, 4],
                                {"shape": np.array([-1, 4], np.int64)}),
         "Reshape", "rs", "batch axis"),
        ("batchnorm_training", model(
            [helper.make_node("BatchNormalization", ["x", "g", "be", "m", "v"],
                              ["y", "rm", "rv"], name="bn", training_mode=1)],
            ["N", 4], bn_stats, opset=15),
         "BatchNormalization", "bn", "training mode"),
        ("dropout_training", _gemm_then(node("Dropout", ["h", "ratio", "train"], "y",
                                             name="drop"),
                                        ratio=np.array(0.5, np.float32),
                                        train=np.array(True)),
         "Dropout", "drop", "training_mode"),
        ("maxpool_indices", maxpool_indices, "MaxPool", "pool", "Indices"),
    ]


@pytest.mark.parametrize("case", _unsupported_models(), ids=lambda case: case[0])
def test_unsupported_op_fails_at_load(case) -> None:
    _, proto, op_type, node_name, detail = case
    onnx.checker.check_model(proto)  # the models are valid ONNX, just not supported
    with pytest.raises(UnsupportedOpError) as info:
        bbp_ref.load(proto)
    error = info.value
    assert (error.op_type, error.node_name) == (op_type, node_name)
    message = str(error)
    assert op_type in message and repr(node_name) in message
    assert detail in message


def test_unsupported_op_in_dynamic_model_fails_at_first_input() -> None:
    proto = model([node("Sign", ["x"], "y", name="act")], ["N", "D"])
    loaded = bbp_ref.load(proto)  # the per-example shape is unknown until an input comes
    with pytest.raises(UnsupportedOpError, match="Sign in node 'act'"):
        loaded.forward(np.ones(3))


# -- load: external data -------------------------------------------------------------

_WATCHED: set[str] = set()
_OPENED: list[str] = []


def _audit(event: str, args: tuple) -> None:
    """Records every attempt to open a watched file (builtins.open, io.open, os.open,
    pathlib all raise the "open" audit event before touching the file)."""
    if _WATCHED and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        path = os.path.realpath(os.fsdecode(args[0]))
        if path in _WATCHED:
            _OPENED.append(path)


sys.addaudithook(_audit)


@pytest.fixture
def watch_opens():
    """``watch(path)``: start recording opens of ``path``; returns the record list."""

    def watch(path: Path) -> list[str]:
        _WATCHED.add(os.path.realpath(path))
        return _OPENED

    yield watch
    _WATCHED.clear()
    _OPENED.clear()


def _save_external(proto: onnx.ModelProto, folder: Path, location: str = "weights.bin") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)  # save_model moves the tensors of the proto it is given out
    onnx.save_model(copy, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=location, size_threshold=0)
    return path


def _relocate(path: Path, location: str, offset: str | None = None) -> None:
    """Point every external tensor of the model file at ``path`` to ``location``."""
    proto = onnx.load(str(path), load_external_data=False)
    for tensor in external_data_helper._get_all_tensors(proto):
        if external_data_helper.uses_external_data(tensor):
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = location
                if entry.key == "offset" and offset is not None:
                    entry.value = offset
    path.write_bytes(proto.SerializeToString())


def test_external_data_in_folder_loads(tmp_path: Path) -> None:
    proto = mlp()
    path = _save_external(proto, tmp_path / "model")
    assert (tmp_path / "model" / "weights.bin").stat().st_size > 0
    assert not onnx.load(str(path), load_external_data=False).graph.initializer[0].raw_data
    from_file = bbp_ref.load(path)
    np.testing.assert_array_equal(from_file.forward(BATCH), bbp_ref.load(proto).forward(BATCH))
    a = bbp_ref.explain(path, X, check=False)
    b = bbp_ref.explain(proto, X, check=False)
    np.testing.assert_array_equal(a.bias_attribution, b.bias_attribution)


def test_audit_hook_sees_opens(tmp_path: Path, watch_opens) -> None:
    """The method used below to prove a file is never read does see reads."""
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"\x00" * 16)
    opened = watch_opens(secret)
    secret.read_bytes()
    with open(secret, "rb"):
        pass
    os.close(os.open(secret, os.O_RDONLY))
    assert len(opened) == 3


@pytest.mark.parametrize("where", ["parent", "dotdot_inside", "absolute", "symlink"])
def test_external_data_outside_folder_refused_unread(tmp_path: Path, watch_opens,
                                                     where: str) -> None:
    folder = tmp_path / "model"
    path = _save_external(mlp(), folder)
    secret = tmp_path / "secret.bin"
    secret.write_bytes((folder / "weights.bin").read_bytes())  # valid data: only refusal fails
    location = {"parent": "../secret.bin", "dotdot_inside": "sub/../../secret.bin",
                "absolute": str(secret), "symlink": "link.bin"}[where]
    if where == "symlink":
        (folder / "link.bin").symlink_to(secret)
    _relocate(path, location)
    opened = watch_opens(secret)
    with pytest.raises(ModelLoadError, match="outside the model's folder") as info:
        bbp_ref.load(path)
    assert location in str(info.value) and "refusing" in str(info.value)
    assert opened == []
    with pytest.raises(ModelLoadError, match="outside the model's folder"):
        bbp_ref.explain(str(path), X)
    assert opened == []


def test_external_data_missing_file(tmp_path: Path) -> None:
    path = _save_external(mlp(), tmp_path)
    (tmp_path / "weights.bin").unlink()
    with pytest.raises(ModelLoadError, match="'weights.bin' not found"):
        bbp_ref.load(path)


def test_external_data_truncated_file(tmp_path: Path) -> None:
    path = _save_external(mlp(), tmp_path)
    weights = tmp_path / "weights.bin"
    weights.write_bytes(weights.read_bytes()[:40])
    with pytest.raises(ModelLoadError):
        bbp_ref.load(path)


@pytest.mark.parametrize("location, offset", [("we\x00ights.bin", None),
                                              ("weights.bin", "not-a-number")],
                         ids=["nul_in_location", "bad_offset"])
def test_external_data_malformed_entry(tmp_path: Path, location: str, offset: str | None) -> None:
    path = _save_external(mlp(), tmp_path)
    _relocate(path, location, offset)
    with pytest.raises(ModelLoadError, match="external data"):
        bbp_ref.load(path)


def test_external_data_refs_in_bytes_or_proto(tmp_path: Path) -> None:
    path = _save_external(mlp(), tmp_path)
    unloaded = onnx.load(str(path), load_external_data=False)
    with pytest.raises(ModelLoadError, match="external data"):
        bbp_ref.load(unloaded)
    with pytest.raises(ModelLoadError, match="cannot refer to external data"):
        bbp_ref.load(unloaded.SerializeToString())
    with pytest.raises(ModelLoadError, match="external data"):
        bbp_ref.explain(unloaded, X)


# -- inputs to forward / jacobian / explain ------------------------------------------

CALLS = {
    "forward": lambda m, x: m.forward(x),
    "jacobian": lambda m, x: m.jacobian(x),
    "explain": lambda m, x: bbp_ref.explain(m, x, check=False),
}

BAD_INPUTS = [
    ("wrong_shape", np.ones(5), "does not match the model input"),
    ("wrong_batch_shape", np.ones((2, 3)), "does not match the model input"),
    ("rank_too_high", np.ones((2, 2, 4)), "does not match the model input"),
    ("scalar", np.float64(1.0), "does not match the model input"),
    ("int", np.ones(4, np.int64), "dtype int64"),
    ("bool", np.ones(4, bool), "dtype bool"),
    ("complex", np.ones(4, complex), "dtype complex128"),
    ("object", np.array([1.0, None, 2.0, 3.0], dtype=object), "dtype object"),
    ("strings", np.array(["1", "2", "3", "4"]), "dtype <U1"),
    ("ragged", [[1.0, 2.0], [3.0]], "not an array|dtype object"),
    ("nan", np.array([0.0, np.nan, 1.0, 2.0]), "NaN"),
    ("inf", np.array([0.0, np.inf, 1.0, 2.0]), "infinite"),
    ("nan_in_batch", np.vstack([X, [np.nan, 0, 0, 0]]), "NaN"),
    ("empty_batch", np.zeros((0, 4)), "empty"),
]


@pytest.mark.parametrize("call", sorted(CALLS))
@pytest.mark.parametrize("case", BAD_INPUTS, ids=lambda case: case[0])
def test_bad_input(call: str, case) -> None:
    _, x, message = case
    loaded = bbp_ref.load(mlp())
    with pytest.raises(InputError, match=message):
        CALLS[call](loaded, x)


def test_bad_input_shape_names_axis() -> None:
    loaded = bbp_ref.load(conv_net())
    with pytest.raises(InputError, match=r"\[1, 4, 5\].*\['N', 1, 4, 4\].*axis 2"):
        loaded.forward(np.ones((1, 4, 5)))


def test_graph_of_dynamic_model_before_input() -> None:
    loaded = bbp_ref.load(model([node("Relu", ["x"], "y", name="relu")], ["N", "D"]))
    with pytest.raises(InputError, match="dynamic"):
        _ = loaded.nodes


# -- targets ---------------------------------------------------------------------------


@pytest.mark.parametrize("target, x, message", [
    (3, X, r"target \[3\] is out of range for an output of 3"),
    (-1, X, r"target \[-1\] is out of range"),
    (10**12, X, "out of range"),
    ([0, 3, 1], BATCH, r"target \[0, 3, 1\] is out of range"),
    (1.0, X, "target must be an integer index, got 1.0"),
    (np.float32(2), X, "must be an integer index"),
    ("1", X, "must be an index, a list of indices or .all., got .1."),
    (True, X, "must be an integer index"),
    ([0, 1], BATCH, r"one per example \(3\), got shape \[2\]"),
    ([0, 1, 2, 0], BATCH, r"one per example \(3\), got shape \[4\]"),
    ([[0, 1, 2]], BATCH, r"got shape \[1, 3\]"),
    ([[1]], X, r"a list for one example or an array \[N, T\] for a batch of N = 1, "
                r"got shape \[1, 1\]"),
    ([[0, 1], [1, 2]], BATCH, r"array \[N, T\] for a batch of N = 3, got shape \[2, 2\]"),
    ([[0, 3], [1, 2], [0, 0]], BATCH, r"target \[\[0, 3\], \[1, 2\], \[0, 0\]\] is out of range"),
    ([], X, "targets must be integer indices"),
    ("all!", X, "an index, a list of indices or 'all'"),
], ids=["too_big", "negative", "huge", "batch_out_of_range", "float", "np_float", "string",
        "bool", "too_few", "too_many", "2d", "2d_for_single", "rows_for_batch",
        "several_out_of_range", "empty_list", "bad_string"])
def test_bad_target(target: object, x: np.ndarray, message: str) -> None:
    with pytest.raises(InputError, match=message):
        bbp_ref.explain(mlp(), x, target=target, check=False)


@pytest.mark.parametrize("check", ["fast", "FULL", 1, None])
def test_bad_check_mode(check: object) -> None:
    with pytest.raises(InputError, match=r"check must be True, False or one of \['full', "
                       r"'strict'\], got"):
        bbp_ref.explain(mlp(), X, check=check)


def test_good_targets() -> None:
    e = bbp_ref.explain(mlp(), BATCH, target=np.array([2, 0, 1]), check=False)
    assert e.target.tolist() == [2, 0, 1]
    assert int(bbp_ref.explain(mlp(), X, target=np.int32(1), check=False).target) == 1


# -- rules -----------------------------------------------------------------------------


@pytest.mark.parametrize("rule, message", [
    ("bias.1", "unknown rule 'bias.1'"),
    ("ABS", "unknown rule 'ABS'"),
    ("", "unknown rule ''"),
    (3, "rule must be a name, a Rule or a callable, not int"),
    (None, "not NoneType"),
    (["abs", "bias.2"], "unknown rule 'bias.2'"),
    ([["abs"]], "not list"),
    ([], "rule is an empty list"),
])
def test_bad_rule(rule: object, message: str) -> None:
    with pytest.raises(InputError, match=message):
        bbp_ref.explain(mlp(), X, rule=rule, check=False)


def my_abs(view: bbp_ref.NodeView) -> list[Term]:
    """The built-in ``abs`` rule, written as a user's callable."""
    return [Term(np.abs, [np.abs(u) for u in view.operands])]


def test_custom_rule_matches_abs() -> None:
    x = np.random.default_rng(11).normal(size=(5, 1, 4, 4))
    builtin = bbp_ref.explain(conv_net(), x, rule="abs", check=False)
    custom = bbp_ref.explain(conv_net(), x, rule=my_abs, check=False)
    assert custom.rule == "my_abs"
    assert np.abs(builtin.bias_attribution).sum() > 0
    np.testing.assert_allclose(custom.bias_attribution, builtin.bias_attribution,
                               rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(custom.bias_attribution.reshape(5, -1).sum(axis=1),
                               custom.bias, rtol=1e-10)


@pytest.mark.parametrize("terms, message", [
    (lambda v: [Term(np.abs, [-np.abs(u) - 1 for u in v.operands])],
     "negative operand factor"),
    (lambda v: [Term(np.abs, [np.abs(u) for u in v.operands], rows=-np.ones(1))],
     "negative operand factor or row weight"),
    (lambda v: [Term(lambda w: -np.abs(w) - 1, [np.abs(u) for u in v.operands])],
     "to negative values"),
    (lambda v: [], "returned no terms"),
    (lambda v: [Term(np.abs, [np.abs(u) for u in v.operands] * 2)], "operand factors"),
], ids=["negative_operands", "negative_rows", "negative_coefficients", "no_terms",
        "wrong_operand_count"])
def test_custom_rule_broken(terms, message: str) -> None:
    with pytest.raises(RuleError, match=message) as info:
        bbp_ref.explain(mlp(), X, rule=terms, check=False)
    assert "node 'fc" in str(info.value)


# -- layers ----------------------------------------------------------------------------


@pytest.mark.parametrize("layers, message", [
    (["fc3"], "layer 'fc3' is not a node with a bias"),
    ("nope", "layer 'nope'"),
    (["fc1", "relu"], "layer 'relu' is not a node with a bias"),
    (["x"], "layer 'x'"),
    ([""], "layer ''"),
    (3, "layers must be"),
    ([["fc1"]], "layers must be"),
    ([None], "layers must be"),
], ids=["unknown", "unknown_str", "gate", "input", "empty_name", "int", "nested", "none"])
def test_bad_layers(layers: object, message: str) -> None:
    with pytest.raises(InputError, match=message) as info:
        bbp_ref.explain(mlp(), X, layers=layers, check=False)
    if "layer '" in message:
        assert "choose from" in str(info.value) and "'fc1'" in str(info.value)


def test_good_layers() -> None:
    e = bbp_ref.explain(mlp(), X, layers="fc2", check=False)
    assert e.layers == ("fc2",)
    np.testing.assert_allclose(e.bias_attribution.sum(), e.layer_bias["fc2"], rtol=1e-10)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_weights_are_refused_at_load(bad: float) -> None:
    proto = mlp()
    weights = onnx.numpy_helper.to_array(proto.graph.initializer[0]).copy()
    weights.flat[3] = bad
    proto.graph.initializer[0].CopyFrom(
        onnx.numpy_helper.from_array(weights, proto.graph.initializer[0].name))
    with pytest.raises(ModelLoadError, match="NaN or infinite"):
        bbp_ref.load(proto)


def test_slicing_part_of_the_batch_is_refused() -> None:
    sliced = model([node("Slice", ["x", "starts", "ends", "axes"], "y", name="batch_slice")],
                   ["N", 4], {"starts": np.array([0]), "ends": np.array([2]),
                              "axes": np.array([0])})
    with pytest.raises(UnsupportedOpError, match="batch_slice"):
        bbp_ref.load(sliced)
    whole = model([node("Slice", ["x", "starts", "ends", "axes"], "s", name="whole"),
                   node("Relu", ["s"], "y", name="relu")],
                  ["N", 4], {"starts": np.array([0]), "ends": np.array([2**63 - 1]),
                             "axes": np.array([0])})
    x = np.arange(12, dtype=np.float32).reshape(3, 4) - 5
    np.testing.assert_array_equal(bbp_ref.load(whole).forward(x), np.maximum(x, 0))
