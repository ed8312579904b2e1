"""Models with several inputs, and explanations with respect to an intermediate tensor
(docs/math.md §7, "Several inputs").

A model is explained with respect to one tensor, ``wrt``: a graph input (by default the
only floating-point input not given in ``inputs``) or any intermediate tensor. Every
other graph input takes the value given in ``inputs`` and is a constant at the point. For
an intermediate ``wrt``, the graph before it is evaluated once by onnxruntime, and the
explained function is the rest of the graph as a function of that tensor: every tensor
the rest reads that does not depend on ``wrt`` (the attention mask's path, positional
embeddings) is a constant at the point too. So `b^x` then also holds everything before
``wrt`` and every constant input.

Both are done by rewriting the ONNX model into a one-input model (`bound_model`): the
given inputs and the evaluated tensors become initializers. Constants can differ from one
example to the next (an attention mask per sentence), so a batch is explained one example
at a time (`for_each_example`), each with its own bound model (cached by the constants'
digest), and the results are stacked. An input's batch axis is the axis whose symbolic
dim is the explained input's batch dim (``[layers, batch, hidden]`` for a recurrent
state); an input without one is shared by every example.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .errors import BBpError, InputError
from .importer.signature import GraphInput
from .model import Model

Result = TypeVar("Result")
_MAX_LISTED = 30


@dataclasses.dataclass(frozen=True)
class Binding:
    """What a call binds: the explained tensor (None: the default) and the given values
    of the other graph inputs."""

    wrt: str | None
    inputs: Mapping[str, Any]

    @staticmethod
    def of(wrt: object, inputs: object) -> Binding:
        if wrt is not None and not isinstance(wrt, str):
            raise InputError(f"wrt must be a tensor name, got {type(wrt).__name__}")
        if inputs is None:
            inputs = {}
        if not isinstance(inputs, Mapping) or not all(isinstance(k, str) for k in inputs):
            raise InputError("inputs must be a mapping from input name to array")
        return Binding(wrt, dict(inputs))

    @property
    def given(self) -> bool:
        return self.wrt is not None or bool(self.inputs)


def needs_binding(model: Model, binding: Binding) -> bool:
    return binding.given or model.needs_binding


def pick_example(value: object, index: int | None) -> object:
    """A per-example target for example ``index``: a list or an array with one entry per
    example is indexed (keeping a batch axis of 1); None or a scalar is shared."""
    if index is None or value is None or np.ndim(value) == 0:  # type: ignore[arg-type]
        return value
    return np.asarray(value)[index:index + 1]


def pick_baseline(value: object, index: int | None, explained: np.ndarray) -> object:
    """The baseline for one example: a batch-shaped array (as many axes as the batched
    explained tensor ``explained``) is indexed, anything else is shared."""
    if index is None or np.ndim(value) != explained.ndim:  # type: ignore[arg-type]
        return value
    return np.asarray(value)[index:index + 1]


def for_each_example(model: Model, x: object, binding: Binding,
                     run: Callable[[Model, np.ndarray, int | None], Result],
                     finish: Callable[[Result, np.ndarray], Result]) -> Result:
    """``run(bound_model, explained_x, index)`` for each example (``index`` None for a
    single example, whose ``explained_x`` has no batch axis), stacked into one batched
    result; ``finish(result, wrt_value)`` records the explained tensor's value."""
    free = _free_input(model, binding)
    array = _as_array(x, free.name)
    rank = len(free.dims) if free.dims is not None else None
    if rank is not None and array.ndim == rank - 1:
        example_model, explained = bound_model(model, array[None], binding, free)
        return finish(run(example_model, explained[0], None), explained[0])
    if rank is not None and array.ndim != rank:
        raise InputError(f"x of shape {list(array.shape)} does not match input "
                         f"{free.describe()} (one example or a batch)")
    if array.shape[0] == 0:
        raise InputError("the batch is empty")
    results, values = [], []
    for i in range(array.shape[0]):
        example_model, explained = bound_model(model, array[i:i + 1], binding, free, i,
                                               array.shape[0])
        results.append(run(example_model, explained, i))
        values.append(explained)
    return finish(stack(results), np.concatenate(values))


