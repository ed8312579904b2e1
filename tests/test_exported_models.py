"""Models made by other tools (PyTorch's two exporters at several opsets, optimised and
not; scikit-learn via skl2onnx; the embedded default) under `models/`: the forward pass
against onnxruntime, the decomposition, and agreement across exporters of one model."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

import bbp_ref
from bbp_ref.defaults import default_input, default_model_path

ROOT = Path(__file__).resolve().parent.parent / "models"
TORCH = sorted((ROOT / "torch").glob("*.onnx"))
RULES = ("abs", "signed", "uniform")


def _input(path: Path) -> np.ndarray:
    return np.load(path.parent / (path.name.split(".")[0] + ".input.npy"), allow_pickle=False)


def _assert_decomposition(e, x):
    n = len(x)
    gx = (e.gradient * x).reshape(n, -1)
    magnitude = np.abs(gx).sum(axis=1) + sum(np.abs(v) for v in e.layer_bias.values())
    np.testing.assert_array_less(np.abs(gx.sum(axis=1) + e.bias - e.output), 1e-10 * magnitude)
    total = e.bias_attribution.reshape(n, -1).sum(axis=1)
    np.testing.assert_array_less(np.abs(total - e.bias), 1e-10 * magnitude + 1e-300)


@pytest.mark.parametrize("path", TORCH, ids=lambda p: p.name)
def test_torch_export_is_explained_exactly(path):
    x = _input(path)
    model = bbp_ref.load(path)
    for rule in RULES:
        e = bbp_ref.explain(model, x, rule=rule, check=(rule == "abs"))
        assert e.checks.passed, e.checks.summary()
        _assert_decomposition(e, x.astype(np.float64))
    if "softmax" in path.name:
        assert e.stripped and e.stripped[0].startswith(("Softmax", "LogSoftmax"))


def test_exporters_agree_on_the_same_weights():
    """TorchScript at opsets 9/13/17 and torch.export (optimised or not) write different
    graphs of one network: W^x, b^x and B(x) must not change. The exporters that fold
    BatchNormalization themselves do it in float32, so weights agree to float32
    rounding only (relative 1e-6 of each field's scale)."""
    groups = defaultdict(list)
    for path in TORCH:
        groups[path.name.split(".")[0]].append(path)
    assert len(groups) >= 8
    for paths in groups.values():
        x = _input(paths[0])
        first = {r: bbp_ref.explain(paths[0], x, rule=r, check=False) for r in RULES}
        for other in paths[1:]:
            for rule in RULES:
                e = bbp_ref.explain(other, x, rule=rule, check=False)
                a = first[rule]
                scale = np.abs(a.gradient).max()
                np.testing.assert_allclose(e.gradient, a.gradient, atol=1e-6 * scale,
                                           err_msg=f"{other.name} vs {paths[0].name}")
                np.testing.assert_allclose(e.bias, a.bias, rtol=1e-6, atol=1e-6)
                scale = np.abs(a.bias_attribution).max()
                np.testing.assert_allclose(e.bias_attribution, a.bias_attribution,
                                           atol=1e-6 * scale, err_msg=f"{other.name} {rule}")


def test_sklearn_mlp_explains_its_logits():
    path = ROOT / "sklearn" / "digits_mlp.onnx"
    x = np.load(ROOT / "sklearn" / "digits_mlp.input.npy", allow_pickle=False)
    e = bbp_ref.explain(path, x)
    assert e.checks.passed, e.checks.summary()
    assert e.stripped and e.stripped[0].startswith("Softmax")
    _assert_decomposition(e, x.astype(np.float64))
    # the probabilities output is explained, not the int64 label output listed first
    assert bbp_ref.load(path).signature.output == "probabilities"


def test_default_model_classifies_its_sample_as_recorded():
    record = json.loads((ROOT / "default_model.json").read_text())
    e = bbp_ref.explain(default_model_path(), default_input())
    assert int(e.target) == record["sample_label"]
    np.testing.assert_allclose(e.logits, record["sample_logits"], rtol=1e-5, atol=1e-4)
    assert e.checks.passed
