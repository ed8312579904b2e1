"""Captum's integrated gradients converging to bbp_ref's exact integrated gradients, and
Captum's DeepLift against bbp_ref's, on the embedded digits CNN (the tables of
docs/oracle.md). Needs torch and captum (the `conformance` extra):

    python docs/examples/captum_convergence.py

For each Captum method and n_steps it prints the largest error of Captum's attribution
(float64 model) relative to the exact attribution's largest magnitude, over a few test
images. Exact IG walks the path's linear pieces (docs/math.md); Captum sums n_steps
gradients along it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
from captum.attr import DeepLift, IntegratedGradients

import bbp_ref

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
METHODS = ("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid",
           "gausslegendre")
STEPS = (8, 16, 32, 64, 128, 256, 512)


def _example_module():
    spec = importlib.util.spec_from_file_location("torch_bbp", HERE / "torch_bbp.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def inputs(count: int = 4) -> np.ndarray:
    """The first ``count`` test images of the digits split the default model used."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    _, test, _, _ = train_test_split(digits.images / 16.0, digits.target, test_size=0.25,
                                     random_state=0)
    return test[:count, None].astype(np.float32)


def main() -> None:
    net = _example_module().digits_cnn().double()
    model = bbp_ref.load(ROOT / "bbp_ref" / "data" / "digits_cnn.onnx")
    x = inputs()
    exact = bbp_ref.integrated_gradients(model, x, method="exact")
    targets = torch.from_numpy(exact.target)
    scale = np.abs(exact.attribution).max()
    xt = torch.from_numpy(x.astype(np.float64))
    print(f"exact IG: {[int(n) for n in exact.n_pieces]} linear pieces; |delta| "
          f"{np.abs(exact.delta).max():.1e}")
    print("| method | " + " | ".join(f"n_steps={n}" for n in STEPS) + " |")
    print("| --- |" + " --- |" * len(STEPS))
    ig = IntegratedGradients(net)
    for method in METHODS:
        errors = []
        for n in STEPS:
            theirs = ig.attribute(xt, target=targets, n_steps=n, method=method)
            errors.append(np.abs(theirs.detach().numpy() - exact.attribution).max() / scale)
        print(f"| {method} | " + " | ".join(f"{e:.1e}" for e in errors) + " |")
    ours = bbp_ref.deeplift(model, x)
    theirs = DeepLift(net).attribute(xt, target=targets).detach().numpy()
    their_delta = theirs.reshape(len(x), -1).sum(1) - (ours.output - ours.baseline_output)
    print(f"DeepLift: max |captum - bbp_ref| / max |bbp_ref| = "
          f"{np.abs(theirs - ours.attribution).max() / np.abs(ours.attribution).max():.1e}; "
          f"bbp_ref |delta| {np.abs(ours.delta).max():.1e}; captum |delta| "
          f"{np.abs(their_delta).max():.1e}")


if __name__ == "__main__":
    main()
