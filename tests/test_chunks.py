"""`explain` on a batch runs in chunks of examples (`explain.CHUNK_VALUES`): the chunked
explanation equals the whole batch's, field by field, for every form of target, several
rules and every check mode; each chunk's trace holds only its examples."""

import importlib

import numpy as np
import pytest
from architectures import ARCHITECTURES

import bbp_ref
from bbp_ref.model import Model

explain_module = importlib.import_module("bbp_ref.explain")  # the module, not the function

TARGETS = {"argmax": None, "one index": 1, "one per example": np.array([0, 2, 1, 0, 2]),
           "several per example": np.array([[0, 1], [2, 0], [1, 1], [0, 2], [2, 1]]),
           "all": "all"}


def _fields(e):
    return {"output": e.output, "target": e.target, "gradient": e.gradient, "bias": e.bias,
            "bias_attribution": e.bias_attribution, "logits": e.logits,
            "decomposition": e.checks.decomposition, "completeness": e.checks.completeness,
            **{f"layer_bias {k}": v for k, v in e.layer_bias.items()}}


@pytest.fixture
def model():
    rng = np.random.default_rng(0)
    proto, shape = ARCHITECTURES["cnn"](rng)
    return bbp_ref.load(proto), rng.normal(size=(5, *shape)).astype(np.float32)


@pytest.mark.parametrize("target", list(TARGETS))
def test_chunks_equal_the_whole_batch(model, target, monkeypatch):
    loaded, x = model
    rules = ["abs", "signed", "uniform"]
    whole = bbp_ref.explain(loaded, x, TARGETS[target], rule=rules, check=False)
    traced = []
    original = Model.trace

    def spy(self, batch, linearize=True):
        traced.append(batch.shape[0])
        return original(self, batch, linearize)

    monkeypatch.setattr(Model, "trace", spy)
    monkeypatch.setattr(explain_module, "CHUNK_VALUES", 1)  # one example per chunk
    chunked = bbp_ref.explain(loaded, x, TARGETS[target], rule=rules, check=False)
    assert traced == [1] * len(x)
    for w, c in zip(whole, chunked):
        assert c.rule == w.rule and c.layers == w.layers
        for name, value in _fields(w).items():
            np.testing.assert_allclose(_fields(c)[name], value, rtol=1e-12, atol=1e-14,
                                       err_msg=name)


@pytest.mark.parametrize("check", [True, "full", "strict"])
def test_chunks_keep_every_check(model, check, monkeypatch):
    loaded, x = model
    whole = bbp_ref.explain(loaded, x, check=check)
    monkeypatch.setattr(explain_module, "CHUNK_VALUES", 2 * max(
        int(np.prod(node.shape)) for node in loaded.graph_for(x.shape[1:])))  # 2 per chunk
    compared = []
    original = explain_module.check_output

    def spy(model, batch, logits):
        compared.append(batch.shape[0])
        return original(model, batch, logits)

    monkeypatch.setattr(explain_module, "check_output", spy)
    chunked = bbp_ref.explain(loaded, x, check=check)
    assert compared == [len(x)]  # onnxruntime once, on the whole batch
    assert chunked.checks.passed and whole.checks.passed
    assert chunked.checks.onnxruntime.max_abs_diff == pytest.approx(
        whole.checks.onnxruntime.max_abs_diff, rel=1e-6)
    if check == "full":
        np.testing.assert_allclose(chunked.checks.linear_passes, whole.checks.linear_passes,
                                   rtol=0, atol=1e-12)
    assert chunked.checks.strict == (check == "strict")


def test_a_wrong_target_is_still_named(model, monkeypatch):
    loaded, x = model
    monkeypatch.setattr(explain_module, "CHUNK_VALUES", 1)
    with pytest.raises(bbp_ref.InputError, match="several targets"):
        bbp_ref.explain(loaded, x, target=np.zeros((3, 2), dtype=int))
    with pytest.raises(bbp_ref.InputError, match="out of range"):
        bbp_ref.explain(loaded, x, target=np.array([0, 1, 2, 3, 99]))
