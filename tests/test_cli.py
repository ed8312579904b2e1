"""The ``bbp-ref`` command: explain and nodes, on the embedded default model and on a
given one; every error exits with code 2 and one line on stderr, never a traceback."""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from builders import f32, model, node

import bbp_ref
from bbp_ref.cli import _parser, main
from bbp_ref.defaults import DEFAULT_MODEL, DEFAULT_SAMPLE

DATA = Path(bbp_ref.__file__).parent / "data"
HAS_DEFAULT = (DATA / DEFAULT_MODEL).is_file() and (DATA / DEFAULT_SAMPLE).is_file()
needs_default = pytest.mark.skipif(not HAS_DEFAULT, reason="the embedded default model is "
                                   "not built yet")

X = np.array([0.5, -1.0, 2.0, 0.25], np.float32)


def mlp() -> onnx.ModelProto:
    """x[N, 4] -> Gemm fc1 (5) -> Relu -> Gemm fc2 (3)."""
    rng = np.random.default_rng(0)
    return model(
        [node("Gemm", ["x", "W1", "b1"], "h", name="fc1", transB=1),
         node("Relu", ["h"], "r", name="relu"),
         node("Gemm", ["r", "W2", "b2"], "y", name="fc2", transB=1)],
        ["N", 4],
        {"W1": f32(rng, 5, 4), "b1": f32(rng, 5), "W2": f32(rng, 3, 5), "b2": f32(rng, 3)})


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    """A small model, one example and a batch, as files."""
    onnx.save_model(mlp(), str(tmp_path / "mlp.onnx"))
    np.save(tmp_path / "x.npy", X)
    np.save(tmp_path / "batch.npy", np.stack([X, -X, 2 * X]))
    return {"model": str(tmp_path / "mlp.onnx"), "x": str(tmp_path / "x.npy"),
            "batch": str(tmp_path / "batch.npy"), "dir": str(tmp_path)}


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# -- explain and nodes -----------------------------------------------------------------


@needs_default
def test_explain_default_model(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "explain")
    assert (code, err) == (0, "")
    assert DEFAULT_MODEL in out
    assert "f_t(x) =" in out and "sum B(x) =" in out and "rule         abs" in out
    assert "onnxruntime max |diff|" in out and "checks                  passed" in out


@needs_default
def test_nodes_default_model(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "nodes")
    assert (code, err) == (0, "")
    assert "Conv" in out and "Gemm" in out and "affine" in out and "gate" in out


def test_explain_model_and_input(capsys: pytest.CaptureFixture[str], files) -> None:
    code, out, err = run(capsys, "explain", files["model"], files["x"])
    assert (code, err) == (0, "")
    expected = bbp_ref.explain(files["model"], X.astype(np.float64), check=False)
    assert f"target {int(expected.target)} " in out
    assert f"f_t(x) = {float(expected.output):.6g}" in out
    assert "rule         abs" in out and "checks                  passed" in out
    assert "onnxruntime max |diff|" in out


def test_explain_full_check(capsys: pytest.CaptureFixture[str], files) -> None:
    code, out, err = run(capsys, "explain", files["model"], files["x"], "--full-check")
    assert (code, err) == (0, "")
    assert "linear-pass residual    " in out and "skipped" not in out
    assert "onnxruntime max |diff|" in out and "checks                  passed" in out
    code, out, _ = run(capsys, "explain", files["model"], files["x"])
    assert "linear-pass residual    skipped (check='full' runs it)" in out