def bound_model(model: Model, x: np.ndarray, binding: Binding, free: GraphInput,
                index: int = 0, batch: int = 1) -> tuple[Model, np.ndarray]:
    """The one-input model for example ``index`` of a batch of ``batch`` (``x`` holds
    that example with a batch axis of 1), and the explained tensor's value."""
    constants = {name: _example_value(model, name, value, free, index, batch)
                 for name, value in binding.inputs.items()}
    wrt = binding.wrt or free.name
    if wrt == free.name:
        if not free.is_float:
            raise InputError(f"input {free.describe()} is not a float tensor; name a float "
                             "tensor computed from it with wrt= (e.g. an embedding output)")
        explained = np.asarray(x, dtype=np.float64)
        key = _digest(wrt, constants)
        if key not in model.bound:
            model.bound[key] = Model(_with_constants(model.proto, constants),
                                     model.output_name, model.source, model.max_bytes)
        return model.bound[key], explained
    cut = _Cut(model, wrt)
    values = _onnxruntime_values(model, [wrt, *cut.boundary], {free.name: x, **constants})
    explained, boundary = values[0], dict(zip(cut.boundary, values[1:]))
    if not np.issubdtype(explained.dtype, np.floating):
        raise InputError(f"wrt={wrt!r} is a tensor of {explained.dtype}; only a float tensor "
                         "can be explained")
    key = _digest(wrt, boundary)
    if key not in model.bound:
        model.bound[key] = Model(cut.proto(explained, boundary), model.output_name,
                                 model.source, model.max_bytes)
    return model.bound[key], explained.astype(np.float64)


def _free_input(model: Model, binding: Binding) -> GraphInput:
    """The graph input ``x`` gives: the one not in ``inputs``."""
    names = {i.name: i for i in model.graph_inputs}
    unknown = sorted(set(binding.inputs) - set(names))
    if unknown:
        raise InputError(f"inputs names {unknown}, which are not inputs of the model; its "
                         f"inputs are {[i.describe() for i in model.graph_inputs]}")
    free = [i for i in model.graph_inputs if i.name not in binding.inputs]
    if binding.wrt is not None and binding.wrt in binding.inputs:
        raise InputError(f"wrt={binding.wrt!r} is also given in inputs; the explained "
                         "tensor's value is x")
    if binding.wrt is not None and binding.wrt in names and len(free) > 1:
        missing = [i.describe() for i in free if i.name != binding.wrt]
        raise InputError(f"give the values of the other inputs in inputs=: missing {missing}")
    if len(free) == 1:
        return free[0]
    if not free:
        raise InputError("inputs gives every input of the model; leave out the one that x "
                         "gives")
    candidates = [i.describe() for i in free if i.is_float]
    raise InputError(f"the model has several inputs not given in inputs=: "
                     f"{[i.describe() for i in free]}; give all but one in inputs= (the "
                     f"float candidates to explain: {candidates})")


def _as_array(x: object, name: str) -> np.ndarray:
    try:
        return np.asarray(x)
    except (TypeError, ValueError) as exc:
        raise InputError(f"x (input {name!r}) is not an array: {exc}") from exc


def _example_value(model: Model, name: str, value: object, free: GraphInput, index: int,
                   batch: int) -> np.ndarray:
    """Input ``name``'s value for one example, cast to its declared type and checked
    against its declared shape."""
    info = next(i for i in model.graph_inputs if i.name == name)
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise InputError(f"inputs[{name!r}] is not an array: {exc}") from exc
    if info.dtype is not None:
        # -inf is an additive attention mask; the import accepts it only where a
        # Softmax reads it (docs/math.md §7.5) and refuses it anywhere else
        numbers = (array.astype(np.float64, copy=False) if array.dtype.kind in "fiub"
                   else np.zeros(1))
        if np.issubdtype(info.dtype, np.floating) and not (
                np.isfinite(numbers) | np.isneginf(numbers)).all():
            raise InputError(f"inputs[{name!r}] contains NaN or +inf values")
        try:
            array = array.astype(info.dtype)
        except (TypeError, ValueError) as exc:
            raise InputError(f"inputs[{name!r}] cannot be cast to {info.dtype}: {exc}") from exc
    if info.dims is not None:
        if array.ndim != len(info.dims) or any(
                d is not None and n != d for n, d in zip(array.shape, info.dims)):
            raise InputError(f"inputs[{name!r}] of shape {list(array.shape)} does not match "
                             f"the input's declared shape {info.describe()}")
    axis = _batch_axis(info, free)
    if batch > 1 and axis is not None:
        if array.shape[axis] != batch:
            raise InputError(f"inputs[{name!r}] has {array.shape[axis]} examples along its "
                             f"batch axis {axis}, x has {batch}")
        array = np.take(array, [index], axis=axis)
    return array


