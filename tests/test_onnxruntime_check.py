"""The onnxruntime cross-checks: the explained output, and `first_divergence`, which
names the first canonical node whose tensor disagrees with onnxruntime."""

from dataclasses import replace

import numpy as np
from architectures import cnn, residual

import bbp_ref
from bbp_ref.engine.affine import Conv


def _model_and_input(build, seed=0):
    rng = np.random.default_rng(seed)
    proto, shape = build(rng)
    return bbp_ref.load(proto), rng.normal(size=(2, *shape)).astype(np.float32)


def test_all_intermediate_tensors_agree_on_a_correct_import():
    model, x = _model_and_input(residual)
    first, comparisons = bbp_ref.first_divergence(model, x)
    assert first is None
    assert len(comparisons) == len(model.graph) - 1
    assert all(c.ok and c.max_abs_diff < 1e-5 for c in comparisons)


def test_first_divergence_names_the_node_that_is_wrong():
    model, x = _model_and_input(cnn)
    graph = model.graph_for(x.shape[1:])
    conv2 = graph["conv2"]
    wrong = Conv(conv2.operator.weight * 1.01, conv2.operator.bias, conv2.operator.window,
                 conv2.operator.groups, conv2.operator.in_channels)
    graph.nodes["conv2"] = replace(conv2, operator=wrong)
    first, comparisons = bbp_ref.first_divergence(model, x)
    assert first is not None and first.tensor.startswith("conv2 (Conv)")
    names = [c.tensor.split(" ")[0] for c in comparisons]
    assert all(c.ok for c in comparisons[: names.index("conv2")])


def test_explain_reports_an_onnxruntime_mismatch():
    model, x = _model_and_input(cnn)
    graph = model.graph_for(x.shape[1:])
    fc = graph["fc"]
    graph.nodes["fc"] = replace(fc, operator=type(fc.operator)(
        fc.operator.weight, fc.operator.bias + 0.5, fc.operator.operand_shape))
    e = bbp_ref.explain(model, x)
    assert e.checks.onnxruntime is not None and not e.checks.onnxruntime.ok
    assert not e.checks.passed
    assert abs(e.checks.onnxruntime.max_abs_diff - 0.5) < 1e-5
    assert np.max(e.checks.decomposition) <= 1e-10  # the engine is self-consistent
