"""Small helpers that write ONNX graphs by hand for the tests."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def model(nodes: Sequence[onnx.NodeProto], input_shape: Sequence[object],
          initializers: Mapping[str, np.ndarray] | None = None, *, opset: int = 13,
          input_name: str = "x", output_name: str = "y",
          elem_type: int = TensorProto.FLOAT, ir_version: int | None = None,
          initializers_as_inputs: bool = False) -> onnx.ModelProto:
    """A single-input, single-output model; output shape is left to inference."""
    inits = [numpy_helper.from_array(np.asarray(v), name=k)
             for k, v in (initializers or {}).items()]
    inputs = [helper.make_tensor_value_info(input_name, elem_type, list(input_shape))]
    if initializers_as_inputs:
        inputs += [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                   for t in inits]
    outputs = [helper.make_tensor_value_info(output_name, elem_type, None)]
    graph = helper.make_graph(list(nodes), "test", inputs, outputs, inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    proto.ir_version = ir_version or min(proto.ir_version, _ir_for(opset))
    inferred = onnx.shape_inference.infer_shapes(proto)
    typed = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    if output_name in typed and typed[output_name].type.tensor_type.HasField("shape"):
        proto.graph.output[0].CopyFrom(typed[output_name])
    else:  # inference could not tell: declare an unknown shape of the right kind
        proto.graph.output[0].type.tensor_type.shape.Clear()
    return proto


def _ir_for(opset: int) -> int:
    """An IR version old enough for onnxruntime and new enough for the opset."""
    for version, ir in ((8, 3), (9, 4), (10, 5), (11, 6), (14, 7), (18, 8), (21, 10)):
        if opset < version:
            return ir
    return 10


def node(op: str, inputs: Sequence[str], outputs: Sequence[str] | str = "y",
         name: str | None = None, **attributes: object) -> onnx.NodeProto:
    outs = [outputs] if isinstance(outputs, str) else list(outputs)
    return helper.make_node(op, list(inputs), outs, name=name or f"{op.lower()}_{outs[0]}",
                            **attributes)


def f32(rng: np.random.Generator, *shape: int, scale: float = 1.0) -> np.ndarray:
    return (rng.normal(size=shape) * scale).astype(np.float32)


def run_onnxruntime(proto: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(proto.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return session.run(None, {name: x})[0]


def to_float64(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy computing in float64: float initializers, inputs and outputs become
    DOUBLE (for an independent float64 evaluation with `onnx.reference`)."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    graph = out.graph
    for i, init in enumerate(graph.initializer):
        if init.data_type == TensorProto.FLOAT:
            array = numpy_helper.to_array(init).astype(np.float64)
            graph.initializer[i].CopyFrom(numpy_helper.from_array(array, init.name))
    for value in list(graph.input) + list(graph.output):
        if value.type.tensor_type.elem_type == TensorProto.FLOAT:
            value.type.tensor_type.elem_type = TensorProto.DOUBLE
    del graph.value_info[:]
    return out


def reference_float64(proto: onnx.ModelProto):
    """``f(x)`` evaluated by `onnx.reference` in float64 (batched ``x``)."""
    from onnx.reference import ReferenceEvaluator

    evaluator = ReferenceEvaluator(to_float64(proto))
    name = proto.graph.input[0].name

    def run(x: np.ndarray) -> np.ndarray:
        return evaluator.run(None, {name: np.asarray(x, np.float64)})[0]

    return run