def _batch_axis(info: GraphInput, free: GraphInput) -> int | None:
    symbol = free.dim_params[0] if free.dim_params else None
    if symbol is None or info.dim_params is None:
        return None
    return next((a for a, p in enumerate(info.dim_params) if p == symbol), None)


def _with_constants(proto: onnx.ModelProto, constants: Mapping[str, np.ndarray]
                    ) -> onnx.ModelProto:
    """``proto`` with the given inputs turned into initializers."""
    bound = onnx.ModelProto()
    bound.CopyFrom(proto)
    keep = [i for i in bound.graph.input if i.name not in constants]
    del bound.graph.input[:]
    bound.graph.input.extend(keep)
    for name, value in constants.items():
        bound.graph.initializer.append(numpy_helper.from_array(value, name))
    return bound


def _downstream(graph: onnx.GraphProto, source: str) -> set[str]:
    """The tensors that depend on ``source`` (itself included)."""
    reached = {source}
    for node in graph.node:
        if any(name in reached for name in node.input if name):
            reached.update(name for name in node.output if name)
    return reached


def tensor_types(proto: onnx.ModelProto) -> dict[str, str]:
    """Each tensor ``wrt`` can name with its element type and shape where onnx's shape
    inference knows them (for `bbp-ref nodes`)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(proto)
    except Exception:  # noqa: BLE001 - inference is best effort here
        inferred = proto
    infos = {v.name: v for v in [*inferred.graph.input, *inferred.graph.value_info,
                                 *inferred.graph.output]}
    described = {}
    for name in wrt_candidates(proto):
        info = infos.get(name)
        text = "?"
        if info is not None and info.type.HasField("tensor_type"):
            tensor_type = info.type.tensor_type
            elem = tensor_type.elem_type
            dtype = str(helper.tensor_dtype_to_np_dtype(elem)) if elem else "?"
            dims = ([d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                     for d in tensor_type.shape.dim]
                    if tensor_type.HasField("shape") else "?")
            text = f"{dtype} {dims}"
        described[name] = text
    return described


def wrt_candidates(proto: onnx.ModelProto) -> list[str]:
    """Tensor names ``wrt`` can name: graph inputs and node outputs."""
    names = [i.name for i in proto.graph.input]
    names += [o for node in proto.graph.node for o in node.output if o]
    initializers = {t.name for t in proto.graph.initializer}
    return [n for n in dict.fromkeys(names) if n not in initializers]


class _Cut:
    """The rest of the graph after ``wrt``: the nodes that read a tensor depending on it,
    and the tensors they read that do not (``boundary``; evaluated by onnxruntime)."""

    def __init__(self, model: Model, wrt: str) -> None:
        graph = model.proto.graph
        candidates = wrt_candidates(model.proto)
        if wrt not in candidates:
            shown = candidates[:_MAX_LISTED] + (["..."] if len(candidates) > _MAX_LISTED
                                                else [])
            raise InputError(f"wrt={wrt!r} names no tensor of the model; tensors it can "
                             f"name (`bbp-ref nodes MODEL` lists them): {shown}")
        self.reached = _downstream(graph, wrt)
        output = model.output_name or _first_float_output(graph)
        if output not in self.reached:
            raise InputError(f"wrt={wrt!r} is not on the path to the explained output "
                             f"{output!r}: the output does not depend on it")
        self.model, self.wrt = model, wrt
        self.kept = [n for n in graph.node if any(i in self.reached for i in n.input if i)]
        initializers = {t.name for t in graph.initializer}
        self.boundary = sorted({i for n in self.kept for i in n.input
                                if i and i not in self.reached and i not in initializers})

    def proto(self, explained: np.ndarray, boundary: Mapping[str, np.ndarray]
              ) -> onnx.ModelProto:
        cut = onnx.ModelProto()
        cut.CopyFrom(self.model.proto)
        del cut.graph.node[:]
        cut.graph.node.extend(self.kept)
        del cut.graph.input[:]
        element = helper.np_dtype_to_tensor_dtype(explained.dtype)
        cut.graph.input.append(helper.make_tensor_value_info(
            self.wrt, element, ["N", *explained.shape[1:]]))
        cut.graph.initializer.extend(numpy_helper.from_array(np.asarray(v), name)
                                     for name, v in boundary.items())
        outputs = [o for o in cut.graph.output if o.name in self.reached]
        del cut.graph.output[:]
        cut.graph.output.extend(outputs)
        del cut.graph.value_info[:]
        return cut


def _first_float_output(graph: onnx.GraphProto) -> str:
    for o in graph.output:
        elem = o.type.tensor_type.elem_type
        if elem and np.issubdtype(helper.tensor_dtype_to_np_dtype(elem), np.floating):
            return o.name
    return graph.output[0].name


def _onnxruntime_values(model: Model, tensors: list[str],
                        feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    key = ("bind", *tensors)
    session = model.sessions.get(key)
    if session is None:
        proto = onnx.ModelProto()
        proto.CopyFrom(model.proto)
        outputs = {o.name for o in proto.graph.output}
        proto.graph.output.extend(onnx.ValueInfoProto(name=t) for t in tensors
                                  if t not in outputs)
        try:
            options = ort.SessionOptions()
            options.log_severity_level = 3
            session = ort.InferenceSession(proto.SerializeToString(), options,
                                           providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types
            raise BBpError(f"onnxruntime cannot load the model to evaluate the graph before "
                           f"wrt: {exc}") from exc
        model.sessions[key] = session
    typed = {}
    for info in model.graph_inputs:
        value = np.asarray(feeds[info.name])
        typed[info.name] = value.astype(info.dtype) if info.dtype is not None else value
    try:
        return [np.asarray(v) for v in session.run(tensors, typed)]
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"onnxruntime cannot evaluate the graph before wrt on these "
                         f"inputs: {' '.join(str(exc).split())[:300]}") from exc


def _digest(wrt: str, constants: Mapping[str, np.ndarray]) -> str:
    """A key for a bound model: the explained tensor and the constants' values."""
    h = hashlib.sha256(wrt.encode())
    for name in sorted(constants):
        value = np.ascontiguousarray(constants[name])
        h.update(f"\0{name}\0{value.dtype.str}\0{value.shape}\0".encode())
        h.update(value.tobytes())
    return h.hexdigest()


def stack(results: list[Any]) -> Any:
    """Per-example results (each with a batch axis of 1) as one batched result: arrays
    concatenated along axis 0, dicts key by key, nested dataclasses field by field;
    booleans all-of, other numbers the largest (the worst residual), the rest taken from
    the first (tuples of names are merged in order)."""
    first = results[0]
    if isinstance(first, np.ndarray):
        return np.concatenate(results)
    if dataclasses.is_dataclass(first) and not isinstance(first, type):
        return dataclasses.replace(first, **{
            f.name: stack([getattr(r, f.name) for r in results])
            for f in dataclasses.fields(first) if f.init})
    if isinstance(first, dict):
        keys = list(dict.fromkeys(k for r in results for k in r))
        shapes = {k: next(r[k] for r in results if k in r) for k in keys}
        return {k: stack([r.get(k, np.zeros_like(shapes[k])) for r in results]) for k in keys}
    if isinstance(first, bool):
        return all(results)
    if isinstance(first, (int, float)):
        return max(results)
    if isinstance(first, tuple) and all(isinstance(r, tuple) for r in results):
        return tuple(dict.fromkeys(v for r in results for v in r))
    return first
