"""`Explanation` and `Attribution` print as one short summary line, not whole arrays."""

from __future__ import annotations

import numpy as np

import bbp_ref
from bbp_ref.defaults import default_input, default_model_path

MODEL = str(default_model_path())


def _short(text: str) -> None:
    assert "\n" not in text and len(text) < 260 and "array(" not in text, text


def test_explanation_repr():
    x = default_input()
    e = bbp_ref.explain(MODEL, x)
    text = repr(e)
    _short(text)
    assert text.startswith(f"Explanation(target={int(e.target)}, f_t(x)={float(e.output):.6g}")
    assert f"b^x={float(e.bias):.6g}" in text and "checks passed" in text
    batch = bbp_ref.explain(MODEL, np.stack([x] * 9), layers=["/features/features.0/Conv"])
    text = repr(batch)
    _short(text)
    assert "batch of 9" in text and "(5 more)" in text
    assert "layers=['/features/features.0/Conv']" in text


def test_attribution_repr():
    x = default_input()
    ig = bbp_ref.integrated_gradients(MODEL, x, method="gausslegendre", n_steps=8)
    text = repr(ig)
    _short(text)
    assert "'integrated_gradients' (gausslegendre, 8 steps)" in text
    assert f"delta={float(ig.delta):.3g}" in text
    exact = repr(bbp_ref.integrated_gradients(MODEL, x))
    _short(exact)
    assert "(exact)" in exact and "n_pieces=" in exact
    _short(repr(bbp_ref.gradient(MODEL, np.stack([x] * 7))))
