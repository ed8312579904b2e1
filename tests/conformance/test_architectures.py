"""Real architectures with random weights against torch autograd in float64.

torchvision's mobilenet_v3_small, efficientnet_b0, convnext_tiny, regnet_y_400mf and
shufflenet_v2_x1_0 (10 classes, 32x32 inputs), a small VisionTransformer (image 32,
patch 8, 2 layers, 2 heads, hidden 32, MLP 64), a small Swin (embed 32, depths [2, 2],
heads [2, 4], window 7; 40x40 inputs, so padded and shifted windows) and a U-Net-style
decoder (Conv, ConvTranspose2d, nn.Upsample nearest and bilinear, skip Concat; 8x8 in,
2x8x8 out), with random weights, biases,
normalisation parameters and BatchNorm running statistics (`torch_architectures.py`), are
exported by both PyTorch exporters (TorchScript at opset 17, and the
torch.export-based one; dynamic batch) into a tmp dir. The weights are rescaled once on a
calibration batch so that the input matters (`torch_architectures.calibrate`), and the
torch reference computes the constants an export can only state in float32 as that
float32 (`torch_architectures.as_exported`). For a float32 batch of 2 inputs:

* ``Model.forward(x)`` equals the torch float64 forward to 1e-12 of its largest magnitude;
* ``Model.jacobian(x)`` (`W^x` of every output) equals torch autograd's per-example
  Jacobian to 1e-9 of its largest magnitude;
* `b^x` of every output (``Model.decompose``'s linear pass) equals `f(x) - J x` from torch
  to 1e-9 of `|f(x)| + sum_q |J[q] x[q]|`;
* for every rule, the decomposition `W^x x + b^x = f(x)` and the completeness
  `sum B(x) = b^x` hold to 1e-10 (recomputed here), ``Explanation.bias`` equals torch's
  `b^x` of the explained output, and explain's own checks pass, onnxruntime's output
  included.

Most of the models are not piecewise linear (HardSwish, SiLU, Gelu, Sigmoid gates,
LayerNorm, attention): `W^x` is the tangent model's `J(x)` (docs/math.md §7). The ViT and the
Swin merge the batch axis with another axis (the heads', the windows'), which the import
tracks (docs/math.md §7.5, §7.10 decision 2). ``NOT_IMPORTED`` lists the exports expected to
be refused at load (strict expected failures, so the mark must go when they import); none
today.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from conformance_checks import assert_decomposition
from torch_architectures import ARCHITECTURES, EXPORTERS, build, torch_reference
from torch_helpers import assert_matches_reference, export, local_bias, torch

import bbp_ref
from bbp_ref.errors import UnsupportedOpError

pytestmark = pytest.mark.torch

FORWARD_RTOL = 1e-12
JACOBIAN_RTOL = 1e-9

PIECEWISE_LINEAR = {"shufflenet_v2_x1_0", "unet_decoder"}  # ReLU networks
# The exports bbp_ref cannot import yet: (why, a pattern the load error must match). They must
# fail at load with that UnsupportedOpError (strict), so the mark goes when they import.
NOT_IMPORTED: dict[tuple[str, str], tuple[str, str]] = {}


def _cases():
    for name in ARCHITECTURES:
        for exporter in EXPORTERS:
            reason, _ = NOT_IMPORTED.get((name, exporter), (None, None))
            marks = ([pytest.mark.xfail(strict=True, raises=UnsupportedOpError,
                                        reason=f"needs {reason}")] if reason else [])
            yield pytest.param(name, exporter, id=f"{name}-{exporter}", marks=marks)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """torch's intra-op threads spin while they wait: on a busy 2-core machine they made
    these small models 30-100x slower (3 s for one float32 forward pass)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


_BUILT: dict[str, tuple] = {}


def _built(name: str):
    """The torch model and its input batch (built once)."""
    if name not in _BUILT:
        _BUILT[name] = build(name)
    return _BUILT[name]


@pytest.mark.parametrize(("name", "exporter"), list(_cases()))
def test_architecture_matches_torch_autograd(name: str, exporter: str, tmp_path) -> None:
    model, x = _built(name)
    out, jac = torch_reference(model, x, exporter)
    path = tmp_path / f"{name}.{exporter}.onnx"
    export(model, (torch.from_numpy(x),), path, EXPORTERS[exporter])
    try:
        m = bbp_ref.load(path)
    except UnsupportedOpError as error:  # an expected failure must fail for its reason
        _, message = NOT_IMPORTED.get((name, exporter), (None, ""))
        assert re.search(message, str(error)), error
        raise
    n = len(x)
    assert_matches_reference(m, x, out, jac, FORWARD_RTOL, JACOBIAN_RTOL)

    # b^x = f(x) - J x for every output, from torch, against bbp_ref's linear pass
    bias, scale = local_bias(out, jac, x)
    assert np.abs(bias).max() > 1e-3 * scale.max(), "b^x is trivially 0"
    _, linear_bias = m.decompose(x)
    assert np.all(np.abs(linear_bias.reshape(n, -1) - bias) <= JACOBIAN_RTOL * scale)

    explanations = assert_decomposition(m, x)
    for e in explanations:
        rows = np.arange(n), e.target
        assert np.all(np.abs(e.bias - bias[rows]) <= JACOBIAN_RTOL * scale[rows]), e.rule
    checked = bbp_ref.explain(m, x, rule="abs", check=True)
    assert checked.checks.onnxruntime is not None
    assert checked.checks.passed, checked.checks.summary()
    assert checked.piecewise_linear == (name in PIECEWISE_LINEAR)