def test_explain_options_and_out(capsys: pytest.CaptureFixture[str], files) -> None:
    result = Path(files["dir"]) / "result.npz"
    code, out, err = run(capsys, "explain", files["model"], files["x"], "--target", "1",
                         "--rule", "signed", "--layers", "fc2", "--out", str(result),
                         "--no-check")
    assert (code, err) == (0, "")
    assert "target 1 " in out and "rule         signed" in out
    assert "onnxruntime             skipped" in out and f"saved        {result}" in out
    expected = bbp_ref.explain(files["model"], X, target=1, rule="signed", layers=["fc2"],
                               check=False)
    with np.load(result, allow_pickle=False) as saved:
        assert set(saved.files) == {
            "input", "output", "target", "gradient", "gradient_x_input", "bias",
            "bias_attribution/signed", "logits", "layer_bias/fc1", "layer_bias/fc2",
            "meta/layers", "meta/rule", "meta/output", "meta/model", "meta/model_sha256",
            "meta/versions"}
        assert int(saved["target"]) == 1 and str(saved["meta/rule"]) == "signed"
        assert saved["meta/layers"].tolist() == ["fc2"] and str(saved["meta/output"]) == "y"
        for key in ("output", "gradient", "bias", "logits"):
            np.testing.assert_array_equal(saved[key], getattr(expected, key))
        np.testing.assert_array_equal(saved["bias_attribution/signed"],
                                      expected.bias_attribution)
        np.testing.assert_array_equal(saved["input"], X)
        assert saved["bias_attribution/signed"].shape == (4,)
        np.testing.assert_allclose(saved["bias_attribution/signed"].sum(),
                                   saved["layer_bias/fc2"], rtol=1e-10)
        np.testing.assert_allclose(saved["layer_bias/fc1"] + saved["layer_bias/fc2"],
                                   saved["bias"], rtol=1e-12)
        digest = hashlib.sha256(Path(files["model"]).read_bytes()).hexdigest()
        assert str(saved["meta/model_sha256"]) == digest
        versions = json.loads(str(saved["meta/versions"]))
        assert versions["bbp_ref"] == bbp_ref.__version__ and versions["onnx"] == onnx.__version__
    # the file is a candidate that verify accepts (the layers come from meta/layers)
    code, out, err = run(capsys, "verify", files["model"], files["x"], str(result))
    assert (code, err) == (0, "") and "PASSED" in out
    assert "bias_attribution/signed" in out and "meta/" not in out


def test_out_is_written_to_exactly_the_given_path(capsys, files) -> None:
    target = Path(files["dir"]) / "result.arrays"  # numpy.savez alone would add ".npz"
    code, _, err = run(capsys, "explain", files["model"], files["batch"], "--out", str(target))
    assert (code, err) == (0, "")
    assert target.is_file() and not Path(str(target) + ".npz").exists()
    assert run(capsys, "verify", files["model"], files["batch"], str(target))[0] == 0


def test_verify_fails_on_a_changed_field_or_another_model(capsys, files, tmp_path) -> None:
    result = tmp_path / "r.npz"
    assert run(capsys, "explain", files["model"], files["x"], "--out", str(result))[0] == 0
    with np.load(result, allow_pickle=False) as saved:
        fields = dict(saved)
    fields["bias_attribution/abs"] = fields["bias_attribution/abs"] + 1e-3
    np.savez(tmp_path / "changed.npz", **fields)
    code, out, _ = run(capsys, "verify", files["model"], files["x"],
                       str(tmp_path / "changed.npz"))
    assert code == 1 and "FAIL" in out
    other = mlp()
    other.graph.initializer[1].float_data[:] = []  # b1 changed: another model file
    bias = onnx.numpy_helper.to_array(other.graph.initializer[1]) + 1.0
    other.graph.initializer[1].CopyFrom(onnx.numpy_helper.from_array(bias, "b1"))
    onnx.save_model(other, str(tmp_path / "other.onnx"))
    code, out, _ = run(capsys, "verify", str(tmp_path / "other.onnx"), files["x"], str(result))
    assert code == 1 and "MODEL MISMATCH" in out


def two_inputs() -> onnx.ModelProto:
    """x[N, 4] -> Gemm fc1 (5) -> Relu -> + state[N, 5] (a second graph input) -> Gemm fc2."""
    proto = mlp()
    proto.graph.node[2].input[0] = "rs"
    proto.graph.node.insert(2, node("Add", ["r", "state"], "rs", name="add_state"))
    proto.graph.input.append(onnx.helper.make_tensor_value_info(
        "state", onnx.TensorProto.FLOAT, ["N", 5]))
    onnx.checker.check_model(proto)
    return proto


