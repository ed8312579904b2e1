"""How fast this machine's float64 matrix products are at the shapes of ResNet-50's
convolutions, for one image and for a batch: the floor under what batching can save.

An explanation's time is mostly matrix products (the convolutions of the trace, of the
reverse pass and of the rule, benchmarks/README.md). Each convolution of ResNet-50 is
written as the product `[O, C K] x [C K, P]` with `P` the output positions of one image
(`P` = 12544 down to 49); a batch of `B` images can at best widen it to `B P` columns. This
script times both widths for every convolution of ResNet-50 (torchvision's layout, 224x224),
one BLAS thread, and prints the GFLOPS of each stage and the best a batch can do per image:
`sum_layers t(B P) / B` against `sum_layers t(P)`. It also times one large square product,
the machine's practical peak.

    python benchmarks/bench_gemm_shapes.py [--batch 16] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402 - after the thread settings


def resnet50_convolutions() -> list[tuple[str, int, int, int]]:
    """(stage, O, C K, P) of each convolution of ResNet-50 at 224x224 (torchvision)."""
    layers = [("stem", 64, 3 * 49, 112 * 112)]
    channels = 64
    for stage, (width, blocks, size) in enumerate(
            [(64, 3, 56), (128, 4, 28), (256, 6, 14), (512, 3, 7)], start=1):
        name = f"{size}x{size}"
        positions = size * size
        for block in range(blocks):
            layers.append((name, width, channels, positions if block else
                           (positions if stage == 1 else 4 * positions)))
            layers.append((name, width, 9 * width, positions))
            layers.append((name, 4 * width, width, positions))
            if block == 0:
                layers.append((name, 4 * width, channels, positions))  # the projection
            channels = 4 * width
        del stage
    return layers


def seconds(m: int, k: int, n: int, repeat: int, rng: np.random.Generator) -> float:
    a, b = rng.standard_normal((m, k)), rng.standard_normal((k, n))
    a @ b
    best = np.inf
    for _ in range(repeat):
        start = time.process_time()
        a @ b
        best = min(best, time.process_time() - start)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16, help="images of the batch [16]")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs, best kept [3]")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    peak = 2 * 2048**3 / seconds(2048, 2048, 2048, args.repeat, rng) / 1e9
    print(f"peak: a 2048x2048 float64 product runs at {peak:.1f} GFLOPS (one thread)")
    stages: dict[str, list[float]] = {}
    for stage, o, ck, p in resnet50_convolutions():
        one = seconds(o, ck, p, args.repeat, rng)
        batch = seconds(o, ck, args.batch * p, args.repeat, rng) / args.batch
        totals = stages.setdefault(stage, [0.0, 0.0, 0.0])
        totals[0] += 2 * o * ck * p
        totals[1] += one
        totals[2] += batch
    print(f"{'stage':8s} {'GFLOP':>7s} {'1 image':>14s} {f'{args.batch} images':>14s}")
    flops = one_image = per_image = 0.0
    for stage, (f, t1, tb) in stages.items():
        print(f"{stage:8s} {f / 1e9:7.2f} {f / t1 / 1e9:8.1f} GFLOPS {f / tb / 1e9:8.1f} GFLOPS")
        flops, one_image, per_image = flops + f, one_image + t1, per_image + tb
    print(f"all      {flops / 1e9:7.2f} {flops / one_image / 1e9:8.1f} GFLOPS "
          f"{flops / per_image / 1e9:8.1f} GFLOPS")
    print(f"matrix products of one image: {one_image:.3f} s; per image in a batch of "
          f"{args.batch}: {per_image:.3f} s ({per_image / one_image:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
