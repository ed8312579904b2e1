"""ImageNet-sized torchvision architectures with random weights, exported to ONNX.

``mobilenet_v3_large``, ``efficientnet_b0``, ``convnext_tiny`` and ``vit_b_16`` (1000
classes, 224x224) are built by torchvision from their configurations (``weights=None``:
nothing is downloaded), seeded, in eval mode, and exported by PyTorch's TorchScript
exporter (``dynamo=False``, opset 17, dynamic batch axis) with the input and output
names of ``imagenet_models`` (``input``, ``logits``). Their BatchNorm running statistics
and biases are randomised (``randomize``) so that the local biases are not 0; the weights
mean nothing. They are not piecewise linear (HardSwish, SiLU, GELU, sigmoid gates,
LayerNorm, attention): bbp_ref explains their tangent model (docs/math.md §7).

Needs the ``conformance`` extra (torch, torchvision). ``bench_explain.py`` builds them
on first use through ``imagenet_models.ensure_model``.
"""

from __future__ import annotations

import contextlib
import io
import sys
import tempfile
import types
import warnings
from collections.abc import Callable
from pathlib import Path

import onnx

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
IMAGE_SIZE = 224
OPSET = 17


def _torchvision_models() -> types.ModuleType:
    # torchvision 0.28 registers meta kernels at import that this torch build rejects;
    # they only serve torch.compile, so the registering module is stubbed out.
    sys.modules.setdefault("torchvision._meta_registrations",
                           types.ModuleType("torchvision._meta_registrations"))
    import torchvision

    return torchvision.models


def randomize(model, seed: int):  # type: ignore[no-untyped-def]
    """Random BatchNorm running statistics and affine parameters, random biases of
    Conv/Linear layers and LayerNorms (torchvision initialises many of them to 0), and
    random weights for a Linear layer initialised to 0 (vit_b_16's head: with it the
    logits would be its bias whatever the image, `W^x = 0`)."""
    import torch
    from torch import nn

    gen = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                c = module.num_features
                module.running_mean.copy_(0.1 * torch.randn(c, generator=gen))
                module.running_var.copy_(0.5 + torch.rand(c, generator=gen))
                module.weight.copy_(0.5 + torch.rand(c, generator=gen))
                module.bias.copy_(0.1 * torch.randn(c, generator=gen))
            elif isinstance(module, (nn.Conv2d, nn.Linear, nn.LayerNorm)) \
                    and module.bias is not None:
                module.bias.copy_(0.01 * torch.randn(module.bias.shape, generator=gen))
            if isinstance(module, nn.Linear) and not module.weight.any():
                fan_in = module.weight.shape[1]
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen)
                                    / fan_in ** 0.5)
    return model.eval()


def export(name: str, seed: int = 0) -> onnx.ModelProto:
    """Build torchvision's ``name`` with random weights and export it to ONNX."""
    import torch

    torch.manual_seed(seed)
    model = randomize(getattr(_torchvision_models(), name)(weights=None), seed)
    x = torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(seed))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}.onnx"
        quiet = io.StringIO()
        with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=OPSET,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_axes={INPUT_NAME: {0: "N"}, OUTPUT_NAME: {0: "N"}})
        return onnx.load(str(path))


def _builder(name: str) -> Callable[[int], onnx.ModelProto]:
    def build(seed: int = 0) -> onnx.ModelProto:
        return export(name, seed)

    build.__name__ = name
    return build


NAMES = ("mobilenet_v3_large", "efficientnet_b0", "convnext_tiny", "vit_b_16")
MODELS = {name: _builder(name) for name in NAMES}
