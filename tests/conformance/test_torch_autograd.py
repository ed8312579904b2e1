"""bbp_ref against PyTorch autograd, in float64, on the same weights.

Small PyTorch models (built here, seeded, eval mode) are exported to ONNX in a tmp dir by
the TorchScript exporter (``dynamo=False``) at opsets 9, 13 and 17 and by the
torch.export-based exporter (``dynamo=True``, with and without its optimiser). For a
float32 batch ``x``, with ``model.double()`` (exact: the weights are float32):

* ``Model.forward(x)`` equals torch's float64 output to 1e-12 of its largest magnitude;
* ``Model.jacobian(x)`` equals torch autograd's Jacobian (per example) to 1e-9 of its
  largest magnitude;
* ``Explanation.bias`` for every output `t` equals `f_t(x) - J_t x` from torch to 1e-9 of
  `|f_t(x)| + sum_q |J_t[q] x[q]|`.

The agreement seen is ~1e-16 (float64 rounding). It can be that close only because no
float32 arithmetic separates the ONNX weights from torch's: some exporters fold a
BatchNormalization into the preceding Conv/Gemm in float32 (TorchScript at
``TrainingMode.EVAL``, the default, and the dynamo exporter's optimiser), which would put
the two ~1e-7 apart. So the BatchNorm parameters here make any such folding exact:
``var + eps`` a power of 4 (``eps = 2**-10``), ``gamma = ±2**j * sqrt(var + eps)`` so the
scale is ±2**j, and the means, betas and the biases before a BatchNorm on a 2**-6 grid.
``cnn_generic_bn`` has unconstrained BatchNorm parameters and is exported only by the
settings that keep BatchNormalization in the graph (TorchScript ``TrainingMode.PRESERVE``,
dynamo without the optimiser), so that bbp_ref's own float64 folding is checked at 1e-9 on
general values (with a folding exporter it would be off by 6e-8). Other constants
(LeakyReLU slopes, Clip bounds) are float32-exact, so the ONNX attribute and the torch
float64 module hold the same number.

Inputs are random (continuous): no input lies on a kink (ReLU at 0, a MaxPool tie, a Clip
bound) except with probability 0; the clip model is scaled so that ReLU6 and Hardtanh
really saturate.
"""

from __future__ import annotations

import numpy as np
import pytest

# Without torch the module is skipped (CI's run with BBP_REQUIRE_TORCH=1 makes a missing
# torch an error): see torch_helpers.
from torch_helpers import (
    assert_matches_reference,
    exact_batch_norm,
    export,
    local_bias,
    module_reference,
    on_grid,
    torch,
)

import bbp_ref

nn = torch.nn

pytestmark = pytest.mark.torch

FORWARD_RTOL = 1e-12
JACOBIAN_RTOL = 1e-9


# -- models ----------------------------------------------------------------------------------
def _f32(value: float) -> float:
    """A Python float that float32 holds exactly (ONNX float attributes are float32)."""
    return float(np.float32(value))


def _generic_bn(bn: nn.modules.batchnorm._BatchNorm, gen: torch.Generator) -> None:
    c = bn.num_features
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(c, generator=gen) * 0.5)
        bn.running_var.copy_(torch.rand(c, generator=gen) * 1.5 + 0.5)
        sign = torch.where(torch.rand(c, generator=gen) < 0.3, -1.0, 1.0)
        bn.weight.copy_((torch.rand(c, generator=gen) + 0.5) * sign)
        bn.bias.copy_(torch.randn(c, generator=gen) * 0.3)


def _randomize(model: nn.Module, seed: int, exact_bn: bool) -> nn.Module:
    """Random non-zero biases (on the 2**-6 grid: a BatchNorm may be folded into them),
    random BatchNorm statistics, random PReLU slopes; eval mode."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 1000)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            (exact_batch_norm if exact_bn else _generic_bn)(module, gen)
        elif isinstance(module, nn.PReLU):
            with torch.no_grad():
                module.weight.copy_(torch.rand(module.weight.shape, generator=gen) * 0.8 - 0.3)
        elif getattr(module, "bias", None) is not None and isinstance(
                module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            with torch.no_grad():
                module.bias.copy_(on_grid(torch.randn(module.bias.shape, generator=gen) * 0.2))
    return model.eval()


class Residual(nn.Module):
    """Conv-BN-ReLU-Conv-BN plus the identity, then ReLU."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels),
            nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels))

    def forward(self, x):
        return torch.relu(self.body(x) + x)


def _cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(8 * 2 * 2, 5))


def _clip_net() -> nn.Module:
    net = nn.Sequential(nn.Linear(8, 12), nn.ReLU6(), nn.Linear(12, 12),
                        nn.Hardtanh(_f32(-0.5), _f32(0.75)), nn.Linear(12, 4))
    with torch.no_grad():  # saturate: pre-activations of several units beyond the bounds
        net[0].weight.mul_(8.0)
        net[2].weight.mul_(0.5)
    return net


