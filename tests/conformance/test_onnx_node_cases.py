"""The ONNX backend *node* test cases (onnx's own generators, run in-process by
`node_cases`), for every op bbp_ref claims.

For each selected case (see `node_cases` for the selection and the ``_stacked`` variant),
`bbp_ref.load` must succeed and the forward output must equal the generator's expected
output, except for the cases in ``EXPECTED_REJECTIONS`` (a restriction docs/math.md states;
the error must say so, and a case that starts to load fails, so the list stays true).
Then the decomposition for every rule (`conformance_checks.assert_decomposition`): for the
largest and the smallest output of each example, `sum_q W^x[q] x[q] + b^x = f_t(x)` and
`sum_q B(x)[q] = b^x` recomputed here to 1e-10 of the sum of magnitudes.

The expected outputs were computed by NumPy, mostly in float32 from float32 inputs;
bbp_ref computes in float64 from the same inputs, so the tolerance is the backend suite's
`FORWARD_RTOL` by dtype (1e-5 of `|y| + max|y|` for float32, see test_onnx_backend.py).
"""

from __future__ import annotations

import numpy as np
import pytest
from conformance_checks import assert_close_to_scale, assert_decomposition
from node_cases import NodeCase, collect
from node_rejections import REASONS, REJECTED
from test_onnx_backend import FORWARD_RTOL, _with_head

import bbp_ref
from bbp_ref.importer.context import supported_ops

CASES, LEFT_OUT = collect(set(supported_ops()))

# Cases whose op form docs/math.md excludes (or that are not implemented, said so):
# name -> (regular expression the error must match, why). See node_rejections.py.
EXPECTED_REJECTIONS: dict[str, tuple[str, str]] = {
    name: REASONS[reason] for name, reason in REJECTED.items()}

# Cases whose expected output is less precise than its dtype: name -> (absolute
# tolerance, why). Checked as |y - expected| <= tolerance + FORWARD_RTOL's bound.
EXPECTED_PRECISION: dict[str, tuple[float, str]] = {
    "test_averagepool_2d_ceil_last_window_starts_on_pad": (
        5e-5, "the generator writes the expected output by hand to 4 decimals"),
}

# Cases where bbp_ref follows onnxruntime and the generator's expected output differs:
# name -> why. Checked: bbp_ref equals onnxruntime, and onnxruntime differs from the
# expected output (so the list stays true).
FOLLOWS_ONNXRUNTIME: dict[str, str] = {
    "test_resize_downsample_scales_linear_align_corners": (
        "align_corners with an output length of 1: the spec's (len_in - 1) / (len_out - 1) "
        "divides by 0; onnxruntime reads the first input element (docs/math.md §7.3)"),
    "test_resize_downsample_scales_cubic_align_corners": "as the linear case",
}

# Cases that fail because of a library bug: name -> the bug.
EXPECTED_FAILURES: dict[str, str] = {}


def test_discovery():
    """The generators' cases are found, names are unique, and every listed case exists
    (a renamed or vanished case must be taken off the lists)."""
    names = [c.name for c in CASES]
    assert len(names) == len(set(names))
    assert len(CASES) >= 300, (len(CASES), LEFT_OUT)
    assert set(EXPECTED_REJECTIONS) <= set(names), set(EXPECTED_REJECTIONS) - set(names)
    assert set(EXPECTED_FAILURES) <= set(names), set(EXPECTED_FAILURES) - set(names)
    assert set(EXPECTED_PRECISION) <= set(names), set(EXPECTED_PRECISION) - set(names)
    assert set(FOLLOWS_ONNXRUNTIME) <= set(names), set(FOLLOWS_ONNXRUNTIME) - set(names)
    assert set(REJECTED.values()) == set(REASONS), set(REASONS) - set(REJECTED.values())
    # the new op kinds are exercised: smooth gates, products of data, Softmax in the
    # middle, function bodies written out
    for case in ("test_gelu_default_1", "test_mul_stacked", "test_div_stacked",
                 "test_softmax_axis_1", "test_gelu_default_1_expanded"):
        assert case in names, case


def _onnxruntime_output(case: NodeCase) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(case.proto.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: case.x})[0]


def _params():
    for case in CASES:
        marks = ()
        if case.name in EXPECTED_FAILURES:
            marks = (pytest.mark.xfail(strict=True, reason=EXPECTED_FAILURES[case.name]),)
        yield pytest.param(case, id=case.name, marks=marks)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("case", list(_params()))
def test_node_case(case: NodeCase):
    if case.name in EXPECTED_REJECTIONS:
        message, _why = EXPECTED_REJECTIONS[case.name]
        with pytest.raises(bbp_ref.BBpError, match=message):  # at load, or on the data
            model = bbp_ref.load(case.proto)
            model.forward(case.x)
            assert_decomposition(model, case.x)
        return
    model = bbp_ref.load(case.proto)
    logits = model.forward(case.x)
    output = _with_head(model, case.proto, logits)
    if case.name in FOLLOWS_ONNXRUNTIME:
        runtime = _onnxruntime_output(case)
        assert_close_to_scale(output, runtime, FORWARD_RTOL[case.expected.dtype], case.name)
        assert np.abs(runtime - case.expected).max() > 1e-3, \
            "onnxruntime agrees with the expected output now: take the case off the list"
    elif case.name in EXPECTED_PRECISION:
        digits, _why = EXPECTED_PRECISION[case.name]
        np.testing.assert_allclose(output, case.expected, rtol=0,
                                   atol=digits + FORWARD_RTOL[case.expected.dtype])
        assert np.abs(output - case.expected).max() > FORWARD_RTOL[case.expected.dtype], \
            "the expected output is as precise as its dtype now: take it off the list"
    else:
        assert_close_to_scale(output, case.expected, FORWARD_RTOL[case.expected.dtype],
                              case.name)
    if logits.size == 0:
        return  # an empty output: nothing to explain
    assert_decomposition(model, case.x)  # the default target: the largest output
    assert_decomposition(model, case.x, target=logits.reshape(len(case.x), -1).argmin(axis=1))
