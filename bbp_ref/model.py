"""`Model`: an imported ONNX model, ready to run in float64 on the engine."""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from . import budget
from .engine.memory import keeps_freed_memory
from .engine.repeat import one_hot_seeds, repeat_trace
from .engine.trace import Trace, forward, input_gradient, linear_parts
from .errors import InputError
from .graph import Graph
from .importer.builder import build_graph
from .importer.loading import read_model
from .importer.signature import Signature, check_output, graph_inputs, read_signature
from .importer.torch_export import (
    as_numpy,
    export_module,
    is_torch_module,
    require_torch,
    weights_digest,
)

# Outputs whose rows of `W^x` one batched reverse pass computes (`Model.jacobian`): each
# is one more copy of the batch in the pass, and memory grows with it (docs/math.md §8).
JACOBIAN_BLOCK = 100


@dataclass(frozen=True)
class NodeInfo:
    """What a user sees of a canonical node."""

    name: str
    kind: str
    op: str
    shape: tuple[int, ...]


class Model:
    """An ONNX model imported into the canonical piecewise-linear graph.

    The graph depends on the per-example input shape; models whose non-batch input
    dims are all fixed are imported at once (so unsupported ops fail at load time),
    others on the first input of each shape.
    """

    def __init__(self, proto: onnx.ModelProto, output: str | None = None,
                 source: str | None = None, max_bytes: int | None = None,
                 exporter: str | None = None) -> None:
        self.proto = proto
        self.source = source
        #: for a torch module: the exporter that wrote ``proto`` (`load`); else None
        self.exporter = exporter
        self.max_bytes = budget.max_bytes() if max_bytes is None else budget.validated(max_bytes)
        self.output_name = output
        self.graph_inputs = graph_inputs(proto)
        self._graphs: dict[tuple[int, ...], Graph] = {}
        self.sessions: dict[tuple[str, ...], Any] = {}  # onnxruntime, by extra outputs
        self.bound: dict[str, Model] = {}  # by binding digest (see bbp_ref.binding)
        if len(self.graph_inputs) != 1:
            # several inputs: explained with respect to one (wrt=) with the others given
            # (inputs=); the graph is built per binding (docs/math.md §7, several inputs)
            check_output(proto, output)
            self._signature: Signature | None = None
            return
        self._signature = read_signature(proto, output)
        dims = self.signature.example_dims
        if all(d is not None for d in dims):
            self.graph_for(tuple(int(d) for d in dims))  # type: ignore[arg-type]

    @property
    def signature(self) -> Signature:
        """The explained input and output; only for a model with one data input (bind a
        model with several inputs through ``inputs=`` and ``wrt=``)."""
        if self._signature is None:
            names = [i.describe() for i in self.graph_inputs]
            raise InputError(f"the model has {len(names)} inputs {names}: explain it with "
                             "respect to one of them (wrt=NAME) and give the values of the "
                             "others (inputs={NAME: array})")
        return self._signature

    @property
    def needs_binding(self) -> bool:
        return self._signature is None

    # -- structure ---------------------------------------------------------------
    def graph_for(self, example_shape: tuple[int, ...]) -> Graph:
        graph = self._graphs.get(example_shape)
        if graph is None:
            with budget.limit(self.max_bytes):
                graph = build_graph(self.proto, self.signature, example_shape)
            self._graphs[example_shape] = graph
        return graph

    @property
    def graph(self) -> Graph:
        """The canonical graph (of the first input shape seen, for dynamic models)."""
        self.signature  # noqa: B018 - a model with several inputs has no graph of its own
        if not self._graphs:
            raise InputError("the model's input shape is dynamic; call forward or explain "
                             "first, or use graph_for(shape)")
        return next(iter(self._graphs.values()))

    @property
    def nodes(self) -> list[NodeInfo]:
        return [NodeInfo(n.name, n.kind, n.op, n.shape) for n in self.graph]

    @property
    def input_shape(self) -> tuple[int | None, ...]:
        """Per-example input shape (None for a dynamic dim)."""
        return self.signature.example_dims

    @property
    def stripped(self) -> tuple[str, ...]:
        return self.signature.stripped

    def __repr__(self) -> str:
        name = self.source or "<in memory>"
        if self.needs_binding:
            return f"Model({name!r}, inputs={[i.name for i in self.graph_inputs]})"
        nodes = len(self._graphs and self.graph) if self._graphs else "?"
        exported = f", exported by {self.exporter}" if self.exporter else ""
        return f"Model({name!r}, input_shape={self.input_shape}, nodes={nodes}{exported})"

    # -- computation -------------------------------------------------------------
    def prepare(self, x: object) -> tuple[np.ndarray, bool]:
        """``x`` as a float64 batch, and whether it was a single example."""
        try:
            array = np.asarray(as_numpy(x))
        except (TypeError, ValueError, RuntimeError) as exc:
            raise InputError(f"input is not an array: {exc}") from exc
        if not np.issubdtype(array.dtype, np.floating):
            raise InputError(f"input must be a float array, got dtype {array.dtype}")
        dims = self.signature.example_dims
        if array.ndim == len(dims):
            single, batch = True, array[None]
        elif array.ndim == len(dims) + 1:
            single, batch = False, array
        else:
            raise InputError(f"input of shape {list(array.shape)} does not match the model "
                             f"input {['N', *self._dim_names()]} (one example or a batch)")
        for axis, (n, d) in enumerate(zip(batch.shape[1:], dims)):
            if d is not None and n != d:
                raise InputError(f"input of shape {list(array.shape)} does not match the "
                                 f"model input {['N', *self._dim_names()]} at axis "
                                 f"{axis + (0 if single else 1)}")
        if batch.shape[0] == 0:
            raise InputError("the batch is empty")
        with budget.limit(self.max_bytes):
            self._check_working_set(batch.shape)
        batch = batch.astype(np.float64)
        if not np.isfinite(batch).all():
            raise InputError("input contains NaN or infinite values")
        return batch, single

    def _check_working_set(self, shape: tuple[int, ...]) -> None:
        """The engine keeps every node's value (and a local map of about the same size)
        for the whole batch: refuse a batch whose values alone exceed the budget."""
        graph = self.graph_for(tuple(shape[1:]))
        per_example = sum(budget.count(node.shape) for node in graph)
        budget.check_bytes(shape[0] * per_example * budget.FLOAT64_BYTES,
                           f"the engine's values for a batch of {shape[0]}", InputError)

    def _dim_names(self) -> list[object]:
        return [d if d is not None else "?" for d in self.signature.example_dims]

    def trace(self, batch: np.ndarray, linearize: bool = True) -> Trace:
        """The engine's forward trace of a prepared float64 batch. A value that
        overflows to infinity (or NaN) is an `InputError` naming the first such node."""
        with np.errstate(over="ignore", invalid="ignore"):
            trace = forward(self.graph_for(tuple(batch.shape[1:])), batch,
                            linearize=linearize)
        _check_finite_values(trace)
        return trace

    @keeps_freed_memory
    def forward(self, x: object, *, inputs: Mapping[str, object] | None = None,
                wrt: str | None = None) -> np.ndarray:
        """The float64 output `f(x)` (the logits, if a final Softmax was stripped);
        ``inputs``/``wrt`` as in `bbp_ref.explain`."""
        if inputs is not None or wrt is not None or self.needs_binding:
            return self._bound(x, inputs, wrt, lambda m, xi: m.forward(xi))
        batch, single = self.prepare(x)
        out = self.trace(batch, linearize=False).output
        return out[0] if single else out

    @keeps_freed_memory
    def decompose(self, x: object) -> tuple[np.ndarray, np.ndarray]:
        """`(W^x x, b^x)` for every output at once (shaped like `forward(x)`), from the two
        linear passes of docs/math.md §3; their sum is `f(x)` up to rounding."""
        batch, single = self.prepare(x)
        trace = self.trace(batch)
        weights_times_x, bias = linear_parts(trace, batch)
        return (weights_times_x[0], bias[0]) if single else (weights_times_x, bias)

    @keeps_freed_memory
    def jacobian(self, x: object, *, inputs: Mapping[str, object] | None = None,
                 wrt: str | None = None) -> np.ndarray:
        """`W^x` for every output: shape ``[*output_shape, *input_shape]`` for one
        example, with a leading batch axis for a batch (the input being ``wrt``'s value
        with ``inputs``/``wrt``, as in `bbp_ref.explain`)."""
        if inputs is not None or wrt is not None or self.needs_binding:
            return self._bound(x, inputs, wrt, lambda m, xi: m.jacobian(xi))
        batch, single = self.prepare(x)
        trace = self.trace(batch)
        n, out_shape, in_shape = batch.shape[0], trace.output.shape[1:], batch.shape[1:]
        size = int(np.prod(out_shape, dtype=np.int64))
        blocks = []
        # one reverse pass of the trace repeated per output (engine.repeat), for a block of
        # at most JACOBIAN_BLOCK outputs at a time
        for start in range(0, size, JACOBIAN_BLOCK):
            block = np.arange(start, min(size, start + JACOBIAN_BLOCK))
            rows = input_gradient(repeat_trace(trace, len(block)),
                                  one_hot_seeds(np.tile(block, (n, 1)), out_shape))
            blocks.append(rows.reshape(n, len(block), *in_shape))
        jac = np.concatenate(blocks, axis=1).reshape(n, *out_shape, *in_shape)
        return jac[0] if single else jac


    def _bound(self, x: object, inputs: Mapping[str, object] | None, wrt: str | None,
               run: Callable[[Model, np.ndarray], np.ndarray]) -> np.ndarray:
        # binding builds Models, so it imports this module; imported here, not at the top
        from .binding import Binding, for_each_example

        return for_each_example(self, x, Binding.of(wrt, inputs),
                                lambda m, xi, _: run(m, xi), lambda result, _: result)


