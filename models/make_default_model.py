#!/usr/bin/env python3
"""Train the package's embedded default model: a small CNN on scikit-learn's digits.

Architecture (input [N, 1, 8, 8], pixels scaled to [0, 1] by dividing by 16):

    Conv(1->8, 3x3, pad 1) - ReLU - MaxPool(2) - Conv(8->16, 3x3, pad 1) - ReLU - MaxPool(2)
    - Flatten - Linear(64->32) - ReLU - Linear(32->10)         (all layers with biases)

Data: sklearn.datasets.load_digits (ships with scikit-learn, nothing is downloaded),
train_test_split(test_size=0.25, random_state=0). Training: Adam, full CPU, fixed seeds.

Writes:
* ``bbp_ref/data/digits_cnn.onnx``        TorchScript exporter, opset 17, dynamic batch
                                          (input "input" [batch,1,8,8] -> "logits" [batch,10])
* ``bbp_ref/data/digits_cnn.sample.npy``  one correctly classified test image, float32 [1, 8, 8]
* ``models/default_model.json``           test accuracy, the sample's label, checks

Usage:  python3 models/make_default_model.py
"""

from __future__ import annotations

import io
import json
import sys
import warnings
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DATA = ROOT / "bbp_ref" / "data"
ONNX_PATH = DATA / "digits_cnn.onnx"
SAMPLE_PATH = DATA / "digits_cnn.sample.npy"
JSON_PATH = HERE / "default_model.json"
SEED = 0
EPOCHS = 30
BATCH = 64
LR = 5e-3
MIN_ACC = 0.95
MAX_BYTES = 100 * 1024
SAMPLE_INDEX = 0  # first correctly classified test image at or after this index


class DigitsCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 8x4x4
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 16x2x2
            nn.Flatten(),
        )
        self.classifier = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x):
        return self.classifier(self.features(x))


def load_data():
    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    return train_test_split(X, y, test_size=0.25, random_state=0)


def main() -> int:
    torch.manual_seed(SEED)
    np.random.seed(SEED)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)

    X_tr, X_te, y_tr, y_te = load_data()
    xt, yt = torch.from_numpy(X_tr), torch.from_numpy(y_tr).long()
    xe = torch.from_numpy(X_te)

    model = DigitsCNN()
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(SEED)
    for epoch in range(EPOCHS):
        model.train()
        perm = torch.randperm(len(xt), generator=gen)
        total = 0.0
        for i in range(0, len(xt), BATCH):
            idx = perm[i : i + BATCH]
            opt.zero_grad()
            loss = loss_fn(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        if (epoch + 1) % 10 == 0:
            model.eval()
            with torch.no_grad():
                acc = float((model(xe).argmax(1).numpy() == y_te).mean())
            print(f"epoch {epoch + 1:3d} loss {total / len(xt):.4f} test acc {acc:.4f}")

    model.eval()
    with torch.no_grad():
        logits = model(xe).numpy()
    pred = logits.argmax(1)
    acc = float((pred == y_te).mean())
    assert acc >= MIN_ACC, f"test accuracy {acc:.4f} < {MIN_ACC}"

    DATA.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    with warnings.catch_warnings(), redirect_stdout(buf), redirect_stderr(buf):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (xe[:1],),
            str(ONNX_PATH),
            dynamo=False,
            opset_version=17,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            do_constant_folding=True,
        )
    size = ONNX_PATH.stat().st_size
    assert size < MAX_BYTES, size

    # One correctly classified test image.
    k = next(i for i in range(SAMPLE_INDEX, len(y_te)) if pred[i] == y_te[i])
    sample = np.ascontiguousarray(X_te[k], dtype=np.float32)  # [1, 8, 8]
    np.save(SAMPLE_PATH, sample)

    # Checks: onnxruntime agrees with PyTorch on the whole test set (dynamic batch).
    m = onnx.load(str(ONNX_PATH))
    onnx.checker.check_model(m)
    sess = ort.InferenceSession(str(ONNX_PATH), providers=["CPUExecutionProvider"])
    ort_logits = sess.run(None, {"input": X_te})[0]
    diff = float(np.max(np.abs(ort_logits - logits)))
    assert np.allclose(ort_logits, logits, atol=1e-4, rtol=1e-4), diff
    ort_acc = float((ort_logits.argmax(1) == y_te).mean())
    s_logits = sess.run(None, {"input": sample[None]})[0][0]
    assert int(s_logits.argmax()) == int(y_te[k])
    ops = sorted({n.op_type for n in m.graph.node})
    n_params = sum(p.numel() for p in model.parameters())

    info = {
        "file": "bbp_ref/data/digits_cnn.onnx",
        "sample_file": "bbp_ref/data/digits_cnn.sample.npy",
        "architecture": "Conv(1->8,3x3,pad1)-ReLU-MaxPool(2)-Conv(8->16,3x3,pad1)-ReLU-"
                        "MaxPool(2)-Flatten-Linear(64->32)-ReLU-Linear(32->10)",
        "data": "sklearn.datasets.load_digits, pixels/16 -> [0,1], reshaped [1,8,8]; "
                "train_test_split(test_size=0.25, random_state=0)",
        "training": {"optimizer": "Adam", "lr": LR, "epochs": EPOCHS, "batch_size": BATCH,
                     "seed": SEED},
        "exporter": "torchscript",
        "opset": 17,
        "torch": torch.__version__,
        "input_name": "input",
        "output_name": "logits",
        "input_shape": [1, 8, 8],
        "output_shape": [10],
        "n_params": n_params,
        "bytes": size,
        "op_types": ops,
        "test_accuracy": acc,
        "onnx_test_accuracy": ort_acc,
        "n_test": int(len(y_te)),
        "max_abs_logit_diff_vs_torch": diff,
        "sample_test_index": int(k),
        "sample_label": int(y_te[k]),
        "sample_predicted": int(s_logits.argmax()),
        "sample_logits": [float(v) for v in s_logits],
    }
    with open(JSON_PATH, "w") as fh:
        json.dump(info, fh, indent=1)
        fh.write("\n")
    print(f"test accuracy {acc:.4f} (onnxruntime {ort_acc:.4f}), max |logit diff| {diff:.2e}")
    print(f"{ONNX_PATH.relative_to(ROOT)}: {size} B, ops={' '.join(ops)}")
    print(f"sample: test index {k}, label {int(y_te[k])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
