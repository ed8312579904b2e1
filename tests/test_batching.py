"""Window ops process large batches in groups of examples (`engine.affine.GROUP_ELEMENTS`);
the result does not depend on the grouping, and agrees with onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
from architectures import ARCHITECTURES
from builders import run_onnxruntime

import bbp_ref
from bbp_ref.engine import affine


@pytest.mark.parametrize("name", ["cnn", "residual", "conv_variants"])
def test_grouped_batches_equal_the_whole_batch(name, monkeypatch):
    rng = np.random.default_rng(0)
    proto, shape = ARCHITECTURES[name](rng)
    x = rng.normal(size=(5, *shape)).astype(np.float32)
    whole = bbp_ref.explain(proto, x, rule="abs", check=False)
    monkeypatch.setattr(affine, "GROUP_ELEMENTS", 1)  # one example per group
    grouped = bbp_ref.explain(proto, x, target=whole.target, rule="abs", check=False)
    np.testing.assert_allclose(grouped.gradient, whole.gradient, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(grouped.bias_attribution, whole.bias_attribution, rtol=1e-12,
                               atol=1e-15)
    reference = run_onnxruntime(proto, x)
    np.testing.assert_allclose(grouped.logits, reference, rtol=1e-4, atol=1e-5)