def _check_finite_values(trace: Trace) -> None:
    for node in trace.graph:
        if not np.isfinite(trace.values[node.name]).all():
            raise InputError(f"the value of node {node.name!r} ({node.op}) is not finite: "
                             "the input or the model's weights overflow float64 there")


def load(model: object, output: str | None = None, max_bytes: int | None = None,
         example: object = None) -> Model:
    """Import an ONNX model: a path, bytes, an ``onnx.ModelProto``, a `Model` (returned
    as is), or a ``torch.nn.Module`` (exported to ONNX in memory; needs ``example``, a
    batch whose axis 0 is the batch axis, for the input shape; see `_load_module`).
    ``output`` names the tensor to explain: a graph output or any float tensor inside
    the graph (default: the first float graph output). ``max_bytes`` is the byte budget
    for everything the model's declarations make bbp_ref allocate (default:
    ``BBP_MAX_BYTES`` or 4 GiB; docs/security.md)."""
    if isinstance(model, Model):
        return model
    if is_torch_module(model):
        return _load_module(model, output, example, max_bytes)
    source = str(Path(model)) if isinstance(model, (str, Path)) else None
    with budget.limit(max_bytes) as chosen:
        return Model(read_model(model), output, source, chosen)


#: Exported modules: module -> {(example shape, output, weights digest): Model}.
_EXPORTED: weakref.WeakKeyDictionary[Any, dict[tuple[object, ...], Model]] = (
    weakref.WeakKeyDictionary())


