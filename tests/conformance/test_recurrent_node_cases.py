"""The ONNX backend node test cases for LSTM, GRU, RNN, If, Loop and Scan, generated
in-process from onnx's own generators (``onnx.backend.test.case.node.<op>``: onnx 1.23
ships the generators, not the ``node`` suite's data), run by bbp_ref.

Each generator's ``expect(node, inputs, outputs, name)`` call is captured. For the
recurrent ops the model input is X with the batch first (a Transpose feeds the node
``[sequence, batch, input]`` for layout 0), every other input is an initializer, and the
first output is transposed to put the batch first; a constant initial state that is the
same for every example is given with batch length 1 (docs/math.md §7.7 decision 1). The
forward must equal the generator's expected output (NumPy float32) to 1e-5 of each element
plus 1e-5 of the largest magnitude, and the decomposition must hold for every rule.

For If/Loop/Scan the data input is the first floating-point input (its axis 0 the batch
axis). Cases whose form bbp_ref does not import are listed in ``EXPECTED_REJECTIONS`` with
the text the error must contain, and the test fails if one of them starts to load.
"""

from __future__ import annotations

import importlib
import warnings
from dataclasses import dataclass

import numpy as np
import onnx
import pytest
from conformance_checks import assert_decomposition
from onnx import helper, numpy_helper

import bbp_ref
from bbp_ref.errors import BBpError

RTOL = 1e-5
RECURRENT = ("lstm", "gru", "rnn")
CONTROL_FLOW = ("if_", "loop", "scan")

# name -> (text the error must contain, why)
EXPECTED_REJECTIONS: dict[str, tuple[str, str]] = {
    "test_scan_sum": ("Scan-8", "opset-8 Scan has a batch axis and sequence_lens of its own"),
    "test_scan9_sum": (
        "varies along the batch axis",
        "the data input is the state [1, 2] (axis 0 read as the batch); adding the constant "
        "scan slice [2] of a different first dimension would broadcast along it"),
    "test_scan9_multi_state": ("varies along the batch axis", "as test_scan9_sum"),
    "test_scan9_scalar": ("is a scalar", "the only float inputs are scalars: no batch axis"),
}


@dataclass(frozen=True)
class Captured:
    name: str
    node: onnx.NodeProto
    inputs: tuple
    outputs: tuple
    opset: int


def _capture(module_name: str) -> list[Captured]:
    module = importlib.import_module(f"onnx.backend.test.case.node.{module_name}")
    found: list[Captured] = []

    def expect(node, inputs, outputs, name, **kwargs):  # noqa: ANN001, ANN003, ANN202
        opset = 0
        for entry in kwargs.get("opset_imports", []):
            if entry.domain in ("", "ai.onnx"):
                opset = entry.version
        found.append(Captured(name, node, tuple(inputs), tuple(outputs), opset))

    original = module.expect
    module.expect = expect
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for value in list(vars(module).values()):  # an export may add module globals
                if isinstance(value, type) and value.__module__ == module.__name__:
                    for attribute in dir(value):
                        if attribute.startswith("export"):
                            getattr(value, attribute)()
    finally:
        module.expect = original
    return found


def _recurrent_case(case: Captured) -> tuple[onnx.ModelProto, np.ndarray, np.ndarray]:
    node = onnx.NodeProto()
    node.CopyFrom(case.node)
    layout = next((a.i for a in node.attribute if a.name == "layout"), 0)
    present = [t for t in node.input if t]
    values = dict(zip(present, case.inputs))
    x_name = node.input[0]
    x = np.asarray(values.pop(x_name))
    batch_axis = 1 if layout == 0 else 0
    inits = []
    for name, value in values.items():
        value = np.asarray(value)
        if name in node.input[5:7] and value.ndim == 3:  # initial_h / initial_c
            first = np.take(value, [0], axis=batch_axis)
            assert (value == first).all(), f"{case.name}: per-example initial states"
            value = first
        inits.append(numpy_helper.from_array(value, name))
    nodes = []
    data = x if layout else np.swapaxes(x, 0, 1)
    if layout == 0:
        nodes.append(helper.make_node("Transpose", ["data"], [x_name], perm=[1, 0, 2]))
        model_input = "data"
    else:
        model_input = x_name
    output = next(t for t in node.output if t)
    expected = np.asarray(case.outputs[0])
    if layout == 0:
        perm = [2, 0, 1, 3] if expected.ndim == 4 else [1, 0, 2]
        expected = np.transpose(expected, perm)
        nodes.append(node)
        nodes.append(helper.make_node("Transpose", [output], ["result"], perm=perm))
        result = "result"
    else:
        nodes.append(node)
        result = output
    dtype = helper.np_dtype_to_tensor_dtype(x.dtype)
    graph = helper.make_graph(
        nodes, case.name, [helper.make_tensor_value_info(model_input, dtype, list(data.shape))],
        [helper.make_tensor_value_info(result, dtype, list(expected.shape))], inits)
    opset = case.opset or 14
    return (helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]),
            data, expected)


def _control_flow_case(case: Captured) -> tuple[onnx.ModelProto, np.ndarray, np.ndarray]:
    node = case.node
    present = [t for t in node.input if t]
    values = {name: np.asarray(v) if not isinstance(v, list) else v
              for name, v in zip(present, case.inputs)}
    floats = [n for n, v in values.items()
              if isinstance(v, np.ndarray) and np.issubdtype(v.dtype, np.floating)]
    if not floats:
        pytest.skip("no floating-point input to explain")
    data_name = floats[0]
    data = values.pop(data_name)
    inits = [numpy_helper.from_array(v, n) for n, v in values.items()
             if isinstance(v, np.ndarray)]
    if len(inits) != len(values):
        pytest.skip("sequence-typed inputs")
    output = next(t for t in node.output if t)
    expected = np.asarray(case.outputs[0])
    dtype = helper.np_dtype_to_tensor_dtype(data.dtype)
    graph = helper.make_graph(
        [node], case.name, [helper.make_tensor_value_info(data_name, dtype, list(data.shape))],
        [helper.make_tensor_value_info(output, helper.np_dtype_to_tensor_dtype(expected.dtype),
                                       list(expected.shape))], inits)
    opset = case.opset or 16
    return (helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]),
            data, expected)


def _cases() -> list:
    params = []
    for module in RECURRENT + CONTROL_FLOW:
        for case in _capture(module):
            params.append(pytest.param(module, case, id=case.name))
    return params


@pytest.mark.parametrize(("module", "case"), _cases())
def test_node_case(module: str, case: Captured) -> None:
    build = _recurrent_case if module in RECURRENT else _control_flow_case
    proto, x, expected = build(case)
    rejection = EXPECTED_REJECTIONS.get(case.name)
    try:
        m = bbp_ref.load(proto)
        out = m.forward(x)
    except BBpError as exc:
        if rejection is None:
            raise
        assert rejection[0] in str(exc)
        return
    assert rejection is None, f"{case.name} now loads: remove it from EXPECTED_REJECTIONS"
    expected = expected.astype(np.float64)
    assert out.shape == expected.shape
    bound = RTOL * (np.abs(expected) + np.abs(expected).max())
    assert (np.abs(out - expected) <= bound).all(), np.abs(out - expected).max()
    assert_decomposition(m, x)