def test_out_records_the_binding_and_verify_reuses_it(capsys, files, tmp_path) -> None:
    """``explain --out --wrt --input`` records the binding (docs/math.md §9); ``verify``
    re-checks the file without the options, and reports a different --input file."""
    onnx.save_model(two_inputs(), str(tmp_path / "two.onnx"))
    state = np.array([[0.5, -2.0, 1.0, 0.0, 3.0]], np.float32)
    np.save(tmp_path / "state.npy", state)
    result = tmp_path / "bound.npz"
    code, _, err = run(capsys, "explain", str(tmp_path / "two.onnx"), files["x"], "--wrt", "h",
                       "--input", f"state={tmp_path / 'state.npy'}", "--out", str(result))
    assert (code, err) == (0, "")
    expected = bbp_ref.explain(str(tmp_path / "two.onnx"), X, wrt="h",
                               inputs={"state": state})
    with np.load(result, allow_pickle=False) as saved:
        assert str(saved["meta/wrt"]) == "h"
        (entry,) = json.loads(str(saved["meta/inputs"]))
        digest = hashlib.sha256((tmp_path / "state.npy").read_bytes()).hexdigest()
        assert entry == {"name": "state", "file": "state.npy", "sha256": digest,
                         "member": "meta/input/0"}
        np.testing.assert_array_equal(saved["meta/input/0"], state)
        np.testing.assert_array_equal(saved["bias_attribution/abs"], expected.bias_attribution)
        assert saved["gradient"].shape == (5,)  # shaped like wrt
    code, out, err = run(capsys, "verify", str(tmp_path / "two.onnx"), files["x"], str(result))
    assert (code, err) == (0, "") and "PASSED" in out
    # the same options given again agree with the record
    code, out, _ = run(capsys, "verify", str(tmp_path / "two.onnx"), files["x"], str(result),
                       "--wrt", "h", "--input", f"state={tmp_path / 'state.npy'}")
    assert code == 0 and "MISMATCH" not in out
    # another state file: its values change the reference, and the record names the file
    np.save(tmp_path / "other.npy", state + 1.0)
    code, out, _ = run(capsys, "verify", str(tmp_path / "two.onnx"), files["x"], str(result),
                       "--input", f"state={tmp_path / 'other.npy'}")
    assert code == 1 and "INPUT MISMATCH" in out and "state.npy" in out
    # a recorded value changed after the fact: the reference follows it, the fields fail
    with np.load(result, allow_pickle=False) as saved:
        fields = dict(saved)
    fields["meta/input/0"] = state * 2.0
    np.savez(tmp_path / "changed.npz", **fields)
    code, out, _ = run(capsys, "verify", str(tmp_path / "two.onnx"), files["x"],
                       str(tmp_path / "changed.npz"))
    assert code == 1 and "FAIL" in out


def test_verify_refuses_a_malformed_binding_record(capsys, files, tmp_path) -> None:
    onnx.save_model(two_inputs(), str(tmp_path / "two.onnx"))
    fields = {"output": np.zeros(3), "meta/inputs": np.array('[{"name": "state"}]')}
    np.savez(tmp_path / "bad.npz", **fields)
    code, _, err = run(capsys, "verify", str(tmp_path / "two.onnx"), files["x"],
                       str(tmp_path / "bad.npz"))
    assert code == 2 and "meta/inputs" in err and "Traceback" not in err


def test_explain_batch(capsys: pytest.CaptureFixture[str], files) -> None:
    result = Path(files["dir"]) / "batch.npz"
    code, out, err = run(capsys, "explain", files["model"], files["batch"], "--rule",
                         "uniform", "--no-check", "--out", str(result))
    assert (code, err) == (0, "")
    assert "example 0: target" in out and "example 2: target" in out
    with np.load(result, allow_pickle=False) as saved:
        assert saved["bias_attribution/uniform"].shape == (3, 4)
        assert "meta/layers" not in saved.files  # every bias attributed
        np.testing.assert_allclose(saved["bias_attribution/uniform"].sum(axis=1),
                                   saved["bias"], rtol=1e-10)


def test_summary_words_every_line_and_says_when_only_some_layers_are_in(capsys, files):
    _, out, _ = run(capsys, "explain", files["model"], files["x"])
    for words in ("the explained output at the input x",
                  "the bias term of the local linear model f(x) = W^x x + b^x",
                  "gradient × input", "b^x spread over the input features",
                  "how each node's bias is split among its inputs"):
        assert words in out
    assert "only" not in out
    _, out, _ = run(capsys, "explain", files["model"], files["x"], "--layers", "fc1")
    e = bbp_ref.explain(files["model"], X, layers=["fc1"], check=False)
    line = next(row for row in out.splitlines() if row.startswith("layers"))
    assert "only fc1" in line and "not b^x" in line
    assert f"{float(e.layer_bias['fc1']):.6g}" in line


