"""Agreement with Captum (Saliency, InputXGradient, DeepLift, IntegratedGradients) on a
PyTorch model and its ONNX export. Captum runs the model in float64; the export holds the
same float32 weights, so the two differ by the float32 rounding of LeakyRelu's alpha and
of Captum's Riemann points only.

Captum 0.9's DeepLift is compared on models where no two hooked modules (ReLU,
LeakyReLU, MaxPool) are adjacent and pooling windows do not overlap: otherwise Captum
uses a stale gradient (captum#1104) or drops shares in ``max_unpool`` and loses
summation-to-delta, which bbp_ref keeps (tests/test_baselines.py)."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
captum_attr = pytest.importorskip("captum.attr")

import bbp_ref  # noqa: E402
from bbp_ref.attribution.baselines import deeplift, gradient, gradient_x_input  # noqa: E402
from bbp_ref.attribution.integrated_gradients import (  # noqa: E402
    approximation_parameters,
    integrated_gradients,
)

pytestmark = pytest.mark.torch
nn = torch.nn
QUADRATURE = ("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid",
              "gausslegendre")


def _cnn():
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 1),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64, 8), nn.LeakyReLU(0.1),
                         nn.Linear(8, 3))


def _mlp():
    return nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 7), nn.LeakyReLU(0.2),
                         nn.Linear(7, 4))


@pytest.fixture(params=[(_cnn, (2, 8, 8)), (_mlp, (6,))], ids=["cnn", "mlp"])
def pair(request):
    """(float64 torch model, the bbp_ref model of its ONNX export, x, baselines)."""
    make, shape = request.param
    torch.manual_seed(0)
    net = make().eval()
    x = torch.randn(4, *shape)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (x,), buffer, dynamo=False, opset_version=13,
                          input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "N"}, "y": {0: "N"}})
    model = bbp_ref.load(buffer.getvalue())
    baselines = 0.3 * torch.randn(4, *shape, dtype=torch.float64)
    return net.double(), model, x.double(), baselines


TARGETS = [0, 2, 1, 2]


def _close(ours, theirs, rtol):
    theirs = theirs.detach().numpy()
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=rtol * np.abs(theirs).max())


def test_saliency_and_input_x_gradient(pair):
    net, model, x, _ = pair
    theirs = captum_attr.Saliency(net).attribute(x.clone().requires_grad_(), target=TARGETS,
                                                 abs=False)
    _close(gradient(model, x.numpy(), target=np.array(TARGETS)).attribution, theirs, 1e-7)
    theirs = captum_attr.InputXGradient(net).attribute(x.clone().requires_grad_(),
                                                       target=TARGETS)
    _close(gradient_x_input(model, x.numpy(), target=np.array(TARGETS)).attribution, theirs,
           1e-7)


def test_deeplift(pair):
    net, model, x, b = pair
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs, delta = captum_attr.DeepLift(net).attribute(
            x.clone().requires_grad_(), baselines=b, target=TARGETS,
            return_convergence_delta=True)
    ours = deeplift(model, x.numpy(), b.numpy(), target=np.array(TARGETS))
    _close(ours.attribution, theirs, 1e-6)
    np.testing.assert_allclose(ours.delta, delta.detach().numpy(), atol=1e-8)


@pytest.mark.parametrize("method", QUADRATURE)
def test_integrated_gradients(pair, method):
    net, model, x, b = pair
    theirs, delta = captum_attr.IntegratedGradients(net).attribute(
        x.clone().requires_grad_(), baselines=b, target=TARGETS, method=method, n_steps=20,
        return_convergence_delta=True)
    ours = integrated_gradients(model, x.numpy(), b.numpy(), target=np.array(TARGETS),
                                method=method, n_steps=20)
    _close(ours.attribution, theirs, 1e-6)
    scale = np.abs(ours.attribution).sum()
    np.testing.assert_allclose(ours.delta, delta.detach().numpy(), atol=1e-6 * scale)
    exact = integrated_gradients(model, x.numpy(), b.numpy(), target=np.array(TARGETS))
    assert (np.abs(exact.delta) <= 1e-12 * scale).all()


def test_approximation_parameters_match_captum():
    from captum.attr._utils import approximation_methods

    for method in QUADRATURE:
        for n in (2, 7, 50):
            step_fn, alpha_fn = approximation_methods.approximation_parameters(method)
            steps, alphas = approximation_parameters(method, n)
            # Captum's Riemann alphas come from a float32 torch.linspace
            np.testing.assert_allclose(alphas, alpha_fn(n), rtol=0, atol=1e-7)
            np.testing.assert_allclose(steps, step_fn(n), rtol=1e-15)
