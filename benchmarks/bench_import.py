"""How import time grows with the number of nodes: a chain of N MatMul -> Mul pairs
(each Mul by a constant is folded into its MatMul by canonicalisation, docs/math.md §2
decision 6), for N = 1000, 2000, 4000, 8000 by default.

    python benchmarks/bench_import.py [--sizes 1000,2000,4000,8000] [--max-ratio 12]

Prints the time of `bbp_ref.load` per size and checks, within this one run, that 8x
the nodes took at most ``--max-ratio`` times as long (linear import; exit status 1
otherwise). A quadratic import took 2 / 6.5 / 31 / 107 s here.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bbp_ref  # noqa: E402


def chain(pairs: int, width: int = 4) -> onnx.ModelProto:
    """x[N, width] -> (MatMul by W_i, Mul by s_i) x ``pairs``."""
    rng = np.random.default_rng(0)
    nodes, initializers, current = [], [], "x"
    for i in range(pairs):
        weight = rng.normal(size=(width, width)).astype(np.float32) / np.sqrt(width)
        scale = (1.0 + rng.random(width)).astype(np.float32)
        initializers += [numpy_helper.from_array(weight, f"W{i}"),
                         numpy_helper.from_array(scale, f"s{i}")]
        product, out = f"p{i}", ("y" if i == pairs - 1 else f"h{i}")
        nodes += [helper.make_node("MatMul", [current, f"W{i}"], [product], name=f"matmul{i}"),
                  helper.make_node("Mul", [product, f"s{i}"], [out], name=f"mul{i}")]
        current = out
    graph = helper.make_graph(
        nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", width])], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def time_load(pairs: int) -> float:
    proto = chain(pairs)
    start = time.perf_counter()
    model = bbp_ref.load(proto)
    elapsed = time.perf_counter() - start
    assert len(model.nodes) == pairs + 1, "every Mul should fold into its MatMul"
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,2000,4000,8000",
                        help="numbers of MatMul -> Mul pairs")
    parser.add_argument("--max-ratio", type=float, default=12.0,
                        help="largest allowed time(largest) / time(smallest) for 8x the nodes")
    args = parser.parse_args(argv)
    sizes = [int(n) for n in args.sizes.split(",")]
    times = {}
    for pairs in sizes:
        times[pairs] = time_load(pairs)
        print(f"{pairs:6d} pairs ({2 * pairs} ONNX nodes): {times[pairs]:.2f} s")
    smallest, largest = min(sizes), max(sizes)
    ratio = times[largest] / times[smallest]
    allowed = args.max_ratio * (largest / smallest) / 8
    print(f"time ratio {largest}/{smallest} pairs: {ratio:.1f} (allowed {allowed:.1f})")
    return 0 if ratio <= allowed else 1


if __name__ == "__main__":
    sys.exit(main())
