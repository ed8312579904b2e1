"""The ONNX backend *node* test cases, generated in-process from onnx's own test generators.

onnx 1.23 does not ship the ``node`` suite's data (``onnx/backend/test/data`` holds only
``light``, ``pytorch-converted``, ``pytorch-operator``, ``real`` and ``simple``), but it
ships the generators that write it: ``onnx.backend.test.case.node`` has one module per op,
whose ``export_*`` functions build a node, its inputs and the expected outputs with NumPy
and register them with ``expect`` (which also adds an ``_expanded`` case for every op whose
schema has a function body: the op written as its primitives). `collect` runs them once
(about 8 s) and turns each case into a single-data-input model bbp_ref can load:

* the *data input* is the case's first floating-point input (its axis 0 is the batch
  axis, as everywhere in bbp_ref: docs/math.md §2.4); every other input becomes an
  initializer holding the case's value (weights, exponents, bounds, shapes, indices, a
  Where's condition: constants at the point, docs/math.md §7 "several inputs");
* ``stacked``: a case whose floating-point inputs (two or more) all have the data
  input's shape is run a second time with *all* of them data: the model input is their
  stack along a new axis 1 and a Slice + Squeeze takes each back out, so the op meets
  two data tensors (a product for Mul, MatMul; Div of data; Max/Min of data ...).

A case is *selected* when its computed ops (after dropping the nodes whose inputs are all
constant, which bbp_ref folds) all have a handler in `supported_ops()`, its data input has
rank >= 1 and a float element type NumPy has (float16/32/64), and its first output is a
float tensor. So a new op handler brings its cases in with no list to edit here.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import cache

import numpy as np
import onnx
from conformance_checks import computed_ops
from onnx import TensorProto, helper, numpy_helper

STACKED_NAME = "node_case_stacked"  # not a name any generator uses
FLOAT_TYPES = {TensorProto.FLOAT16, TensorProto.FLOAT, TensorProto.DOUBLE}


@dataclass(frozen=True)
class NodeCase:
    """One runnable case: ``name`` (the generator's, plus ``_stacked`` for the variant with
    every float input data), the single-data-input ``proto``, its input ``x`` and the
    ``expected`` first output."""

    name: str
    proto: onnx.ModelProto
    x: np.ndarray
    expected: np.ndarray


@cache
def _generated() -> tuple:
    """The generators' test cases (run once per process)."""
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the generators' own overflow/divide warnings
        return tuple(collect_testcases())


def _is_float(value: object) -> bool:
    return isinstance(value, np.ndarray) and value.dtype in (np.float16, np.float32,
                                                                np.float64)


def _as_single_input(proto: onnx.ModelProto, inputs: list, data_index: int,
                     stacked: list[int]) -> tuple[onnx.ModelProto, np.ndarray]:
    """``proto`` with input ``data_index`` as the one data input and the others as
    initializers; with ``stacked`` (input indices), those inputs are all data: the model
    input is their stack along axis 1."""
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    graph = model.graph
    declared = list(graph.input)
    del graph.input[:]
    data_inputs = stacked or [data_index]
    for index, (info, value) in enumerate(zip(declared, inputs)):
        if index in data_inputs:
            continue
        tensor = value if isinstance(value, TensorProto) else numpy_helper.from_array(
            np.asarray(value), info.name)
        tensor.name = info.name
        graph.initializer.append(tensor)
    data = inputs[data_index]
    elem_type = helper.np_dtype_to_tensor_dtype(data.dtype)
    if not stacked:  # the data input keeps its name (a function body may refer to it)
        graph.input.append(helper.make_tensor_value_info(declared[data_index].name,
                                                         elem_type, data.shape))
        return model, data
    x = np.stack([inputs[i] for i in stacked], axis=1)
    opset = _default_opset(model)
    taken = []
    for k, index in enumerate(stacked):
        taken += _take(graph, opset, declared[index].name, k)
    nodes = taken + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    graph.input.append(helper.make_tensor_value_info(STACKED_NAME, elem_type, x.shape))
    return model, x


