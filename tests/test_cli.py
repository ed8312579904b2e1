"""The ``bbp-ref`` command: explain and nodes, on the embedded default model and on a
given one; every error exits with code 2 and one line on stderr, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from builders import f32, model, node

import bbp_ref
from bbp_ref.cli import main
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
        assert set(saved.files) == {"output", "target", "gradient", "bias",
                                    "bias_attribution", "logits", "layer_bias/fc1",
                                    "layer_bias/fc2"}
        assert int(saved["target"]) == 1
        for key in ("output", "gradient", "bias", "bias_attribution", "logits"):
            np.testing.assert_array_equal(saved[key], getattr(expected, key))
        assert saved["bias_attribution"].shape == (4,)
        np.testing.assert_allclose(saved["bias_attribution"].sum(), saved["layer_bias/fc2"],
                                   rtol=1e-10)
        np.testing.assert_allclose(saved["layer_bias/fc1"] + saved["layer_bias/fc2"],
                                   saved["bias"], rtol=1e-12)


def test_explain_batch(capsys: pytest.CaptureFixture[str], files) -> None:
    result = Path(files["dir"]) / "batch.npz"
    code, out, err = run(capsys, "explain", files["model"], files["batch"], "--rule",
                         "uniform", "--no-check", "--out", str(result))
    assert (code, err) == (0, "")
    assert "example 0: target" in out and "example 2: target" in out
    with np.load(result, allow_pickle=False) as saved:
        assert saved["bias_attribution"].shape == (3, 4)
        np.testing.assert_allclose(saved["bias_attribution"].sum(axis=1), saved["bias"],
                                   rtol=1e-10)


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
    assert "--rule" in capsys.readouterr().out


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
    ("text_input", ["explain", "{model}", "{dir}/text.npy"], "cannot read"),
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
