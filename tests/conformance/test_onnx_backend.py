"""The ONNX backend test cases that ship inside the installed onnx package, run by bbp_ref.

Discovery (`discover`): every folder ``onnx/backend/test/data/<suite>/<case>/`` with a
``model.onnx`` and ``test_data_set_*/input_0.pb``/``output_0.pb`` (onnx 1.23 ships the suites
``pytorch-converted``, ``pytorch-operator`` and ``simple`` in that form, and no ``node``
suite; ``light`` holds bare model files whose inputs the onnx runner generates, ``real``
only download links). A case is selected when

* its ops, after dropping the nodes whose inputs are all constant (bbp_ref folds those at
  import), all have a handler in `bbp_ref.importer.context.supported_ops()`;
* it has exactly one data input (a graph input that is not an initializer);
* its first output has a floating-point type.

So a new op handler brings its backend cases in without anyone editing a list here.

For each selected case, `bbp_ref.load` must succeed, except for the cases listed in
``EXPECTED_REJECTIONS`` (a restriction docs/math.md documents; the test checks the error
says so, and fails if such a case starts to load, so the list stays true). Then, for every
data set:

1. the forward output against the data set's expected output (for a stripped final
   Softmax/LogSoftmax, the stripped ops are applied to bbp_ref's logits by
   `onnx.reference`), to ``FORWARD_RTOL[dtype]`` (see there);
2. the decomposition for every rule (`conformance_checks.assert_decomposition`), for the
   largest and the smallest output of each example.

``EXPECTED_FAILURES`` marks the cases that hit a known library bug (``xfail(strict=True)``,
with a minimal reproduction at the end of this file).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from builders import model, node
from conformance_checks import assert_close_to_scale, assert_decomposition, computed_ops
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import bbp_ref
from bbp_ref.importer.context import supported_ops

DATA = Path(onnx.__file__).resolve().parent / "backend" / "test" / "data"
FLOAT_TYPES = {TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.FLOAT, TensorProto.DOUBLE}

# The expected outputs were computed by PyTorch in the data set's dtype; bbp_ref computes
# in float64 from the same float32 weights, so the difference is the expected output's own
# rounding. For float32 a dot product of K terms is off by ~sqrt(K) ulps typically (at most
# K ulps of the sum of magnitudes); the worst case seen is 1.8e-7 of |y| + max|y| (Conv3d,
# ~1.5 ulps). 1e-5 (~84 float32 ulps) of each element plus 1e-5 of the largest magnitude is
# 55x that, and 100x stricter than onnx's own runner (rtol=1e-3, atol=1e-7); a real bug (a
# wrong pad, slope or window) is off by ~1e-1.
FORWARD_RTOL = {np.dtype(np.float16): 1e-2, np.dtype(np.float32): 1e-5,
                np.dtype(np.float64): 1e-12}

# Cases that need ops or op forms docs/math.md §2 excludes: name -> (text the error must
# contain, why it is rejected).
EXPECTED_REJECTIONS: dict[str, tuple[str, str]] = {
    "test_operator_index": (
        "slicing the batch axis is not supported",
        "x[0]: a Slice of the batch axis (then a Squeeze of it) mixes examples "
        "(math.md §2.4)"),
    "test_PoissonNLLLLoss_no_reduce": (
        "varies along the batch axis",
        "the data input [10, 10] is multiplied by a constant [10, 10]: its axis 0 is not a "
        "batch axis (math.md §2.4)"),
    "test_operator_params": (
        "varies along the batch axis",
        "a [2, 2] parameter added to a [2, 2] input: its axis 0 is not a batch axis "
        "(math.md §2.4)"),
    "test_Embedding": (
        "a float input is needed",
        "the data input is integer token ids (a Gather of the weight table by data "
        "indices): explain with respect to a float tensor (math.md §7.3)"),
    "test_Embedding_sparse": (
        "a float input is needed",
        "the data input is integer token ids (math.md §7.3)"),
    "test_operator_chunk": (
        "operating on the batch axis",
        "a Split of axis 0, the batch axis, mixes examples (math.md §2.4, §7.3)"),
    "test_operator_sqrt": (
        "Sqrt of a negative value",
        "the data set feeds negative numbers to Sqrt (its expected output is NaN): outside "
        "the domain, an InputError naming the node (math.md §7)"),
}


# Cases that fail because of a library bug: name -> the bug (reproduced below).
EXPECTED_FAILURES: dict[str, str] = {}


@dataclass(frozen=True)
class BackendCase:
    suite: str
    name: str
    folder: Path
    data_sets: tuple[Path, ...]


def _not_selected_because(proto: onnx.ModelProto) -> str | None:
    initializers = {t.name for t in proto.graph.initializer}
    data_inputs = [i for i in proto.graph.input if i.name not in initializers]
    if len(data_inputs) != 1:
        return f"{len(data_inputs)} data inputs"
    if proto.graph.output[0].type.tensor_type.elem_type not in FLOAT_TYPES:
        return "non-float output"
    unsupported = computed_ops(proto) - set(supported_ops())
    if unsupported:
        return f"unsupported ops {sorted(unsupported)}"
    return None


def discover() -> tuple[list[BackendCase], dict[str, str]]:
    """The selected cases, and every other case folder with why it was left out."""
    selected, left_out = [], {}
    for model_path in sorted(DATA.glob("*/*/model.onnx")):
        folder = model_path.parent
        data_sets = tuple(d for d in sorted(folder.glob("test_data_set_*"))
                          if (d / "input_0.pb").exists() and (d / "output_0.pb").exists())
        if not data_sets:
            left_out[folder.name] = "no data set"
            continue
        reason = _not_selected_because(onnx.load(model_path))
        if reason:
            left_out[folder.name] = reason
        else:
            selected.append(BackendCase(folder.parent.name, folder.name, folder, data_sets))
    return selected, left_out


CASES, LEFT_OUT = discover()


def _tensor(path: Path) -> np.ndarray:
    return numpy_helper.to_array(onnx.load_tensor(str(path)))


def _with_head(model: bbp_ref.Model, proto: onnx.ModelProto, logits: np.ndarray) -> np.ndarray:
    """The graph output from bbp_ref's output: the stripped final ops (Softmax,
    LogSoftmax, Identity) run by `onnx.reference` in float64 on the logits."""
    signature = model.signature
    if signature.explained == signature.output:
        return logits
    producers = {name: n for n in proto.graph.node for name in n.output}
    chain, tensor = [], signature.output
    while tensor != signature.explained:
        chain.append(producers[tensor])
        tensor = producers[tensor].input[0]
    graph = helper.make_graph(
        chain[::-1], "head",
        [helper.make_tensor_value_info(signature.explained, TensorProto.DOUBLE, None)],
        [helper.make_tensor_value_info(signature.output, TensorProto.DOUBLE, None)])
    head = helper.make_model(graph, opset_imports=proto.opset_import)
    return ReferenceEvaluator(head).run(None, {signature.explained: logits})[0]


def test_discovery():
    """Discovery finds the suites' cases; the names are unique (they are the test ids);
    every expected rejection is a discovered case."""
    names = [c.name for c in CASES]
    assert len(names) == len(set(names))
    assert {c.suite for c in CASES} >= {"pytorch-converted", "pytorch-operator"}
    assert len(CASES) >= 70, (len(CASES), LEFT_OUT)
    assert set(EXPECTED_REJECTIONS) <= set(names), set(EXPECTED_REJECTIONS) - set(names)
    assert set(EXPECTED_FAILURES) <= set(names), set(EXPECTED_FAILURES) - set(names)


def _params():
    for case in CASES:
        marks = ()
        if case.name in EXPECTED_FAILURES:
            marks = (pytest.mark.xfail(strict=True, reason=EXPECTED_FAILURES[case.name]),
                     pytest.mark.filterwarnings("ignore::RuntimeWarning"))
        yield pytest.param(case, id=case.name, marks=marks)


@pytest.mark.parametrize("case", list(_params()))
def test_backend_case(case: BackendCase):
    proto = onnx.load(case.folder / "model.onnx")
    if case.name in EXPECTED_REJECTIONS:
        message, _why = EXPECTED_REJECTIONS[case.name]
        with pytest.raises(bbp_ref.BBpError, match=message):  # at load, or on the data
            bbp_ref.load(proto).forward(_tensor(case.data_sets[0] / "input_0.pb"))
        return
    model = bbp_ref.load(proto)
    for data_set in case.data_sets:
        x = _tensor(data_set / "input_0.pb")
        expected = _tensor(data_set / "output_0.pb")
        logits = model.forward(x)
        output = _with_head(model, proto, logits)
        assert_close_to_scale(output, expected, FORWARD_RTOL[expected.dtype],
                              f"{case.name}/{data_set.name}")
        assert_decomposition(model, x)  # the default target: the largest output
        assert_decomposition(model, x, target=logits.reshape(len(x), -1).argmin(axis=1))


# -- library bugs found by these cases (minimal reproductions) -------------------------------
def _add_one(shape: list, elem_type: int) -> onnx.ModelProto:
    """y = x + 1."""
    dtype = helper.tensor_dtype_to_np_dtype(elem_type)
    return model([node("Add", ["x", "c"])], shape, {"c": np.ones(shape[-1], dtype)},
                 elem_type=elem_type)


@pytest.mark.parametrize("rule", ["abs", "signed", "uniform"])
def test_subnormal_operand_keeps_completeness(rule):
    """y = x + 1 at x = [1e-310, 2]: output 0 has one operand, so its whole bias (1) goes
    to x[0] under every rule. (Found by test_operator_addconstant: the rules once divided
    the mass by a subnormal denominator and overflowed; operand factors are now rescaled
    by a power of two per example.)"""
    m = _add_one(["N", 2], TensorProto.DOUBLE)
    e = bbp_ref.explain(m, np.array([[1e-310, 2.0]]), target=0, rule=rule, check=False)
    np.testing.assert_array_equal(e.bias_attribution, [[1.0, 0.0]])


@pytest.mark.parametrize("batch", [1, 3])
def test_check_with_a_static_batch_size(batch):
    """A model declared with batch size 2 (as every pytorch-converted case is) and
    ``check=True`` on a batch that is not a multiple of it: onnxruntime runs on padded
    chunks. (Its InvalidArgument once escaped explain().)"""
    m = _add_one([2, 3], TensorProto.FLOAT)
    x = np.arange(3 * batch, dtype=np.float32).reshape(batch, 3)
    e = bbp_ref.explain(m, x, check=True)
    assert e.checks.passed and e.checks.onnxruntime is not None
    np.testing.assert_array_equal(e.logits, x + 1)
