"""An independent implementation of BBp in PyTorch, written from docs/math.md alone, and
how it checks itself against bbp_ref (the worked example of docs/oracle.md).

It differs from bbp_ref on purpose: it runs in float32, works layer by layer on an
``nn.Sequential``, takes gradients from autograd, and builds each affine layer's
attribution scores `alpha[p, q]` as a dense matrix from the layer's Jacobian (fine for a
small model; bbp_ref never builds one). It explains the embedded digits CNN, whose
weights it reads from the ONNX file.

    python docs/examples/torch_bbp.py OUT_DIR        # writes candidate.npz and x.npy
    bbp-ref verify bbp_ref/data/digits_cnn.onnx OUT_DIR/x.npy OUT_DIR/candidate.npz
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "bbp_ref" / "data" / "digits_cnn.onnx"
SAMPLE = ROOT / "bbp_ref" / "data" / "digits_cnn.sample.npy"


def digits_cnn() -> nn.Sequential:
    """The default model's architecture, with its weights read from the ONNX file."""
    net = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    weights = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy())
               for t in onnx.load(str(MODEL)).graph.initializer}
    mapping = {"features.0": net[0], "features.3": net[3], "classifier.0": net[7],
               "classifier.2": net[9]}
    for prefix, layer in mapping.items():
        layer.weight.data = weights[f"{prefix}.weight"]
        layer.bias.data = weights[f"{prefix}.bias"]
    return net.eval()


def _scores(z: torch.Tensor, rule: str, sigma: torch.Tensor) -> torch.Tensor:
    """Unnormalised scores [P, Q] of a row-wise rule (docs/math.md §4.1) from contributions z."""
    if rule == "abs":
        return z.abs()
    if rule == "signed":
        return torch.clamp(sigma[:, None] * z, min=0)
    return torch.ones_like(z)  # uniform: every structural input (dense layers: all)


def _alpha(z: torch.Tensor, rule: str, sigma: torch.Tensor, connected: torch.Tensor):
    """alpha [P, Q], rows normalised; zero rows fall back signed -> abs -> uniform."""
    order = {"signed": ["signed", "abs", "uniform"], "abs": ["abs", "uniform"],
             "uniform": ["uniform"]}[rule]
    alpha = torch.zeros_like(z)
    todo = torch.ones(z.shape[0], dtype=torch.bool)
    for name in order:
        scores = _scores(z, name, sigma) * connected
        total = scores.sum(dim=1)
        rows = todo & (total > 0)
        alpha[rows] = scores[rows] / total[rows, None]
        todo &= ~rows
    return alpha


def _affine_distribute(layer: nn.Module, u: torch.Tensor, beta: torch.Tensor,
                       g: torch.Tensor, rule: str) -> torch.Tensor:
    """Hand the mass of a Linear/Conv2d layer to its input with a dense alpha."""
    def linear_part(v, weight=layer.weight):
        if isinstance(layer, nn.Linear):
            return nn.functional.linear(v, weight)
        return nn.functional.conv2d(v, weight, padding=layer.padding)

    shape = (beta.numel(), u.numel())
    w = torch.autograd.functional.jacobian(linear_part, u[None]).reshape(shape)
    # RF(p): the inputs a kernel of ones reaches (a Conv's padding is not an input)
    ones = torch.ones_like(layer.weight)
    connected = torch.autograd.functional.jacobian(
        lambda v: linear_part(v, ones), u[None]).reshape(shape) != 0
    z = w * u.reshape(1, -1)
    sigma = torch.sign(beta.reshape(-1) * g.reshape(-1))
    alpha = _alpha(z, rule, sigma, connected)
    return (alpha.T @ beta.reshape(-1)).reshape(u.shape)


def bbp(net: nn.Sequential, x: torch.Tensor, target: int, rule: str):
    """Gradient, b^x and B(x) for output ``target`` of one example ``x``."""
    acts = [x.clone().requires_grad_(True)]
    pool_indices = {}
    for i, layer in enumerate(net):
        if isinstance(layer, nn.MaxPool2d):
            out, idx = nn.functional.max_pool2d(acts[-1][None], layer.kernel_size,
                                                layer.stride, return_indices=True)
            pool_indices[i] = idx[0]
            acts.append(out[0])
        else:
            acts.append(layer(acts[-1][None])[0])
    grads = torch.autograd.grad(acts[-1][target], acts)
    beta = torch.zeros_like(acts[-1])
    bias_total = torch.zeros(())
    for i in reversed(range(len(net))):
        layer, u, g = net[i], acts[i].detach(), grads[i + 1]
        if isinstance(layer, (nn.Linear, nn.Conv2d)):
            b = layer.bias.detach().reshape(-1, *([1] * (g.dim() - 1)))
            e = g * b  # e_v = g_v * b_v
            bias_total = bias_total + e.sum()
            beta = _affine_distribute(layer, u, beta + e, g, rule)
        elif isinstance(layer, nn.MaxPool2d):
            flat = torch.zeros(u.shape[0], u[0].numel())
            flat.scatter_add_(1, pool_indices[i].reshape(u.shape[0], -1),
                              beta.reshape(u.shape[0], -1))
            beta = flat.reshape(u.shape)
        elif isinstance(layer, nn.Flatten):
            beta = beta.reshape(u.shape)
        # ReLU: a gate hands its whole mass to its one input element
    return grads[0].detach(), bias_total.detach(), beta.detach(), acts[-1].detach()


def main(out_dir: str) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    x = np.load(SAMPLE, allow_pickle=False).astype(np.float32)
    net = digits_cnn()
    logits = net(torch.from_numpy(x)[None])[0]
    target = int(logits.argmax())
    candidate = {"target": np.array(target)}
    for rule in ("abs", "signed", "uniform"):
        gradient, bias, attribution, output = bbp(net, torch.from_numpy(x), target, rule)
        candidate[f"bias_attribution/{rule}"] = attribution.numpy()
    candidate.update(output=output[target].numpy(), logits=output.numpy(),
                     gradient=gradient.numpy(), bias=bias.numpy(),
                     gradient_x_input=(gradient * torch.from_numpy(x)).numpy())
    np.save(out / "x.npy", x)
    np.savez(out / "candidate.npz", **candidate)
    print(f"wrote {out / 'candidate.npz'} and {out / 'x.npy'}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "torch_bbp_out")
