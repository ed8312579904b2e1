"""Real architectures with random weights, for `test_architectures.py` (torch tests only).

Each builder returns a float32 torch model in eval mode whose parameters and BatchNorm
running statistics are randomised (so that `b^x` is not trivially 0), and whose constants
survive every exporter exactly, so that the torch float64 model is the *same* function as
the ONNX graph (see `randomize`). Nothing is downloaded: torchvision builds the models
from their configurations with random weights.
"""

from __future__ import annotations

import copy
import os
import sys
import types
from collections.abc import Callable

import numpy as np
import pytest
from torch_helpers import exact_batch_norm, on_grid, torch

nn = torch.nn


def import_torchvision() -> types.ModuleType:
    """torchvision 0.28 registers meta kernels at import that this torch build rejects;
    they are only needed for torch.compile, so the registration module is stubbed."""
    sys.modules.setdefault("torchvision._meta_registrations",
                           types.ModuleType("torchvision._meta_registrations"))
    if os.environ.get("BBP_REQUIRE_TORCH"):
        import torchvision
        return torchvision
    return pytest.importorskip("torchvision")


# -- randomisation --------------------------------------------------------------------------
def randomize(model: nn.Module, seed: int) -> nn.Module:
    """Random BatchNorm statistics (exactly foldable), random non-zero biases on the 2**-6
    grid (a BatchNorm may be folded into them), random LayerNorm/GroupNorm affine
    parameters, random class tokens and layer scales; eval mode."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 1000)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            exact_batch_norm(module, gen)
            continue
        with torch.no_grad():
            if isinstance(module, (nn.LayerNorm, nn.GroupNorm)) and module.weight is not None:
                module.weight.copy_(1.0 + 0.3 * torch.randn(module.weight.shape, generator=gen))
                module.bias.copy_(0.3 * torch.randn(module.bias.shape, generator=gen))
            elif getattr(module, "bias", None) is not None and isinstance(
                    module, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
                module.bias.copy_(on_grid(torch.randn(module.bias.shape, generator=gen) * 0.2))
            for name, parameter in module.named_parameters(recurse=False):
                if name == "layer_scale":  # ConvNeXt: 1e-6 would make each block ~identity
                    parameter.copy_(0.5 + 0.5 * torch.rand(parameter.shape, generator=gen))
                elif name == "class_token":  # ViT: zeros by default
                    parameter.copy_(0.3 * torch.randn(parameter.shape, generator=gen))
    return model.eval()


def calibrate(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Rescale each Conv/Linear weight (one scalar per layer, in float32) so that the
    input-dependent part of its output, the deviation from the batch mean, has unit RMS
    on the calibration batch ``x`` (LSUV-style). Without this, a deep net on a 32x32
    image (windows mostly in padding at 2x2 and 1x1) with random biases computes nearly
    the same output for every input: `W^x` would be ~1e-6 of `b^x`."""
    def rescale(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        bias = 0.0 if module.bias is None else module.bias.reshape(-1, *[1] * (output.dim() - 2))
        if isinstance(module, nn.Linear):
            bias = 0.0 if module.bias is None else module.bias
        linear = output - bias
        deviation = (linear - linear.mean(dim=0, keepdim=True)).square().mean().sqrt()
        scale = float(np.float32(1.0 / max(float(deviation), 1e-12)))
        module.weight.mul_(scale)
        return linear * scale + bias

    layers = (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)
    hooks = [m.register_forward_hook(rescale) for m in model.modules() if isinstance(m, layers)]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for hook in hooks:
            hook.remove()
    return model


# -- the models -----------------------------------------------------------------------------
class UNetDecoder(nn.Module):
    """A small U-Net: a Conv encoder (stride 2 twice), a decoder that upsamples with a
    ConvTranspose2d, nn.Upsample nearest and bilinear, with skip concatenations."""

    def __init__(self) -> None:
        super().__init__()
        self.enc1 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.enc2 = nn.Sequential(nn.Conv2d(8, 12, 3, stride=2, padding=1), nn.ReLU())
        self.enc3 = nn.Sequential(nn.Conv2d(12, 16, 3, stride=2, padding=1), nn.ReLU())
        self.up_transpose = nn.ConvTranspose2d(16, 12, 2, stride=2)
        self.dec2 = nn.Sequential(nn.Conv2d(24, 8, 3, padding=1), nn.ReLU())
        self.up_nearest = nn.Upsample(scale_factor=2, mode="nearest")
        self.up_bilinear = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.head = nn.Conv2d(8 + 8 + 8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.enc1(x)
        b = self.enc2(a)
        c = self.enc3(b)
        d = self.dec2(torch.cat([self.up_transpose(c), b], dim=1))
        return self.head(torch.cat([self.up_nearest(d), self.up_bilinear(d), a], dim=1))


def _torchvision(name: str, **kwargs: object) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        models = import_torchvision().models
        return getattr(models, name)(weights=None, num_classes=10, **kwargs)
    return build


def _vision_transformer() -> nn.Module:
    from_module = import_torchvision().models.vision_transformer
    return from_module.VisionTransformer(image_size=32, patch_size=8, num_layers=2,
                                         num_heads=2, hidden_dim=32, mlp_dim=64,
                                         num_classes=10)


def _swin() -> nn.Module:
    # head dimension 16 (embed_dim / num_heads at both stages): its scale 1/4 is exact.
    # On 40x40 images the 10x10 tokens are padded to 2x2 windows of 7x7 and shifted by 3
    # (the mask covers the padding), the 5x5 of stage 2 to one window, not shifted.
    from_module = import_torchvision().models.swin_transformer
    return from_module.SwinTransformer(patch_size=[4, 4], embed_dim=32, depths=[2, 2],
                                       num_heads=[2, 4], window_size=[7, 7],
                                       num_classes=10)


# name: (builder, example shape)
ARCHITECTURES: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "mobilenet_v3_small": (_torchvision("mobilenet_v3_small"), (3, 32, 32)),
    "efficientnet_b0": (_torchvision("efficientnet_b0"), (3, 32, 32)),
    "convnext_tiny": (_torchvision("convnext_tiny"), (3, 32, 32)),
    "regnet_y_400mf": (_torchvision("regnet_y_400mf"), (3, 32, 32)),
    "shufflenet_v2_x1_0": (_torchvision("shufflenet_v2_x1_0"), (3, 32, 32)),
    "vit_small": (_vision_transformer, (3, 32, 32)),
    "swin_small": (_swin, (3, 40, 40)),
    "unet_decoder": (UNetDecoder, (3, 8, 8)),
}

BATCH = 2


def build(name: str) -> tuple[nn.Module, np.ndarray]:
    """The randomised float32 model and a float32 batch of `BATCH` N(0, 1) inputs."""
    builder, shape = ARCHITECTURES[name]
    seed = sorted(ARCHITECTURES).index(name)
    model = randomize(builder(), seed)
    rng = np.random.default_rng(seed)
    calibrate(model, torch.from_numpy(rng.normal(size=(8, *shape)).astype(np.float32)))
    x = rng.normal(size=(BATCH, *shape)).astype(np.float32)
    return model, x


# -- export and the float64 reference -------------------------------------------------------
EXPORTERS = {
    "torchscript": dict(dynamo=False, opset_version=17),
    "dynamo": dict(dynamo=True),
}


class Float32Hardsigmoid(nn.Module):
    """`clip(u * alpha + 1/2, 0, 1)` with ``alpha`` = float32(1/6): what an exported
    ``HardSigmoid`` node computes (its ``alpha`` attribute is a float32), where torch's
    float64 ``hardsigmoid`` divides by 6 exactly (3e-8 apart, far above 1e-9)."""

    ALPHA = float(np.float32(1.0 / 6.0))

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return torch.clamp(u * self.ALPHA + 0.5, 0.0, 1.0)


class Float32Gelu(nn.Module):
    """`u/2 (1 + erf(u / s))` with ``s`` = float32(sqrt 2): the TorchScript exporter's
    form of the exact GELU (a ``Div`` by a float32 constant, ``Erf``, ``Add``, ``Mul``);
    the dynamo exporter writes a ``Gelu`` node, which is exact."""

    SQRT2 = float(np.float32(np.sqrt(2.0)))

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return u * 0.5 * (1.0 + torch.erf(u / self.SQRT2))


def as_exported(model: nn.Module, exporter: str) -> nn.Module:
    """A float64 copy of ``model`` that computes what its ONNX export by ``exporter``
    states: every constant the exporter can only write as a float32 is that float32
    (nn.Hardsigmoid's 1/6, and the TorchScript GELU's sqrt 2; the other constants of these
    models are float32-exact)."""
    model64 = copy.deepcopy(model).double().eval()
    for module in list(model64.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Hardsigmoid):
                setattr(module, name, Float32Hardsigmoid())
            elif (isinstance(child, nn.GELU) and child.approximate == "none"
                  and exporter == "torchscript"):
                setattr(module, name, Float32Gelu())
    return model64


def torch_reference(model: nn.Module, x: np.ndarray,
                    exporter: str) -> tuple[np.ndarray, np.ndarray]:
    """float64 output ``[N, *out]`` and per-example Jacobian ``[N, *out, *in]`` by torch
    autograd on ``as_exported(model, exporter)`` (exact: the weights are float32). The
    examples are independent in eval mode, so one reverse pass per output element gives
    every example's row at once."""
    model64 = as_exported(model, exporter)
    x64 = torch.from_numpy(x.astype(np.float64)).requires_grad_(True)
    out = model64(x64)
    flat = out.reshape(len(x), -1)
    rows = []
    for k in range(flat.shape[1]):
        (grad,) = torch.autograd.grad(flat[:, k].sum(), x64, retain_graph=True)
        rows.append(grad.numpy())
    jacobian = np.stack(rows, axis=1).reshape(len(x), *out.shape[1:], *x.shape[1:])
    return out.detach().numpy(), jacobian
