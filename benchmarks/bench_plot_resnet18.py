#!/usr/bin/env python3
"""The default ``bbp-ref explain --plot`` on ResNet-18 at 224x224: wall time and peak
memory, measured with ``/usr/bin/time -v`` around the command.

torchvision's ``resnet18`` with random weights (``weights=None``, seed 0, and random
BatchNormalization statistics, `randomize_batch_norms`; nothing is downloaded) is exported
to ONNX by bbp_ref's own in-memory exporter into a temporary folder, with one synthetic
224x224 colour image (`test_image`); then

    bbp-ref explain resnet18.onnx image.npy --plot grid.png [--plot-layers layers.png]

runs in a subprocess. The targets (README, benchmarks/README.md): under 2 minutes and
under 2 GB peak resident memory for ``--plot`` on a 2-core machine.

Usage: python benchmarks/bench_plot_resnet18.py [--layers] [--keep DIR] [--json FILE]
Needs the ``torch`` extra and torchvision (not a dependency of bbp_ref).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np

TIME = "/usr/bin/time"
TARGET_SECONDS, TARGET_BYTES = 120.0, 2 * 1024**3


def resnet18_onnx(folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """ResNet-18 (random weights) as ONNX and one input image, written into ``folder``."""
    import onnx
    import torch

    # torchvision's meta registrations clash with this torch build; they are not needed
    sys.modules.setdefault("torchvision._meta_registrations",
                           types.ModuleType("torchvision._meta_registrations"))
    import torchvision

    from bbp_ref.importer.torch_export import export_module

    torch.manual_seed(seed)
    module = torchvision.models.resnet18(weights=None).eval()
    randomize_batch_norms(module, seed)
    image = test_image(seed)
    exported = export_module(module, image)
    model, x = folder / "resnet18.onnx", folder / "image.npy"
    onnx.save_model(exported.proto, str(model))
    np.save(x, image)
    return model, x


def randomize_batch_norms(module: object, seed: int) -> None:
    """Random BatchNormalization statistics and affine parameters (gamma ~ U[0.5, 1.5],
    beta ~ N(0, 0.1), running mean ~ N(0, 0.1), running variance ~ U[0.5, 1.5]), as a
    trained network has: with torchvision's initial ones (1, 0, 0, 1) every folded conv
    bias is 0 and only the last layer would have a bias to attribute."""
    import torch

    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for layer in module.modules():  # type: ignore[attr-defined]
            if isinstance(layer, torch.nn.BatchNorm2d):
                c = layer.num_features
                layer.weight.copy_(torch.rand(c, generator=generator) + 0.5)
                layer.bias.copy_(torch.randn(c, generator=generator) * 0.1)
                layer.running_mean.copy_(torch.randn(c, generator=generator) * 0.1)
                layer.running_var.copy_(torch.rand(c, generator=generator) + 0.5)


def test_image(seed: int = 0, side: int = 224) -> np.ndarray:
    """A smooth colour picture (a few Gaussian blobs on a gradient, each channel scaled to
    mean 0 and standard deviation 1, as ImageNet inputs are): [3, side, side] float32, so
    that the figures show shapes rather than noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:side, 0:side] / side
    image = np.stack([x, y, 1 - x]) * 0.5
    for _ in range(6):
        cy, cx, width = rng.uniform(0.15, 0.85), rng.uniform(0.15, 0.85), rng.uniform(0.04, 0.12)
        blob = np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * width**2))
        image += rng.uniform(-1, 1, size=(3, 1, 1)) * blob
    image -= image.mean(axis=(1, 2), keepdims=True)
    image /= image.std(axis=(1, 2), keepdims=True)
    return image.astype(np.float32)


def measure(argv: list[str]) -> dict[str, object]:
    """Run ``argv`` under /usr/bin/time -v: exit code, wall seconds, peak RSS in bytes."""
    start = time.perf_counter()
    done = subprocess.run([TIME, "-v", *argv], capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    cpu = sum(float(t) for t in re.findall(r"(?:User|System) time \(seconds\): ([\d.]+)",
                                           done.stderr))
    return {"command": " ".join(argv), "exit_code": done.returncode, "wall_s": round(wall, 1),
            "cpu_s": round(cpu, 1), "peak_rss_bytes": int(peak.group(1)) * 1024 if peak else None,
            "stdout": done.stdout}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", action="store_true", help="also --plot-layers")
    parser.add_argument("--keep", metavar="DIR", help="copy the figures into DIR")
    parser.add_argument("--json", metavar="FILE", help="write the measurements to FILE")
    args = parser.parse_args()
    if shutil.which(TIME) is None:
        sys.exit(f"{TIME} is needed (GNU time)")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        start = time.perf_counter()
        model, x = resnet18_onnx(folder)
        print(f"exported ResNet-18 in {time.perf_counter() - start:.1f} s")
        bbp_ref = shutil.which("bbp-ref")
        command = ([bbp_ref] if bbp_ref else [sys.executable, "-m", "bbp_ref.cli"])
        argv = [*command, "explain", str(model), str(x), "--plot", str(folder / "grid.png")]
        if args.layers:
            argv += ["--plot-layers", str(folder / "layers.png")]
        result = measure(argv)
        print(result.pop("stdout"))
        peak = result["peak_rss_bytes"]
        print(f"wall {result['wall_s']} s, CPU {result['cpu_s']} s, peak RSS "
              f"{peak / 1024**3:.2f} GiB, exit code "
              f"{result['exit_code']}" if peak else result)
        wall = float(result["wall_s"])  # type: ignore[arg-type]
        ok = (result["exit_code"] == 0 and wall < TARGET_SECONDS and peak is not None
              and peak < TARGET_BYTES)
        print("targets (< 2 min, < 2 GiB):", "met" if ok else "NOT met")
        if args.keep:
            Path(args.keep).mkdir(parents=True, exist_ok=True)
            for figure in folder.glob("*.png"):
                shutil.copy(figure, Path(args.keep) / f"resnet18_{figure.name}")
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