def _load_module(module: Any, output: str | None, example: object,
                 max_bytes: int | None = None) -> Model:
    """A torch module exported to ONNX (`importer.torch_export`), cached per module,
    per-example input shape, ``output`` and digest of its weights, so that changed
    weights are exported again. Axis 0 of ``example`` is the batch axis."""
    require_torch()
    if example is None:
        raise InputError("a torch.nn.Module is exported to ONNX for an input shape: give "
                         "the input (a batch; axis 0 is the batch axis)")
    try:
        array = np.asarray(as_numpy(example))
    except (TypeError, ValueError, RuntimeError) as exc:
        raise InputError(f"input is not an array: {exc}") from exc
    if array.ndim < 1 or array.shape[0] == 0:
        raise InputError(f"the input of a torch.nn.Module must be a non-empty batch (axis 0 "
                         f"is the batch axis), got shape {list(array.shape)}")
    digest = weights_digest(module)
    cache = _EXPORTED.setdefault(module, {})
    key = (tuple(array.shape[1:]), output, digest)
    if key not in cache:
        exported = export_module(module, array[0])
        with budget.limit(max_bytes) as chosen:
            cache[key] = Model(exported.proto, output,
                               source=f"{type(module).__name__} (torch.nn.Module)",
                               max_bytes=chosen, exporter=exported.exporter)
    return cache[key]
