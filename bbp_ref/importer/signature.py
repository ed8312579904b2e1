"""The model's interface: which graph input is the data, which output is explained,
and which final Softmax/LogSoftmax ops are stripped (docs/math.md §2, output head)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from ..errors import InputError, ModelLoadError
from .loading import default_opset

HEAD_OPS = ("Softmax", "LogSoftmax")
_PASS_THROUGH = ("Identity",)


@dataclass(frozen=True)
class Signature:
    """``input_dims``: the declared ONNX input shape, None for symbolic dims (axis 0
    is the batch axis); ``output``: the graph output chosen; ``explained``: the
    tensor explained (the output with any final Softmax/LogSoftmax stripped);
    ``stripped``: descriptions of the stripped ops, outermost first."""

    input_name: str
    input_dims: tuple[int | None, ...]
    input_dtype: np.dtype
    output: str
    explained: str
    stripped: tuple[str, ...]
    opset: int

    @property
    def example_dims(self) -> tuple[int | None, ...]:
        return self.input_dims[1:]


@dataclass(frozen=True)
class GraphInput:
    """A graph input that is not an initializer: its name, element type (None if not a
    tensor of a known type) and declared dims (None for a symbolic dim; ``dim_params``
    holds the symbols)."""

    name: str
    dtype: np.dtype | None
    dims: tuple[int | None, ...] | None
    dim_params: tuple[str | None, ...] | None

    @property
    def is_float(self) -> bool:
        return self.dtype is not None and bool(np.issubdtype(self.dtype, np.floating))

    def describe(self) -> str:
        dims = "?" if self.dims is None else [d if d is not None else p for d, p in
                                              zip(self.dims, self.dim_params or ())]
        return f"{self.name} ({self.dtype or 'unknown type'}, {dims})"


def graph_inputs(model: onnx.ModelProto) -> tuple[GraphInput, ...]:
    """The model's data inputs (graph inputs that are not initializers), in order."""
    graph = model.graph
    constants = {t.name for t in graph.initializer} | {t.name for t in graph.sparse_initializer}
    found = []
    for info in graph.input:
        if info.name in constants:
            continue
        tensor_type = info.type.tensor_type
        dtype = _np_dtype(tensor_type.elem_type) if info.type.HasField("tensor_type") else None
        if info.type.HasField("tensor_type") and tensor_type.HasField("shape"):
            dims = tuple(d.dim_value if d.HasField("dim_value") else None
                         for d in tensor_type.shape.dim)
            params = tuple(d.dim_param if d.HasField("dim_param") else None
                           for d in tensor_type.shape.dim)
        else:
            dims, params = None, None
        found.append(GraphInput(info.name, dtype, dims, params))
    return tuple(found)


def check_output(model: onnx.ModelProto, output: str | None) -> None:
    """Raise the error `read_signature` would for an unknown or missing output."""
    _choose_output(model, output)


def read_signature(model: onnx.ModelProto, output: str | None = None) -> Signature:
    graph = model.graph
    constants = {t.name for t in graph.initializer} | {t.name for t in graph.sparse_initializer}
    data_inputs = [i for i in graph.input if i.name not in constants]
    if len(data_inputs) != 1:
        names = [i.name for i in data_inputs]
        raise ModelLoadError(
            f"bbp_ref explains models with exactly one data input; this one has "
            f"{len(data_inputs)}: {names}")
    data = data_inputs[0]
    tensor_type = data.type.tensor_type
    if not data.type.HasField("tensor_type") or not tensor_type.HasField("shape"):
        raise ModelLoadError(f"input {data.name!r} must be a tensor with a known rank")
    dtype = _np_dtype(tensor_type.elem_type)
    if dtype is None or not np.issubdtype(dtype, np.floating):
        raise ModelLoadError(f"input {data.name!r} has element type "
                             f"{dtype or tensor_type.elem_type}; a float input is needed")
    dims = tuple(d.dim_value if d.HasField("dim_value") else None
                 for d in tensor_type.shape.dim)
    if not dims:
        raise ModelLoadError(f"input {data.name!r} is a scalar; its axis 0 must be the batch")
    chosen = _choose_output(model, output)
    explained, stripped = _strip_head(graph, chosen)
    return Signature(data.name, dims, np.dtype(dtype), chosen, explained, stripped,
                     default_opset(model))


