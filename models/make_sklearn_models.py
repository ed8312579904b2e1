#!/usr/bin/env python3
"""Train a small scikit-learn MLP on the digits data set and convert it to ONNX.

Writes, under ``models/sklearn/``:

* ``digits_mlp.onnx``        MLPClassifier(hidden_layer_sizes=(32, 16), relu) via skl2onnx
                             (``zipmap=False``: outputs ``label`` [N] int64 and
                             ``probabilities`` [N, 10] float32)
* ``digits_mlp.input.npy``   5 test images, float32 [5, 64] (raw pixel values 0..16)
* ``manifest.json``          accuracy, shapes, op types, check results

``load_digits`` ships inside scikit-learn: nothing is downloaded. The script is
deterministic (fixed split and random_state).

Usage:  python3 models/make_sklearn_models.py
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import skl2onnx
import sklearn
from skl2onnx import to_onnx
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

HERE = Path(__file__).resolve().parent
OUT = HERE / "sklearn"
MAX_BYTES = 200 * 1024


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    X, y = load_digits(return_X_y=True)
    X = X.astype(np.float32)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.25, random_state=0)

    clf = MLPClassifier(hidden_layer_sizes=(32, 16), activation="relu", max_iter=500,
                        random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(X_tr, y_tr)
    acc = float(clf.score(X_te, y_te))
    print(f"MLPClassifier test accuracy: {acc:.4f} (n_iter={clf.n_iter_})")

    onx = to_onnx(clf, X_tr[:1], options={id(clf): {"zipmap": False}}, target_opset=17)
    path = OUT / "digits_mlp.onnx"
    onnx.save(onx, str(path))
    x = np.ascontiguousarray(X_te[:5], dtype=np.float32)
    np.save(OUT / "digits_mlp.input.npy", x)

    # Check: runs in onnxruntime, probabilities match predict_proba, labels match predict.
    m = onnx.load(str(path))
    onnx.checker.check_model(m)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    outs = dict(zip(names, sess.run(None, {sess.get_inputs()[0].name: x}), strict=True))
    proba_ref = clf.predict_proba(x)
    diff = float(np.max(np.abs(outs["probabilities"] - proba_ref)))
    assert np.allclose(outs["probabilities"], proba_ref, atol=1e-5), diff
    assert np.array_equal(outs["label"], clf.predict(x))
    # whole test set, to compare the ONNX model's accuracy with scikit-learn's
    full = sess.run(None, {sess.get_inputs()[0].name: X_te})[names.index("label")]
    onnx_acc = float(np.mean(full == y_te))
    size = path.stat().st_size
    assert size < MAX_BYTES, size
    ops = sorted({n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}"
                  for n in m.graph.node})
    opsets = {o.domain or "ai.onnx": o.version for o in m.opset_import}
    print(f"{path.name}: {size} B, max |proba diff| = {diff:.2e}, onnx accuracy {onnx_acc:.4f}")
    print(f"  opsets={opsets} ops={' '.join(ops)}")

    manifest = {
        "sklearn": sklearn.__version__,
        "skl2onnx": skl2onnx.__version__,
        "files": [
            {
                "file": path.name,
                "model": "digits_mlp",
                "exporter": "skl2onnx",
                "opset": opsets.get("ai.onnx"),
                "opsets": opsets,
                "estimator": "MLPClassifier(hidden_layer_sizes=(32, 16), activation='relu', "
                             "max_iter=500, random_state=0)",
                "data": "sklearn.datasets.load_digits, train_test_split(test_size=0.25, "
                        "random_state=0), raw pixels 0..16 as float32",
                "input_name": sess.get_inputs()[0].name,
                "input_shape": [64],
                "outputs": {"label": [], "probabilities": [10]},
                "output_shape": [10],
                "input_file": "digits_mlp.input.npy",
                "input_labels": [int(v) for v in y_te[:5]],
                "test_accuracy": acc,
                "onnx_test_accuracy": onnx_acc,
                "n_test": int(len(y_te)),
                "bytes": size,
                "op_types": ops,
                "max_abs_proba_diff": diff,
                "status": "ok",
            }
        ],
    }
    with open(OUT / "manifest.json", "w") as fh:
        json.dump(manifest, fh, indent=1)
        fh.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
