"""`explain_dataset`: BBp explanations of a whole dataset, batch by batch, on this
machine's cores or on a Dask cluster, into a chunked Zarr store (docs/scaling.md).

Each batch of ``batch_size`` examples is one task and one chunk of the store. A worker
imports the model once (the model's bytes are scattered to every worker) and explains its
batches with `explain`; the driver writes each finished batch into the store and marks its
chunk done, so memory stays bounded (a few batches in flight per worker) and a run that
stopped resumes at the chunks not yet done. A worker that dies has its batches run again
elsewhere (Dask's scheduler). An example that cannot be explained (NaN, say) is recorded
as failed with its reason, and the others of its batch are explained all the same.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .attribution.rules import RULES
from .checks.onnxruntime_check import Unavailable
from .checks.residuals import RESIDUAL_TOL, check_mode
from .dataset_store import DatasetStore
from .errors import BBpError, InputError
from .experiments.optional import require
from .explain import explain
from .model import Model, load

DEFAULT_BATCH_SIZE = 16
IN_FLIGHT_PER_WORKER = 2  # batches queued per worker: bounds the driver's memory
RETRIES = 3  # a batch whose task fails (not its examples: a crash) is run again this often


@dataclass(frozen=True)
class DatasetRun:
    """What one call did: ``path`` of the store, ``examples`` and ``chunks`` in it,
    ``computed`` (the chunks computed by this call; the others were done before),
    ``failures`` (example index -> reason, over the whole store), ``seconds``."""

    path: Path
    examples: int
    chunks: int
    computed: tuple[int, ...]
    failures: dict[int, str]
    seconds: float


class Examples:
    """The examples of ``data``: an array, an ``.npy`` file (memory-mapped), or a folder of
    ``.npy`` files (sorted by name; each one example or a batch), read a batch at a time."""

    def __init__(self, data: object, example_ndim: int) -> None:
        self.parts: list[np.ndarray] = []
        if isinstance(data, (str, Path)):
            path = Path(data)
            files = sorted(path.glob("*.npy")) if path.is_dir() else [path]
            if not files or not all(f.is_file() for f in files):
                raise InputError(f"data not found: {data} (an .npy file or a folder of them)")
            for file in files:
                try:
                    array = np.load(file, mmap_mode="r", allow_pickle=False)
                except (ValueError, OSError) as exc:
                    raise InputError(f"cannot read {file} as an .npy array: {exc}") from exc
                self.parts.append(array[None] if array.ndim == example_ndim else array)
        else:
            array = np.asarray(data)
            self.parts.append(array[None] if array.ndim == example_ndim else array)
        shapes = {p.shape[1:] for p in self.parts}
        if len(shapes) != 1 or any(p.ndim != example_ndim + 1 for p in self.parts):
            raise InputError(f"the data's examples must all have {example_ndim} axes and one "
                             f"shape, got {sorted(str(list(s)) for s in shapes)}")
        self.shape: tuple[int, ...] = shapes.pop()
        self.offsets = np.cumsum([0] + [len(p) for p in self.parts])
        self.count = int(self.offsets[-1])
        if self.count == 0:
            raise InputError("the data holds no examples")

    def batch(self, start: int, stop: int) -> np.ndarray:
        rows = []
        for part, offset in zip(self.parts, self.offsets[:-1]):
            lo, hi = max(start - offset, 0), min(stop - offset, len(part))
            if lo < hi:
                rows.append(np.asarray(part[lo:hi]))
        return np.concatenate(rows)


# -- on a worker ------------------------------------------------------------------------

_WORKER_MODELS: dict[str, Model] = {}


def _worker_model(digest: str, source: bytes) -> Model:
    """The model, imported once per worker process."""
    model = _WORKER_MODELS.get(digest)
    if model is None:
        model = _WORKER_MODELS[digest] = load(source)
    return model


def explain_chunk(model: Model, x: np.ndarray, targets: np.ndarray | None, rule: str,
                  check: object, layers: list[str]) -> tuple[dict[str, np.ndarray],
                                                          dict[int, str]]:
    """One batch's fields (arrays over its examples; NaN where an example failed) and its
    failures (index in the batch -> reason)."""
    n = len(x)
    fields: dict[str, np.ndarray] = {
        "output": np.full(n, np.nan), "target": np.full(n, -1, dtype=np.int64),
        "bias": np.full(n, np.nan), "decomposition": np.full(n, np.nan),
        "completeness": np.full(n, np.nan), "passed": np.zeros(n, dtype=bool),
        "failed": np.zeros(n, dtype=bool), "gradient": np.full(x.shape, np.nan),
        "bias_attribution": np.full(x.shape, np.nan),
        "layer_bias": np.full((n, len(layers)), np.nan)}
    failures: dict[int, str] = {}
    flat = np.asarray(x, dtype=np.float64).reshape(n, -1)
    good = np.flatnonzero(np.isfinite(flat).all(axis=1))
    for i in sorted(set(range(n)) - set(good.tolist())):
        failures[i] = "input contains NaN or infinite values"
    groups = [good] if len(good) else []
    while groups:
        rows = groups.pop()
        try:
            e = explain(model, x[rows], target=None if targets is None else targets[rows],
                        rule=rule, check=check)
        except BBpError as exc:
            if len(rows) == 1:
                failures[int(rows[0])] = str(exc)
            else:  # find the examples that fail: explain the others all the same
                groups.extend([rows[: len(rows) // 2], rows[len(rows) // 2:]])
            continue
        for name in ("output", "target", "bias", "gradient", "bias_attribution"):
            fields[name][rows] = getattr(e, name)
        fields["decomposition"][rows] = e.checks.decomposition
        fields["completeness"][rows] = e.checks.completeness
        fields["layer_bias"][rows] = np.stack([e.layer_bias[k] for k in layers], axis=1) \
            if layers else np.zeros((len(rows), 0))
        ok = (e.checks.decomposition <= RESIDUAL_TOL) & (e.checks.completeness <= RESIDUAL_TOL)
        if e.checks.linear_passes is not None:
            ok &= e.checks.linear_passes <= RESIDUAL_TOL
        ort = e.checks.onnxruntime
        ort_ok = ort is None or (not e.checks.strict if isinstance(ort, Unavailable) else ort.ok)
        fields["passed"][rows] = ok & ort_ok
    fields["failed"][list(failures)] = True
    return fields, failures


def _task(digest: str, source: bytes, x: np.ndarray, targets: np.ndarray | None, rule: str,
          check: object, layers: list[str]) -> tuple[dict[str, np.ndarray], dict[int, str]]:
    return explain_chunk(_worker_model(digest, source), x, targets, rule, check, layers)


# -- the driver -------------------------------------------------------------------------

def explain_dataset(model: object, data: object, *, target: object = None,
                    rule: str = "abs", batch_size: int | None = None,
                    out: str | Path, client: Any = None, workers: int | None = None,
                    check: object = True, progress: bool | None = None,
                    on_chunk: Callable[[int], None] | None = None) -> DatasetRun:
    """Explain every example of ``data`` (an array, an ``.npy`` file, memory-mapped, or a
    folder of them) and write the fields of `explain` to the Zarr store ``out``.

    ``target``: None (each example's argmax), one index, or one per example (an array or
    an ``.npy`` file); ``rule``: a built-in rule's name; ``batch_size``: examples per task
    and per chunk (default 16); ``client``: a ``dask.distributed.Client`` to run on;
    otherwise ``workers`` processes of a ``LocalCluster`` started for the call (default:
    the CPU count; ``0`` runs in this process); ``check``: as in `explain`;
    ``progress``: show examples per second on stderr (default: if it is a terminal);
    ``on_chunk``: called with each chunk's index once it is written.
    An existing store with the same settings is resumed (only missing chunks are run).
    """
    start_time = time.perf_counter()
    if rule not in RULES:
        raise InputError(f"explain_dataset takes a built-in rule name, one of {sorted(RULES)}; "
                         f"got {rule!r}")
    mode = check_mode(check)
    check_argument = {"on": True, "off": False}.get(mode, mode)  # explain's check=
    size = DEFAULT_BATCH_SIZE if batch_size is None else batch_size
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
    loaded = load(model)
    examples = Examples(data, len(loaded.input_shape))
    loaded.prepare(np.zeros((1, *examples.shape), dtype=np.float32))  # shape errors now
    targets = _targets(target, examples.count)
    graph = loaded.graph_for(examples.shape)
    layers = [node.name for node in graph if node.has_bias]
    source = loaded.proto.SerializeToString()
    digest = hashlib.sha256(source).hexdigest()
    settings = {"model": digest, "rule": rule, "check": mode,
                "target": None if targets is None else hashlib.sha256(
                    targets.tobytes()).hexdigest()}
    store = DatasetStore(out, settings, examples.count, examples.shape, size, layers)
    todo = store.missing()
    bar = _ProgressLine(sum(_chunk_size(store, c) for c in todo),
                        sys.stderr.isatty() if progress is None else progress)

    def finished(chunk: int, result: tuple[dict[str, np.ndarray], dict[int, str]]) -> None:
        store.write(chunk, *result)
        bar.update(_chunk_size(store, chunk), len(result[1]))
        if on_chunk is not None:
            on_chunk(chunk)

    def batch(chunk: int) -> tuple[np.ndarray, np.ndarray | None]:
        lo, hi = chunk * size, min((chunk + 1) * size, examples.count)
        return examples.batch(lo, hi), None if targets is None else targets[lo:hi]

    try:
        if client is None and workers == 0:
            for chunk in todo:
                x, t = batch(chunk)
                finished(chunk, explain_chunk(loaded, x, t, rule, check_argument, layers))
        else:
            with _client(client, workers) as running:
                _run_on(running, todo, batch, finished, digest, source, rule,
                        check_argument, layers)
    finally:
        bar.close()
    return DatasetRun(store.path, examples.count, store.chunks, tuple(todo), store.failures,
                      time.perf_counter() - start_time)


def _targets(target: object, count: int) -> np.ndarray | None:
    if target is None:
        return None
    if isinstance(target, (str, Path)):
        target = np.load(target, allow_pickle=False)
    array = np.asarray(target)
    if not np.issubdtype(array.dtype, np.integer) or array.ndim > 1 or (
            array.ndim == 1 and len(array) != count):
        raise InputError(f"target must be one integer index or one per example ({count}), "
                         f"got {array.dtype} of shape {list(array.shape)}")
    return np.broadcast_to(array, (count,)).astype(np.int64)


def _chunk_size(store: DatasetStore, chunk: int) -> int:
    return min(store.batch_size, store.examples - chunk * store.batch_size)


def connect(address: str) -> Any:
    """A ``dask.distributed.Client`` of the scheduler at ``address``."""
    distributed = require("distributed", "'bbp_ref[dataset]'")
    try:
        return distributed.Client(address, timeout="10s")
    except (OSError, TimeoutError, ValueError) as exc:
        raise InputError(f"cannot reach the Dask scheduler at {address}: {exc}") from exc


@contextmanager
def _client(client: Any, workers: int | None) -> Iterator[Any]:
    """``client``, or a client of a LocalCluster of ``workers`` single-threaded worker
    processes, closed on exit."""
    if client is not None:
        yield client
        return
    distributed = require("distributed", "'bbp_ref[dataset]'")
    count = (os.cpu_count() or 1) if workers is None else workers
    if count < 1:
        raise InputError(f"workers must be 0 (this process) or more, got {workers}")
    threads = {var: "1" for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                    "MKL_NUM_THREADS")}
    with distributed.LocalCluster(n_workers=count, threads_per_worker=1, processes=True,
                                  dashboard_address=None, env=threads,
                                  silence_logs=40) as cluster, \
            distributed.Client(cluster) as local:
        yield local


def _run_on(client: Any, todo: list[int], batch: Callable[[int], tuple[Any, Any]],
            finished: Callable[[int, Any], None], digest: str, source: bytes, rule: str,
            check: object, layers: list[str]) -> None:
    """Submit the chunks a few per worker at a time; write each as it completes."""
    distributed = require("distributed", "'bbp_ref[dataset]'")
    model = client.scatter(source, broadcast=True, hash=False)
    window = IN_FLIGHT_PER_WORKER * max(len(client.scheduler_info()["workers"]), 1)
    pending = iter(todo)
    running: dict[Any, int] = {}
    completed = distributed.as_completed()

    def submit() -> None:
        chunk = next(pending, None)
        if chunk is None:
            return
        x, t = batch(chunk)
        future = client.submit(_task, digest, model, x, t, rule, check, layers,
                               pure=False, retries=RETRIES)
        running[future] = chunk
        completed.add(future)

    for _ in range(window):
        submit()
    for future in completed:
        chunk = running.pop(future)
        try:
            result = future.result()
        except Exception as exc:  # noqa: BLE001 - a task crashed RETRIES + 1 times
            raise BBpError(f"batch {chunk} failed on the cluster: {exc}") from exc
        finished(chunk, result)
        submit()


class _ProgressLine:
    """``explain-dataset [####....] done/total examples, N ex/s, F failed`` on stderr."""

    def __init__(self, total: int, enabled: bool, width: int = 30) -> None:
        self.total, self.enabled, self.width = total, enabled, width
        self.done = self.failed = 0
        self.start = time.perf_counter()

    def update(self, examples: int, failed: int) -> None:
        self.done += examples
        self.failed += failed
        if not self.enabled:
            return
        filled = self.width * self.done // max(self.total, 1)
        rate = self.done / max(time.perf_counter() - self.start, 1e-9)
        sys.stderr.write(f"\rexplain-dataset [{'#' * filled}{'.' * (self.width - filled)}] "
                         f"{self.done}/{self.total} examples, {rate:.2f} ex/s, "
                         f"{self.failed} failed")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self.done:
            sys.stderr.write("\n")
