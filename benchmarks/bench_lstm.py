"""One explanation of a 2-layer LSTM over 200 steps (docs/math.md §7.7): time and peak
memory of loading (unrolling into canonical nodes) and of one `explain` per rule.

The model is written with `onnx.helper` (no framework needed), as exporters write it:
x [N, steps, features] -> Transpose -> LSTM -> Squeeze -> LSTM -> Squeeze (Y_h) -> Gemm.

    python benchmarks/bench_lstm.py [--steps 200] [--hidden 64] [--features 16] [--batch 1]
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bbp_ref  # noqa: E402


def lstm_model(steps: int, features: int, hidden: int, classes: int = 4,
               seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)

    def weight(*shape: int) -> np.ndarray:
        return (rng.normal(size=shape) / np.sqrt(shape[-1])).astype(np.float32)

    inits = {"W1": weight(1, 4 * hidden, features), "R1": weight(1, 4 * hidden, hidden),
             "B1": weight(1, 8 * hidden), "W2": weight(1, 4 * hidden, hidden),
             "R2": weight(1, 4 * hidden, hidden), "B2": weight(1, 8 * hidden),
             "axis1": np.array([1], np.int64), "axis0": np.array([0], np.int64),
             "head": weight(hidden, classes), "head_bias": weight(classes)}
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2]),
             helper.make_node("LSTM", ["xt", "W1", "R1", "B1"], ["Y1"], name="layer1",
                              hidden_size=hidden),
             helper.make_node("Squeeze", ["Y1", "axis1"], ["h1"]),
             helper.make_node("LSTM", ["h1", "W2", "R2", "B2"], ["", "H2"], name="layer2",
                              hidden_size=hidden),
             helper.make_node("Squeeze", ["H2", "axis0"], ["last"]),
             helper.make_node("Gemm", ["last", "head", "head_bias"], ["y"])]
    graph = helper.make_graph(
        nodes, "lstm", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                      ["N", steps, features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", classes])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def measure(label: str, action):  # noqa: ANN001, ANN201
    tracemalloc.start()
    start = time.perf_counter()
    result = action()
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    print(f"{label:<28} {seconds:8.2f} s   peak {peak / 2**20:8.1f} MiB")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--features", type=int, default=16)
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args()
    proto = lstm_model(args.steps, args.features, args.hidden)
    x = np.random.default_rng(1).normal(size=(args.batch, args.steps, args.features))
    x = x.astype(np.float32)
    print(f"2-layer LSTM, {args.steps} steps, {args.features} features, hidden "
          f"{args.hidden}, batch {args.batch}")
    model = measure("load + first forward", lambda: (m := bbp_ref.load(proto), m.forward(x))[0])
    print(f"canonical nodes: {len(model.nodes)}")
    for rule in ("abs", "signed", "uniform"):
        e = measure(f"explain rule={rule}", lambda r=rule: bbp_ref.explain(model, x, rule=r))
        print(f"  checks passed: {e.checks.passed} (decomposition "
              f"{float(np.max(e.checks.decomposition)):.1e}, completeness "
              f"{float(np.max(e.checks.completeness)):.1e})")


if __name__ == "__main__":
    main()
