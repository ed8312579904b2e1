"""Time and memory of bbp_ref on ImageNet-sized models (ResNet-50, VGG-16; torchvision
architectures with ``--models``, see tangent_models.py), one image.

For each model (built into the cache folder by ``imagenet_models.py`` if missing) and
one random 3x224x224 float32 image, this measures the wall time of

* ``bbp_ref.load(path)``,
* ``model.forward(x[None])`` (the float64 forward pass),
* ``bbp_ref.explain(model, x, rule=R, check=False)`` for R in abs, signed, uniform,
* ``bbp_ref.explain(model, x, rule="abs", check=True)`` once (with the self-checks),

and the memory: the process's peak resident set size (``ru_maxrss``) after each step,
and the ``tracemalloc`` peak of each explain call (memory newly allocated during the
call, numpy arrays included).  tracemalloc slows Python down, so the traced call is an
extra run, not one of the timed ones (``--no-tracemalloc`` skips it).

By default each model is measured in a fresh subprocess, so that ``ru_maxrss`` (a
high-water mark of the whole process) belongs to that model alone.  Usage::

    python benchmarks/bench_explain.py [--models resnet50,vgg16] [--repeat N]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import traceback
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))  # imagenet_models, however this script is started
import imagenet_models  # noqa: E402

RULES = ("abs", "signed", "uniform")
MiB = 2**20


def import_bbp_ref() -> Any:
    """Import bbp_ref (the work tree's copy first), or exit with a clear message."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    try:
        import bbp_ref
    except ImportError as exc:
        sys.exit(
            f"bench_explain: cannot import bbp_ref ({exc}).\n"
            f"Run from the repository ({REPO}) or install the package with "
            "`pip install -e .` first."
        )
    missing = [name for name in ("load", "explain") if not hasattr(bbp_ref, name)]
    if missing:
        where = getattr(bbp_ref, "__file__", None) or list(getattr(bbp_ref, "__path__", []))
        sys.exit(
            f"bench_explain: bbp_ref (from {where}) has no {', '.join(missing)}: the package "
            "is not complete yet; this benchmark needs bbp_ref.load and bbp_ref.explain."
        )
    return bbp_ref


def maxrss_mib() -> float:
    """Peak resident set size of this process so far, in MiB."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / MiB if sys.platform == "darwin" else r / 1024  # bytes on macOS, KiB on Linux


def release() -> None:
    gc.collect()


def timed(fn: Callable[[], Any], repeat: int) -> tuple[Any, list[float]]:
    """Call ``fn`` ``repeat`` times; return the last result and the wall times (s)."""
    times = []
    result = None
    for _ in range(repeat):
        result = None  # do not hold the previous result while the next one is computed
        release()
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return result, times


def traced_peak_mib(fn: Callable[[], Any]) -> float:
    """tracemalloc peak (MiB) of memory allocated during one call of ``fn``."""
    release()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        result = fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    del result
    release()
    return peak / MiB


def measure_model(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Measure one model in this process; return a JSON-able record."""
    bbp_ref = import_bbp_ref()
    path = imagenet_models.ensure_model(name, args.cache, seed=args.seed)
    rng = np.random.default_rng(args.seed)
    x = rng.standard_normal((3, imagenet_models.IMAGE_SIZE, imagenet_models.IMAGE_SIZE))
    x = x.astype(np.float32)
    xb = x[None]

    rec: dict[str, Any] = {
        "model": name,
        "path": str(path),
        "file_mib": path.stat().st_size / MiB,
        "bbp_ref": str(getattr(bbp_ref, "__file__", "?")),
        "repeat": args.repeat,
        "maxrss_start_mib": maxrss_mib(),
        "steps": [],
    }
    steps: list[dict[str, Any]] = rec["steps"]

    def step(label: str, fn: Callable[[], Any], trace: bool) -> Any:
        row: dict[str, Any] = {"step": label}
        steps.append(row)
        print(f"[{name}] {label} ...", file=sys.stderr, flush=True)
        try:
            result, times = timed(fn, args.repeat)
            row["times"] = times
            row["maxrss_mib"] = maxrss_mib()
            if trace and not args.no_tracemalloc:
                row["tracemalloc_peak_mib"] = traced_peak_mib(fn)
            return result
        except Exception as exc:  # keep measuring the other steps
            traceback.print_exc()
            row["error"] = f"{type(exc).__name__}: {exc}"
            row["maxrss_mib"] = maxrss_mib()
            return None

    model = step("load", lambda: bbp_ref.load(str(path)), trace=False)
    if model is None:
        return rec
    y = step("forward", lambda: model.forward(xb), trace=False)
    for rule in RULES:
        step(
            f"explain {rule}",
            lambda rule=rule: bbp_ref.explain(model, x, rule=rule, check=False),
            trace=True,
        )
    # check=True: the same computation plus the self-checks of the package.
    step(
        "explain abs check=True",
        lambda: bbp_ref.explain(model, x, rule="abs", check=True),
        trace=True,
    )

    # Reference point, measured last so that it does not raise the peaks above.
    if not args.no_ort:
        import onnxruntime as ort

        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feed = {imagenet_models.INPUT_NAME: xb}
        (y_ort,) = sess.run(None, feed)
        _, times = timed(lambda: sess.run(None, feed), max(args.repeat, 3))
        rec["ort_run_s"] = float(np.median(times))
        if y is not None:
            y64 = np.asarray(y, dtype=np.float64).reshape(y_ort.shape)
            rec["forward_vs_ort_maxabs"] = float(np.max(np.abs(y64 - y_ort)))
            rec["ort_logits_maxabs"] = float(np.max(np.abs(y_ort)))
    return rec


def run_in_subprocess(name: str, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--models",
            name,
            "--repeat",
            str(args.repeat),
            "--seed",
            str(args.seed),
            "--cache",
            str(args.cache),
            "--in-process",
            "--_worker-json",
            str(out),
        ]
        cmd += ["--no-tracemalloc"] * args.no_tracemalloc + ["--no-ort"] * args.no_ort
        proc = subprocess.run(cmd)
        if proc.returncode != 0 or not out.exists():
            return {
                "model": name,
                "error": f"worker exited with status {proc.returncode}",
                "steps": [],
            }
        return json.loads(out.read_text())


def fmt_row(cells: list[str], widths: list[int]) -> str:
    return "  ".join(
        c.ljust(w) if i == 0 else c.rjust(w)
        for i, (c, w) in enumerate(zip(cells, widths, strict=True))
    )


def print_table(records: list[dict[str, Any]], in_process: bool) -> None:
    head = ["model / step", "median s", "min s", "tracemalloc MiB", "maxrss MiB"]
    lines: list[list[str]] = []
    notes: list[str] = []
    for rec in records:
        size = f", {rec['file_mib']:.0f} MiB file" if "file_mib" in rec else ""
        lines.append([f"{rec['model']}{size}", "", "", "", f"{rec.get('maxrss_start_mib', 0):.0f}"])
        if "error" in rec:
            lines.append(["  " + rec["error"], "", "", "", ""])
        for row in rec["steps"]:
            if "error" in row:
                lines.append([f"  {row['step']}", "error", "", "", f"{row['maxrss_mib']:.0f}"])
                notes.append(f"{rec['model']} / {row['step']}: {row['error'][:200]}")
                continue
            t = row["times"]
            peak = row.get("tracemalloc_peak_mib")
            lines.append(
                [
                    f"  {row['step']}",
                    f"{np.median(t):.3f}",
                    f"{min(t):.3f}",
                    "" if peak is None else f"{peak:.0f}",
                    f"{row['maxrss_mib']:.0f}",
                ]
            )
        if "ort_run_s" in rec:
            lines.append(["  (onnxruntime run)", f"{rec['ort_run_s']:.3f}", "", "", ""])
        if "forward_vs_ort_maxabs" in rec:
            notes.append(
                f"{rec['model']}: max |forward - onnxruntime| = "
                f"{rec['forward_vs_ort_maxabs']:.3g} (max |logit| {rec['ort_logits_maxabs']:.3g})"
            )
    widths = [max(len(r[i]) for r in [head, *lines]) for i in range(len(head))]
    print(fmt_row(head, widths))
    print(fmt_row(["-" * w for w in widths], widths))
    for cells in lines:
        print(fmt_row(cells, widths))
    print()
    print(
        "maxrss: the process's peak resident memory after the step (first line: before "
        "loading)"
        + (
            "; in-process run, so it includes earlier models."
            if in_process and len(records) > 1
            else "; one process per model."
        )
    )
    print("tracemalloc: peak of memory allocated during one extra, traced call.")
    for n in notes:
        print("note:", n)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="resnet50,vgg16", help="comma-separated [%(default)s]")
    ap.add_argument("--repeat", type=int, default=1, help="timed runs per step [%(default)s]")
    ap.add_argument("--seed", type=int, default=0, help="weight and input seed [%(default)s]")
    ap.add_argument(
        "--cache", default=str(imagenet_models.DEFAULT_CACHE), help="model folder [%(default)s]"
    )
    ap.add_argument(
        "--no-tracemalloc",
        action="store_true",
        help="skip the extra traced call of each explain step",
    )
    ap.add_argument(
        "--no-ort", action="store_true", help="skip the onnxruntime reference run and comparison"
    )
    ap.add_argument(
        "--in-process",
        action="store_true",
        help="measure all models in this process (maxrss then accumulates)",
    )
    ap.add_argument("--json", help="also write the results to this JSON file")
    ap.add_argument("--_worker-json", dest="worker_json", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.repeat < 1:
        ap.error("--repeat must be >= 1")
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    for n in names:
        if n not in imagenet_models.MODELS:
            ap.error(f"unknown model {n!r}; choose from {', '.join(imagenet_models.MODELS)}")

    if args.worker_json:  # child of run_in_subprocess: one model, result to a file
        rec = measure_model(names[0], args)
        Path(args.worker_json).write_text(json.dumps(rec))
        return 0

    bbp_ref = import_bbp_ref()  # fail early, before building anything
    for n in names:  # build missing models before measuring anything
        path = Path(args.cache) / f"{n}.onnx"
        if not path.exists():
            print(f"building {path} ...", file=sys.stderr, flush=True)
            imagenet_models.ensure_model(n, args.cache, seed=args.seed)
    print(
        f"bbp_ref from {getattr(bbp_ref, '__file__', '?')}; numpy {np.__version__}; "
        f"{os.cpu_count()} CPUs; repeat {args.repeat}"
    )

    records = []
    for n in names:
        records.append(measure_model(n, args) if args.in_process else run_in_subprocess(n, args))
    print_table(records, args.in_process)
    if args.json:
        Path(args.json).write_text(json.dumps(records, indent=2))
    failed = any("error" in r or any("error" in s for s in r["steps"]) for r in records)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