def test_output_option_explains_an_inner_tensor(capsys, files):
    code, out, err = run(capsys, "explain", files["model"], files["x"], "--output", "h",
                         "--target", "2")
    assert (code, err) == (0, "")
    expected = bbp_ref.explain(files["model"], X, target=2, output="h")
    assert f"f_t(x) = {float(expected.output):.6g}" in out and "tensor 'h'" in out


def test_nodes(capsys: pytest.CaptureFixture[str], files) -> None:
    code, out, err = run(capsys, "nodes", files["model"])
    assert (code, err) == (0, "")
    lines = out.splitlines()
    start = lines.index("canonical nodes (name, kind, op, per-example shape):")
    end = lines.index("tensors --wrt can name (type, shape):")
    rows = [line.split() for line in lines[start + 1:end]]
    assert [row[:3] for row in rows] == [["x", "input", "Input"], ["fc1", "affine", "Gemm"],
                                         ["relu", "gate", "Relu"], ["fc2", "affine", "Gemm"]]
    assert lines[:2] == ["graph inputs:", "  x (float32, ['N', 4])"]


def test_help_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["explain", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "--rule" in out and "exit codes: 0 success; 1 a check failed" in out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"bbp-ref {bbp_ref.__version__} (onnx {onnx.__version__}, ")


def test_every_option_has_help() -> None:
    parser = _parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    parsers = {"bbp-ref": parser, **commands.choices}
    assert set(commands.choices) == {"explain", "nodes", "verify", "golden", "reproduce",
                                     "digit-flip", "explain-dataset"}
    missing = [f"{name} {action.dest}" for name, p in parsers.items() for action in p._actions
               if not action.help or action.help == argparse.SUPPRESS]
    assert missing == []
    assert all(p.epilog and "exit codes" in p.epilog for p in parsers.values())


def test_readme_documents_the_exit_codes() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert "| 0 |" in readme and "| 1 |" in readme and "| 2 |" in readme


# -- errors ----------------------------------------------------------------------------


