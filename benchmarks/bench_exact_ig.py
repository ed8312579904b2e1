"""Time of exact integrated gradients (``bbp_ref.integrated_gradients(method="exact")``)
on the small CNN of ``imagenet_models.small_cnn`` at several image sizes, one image.

For each size the model is built in memory (random weights, ``--seed``), and one random
N(0, 1) float32 image is explained for its predicted class from the black baseline. The
script prints the number of linear pieces on the path, wall and CPU seconds, and the
completeness error `|sum IG - (f(x) - f(0))|` relative to `sum |IG|`. Sizes up to
``--path-walk-up-to`` are also walked by `PathWalk` (two full passes through the network
per piece), the walk the event walk replaced, for comparison. With ``--resnet50 N`` the
script also walks the first N kinks of ResNet-50 (``imagenet_models.resnet50``, built into
``benchmarks/.cache`` if missing) for one image and reports the time per kink and the `t`
reached (a whole walk there is out of reach).

With ``--against TREE`` (another checkout of bbp_ref, e.g. ``git worktree add /tmp/old REV``)
the script instead times the walk in both trees, ``--rounds`` times each, one fresh process at
a time, the other tree first and then this one, alternating (the machine's speed drifts over
minutes; side-by-side runs compete for memory bandwidth), and prints every run's CPU seconds,
the medians and their ratio per size. Usage::

    python benchmarks/bench_exact_ig.py [--sizes 64,112,224] [--path-walk-up-to 64]
                                        [--resnet50 N] [--seed S] [--json FILE]
                                        [--against TREE [--rounds N]]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # imagenet_models, however this script is started
sys.path.insert(0, str(HERE.parent))  # this work tree's bbp_ref before an installed one
import imagenet_models  # noqa: E402

import bbp_ref  # noqa: E402
from bbp_ref.attribution.baselines import setup  # noqa: E402
from bbp_ref.attribution.event_walk import EventWalk  # noqa: E402
from bbp_ref.attribution.path_walk import BOUNDARY_RTOL, PathWalk  # noqa: E402


def measure(size: int, seed: int, path_walk: bool) -> dict[str, Any]:
    model = bbp_ref.load(imagenet_models.small_cnn(seed, size))
    x = np.random.default_rng(seed).standard_normal((3, size, size)).astype(np.float32)
    wall, cpu = time.perf_counter(), time.process_time()
    r = bbp_ref.integrated_gradients(model, x, method="exact")
    result: dict[str, Any] = {
        "size": size, "target": int(r.target), "pieces": int(r.n_pieces),
        "seconds": time.perf_counter() - wall, "cpu_seconds": time.process_time() - cpu,
        "completeness": float(abs(r.delta) / np.abs(r.attribution).sum()),
    }
    if path_walk:
        s = setup(model, x, r.target, linearize=False)
        base = np.zeros_like(s.batch)
        wall = time.perf_counter()
        walk = PathWalk(s.graph, base, s.batch, s.seed, rtol=BOUNDARY_RTOL)
        walk.run(None)
        result["path_walk_seconds"] = time.perf_counter() - wall
        result["path_walk_pieces"] = int(walk.pieces[0])
        ig = s.batch * walk.total_gradient
        result["walks_differ"] = float(np.abs(ig[0] - r.attribution).max()
                                       / np.abs(r.attribution).max())
    return result


def resnet50_rate(kinks: int, seed: int) -> dict[str, Any]:
    model = bbp_ref.load(imagenet_models.ensure_model("resnet50", seed=seed))
    x = np.random.default_rng(seed).standard_normal((3, 224, 224)).astype(np.float32)
    s = setup(model, x, None, linearize=False)
    wall = time.perf_counter()
    walk = EventWalk(s.graph, np.zeros_like(s.batch), s.batch, s.seed, rtol=BOUNDARY_RTOL)
    start_seconds = time.perf_counter() - wall
    wall = time.perf_counter()
    try:
        walk.run(kinks + 1)
    except bbp_ref.BBpError:  # stopped after `kinks` kinks, as asked
        pass
    seconds = time.perf_counter() - wall
    return {"model": "resnet50", "kinks": walk.pieces - 1, "t": walk.t,
            "start_seconds": start_seconds, "seconds_per_kink": seconds / (walk.pieces - 1)}


def compare(against: Path, sizes: list[int], seed: int, rounds: int) -> list[dict[str, Any]]:
    """Time the walk at ``sizes`` in the tree ``against`` and in this one, alternating, one
    process at a time (each tree's own script, so each imports its own bbp_ref)."""
    trees = {"other": Path(against).resolve(), "this": HERE.parent}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
    with tempfile.TemporaryDirectory() as folder:
        for k in range(rounds):
            for name, tree in trees.items():
                out = Path(folder) / f"{name}{k}.json"
                subprocess.run([sys.executable, str(tree / "benchmarks" / "bench_exact_ig.py"),
                                "--sizes", ",".join(map(str, sizes)), "--path-walk-up-to", "0",
                                "--seed", str(seed), "--json", str(out)],
                               check=True, stdout=subprocess.DEVNULL)
                runs[name].append(json.loads(out.read_text()))
                print(f"{name} ({tree}), round {k + 1}: " + ", ".join(
                    f"{r['size']}x{r['size']} {r['cpu_seconds']:.1f} CPU-s"
                    for r in runs[name][-1]), flush=True)
    results = []
    for i, size in enumerate(sizes):
        summary = summarise([run[i]["cpu_seconds"] for run in runs["other"]],
                            [run[i]["cpu_seconds"] for run in runs["this"]])
        summary.update(size=size, other=str(trees["other"]),
                       pieces={name: [run[i]["pieces"] for run in runs[name]] for name in runs})
        results.append(summary)
        print(f"{size}x{size}: other median {summary['other_median']:.2f} CPU-s, this "
              f"median {summary['this_median']:.2f} CPU-s: {summary['speedup']:.2f}x "
              f"({summary['slowest_pair']:.2f}x slowest of this against fastest of other)")
    return results


def summarise(other: list[float], this: list[float]) -> dict[str, Any]:
    """Medians of two trees' CPU seconds, the speed-up of this tree (other median over
    this median) and the least favourable pairing (this tree's slowest run against the
    other's fastest)."""
    return {"other_cpu_seconds": other, "this_cpu_seconds": this,
            "other_median": statistics.median(other), "this_median": statistics.median(this),
            "speedup": statistics.median(other) / statistics.median(this),
            "slowest_pair": min(other) / max(this)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="64,112,224",
                        help="image sizes, comma-separated, may be empty [%(default)s]")
    parser.add_argument("--path-walk-up-to", type=int, default=64,
                        help="also run the path walk up to this size [%(default)s]")
    parser.add_argument("--resnet50", type=int, default=0, metavar="N",
                        help="also time the first N kinks on ResNet-50 [%(default)s]")
    parser.add_argument("--seed", type=int, default=0, help="weights and image [%(default)s]")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--against", metavar="TREE",
                        help="time this tree against another checkout, alternating runs")
    parser.add_argument("--rounds", type=int, default=2,
                        help="runs per tree with --against [%(default)s]")
    args = parser.parse_args(argv)
    sizes = [int(v) for v in args.sizes.split(",") if v.strip()]
    if args.against:
        results = compare(Path(args.against), sizes, args.seed, args.rounds)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
        return 0
    results = []
    for size in sizes:
        r = measure(size, args.seed, size <= args.path_walk_up_to)
        results.append(r)
        line = (f"{size}x{size}: {r['pieces']:,} pieces, {r['seconds']:.1f} s "
                f"({r['cpu_seconds']:.1f} CPU-s), completeness {r['completeness']:.1e}")
        if "path_walk_seconds" in r:
            line += (f"; path walk {r['path_walk_pieces']:,} pieces, "
                     f"{r['path_walk_seconds']:.1f} s, max difference {r['walks_differ']:.1e}")
        print(line, flush=True)
    if args.resnet50:
        r = resnet50_rate(args.resnet50, args.seed)
        results.append(r)
        print(f"resnet50 224x224: {r['kinks']} kinks in {r['seconds_per_kink']:.2f} s each "
              f"(start {r['start_seconds']:.1f} s), t = {r['t']:.3g} reached", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
