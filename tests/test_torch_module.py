"""The PyTorch front door: ``explain``, ``load``, the baselines and ``oracle.compare`` take a
live ``torch.nn.Module``, exported to ONNX in memory and cached; its results are those of
the file the same exporter writes, and agree with torch autograd in float64."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest

if os.environ.get("BBP_REQUIRE_TORCH"):
    import onnxscript  # noqa: F401
    import torch
else:
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxscript")
from torch import nn  # noqa: E402

import bbp_ref  # noqa: E402
from bbp_ref.importer import torch_export  # noqa: E402

pytestmark = pytest.mark.torch

FIELDS = ("output", "target", "gradient", "bias", "bias_attribution", "logits")


def small_cnn(seed: int = 0) -> nn.Module:
    """Conv-ReLU-MaxPool-Linear with a Dropout (inactive in eval mode); left in training
    mode on purpose: bbp_ref explains the module in inference mode."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Dropout(0.5), nn.Linear(4 * 4 * 4, 5))


@pytest.fixture
def x() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(3, 1, 8, 8)).astype(np.float32)


def export_file(module: nn.Module, x: np.ndarray, path: Path, dynamo: bool = True) -> Path:
    """The user's own export of ``module`` to a file (dynamic batch axis)."""
    example = torch.as_tensor(np.stack([x[0], x[0]]))
    module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            torch.onnx.export(module, (example,), str(path), dynamo=True,
                              external_data=False, input_names=["input"],
                              output_names=["output"],
                              dynamic_shapes=({0: torch.export.Dim("batch")},))
        else:
            torch.onnx.export(module, (example,), str(path), dynamo=False, opset_version=17,
                              input_names=["input"], output_names=["output"],
                              dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    module.train()
    return path


def assert_same(a: bbp_ref.Explanation, b: bbp_ref.Explanation) -> None:
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert a.layer_bias.keys() == b.layer_bias.keys()


@pytest.mark.parametrize("rule", ["abs", "signed"])
def test_module_and_its_exported_file_give_identical_results(x, tmp_path, rule):
    module = small_cnn()
    from_module = bbp_ref.explain(module, x, rule=rule)
    from_file = bbp_ref.explain(export_file(module, x, tmp_path / "m.onnx"), x, rule=rule)
    assert_same(from_module, from_file)
    assert from_module.checks.passed and from_module.checks.onnxruntime is not None
    assert module.training and all(m.training for m in module.modules())  # restored
    model = bbp_ref.load(module, example=x)
    assert model.exporter == torch_export.DYNAMO and "exported by torch.export" in repr(model)


def test_module_agrees_with_torch_autograd_in_float64(x):
    """W^x[t] is torch's float64 gradient, and b^x = f_t(x) - W^x[t] x (independent of
    the engine's bias bookkeeping)."""
    module = small_cnn()
    e = bbp_ref.explain(module, torch.as_tensor(x))  # a tensor works as well as an array
    double = small_cnn().double().eval()
    double.load_state_dict(module.state_dict())
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    out = double(xt)
    selected = out[torch.arange(len(x)), torch.as_tensor(e.target)]
    selected.sum().backward()
    gradient = xt.grad.numpy()
    np.testing.assert_allclose(e.gradient, gradient, rtol=1e-12, atol=1e-14)
    output = selected.detach().numpy()
    np.testing.assert_allclose(e.output, output, rtol=1e-12)
    bias = output - (gradient * x).reshape(len(x), -1).sum(axis=1)
    np.testing.assert_allclose(e.bias, bias, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(e.bias_attribution.reshape(len(x), -1).sum(axis=1), bias,
                               rtol=1e-9, atol=1e-12)


def test_export_is_cached_per_module_shape_and_weights(x, monkeypatch):
    module = small_cnn()
    calls = []
    real = torch_export.export_module

    def counting(*args, **kwargs):
        calls.append(args[1].shape)
        return real(*args, **kwargs)

    monkeypatch.setattr("bbp_ref.model.export_module", counting)
    first = bbp_ref.explain(module, x)
    again = bbp_ref.gradient(module, x[:2])  # same per-example shape: no new export
    assert len(calls) == 1
    np.testing.assert_array_equal(again.attribution, first.gradient[:2])
    convolutional = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Conv2d(2, 1, 1))
    bbp_ref.explain(convolutional, x)
    bbp_ref.explain(convolutional, np.ones((1, 1, 6, 6), np.float32))  # another shape
    assert len(calls) == 3
    calls.clear()
    bbp_ref.explain(module, x)
    assert len(calls) == 0
    with torch.no_grad():
        module[-1].bias.add_(1.0)  # changed weights: exported again, and the result shows it
    changed = bbp_ref.explain(module, x, target=first.target)
    assert len(calls) == 1
    np.testing.assert_allclose(changed.output - first.output, 1.0, rtol=1e-6)
    np.testing.assert_allclose(changed.bias - first.bias, 1.0, rtol=1e-6)
    assert bbp_ref.load(module, example=x) is bbp_ref.load(module, example=x[:1])
    other = small_cnn()  # equal weights, another module: its own export
    bbp_ref.load(other, example=x)
    assert len(calls) == 2


def test_falls_back_to_the_torchscript_exporter_and_says_so(x, tmp_path, monkeypatch):
    module = small_cnn(1)

    def broken(*args, **kwargs):
        raise RuntimeError("planted failure of the torch.export-based exporter")

    monkeypatch.setattr(torch_export, "_dynamo", broken)
    with pytest.warns(UserWarning, match="exported with the TorchScript exporter"):
        model = bbp_ref.load(module, example=x)
    assert model.exporter == torch_export.TORCHSCRIPT
    from_file = bbp_ref.explain(export_file(module, x, tmp_path / "ts.onnx", dynamo=False), x)
    assert_same(bbp_ref.explain(model, x), from_file)


def test_baselines_and_oracle_take_a_module(x, tmp_path):
    module = small_cnn(2)
    path = export_file(module, x, tmp_path / "m.onnx")
    for method in (bbp_ref.gradient, bbp_ref.gradient_x_input, bbp_ref.deeplift):
        np.testing.assert_array_equal(method(module, x).attribution,
                                      method(path, x).attribution)
    ig = bbp_ref.integrated_gradients(module, x, method="gausslegendre", n_steps=8)
    np.testing.assert_array_equal(
        ig.attribution,
        bbp_ref.integrated_gradients(path, x, method="gausslegendre", n_steps=8).attribution)
    e = bbp_ref.explain(path, x)
    report = bbp_ref.oracle.compare(module, x, {"gradient": e.gradient,
                                                "bias_attribution/abs": e.bias_attribution})
    assert report.passed
    wrong = bbp_ref.oracle.compare(module, x, {"gradient": e.gradient + 1e-3})
    assert not wrong.passed


def test_a_module_needs_an_input_and_a_batch(x):
    module = small_cnn()
    with pytest.raises(bbp_ref.InputError, match="give the input"):
        bbp_ref.load(module)
    with pytest.raises(bbp_ref.InputError, match="non-empty batch"):
        bbp_ref.load(module, example=np.zeros((0, 1, 8, 8), np.float32))


def test_a_module_that_cannot_be_exported_is_a_model_load_error(x):
    class Branchy(nn.Module):
        def forward(self, t):
            return t.sum() if t.sum().item() > 0 else -t  # data-dependent Python control flow

    with pytest.raises(bbp_ref.BBpError):
        bbp_ref.explain(Branchy(), x)