def _choose_output(model: onnx.ModelProto, output: str | None) -> str:
    """The tensor to explain: ``output`` (a graph output, any float tensor inside the graph,
    or the name of the ONNX node producing it), else the first float graph output."""
    graph = model.graph
    names = [o.name for o in graph.output]
    if output is not None:
        return _named_tensor(model, output)
    for o in graph.output:
        dtype = _np_dtype(o.type.tensor_type.elem_type)
        if dtype is not None and np.issubdtype(dtype, np.floating):
            return o.name
    zipmap = _zipmap_advice(graph)
    raise ModelLoadError(f"the model has no float output to explain (outputs: {names})"
                         + (f"; {zipmap}" if zipmap else ""))


def _named_tensor(model: onnx.ModelProto, output: str) -> str:
    graph = model.graph
    producers = {name: node for node in graph.node for name in node.output if name}
    by_node = {node.name: node for node in graph.node if node.name}
    if output not in producers and output in by_node and by_node[output].output:
        output = by_node[output].output[0]  # a node's name: its (first) output
    node = producers.get(output)
    if node is None:
        raise InputError(
            f"output {output!r} is no tensor of the model; give a graph output "
            f"({[o.name for o in graph.output]}), the name of a float tensor inside the graph "
            "or of the ONNX node that computes it")
    if node.op_type == "ZipMap":
        raise InputError(f"output {output!r} is made by a ZipMap; "
                         + (_zipmap_advice(graph) or "explain the tensor before it"))
    dtype = _tensor_dtype(model, output)
    if dtype is not None and not np.issubdtype(dtype, np.floating):
        raise InputError(f"output {output!r} has element type {dtype}; a float tensor is "
                         "needed")
    return output


def _tensor_dtype(model: onnx.ModelProto, tensor: str) -> np.dtype | None:
    """The element type of ``tensor`` as declared or inferred by ONNX shape inference
    (None if unknown)."""
    infos = list(model.graph.value_info) + list(model.graph.output)
    if not any(info.name == tensor for info in infos):
        try:
            infos = list(onnx.shape_inference.infer_shapes(model).graph.value_info)
        except Exception:  # noqa: BLE001 - inference is a best effort here
            return None
    for info in infos:
        if info.name == tensor and info.type.HasField("tensor_type"):
            return _np_dtype(info.type.tensor_type.elem_type)
    return None


def _zipmap_advice(graph: onnx.GraphProto) -> str:
    """What to do about a scikit-learn classifier exported with ZipMap ("" if it has none)."""
    zipmaps = [node for node in graph.node if node.op_type == "ZipMap"]
    if not zipmaps:
        return ""
    before = zipmaps[0].input[0]
    return ("its probabilities go through a ZipMap (a list of dicts, not a tensor): export "
            "it with skl2onnx's options={'zipmap': False}, or explain the probability tensor "
            f"before the ZipMap: load(..., output={before!r}) (bbp-ref explain --output "
            f"{before})")


def _np_dtype(elem_type: int) -> np.dtype | None:
    """The numpy dtype of an ONNX element type; None for UNDEFINED or an unknown code."""
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)) if elem_type else None
    except (KeyError, TypeError, ValueError):
        return None


def _strip_head(graph: onnx.GraphProto, output: str) -> tuple[str, tuple[str, ...]]:
    producers = {name: node for node in graph.node for name in node.output}
    stripped = []
    tensor = output
    while tensor in producers and producers[tensor].op_type in HEAD_OPS + _PASS_THROUGH:
        node = producers[tensor]
        if node.op_type in HEAD_OPS:
            stripped.append(f"{node.op_type} (node {node.name!r})")
        tensor = node.input[0]
    return tensor, tuple(stripped)
