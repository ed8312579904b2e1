"""The digits models of bbp_ref/data/digits/ (accuracy as recorded in models/digits/),
Claim 1 (bias_importance) and the attribution maps behind the figures (bbp_ref.experiments)."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

import bbp_ref
from bbp_ref.errors import BBpError, InputError
from bbp_ref.experiments import maps
from bbp_ref.experiments.bias_importance import (
    POSTER_TABLE,
    BiasImportance,
    bias_importance,
    format_table,
)
from bbp_ref.experiments.optional import MissingDependencyError, require

pytest.importorskip("sklearn")
from bbp_ref.experiments.digits import digits_split  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DIGITS = ROOT / "bbp_ref" / "data" / "digits"
MANIFEST = json.loads((ROOT / "models" / "digits" / "manifest.json").read_text())
NAMES = ("mlp_bias", "mlp_nobias", "cnn_bias", "cnn_nobias")


@pytest.fixture(scope="module")
def split():
    return digits_split()


@pytest.fixture(scope="module")
def cnn():
    return bbp_ref.load(DIGITS / "cnn_bias.onnx")


def test_split_is_the_documented_one(split):
    assert split.X_train.shape == (1347, 1, 8, 8) and split.X_test.shape == (450, 1, 8, 8)
    assert split.X_test.dtype == np.float32
    assert 0.0 <= split.X_test.min() and split.X_test.max() <= 1.0
    assert MANIFEST["n_test"] == 450 and MANIFEST["n_train"] == 1347


@pytest.mark.parametrize("name", NAMES)
def test_checked_in_model_has_the_recorded_test_accuracy(name, split):
    record = MANIFEST["models"][name]
    path = DIGITS / f"{name}.onnx"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == record["sha256"]
    logits = bbp_ref.load(path).forward(split.X_test)
    correct = int((logits.argmax(axis=1) == split.y_test).sum())
    assert correct == record["test_correct"]
    assert correct / len(split.y_test) == record["test_accuracy"]
    assert record["test_accuracy"] > 0.95


@pytest.mark.parametrize("name", NAMES)
def test_bias_free_models_have_no_bias_and_biased_ones_do(name, split):
    wx, b = bbp_ref.load(DIGITS / f"{name}.onnx").decompose(split.X_test[:20])
    if name.endswith("nobias"):
        assert not MANIFEST["models"][name]["bias"]
        assert np.all(b == 0.0)
    else:
        assert np.abs(b).max() > 0.01


def test_bias_importance_matches_a_per_example_computation(split, cnn):
    X, y = split.X_test[:40], split.y_test[:40]
    result = bias_importance(cnn, DIGITS / "cnn_nobias.onnx", X, y, batch_size=16)
    # independently: W^x x from the Jacobian, b^x = f(x) - W^x x
    f = cnn.forward(X)
    wx = np.einsum("nkq,nq->nk", cnn.jacobian(X).reshape(40, 10, -1), X.reshape(40, -1))
    nobias = bbp_ref.load(DIGITS / "cnn_nobias.onnx").forward(X)
    assert result.n == 40
    assert result.with_bias == int((f.argmax(1) == y).sum())
    assert result.only_wx == int((wx.argmax(1) == y).sum())
    assert result.only_b == int(((f - wx).argmax(1) == y).sum())
    assert result.without_bias == int((nobias.argmax(1) == y).sum())
    assert result == bias_importance(cnn, DIGITS / "cnn_nobias.onnx", X, y)  # batch size


def test_bias_importance_of_a_bias_free_model(split):
    """With b^x = 0 the bias-only prediction is class 0 (argmax of zeros) everywhere."""
    X, y = split.X_test[:50], split.y_test[:50]
    result = bias_importance(DIGITS / "mlp_nobias.onnx", None, X, y)
    assert result.without_bias is None and result.with_bias == result.only_wx
    assert result.only_b == int((y == 0).sum())
    assert result.accuracies()[0] is None


def test_bias_importance_rejects_bad_labels(cnn, split):
    with pytest.raises(InputError, match="integer labels"):
        bias_importance(cnn, None, split.X_test[:5], split.y_test[:4])
    with pytest.raises(InputError, match="integer labels"):
        bias_importance(cnn, None, split.X_test[:5], split.y_test[:5].astype(float))
    with pytest.raises(InputError, match="batch_size"):
        bias_importance(cnn, None, split.X_test[:5], split.y_test[:5], batch_size=0)


def test_format_table():
    table = format_table({"poster CIFAR10": POSTER_TABLE["CIFAR10"],
                          "ours": BiasImportance(8, 6, 7, 5, 2),
                          "no unbiased": BiasImportance(4, None, 4, 3, 1)})
    lines = table.splitlines()
    assert lines[0] == ("| Dataset | Train Without Bias | Train With Bias, Test All | "
                        "Test Only wx | Test Only b |")
    assert lines[2] == "| poster CIFAR10 | 87.0 | 90.9 | 71.5 | 62.2 |"
    assert lines[3] == "| ours | 75.0 (6/8) | 87.5 (7/8) | 62.5 (5/8) | 25.0 (2/8) |"
    assert lines[4].startswith("| no unbiased | — | 100.0 (4/4) |")


def test_attribution_maps_are_complete(split):
    mlp = bbp_ref.load(DIGITS / "mlp_bias.onnx")  # exact IG is fast on the MLP (few pieces)
    X = split.X_test[:1].astype(np.float64)
    m = maps.attribution_maps(mlp, X)
    out = m.logits[0, m.target]
    assert np.array_equal(m.target, m.predicted) and m.ig_method == "exact"
    np.testing.assert_allclose(m.gradient_x_input, m.gradient * X)
    for rule in maps.RULES:
        total = (m.gradient_x_input + m.bias_attribution[rule]).sum()
        np.testing.assert_allclose(total, out, rtol=1e-10)
    zero = mlp.forward(np.zeros_like(X))[0, m.target]
    np.testing.assert_allclose(m.integrated_gradients.sum(), out - zero, rtol=1e-8)


def test_maps_are_the_library_attributions(cnn, split):
    """The figure's gradient and integrated gradients are bbp_ref's own methods."""
    X = split.X_test[:3].astype(np.float64)
    m = maps.attribution_maps(cnn, X, rules=("abs",), ig_method="riemann_middle",
                              ig_steps=20)
    assert m.ig_method == "riemann_middle"
    np.testing.assert_allclose(m.gradient, bbp_ref.gradient(cnn, X, target=m.target).attribution)
    ig = bbp_ref.integrated_gradients(cnn, X, target=m.target, method="riemann_middle",
                                      n_steps=20)
    np.testing.assert_allclose(m.integrated_gradients, ig.attribution, rtol=1e-10, atol=1e-12)


def test_layer_maps_add_up(cnn, split):
    X = split.X_test[:3]
    lm = maps.layer_maps(cnn, X, rule="abs")
    assert [op for _, op in lm.layers] == ["Conv", "Conv", "Gemm", "Gemm"]
    for name, _ in lm.layers:
        np.testing.assert_allclose(lm.attribution[name].reshape(3, -1).sum(axis=1),
                                   lm.contribution[name], rtol=1e-9, atol=1e-12)
    # abs is linear in the injected biases: the layers' maps add up to the whole map
    np.testing.assert_allclose(sum(lm.attribution.values()), lm.total, atol=1e-12)
    only = maps.layer_maps(cnn, X, layers=["/9/Gemm"])
    assert [name for name, _ in only.layers] == ["/9/Gemm"]


def test_require_names_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "not_a_module_xyz", None)
    with pytest.raises(MissingDependencyError, match="pip install thing") as info:
        require("not_a_module_xyz", "thing")
    assert isinstance(info.value, BBpError) and isinstance(info.value, ImportError)


def test_reproduce_from_any_folder(capsys, tmp_path, monkeypatch):
    """bbp-ref reproduce with no options, run from a folder outside the repository: the
    package's models, the figures in a new folder there (the source tree untouched)."""
    pytest.importorskip("matplotlib")
    from bbp_ref.cli import main

    monkeypatch.chdir(tmp_path)
    docs = ROOT / "docs" / "images"
    before = {p.name: p.stat().st_mtime_ns for p in docs.iterdir()}
    assert main(["reproduce", "--dpi", "40"]) == 0
    out = capsys.readouterr().out
    assert "| digits CNN (this project) | 98.4 (443/450) |" in out
    written = sorted((tmp_path / "bbp-ref-reproduce").iterdir())
    assert [p.name for p in written] == ["digits_cnn_bias_attributions.png",
                                        "digits_cnn_bias_layers.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in written)
    assert {p.name: p.stat().st_mtime_ns for p in docs.iterdir()} == before