def _default_opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _take(graph: onnx.GraphProto, opset: int, name: str, k: int) -> list[onnx.NodeProto]:
    """Nodes computing ``name = x[:, k]`` (Slice + Squeeze in the forms of ``opset``, so
    the op under test keeps its version)."""
    sliced = f"{name}_slice"

    def const(suffix: str, value: int) -> str:
        graph.initializer.append(numpy_helper.from_array(np.array([value], np.int64),
                                                         f"{name}_{suffix}"))
        return f"{name}_{suffix}"

    if opset >= 10:
        slice_node = helper.make_node(
            "Slice", [STACKED_NAME, const("start", k), const("end", k + 1), const("axis", 1)],
            [sliced], name=f"take_{name}_slice")
    else:
        slice_node = helper.make_node("Slice", [STACKED_NAME], [sliced], name=f"take_{name}_slice",
                                      starts=[k], ends=[k + 1], axes=[1])
    if opset >= 13:
        squeeze = helper.make_node("Squeeze", [sliced, const("squeeze", 1)], [name],
                                   name=f"take_{name}")
    else:
        squeeze = helper.make_node("Squeeze", [sliced], [name], name=f"take_{name}", axes=[1])
    return [slice_node, squeeze]


def _variants(case: object) -> list[tuple[str, list[int] | None]]:
    """The single-data-input forms of a generated case: (name, stacked indices or None)."""
    inputs, _ = case.data_sets[0]
    floats = [i for i, v in enumerate(inputs) if _is_float(v) and np.ndim(v) >= 1]
    if not floats:
        return []
    forms: list[tuple[str, list[int] | None]] = [(case.name, None)]
    shape = np.shape(inputs[floats[0]])
    if len(floats) >= 2 and all(np.shape(inputs[i]) == shape for i in floats):
        forms.append((case.name + "_stacked", floats))
    return forms


def _single_graph_input_order(case: object) -> bool:
    """Whether the case's graph inputs line up with its data set's inputs (the
    generators pass only present inputs; optional ones left out are '' in the node)."""
    inputs, _ = case.data_sets[0]
    return len(case.model.graph.input) == len(inputs)


def not_selected_because(proto: onnx.ModelProto, x: np.ndarray, expected: object,
                         supported: set[str]) -> str | None:
    if x.dtype not in (np.float16, np.float32, np.float64):
        return f"data input of type {x.dtype}"
    if not _is_float(expected):
        return "non-float first output"
    unsupported = computed_ops(proto) - supported
    if unsupported:
        return f"unsupported ops {sorted(unsupported)}"
    return None


def collect(supported: set[str]) -> tuple[list[NodeCase], dict[str, str]]:
    """The selected cases, and every other case with why it was left out."""
    selected, left_out = [], {}
    for case in _generated():
        if case.model is None or not case.data_sets:
            left_out[case.name] = "no model"
            continue
        if {o.domain for o in case.model.opset_import} - {"", "ai.onnx"}:
            left_out[case.name] = "not (only) the ai.onnx domain"
            continue
        if not _single_graph_input_order(case):
            left_out[case.name] = "inputs do not match the graph inputs"
            continue
        if not all(isinstance(v, (np.ndarray, TensorProto)) for v in case.data_sets[0][0]):
            left_out[case.name] = "a sequence or optional input"
            continue
        forms = _variants(case)
        if not forms:
            left_out[case.name] = "no floating-point input of rank >= 1"
            continue
        inputs, outputs = case.data_sets[0]
        data_index = next(i for i, v in enumerate(inputs) if _is_float(v) and np.ndim(v) >= 1)
        for name, stacked in forms:
            proto, x = _as_single_input(case.model, list(inputs), data_index, stacked or [])
            reason = not_selected_because(proto, x, outputs[0] if outputs else None, supported)
            if reason:
                left_out[name] = reason
            else:
                selected.append(NodeCase(name, proto, x, np.asarray(outputs[0])))
    return selected, left_out