class _Canary:
    """Unpickling it creates a file: proof that a pickled .npy was never unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (self.marker.touch, ())


def _write_bad_files(folder: Path) -> None:
    np.save(folder / "pickled.npy", np.array([_Canary(folder / "unpickled"), None],
                                             dtype=object), allow_pickle=True)
    np.save(folder / "wrong_shape.npy", np.ones(5, np.float32))
    np.save(folder / "ints.npy", np.ones(4, np.int64))
    np.save(folder / "nan.npy", np.array([0, np.nan, 1, 2], np.float32))
    (folder / "text.npy").write_text("1 2 3 4\n")
    (folder / "junk.onnx").write_bytes(b"\x08\x07junk" * 10)
    (folder / "numbers.txt").write_text("1 2 3 4\n")
    np.savez(folder / "arrays.npz", x=X)
    (folder / "subdir").mkdir()
    (folder / "binary.npy").write_bytes(bytes(range(200, 256)) * 4)
    onnx.save_model(model([node("Sign", ["x"], "y", name="act")], ["N", 4]),
                    str(folder / "sign.onnx"))


ERRORS = [
    ("missing_model", ["explain", "{dir}/missing.onnx", "{x}"], "model file not found"),
    ("model_is_dir", ["explain", "{dir}", "{x}"], "is a directory"),
    ("not_a_model", ["explain", "{dir}/junk.onnx", "{x}"], "not an ONNX model"),
    ("unsupported_op", ["explain", "{dir}/sign.onnx", "{x}"],
     "unsupported op Sign in node 'act'"),
    ("missing_input", ["explain", "{model}", "{dir}/missing.npy"], "input file not found"),
    ("pickled_input", ["explain", "{model}", "{dir}/pickled.npy"], "pickles are refused"),
    ("text_input", ["explain", "{model}", "{dir}/text.npy"], "is a text file, not an .npy"),
    ("txt_input", ["explain", "{model}", "{dir}/numbers.txt"], "is a text file"),
    ("binary_input", ["explain", "{model}", "{dir}/binary.npy"], "lacks the .npy header"),
    ("npz_input", ["explain", "{model}", "{dir}/arrays.npz"], "is an .npz archive"),
    ("dir_input", ["explain", "{model}", "{dir}/subdir"], "is a directory, not an .npy"),
    ("swapped_onnx_as_input", ["explain", "{model}", "{model}"],
     "is an ONNX model, not an .npy array: were MODEL and INPUT swapped?"),
    ("swapped_in_explain", ["explain", "{x}", "{model}"], "were MODEL and INPUT swapped?"),
    ("npy_as_model", ["nodes", "{x}"],
     "is a NumPy .npy array, not an ONNX model: were MODEL and INPUT swapped?"),
    ("verify_dir_candidate", ["verify", "{model}", "{x}", "{dir}/subdir"], "is a directory"),
    ("wrong_shape", ["explain", "{model}", "{dir}/wrong_shape.npy"],
     "does not match the model input"),
    ("int_input", ["explain", "{model}", "{dir}/ints.npy"], "dtype int64"),
    ("nan_input", ["explain", "{model}", "{dir}/nan.npy"], "NaN"),
    ("unknown_rule", ["explain", "{model}", "{x}", "--rule", "bias.1"],
     "argument --rule: invalid choice: 'bias.1'"),
    ("model_without_input", ["explain", "{model}"], "give an INPUT.npy file"),
    ("target_out_of_range", ["explain", "{model}", "{x}", "--target", "3"], "out of range"),
    ("negative_target", ["explain", "{model}", "{x}", "--target", "-1"], "out of range"),
    ("float_target", ["explain", "{model}", "{x}", "--target", "1.5"], "invalid int value"),
    ("unknown_layer", ["explain", "{model}", "{x}", "--layers", "fc9"],
     "layer 'fc9' is not a node with a bias"),
    ("out_unwritable", ["explain", "{model}", "{x}", "--no-check", "--out",
                        "{dir}/no/such/dir/r.npz"], "cannot write"),
    ("nodes_missing_model", ["nodes", "{dir}/missing.onnx"], "model file not found"),
    ("no_command", [], "arguments are required"),
    ("unknown_command", ["explian"], "invalid choice: 'explian'"),
    ("extra_argument", ["explain", "{model}", "{x}", "more"], "unrecognized arguments"),
]


@pytest.mark.parametrize("argv, message", [case[1:] for case in ERRORS],
                         ids=[case[0] for case in ERRORS])
def test_error(capsys: pytest.CaptureFixture[str], files, argv: list[str],
               message: str) -> None:
    _write_bad_files(Path(files["dir"]))
    code, out, err = run(capsys, *[arg.format(**files) for arg in argv])
    assert code == 2
    assert err.startswith("bbp-ref: error: ") and err.endswith("\n")
    assert err.count("\n") == 1, err
    assert message in err
    assert "Traceback" not in err + out
    assert not (Path(files["dir"]) / "unpickled").exists()


def test_pickled_npy_really_runs_code_when_unpickled(files) -> None:
    """The canary used above does fire when a pickle is loaded."""
    folder = Path(files["dir"])
    _write_bad_files(folder)
    np.load(folder / "pickled.npy", allow_pickle=True)
    assert (folder / "unpickled").exists()


# -- as a separate process -------------------------------------------------------------


def _subprocess(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bbp_ref.cli", *argv], capture_output=True,
                          text=True, timeout=120, check=False)


def test_subprocess_success(files) -> None:
    done = _subprocess("explain", files["model"], files["x"], "--no-check")
    assert (done.returncode, done.stderr) == (0, "")
    assert "checks                  passed" in done.stdout


def test_subprocess_error(files) -> None:
    done = _subprocess("explain", files["model"], files["x"], "--rule", "nope")
    assert done.returncode == 2
    assert done.stderr.startswith("bbp-ref: error: argument --rule: invalid choice")
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert done.stdout == ""
    done = _subprocess("explain", str(Path(files["dir"]) / "missing.onnx"), files["x"])
    assert done.returncode == 2
    assert done.stderr.startswith("bbp-ref: error: model file not found")
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
