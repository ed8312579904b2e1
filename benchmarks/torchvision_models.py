"""Export torchvision's ResNet-18, ResNet-50 and VGG-16 with random weights to ONNX.

The architectures are torchvision's own (``torchvision.models.<name>(weights=None)``,
its default initialisation, seeded), exported with PyTorch's TorchScript exporter at
opset 17 with a dynamic batch axis: input ``input`` [N, 3, 224, 224], output ``logits``
[N, 1000]. Needs the ``conformance`` extra (torch, torchvision).
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

NAMES = ("resnet18", "resnet50", "vgg16")


def export(name: str, out_dir: str | Path, seed: int = 0) -> Path:
    """``<out_dir>/<name>.onnx``, exported if it is not there yet."""
    path = Path(out_dir) / f"{name}.onnx"
    if path.exists():
        return path
    # torchvision 0.28 registers meta kernels that this torch build lacks; they are not needed
    sys.modules.setdefault("torchvision._meta_registrations",
                           types.ModuleType("torchvision._meta_registrations"))
    import torch
    import torchvision

    torch.manual_seed(seed)
    network = getattr(torchvision.models, name)(weights=None).eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with torch.no_grad():
        torch.onnx.export(network, (torch.randn(1, 3, 224, 224),), str(tmp), dynamo=False,
                          opset_version=17, input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
    tmp.replace(path)
    return path
