"""Cost of bbp_ref's explanations in forward passes of its own engine, and their memory.

For each model (torchvision's ResNet-18, ResNet-50 and VGG-16 with random weights,
exported by ``torchvision_models.py`` into ``--cache``, a temporary folder by default)
and one random N(0, 1) 224x224 image, every step below is timed in the same process as
the engine's float64 forward pass ``model.forward(x)``, round after round (``--repeat``),
and reported as its best time divided by the forward pass's best time:

* ``explain R`` for R = abs, uniform, signed (``check=False``: the free residuals only);
* ``explain abs check=True`` (plus onnxruntime) and ``check="full"`` (plus the two linear
  passes of SPEC §3);
* ``top-K`` (the K largest logits in one call, ``rule="abs"``) against one target;
* ``3 rules`` (``rule=["abs", "signed", "uniform"]`` in one call) against the three calls;
* ``batch B`` (B images in one call, ``rule="abs"``) per image against one image.

Memory: the ``tracemalloc`` peak of one extra, untimed call of each explain step (numpy
arrays included), and the process's peak RSS. Each model runs in a subprocess of its own
with ``--threads`` BLAS/OpenMP threads (default 1, as in issue 13's measurements).
``--repo PATH`` measures the bbp_ref of another checkout (steps it lacks are skipped).

    python benchmarks/bench_passes.py [--models resnet18,resnet50,vgg16] [--repeat 3]
        [--batch 16] [--top 5] [--threads 1] [--clock wall|cpu] [--cache DIR] [--repo PATH]
        [--json FILE]

``--clock cpu`` times each step by the process's CPU time (``time.process_time``) instead
of the wall clock: on a machine shared with other jobs it leaves out the time the process
waits for a core (it still includes the slowdown of a shared cache and memory bus).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # bench_explain, however this script is started
from bench_explain import maxrss_mib, traced_peak_mib  # noqa: E402

RULES = ("abs", "uniform", "signed")


def measure(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """All steps for one model, in this process."""
    sys.path.insert(0, str(Path(args.repo).resolve()))
    sys.path.insert(0, str(HERE))
    import numpy as np
    import torchvision_models

    import bbp_ref

    path = torchvision_models.export(name, args.cache)
    model = bbp_ref.load(str(path))
    rng = np.random.default_rng(0)
    images = rng.standard_normal((args.batch, 3, 224, 224)).astype(np.float32)
    x = images[0]
    top = np.argsort(model.forward(x).ravel())[::-1][:args.top]
    steps: dict[str, Callable[[], Any]] = {
        "forward": lambda: model.forward(x[None]),
        **{f"explain {rule}": (lambda rule=rule: bbp_ref.explain(model, x, rule=rule,
                                                                  check=False))
           for rule in RULES},
        "explain abs check=True": lambda: bbp_ref.explain(model, x, rule="abs", check=True),
        "explain abs check=full": lambda: bbp_ref.explain(model, x, rule="abs", check="full"),
        f"top-{args.top} abs": lambda: bbp_ref.explain(model, x, target=list(top), rule="abs",
                                                        check=False),
        "3 rules": lambda: bbp_ref.explain(model, x, rule=list(RULES), check=False),
        f"batch {args.batch} abs": lambda: bbp_ref.explain(model, images, rule="abs",
                                                            check=False),
    }
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    traced = {"explain abs", "explain signed", f"top-{args.top} abs", f"batch {args.batch} abs"}
    times: dict[str, list[float]] = {step: [] for step in steps}
    errors: dict[str, str] = {}
    for _ in range(args.repeat):  # round after round, so that load changes hit all steps
        for step, fn in steps.items():
            if step in errors:
                continue
            gc.collect()
            start = clock()
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - an older checkout lacks a feature
                errors[step] = f"{type(exc).__name__}: {exc}"[:200]
                continue
            times[step].append(clock() - start)
    peaks = {step: traced_peak_mib(steps[step]) for step in traced
             if step not in errors and not args.no_tracemalloc}
    return {"model": name, "repo": str(Path(bbp_ref.__file__).resolve().parent.parent),
            "threads": args.threads, "clock": args.clock,
            "times": times, "errors": errors, "tracemalloc_mib": peaks,
            "maxrss_mib": maxrss_mib(), "batch": args.batch, "top": args.top}


def ratios(record: dict[str, Any]) -> dict[str, float]:
    """Each step's best time in forward passes, and the issue's derived figures."""
    best = {step: min(t) for step, t in record["times"].items() if t}
    forward = best["forward"]
    out = {step: t / forward for step, t in best.items()}
    one = best.get("explain abs")
    top = best.get(f"top-{record['top']} abs")
    if one and top:
        out[f"top-{record['top']} / one target"] = top / one
    if "3 rules" in best and all(f"explain {r}" in best for r in RULES):
        out["3 rules / 3 calls"] = best["3 rules"] / sum(best[f"explain {r}"] for r in RULES)
    batch = best.get(f"batch {record['batch']} abs")
    if one and batch:
        out["batch: per image / one image"] = batch / record["batch"] / one
    return out


def report(records: list[dict[str, Any]]) -> None:
    for record in records:
        print(f"\n{record['model']}  (bbp_ref from {record['repo']}, {record['threads']} "
              f"thread(s), {record['clock']} time, peak RSS {record['maxrss_mib']:.0f} MiB)")
        best = {step: min(t) for step, t in record["times"].items() if t}
        for step, value in ratios(record).items():
            seconds = f"{best[step]:8.3f} s" if step in best else " " * 10
            peak = record["tracemalloc_mib"].get(step)
            memory = f"   tracemalloc peak {peak:7.0f} MiB" if peak is not None else ""
            unit = "forward passes" if step in best else ""
            print(f"  {step:28s} {seconds}  {value:6.2f} {unit}{memory}")
        for step, error in record["errors"].items():
            print(f"  {step:28s} skipped: {error}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="resnet18,resnet50,vgg16")
    ap.add_argument("--repeat", type=int, default=3, help="rounds of timed calls [3]")
    ap.add_argument("--batch", type=int, default=16, help="images of the batch step [16]")
    ap.add_argument("--top", type=int, default=5, help="targets of the top-K step [5]")
    ap.add_argument("--threads", type=int, default=1, help="BLAS/OpenMP threads [1]")
    ap.add_argument("--cache", help="folder of the exported models [a temporary one]")
    ap.add_argument("--repo", default=str(HERE.parent), help="the bbp_ref checkout to measure")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="time each step by the wall clock or by the process's CPU time "
                         "(less disturbed by other processes on a shared machine) [wall]")
    ap.add_argument("--no-tracemalloc", action="store_true")
    ap.add_argument("--json", help="also write the records to this file")
    ap.add_argument("--_worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._worker:
        record = measure(args.models, args)
        Path(args._worker).write_text(json.dumps(record))
        return 0
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache or tmp
        for name in args.models.split(","):
            out = Path(tmp) / f"{name}.json"
            env = {**os.environ, **{var: str(args.threads) for var in (
                "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}}
            command = [sys.executable, __file__, "--models", name, "--repeat",
                       str(args.repeat), "--batch", str(args.batch), "--top", str(args.top),
                       "--threads", str(args.threads), "--cache", cache, "--repo", args.repo,
                       "--clock", args.clock,
                       "--_worker", str(out)] + ["--no-tracemalloc"] * args.no_tracemalloc
            if subprocess.run(command, env=env).returncode != 0 or not out.exists():
                print(f"{name}: the measurement failed", file=sys.stderr)
                return 1
            records.append(json.loads(out.read_text()))
    report(records)
    if args.json:
        Path(args.json).write_text(json.dumps(records, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