MODELS = {
    # name: (builder, example shape, input scale, BatchNorm folding exact)
    "mlp_leaky": (lambda: nn.Sequential(
        nn.Linear(10, 16), nn.LeakyReLU(_f32(0.1)), nn.Linear(16, 8),
        nn.LeakyReLU(_f32(0.3)), nn.Linear(8, 3)), (10,), 1.0, True),
    "cnn": (_cnn, (3, 8, 8), 1.0, True),
    "cnn_generic_bn": (_cnn, (3, 8, 8), 1.0, False),
    "residual": (lambda: nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), Residual(6),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4)), (3, 6, 6), 1.0, True),
    "conv_variants": (lambda: nn.Sequential(
        nn.Conv2d(4, 8, 3, padding=2, dilation=2, groups=2), nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8), nn.LeakyReLU(_f32(0.2)),
        nn.Conv2d(8, 6, (2, 3), stride=(1, 2), padding=(1, 0), dilation=(2, 1)),
        nn.PReLU(6), nn.MaxPool2d(3, stride=2, padding=1), nn.Flatten(),
        nn.Linear(6 * 2 * 1, 4)), (4, 7, 8), 1.0, True),
    "clip": (_clip_net, (8,), 1.0, True),
    "conv1d": (lambda: nn.Sequential(
        nn.Conv1d(2, 4, 5, padding=2), nn.BatchNorm1d(4), nn.ReLU(), nn.MaxPool1d(2),
        nn.Conv1d(4, 6, 3, stride=2, dilation=2), nn.ReLU(), nn.AvgPool1d(2),
        nn.Flatten(), nn.Linear(6 * 1, 3)), (2, 20), 1.0, True),
    "conv3d": (lambda: nn.Sequential(
        nn.Conv3d(2, 3, 3, padding=1), nn.BatchNorm3d(3), nn.ReLU(), nn.MaxPool3d(2),
        nn.Conv3d(3, 4, 2), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 2 * 2 * 2, 3)),
        (2, 6, 6, 6), 1.0, True),
}


# -- exporters -------------------------------------------------------------------------------
# name: (keyword arguments of torch.onnx.export, folds BatchNorm itself in float32, the
# models it exports or None for all). The dynamo exports take ~2 s each, the TorchScript
# ones ~0.1 s: the unoptimised dynamo graph (BatchNormalization kept, shape subgraphs) is
# exported for two models only.
EXPORTERS = {
    "ts9": (dict(dynamo=False, opset_version=9), True, None),
    "ts13_keep_bn": (dict(dynamo=False, opset_version=13,
                          training=torch.onnx.TrainingMode.PRESERVE), False, None),
    "ts17": (dict(dynamo=False, opset_version=17), True, None),
    "dynamo": (dict(dynamo=True), True, None),
    "dynamo_noopt": (dict(dynamo=True, optimize=False), False, {"cnn_generic_bn", "residual"}),
}


def _cases():
    for name, (_, _, _, exact_bn) in MODELS.items():
        for exporter, (_, folds, only) in EXPORTERS.items():
            if (folds and not exact_bn) or (only is not None and name not in only):
                continue
            yield pytest.param(name, exporter, id=f"{name}-{exporter}")


_BUILT: dict[str, tuple[nn.Module, np.ndarray]] = {}


def _model(name: str) -> tuple[nn.Module, np.ndarray]:
    """The float32 torch model and a float32 batch of 3 inputs (built once)."""
    if name not in _BUILT:
        build, shape, scale, exact_bn = MODELS[name]
        seed = sorted(MODELS).index(name)
        model = _randomize(build(), seed, exact_bn)
        rng = np.random.default_rng(seed)
        x = (rng.normal(size=(3, *shape)) * scale).astype(np.float32)
        _BUILT[name] = (model, x)
    return _BUILT[name]


@pytest.mark.parametrize(("name", "exporter"), list(_cases()))
def test_gradients_match_autograd(name, exporter, tmp_path):
    model, x = _model(name)
    path = tmp_path / f"{name}.{exporter}.onnx"
    export(model, (torch.from_numpy(x),), path, EXPORTERS[exporter][0])
    m = bbp_ref.load(path)
    out, jac = module_reference(model, x)
    assert_matches_reference(m, x, out, jac, FORWARD_RTOL, JACOBIAN_RTOL)

    # the local bias b^x = f(x) - W^x x, per output, against Explanation.bias
    bias, scale = local_bias(out, jac, x)
    for t in range(bias.shape[1]):
        e = bbp_ref.explain(m, x, target=t, check=False)
        np.testing.assert_array_less(np.abs(e.bias - bias[:, t]), JACOBIAN_RTOL * scale[:, t],
                                     err_msg=f"local bias of output {t}")


def test_clip_model_saturates():
    """The clip model's ReLU6 and Hardtanh really saturate on its input, so its local
    bias includes Clip bounds (not only the layers' biases)."""
    model, x = _model("clip")
    with torch.no_grad():
        h1 = model[0](torch.from_numpy(x))
        h2 = model[2](model[1](h1))
    assert (h1 > 6).any() and (h2 > 0.75).any() and (h2 < -0.5).any()
