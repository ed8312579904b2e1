#!/usr/bin/env python3
"""Train the digits models of the reproduction experiments (docs/reproduction.md).

Four small PyTorch classifiers on scikit-learn's digits, each trained once with biases in
every layer and once without any (``bias=False`` everywhere):

* ``mlp``: Flatten - Linear(64->128) - ReLU - Linear(128->64) - ReLU - Linear(64->10)
* ``cnn``: Conv(1->16, 3x3, pad 1) - ReLU - MaxPool(2) - Conv(16->32, 3x3, pad 1) - ReLU
  - MaxPool(2) - Flatten - Linear(128->64) - ReLU - Linear(64->10)

Every model takes ``input`` [batch, 1, 8, 8] (pixels / 16, in [0, 1]) and returns
``logits`` [batch, 10]. Data: `bbp_ref.experiments.digits.digits_split` (sklearn's
``load_digits``, ``train_test_split(test_size=0.25, random_state=0)``; nothing is
downloaded). Training: Adam, cross-entropy, fixed seeds, one CPU thread, deterministic
algorithms; a model with and without bias use the same seed and see the same batches in
the same order (their initial weights differ after the first layer, since drawing the
biases consumes random numbers).

Writes ``bbp_ref/data/digits/{mlp,cnn}_{bias,nobias}.onnx`` (package data, so that
``bbp-ref reproduce`` works from any folder) (TorchScript exporter, opset 17,
dynamic batch) and ``models/digits/manifest.json``: per model the test accuracy and the
exact count of correct test predictions as bbp_ref computes them (float64), PyTorch's and
onnxruntime's counts, and the largest logit difference to PyTorch.

Usage (from the repository root; needs the ``export`` extra):
    python3 models/digits/make_digits_models.py
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
import time
import warnings
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

import bbp_ref
from bbp_ref.experiments.digits import RANDOM_STATE, TEST_SIZE, digits_split

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
MODELS = ROOT / "bbp_ref" / "data" / "digits"
SEED = 0
EPOCHS = 40
BATCH = 64
LR = 2e-3
OPSET = 17
MAX_BYTES = 200 * 1024

ARCHITECTURES = {
    "mlp": "Flatten-Linear(64->128)-ReLU-Linear(128->64)-ReLU-Linear(64->10)",
    "cnn": "Conv(1->16,3x3,pad1)-ReLU-MaxPool(2)-Conv(16->32,3x3,pad1)-ReLU-MaxPool(2)"
           "-Flatten-Linear(128->64)-ReLU-Linear(64->10)",
}


def make_model(kind: str, bias: bool) -> nn.Module:
    if kind == "mlp":
        return nn.Sequential(
            nn.Flatten(),
            nn.Linear(64, 128, bias=bias), nn.ReLU(),
            nn.Linear(128, 64, bias=bias), nn.ReLU(),
            nn.Linear(64, 10, bias=bias))
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1, bias=bias), nn.ReLU(), nn.MaxPool2d(2),  # 16x4x4
        nn.Conv2d(16, 32, 3, padding=1, bias=bias), nn.ReLU(), nn.MaxPool2d(2),  # 32x2x2
        nn.Flatten(),
        nn.Linear(128, 64, bias=bias), nn.ReLU(),
        nn.Linear(64, 10, bias=bias))


def train(kind: str, bias: bool, X: np.ndarray, y: np.ndarray) -> nn.Module:
    torch.manual_seed(SEED)
    model = make_model(kind, bias)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    loss_fn = nn.CrossEntropyLoss()
    xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(SEED)
    model.train()
    for _ in range(EPOCHS):
        perm = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(xt), BATCH):
            idx = perm[i:i + BATCH]
            opt.zero_grad()
            loss_fn(model(xt[idx]), yt[idx]).backward()
            opt.step()
    return model.eval()


def export(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    buf = io.StringIO()
    with warnings.catch_warnings(), redirect_stdout(buf), redirect_stderr(buf):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (example,), str(path), dynamo=False, opset_version=OPSET,
            input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            do_constant_folding=True)
    onnx.checker.check_model(onnx.load(str(path)))


def main() -> int:
    start = time.perf_counter()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    np.random.seed(SEED)
    split = digits_split()
    xe = torch.from_numpy(split.X_test)
    entries = {}
    for kind in ("mlp", "cnn"):
        for bias in (True, False):
            name = f"{kind}_{'bias' if bias else 'nobias'}"
            t0 = time.perf_counter()
            model = train(kind, bias, split.X_train, split.y_train)
            seconds = time.perf_counter() - t0
            with torch.no_grad():
                logits = model(xe).numpy()
            path = MODELS / f"{name}.onnx"
            export(model, xe[:1], path)
            size = path.stat().st_size
            assert size < MAX_BYTES, (name, size)

            sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            ort_logits = sess.run(None, {"input": split.X_test})[0]
            diff = float(np.max(np.abs(ort_logits - logits)))
            assert diff < 1e-4, (name, diff)
            ref_logits = bbp_ref.load(path).forward(split.X_test)  # float64
            correct = int((ref_logits.argmax(1) == split.y_test).sum())
            torch_correct = int((logits.argmax(1) == split.y_test).sum())
            ort_correct = int((ort_logits.argmax(1) == split.y_test).sum())
            m = onnx.load(str(path))
            entries[name] = {
                "file": f"bbp_ref/data/digits/{name}.onnx",
                "architecture": ARCHITECTURES[kind],
                "bias": bias,
                "n_params": sum(p.numel() for p in model.parameters()),
                "bytes": size,
                "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                "op_types": sorted({n.op_type for n in m.graph.node}),
                "test_correct": correct,
                "test_accuracy": correct / len(split.y_test),
                "torch_test_correct": torch_correct,
                "onnxruntime_test_correct": ort_correct,
                "max_abs_logit_diff_onnxruntime_vs_torch": diff,
                "train_seconds": round(seconds, 2),
            }
            print(f"{name:11s} test accuracy {correct}/{len(split.y_test)} = "
                  f"{correct / len(split.y_test):.4f} (torch {torch_correct}, onnxruntime "
                  f"{ort_correct}), {size} B, trained in {seconds:.1f} s")

    manifest = {
        "data": "sklearn.datasets.load_digits, pixels/16 -> [0,1], shape [N,1,8,8]; "
                f"train_test_split(test_size={TEST_SIZE}, random_state={RANDOM_STATE}, "
                "stratify=None)",
        "n_train": int(len(split.y_train)),
        "n_test": int(len(split.y_test)),
        "input": {"name": "input", "shape": ["batch", 1, 8, 8]},
        "output": {"name": "logits", "shape": ["batch", 10]},
        "training": {"optimizer": "Adam", "lr": LR, "epochs": EPOCHS, "batch_size": BATCH,
                     "loss": "cross-entropy", "seed": SEED, "torch_threads": 1,
                     "deterministic_algorithms": True},
        "exporter": "torchscript",
        "opset": OPSET,
        "torch": torch.__version__,
        "test_correct_is": "argmax of bbp_ref.load(file).forward(X_test) (float64) == y_test",
        "models": entries,
    }
    with open(HERE / "manifest.json", "w") as fh:
        json.dump(manifest, fh, indent=1)
        fh.write("\n")
    print(f"wrote {len(entries)} models and manifest.json in "
          f"{time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
