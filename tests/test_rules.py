"""The three BBp rules on a two-layer network small enough to compute by hand.

Network: h = W1 x + b1, a = relu(h), y = W2 a + b2 with
W1 = [[2, 1], [-1, 1]], b1 = [1, -1], W2 = [[1, -2]], x = [1, -1].
Then h = [2, -3], a = [2, 0], W^x = [2, 1], W^x x = 1 and b^x = 1 + b2.
"""

import numpy as np
import pytest
from builders import model, node

import bbp_ref

W1 = np.array([[2.0, 1.0], [-1.0, 1.0]], dtype=np.float32)
B1 = np.array([1.0, -1.0], dtype=np.float32)
W2 = np.array([[1.0, -2.0]], dtype=np.float32)
X = np.array([1.0, -1.0], dtype=np.float32)


def two_layer(b2: float):
    return model(
        [node("Gemm", ["x", "W1", "b1"], "h", name="fc1", transB=1),
         node("Relu", ["h"], "a", name="relu"),
         node("Gemm", ["a", "W2", "b2"], "y", name="fc2", transB=1)],
        ["N", 2], {"W1": W1, "b1": B1, "W2": W2, "b2": np.array([b2], np.float32)})


# Hand computation with b2 = 0.5 (b^x = 1.5):
#  abs:     fc2 hands 0.5 to a = [2, 0] by |z| = [2, 0] -> h gets [0.5, 0]; fc1 adds
#           e = g * b1 = [1, 0] -> beta = [1.5, 0]; row 0 has z = [2, -1], |z| shares
#           [2/3, 1/3] -> B = [1.0, 0.5].
#  signed:  row 0 has sigma = sign(1.5 * 1) = +1, max(0, z) = [2, 0] -> B = [1.5, 0].
#  uniform: fc2 hands [0.25, 0.25]; beta_h = [1.25, 0.25]; halves -> B = [0.75, 0.75].
HAND = {"abs": [1.0, 0.5], "signed": [1.5, 0.0], "uniform": [0.75, 0.75]}


@pytest.mark.parametrize("rule", sorted(HAND))
def test_two_layer_by_hand(rule):
    e = bbp_ref.explain(two_layer(0.5), X, target=0, rule=rule)
    assert e.output == pytest.approx(2.5, abs=1e-12)
    np.testing.assert_allclose(e.gradient, [2.0, 1.0], atol=1e-12)
    assert e.bias == pytest.approx(1.5, abs=1e-12)
    np.testing.assert_allclose(e.bias_attribution, HAND[rule], atol=1e-12)
    assert e.layer_bias["fc2"] == pytest.approx(0.5, abs=1e-12)
    assert e.layer_bias["fc1"] == pytest.approx(1.0, abs=1e-12)
    assert e.rule == rule


def test_signed_falls_back_to_abs_where_no_input_pushes_with_the_mass():
    # b2 = -0.5: fc2's mass is negative while g = 1, so sigma = -1, and max(0, -z)
    # with z = [2, 0] is all zero: the row falls back to abs -> a gets [-0.5, 0].
    # beta_h = [-0.5 + 1, 0] = [0.5, 0]; sigma = +1 on row 0 -> B = [0.5, 0].
    e = bbp_ref.explain(two_layer(-0.5), X, target=0, rule="signed")
    np.testing.assert_allclose(e.bias_attribution, [0.5, 0.0], atol=1e-12)
    assert e.bias == pytest.approx(0.5, abs=1e-12)


def test_per_layer_attribution_by_hand():
    # Only fc2's bias: 0.5 reaches h = [0.5, 0]; |z| shares [2/3, 1/3] -> [1/3, 1/6].
    e = bbp_ref.explain(two_layer(0.5), X, target=0, rule="abs", layers=["fc2"])
    np.testing.assert_allclose(e.bias_attribution, [1 / 3, 1 / 6], atol=1e-12)
    assert e.layers == ("fc2",)
    assert e.bias == pytest.approx(1.5, abs=1e-12)  # b^x itself is unchanged
    assert e.checks.passed


@pytest.mark.parametrize("rule", ["abs", "uniform"])
def test_linear_rules_add_up_over_layers(rule):
    m = two_layer(0.5)
    whole = bbp_ref.explain(m, X, rule=rule).bias_attribution
    parts = sum(bbp_ref.explain(m, X, rule=rule, layers=[name]).bias_attribution
                for name in ("fc1", "fc2"))
    np.testing.assert_allclose(parts, whole, atol=1e-12)


def test_signed_rule_is_not_linear_in_the_injected_biases():
    m = two_layer(-0.5)
    whole = bbp_ref.explain(m, X, rule="signed").bias_attribution
    parts = sum(bbp_ref.explain(m, X, rule="signed", layers=[name]).bias_attribution
                for name in ("fc1", "fc2"))
    assert not np.allclose(parts, whole)
    np.testing.assert_allclose(parts.sum(), whole.sum(), atol=1e-12)


def test_custom_rule_callable_matches_the_builtin_abs_rule():
    def my_abs(view):
        return [bbp_ref.Term(np.abs, [np.abs(u) for u in view.operands])]

    m = two_layer(0.5)
    custom = bbp_ref.explain(m, X, rule=my_abs)
    builtin = bbp_ref.explain(m, X, rule="abs")
    np.testing.assert_allclose(custom.bias_attribution, builtin.bias_attribution, atol=1e-15)
    assert custom.rule == "my_abs"


def test_signed_rule_on_a_residual_sum_by_hand():
    """A residual Sum whose first operand is a Relu output (no negative part) and whose
    mass is negative: the signed rule's terms on the negative parts must run for the
    second operand.

    x = [1, -1]; h1 = W1 x + b1 = [2, -3], r = relu(h1) = [2, 0]; h2 = Wb x = [-1, -1];
    s = r + h2 = [1, -1]; y = s + c, c = [-0.5, 0.25]; target 0: f = 0.5, W^x = [3, 3].
    y hands e_y = -0.5 to s; s: sigma = sign(-0.5 * 1) = -1, max(0, -z) with
    z = [2, -1] is [0, 1] -> h2[0] gets -0.5; fc2 row 0: sigma = -1, z = [1, -2] ->
    x[1] gets -0.5. fc1: e = [1, 0], sigma = +1, z = [2, -1] -> x[0] gets 1.
    B = [1, -0.5], b^x = 0.5."""
    wb = np.array([[1.0, 2.0], [0.0, 1.0]], dtype=np.float32)
    c = np.array([-0.5, 0.25], dtype=np.float32)
    proto = model(
        [node("Gemm", ["x", "W1", "b1"], "h1", name="fc1", transB=1),
         node("Relu", ["h1"], "r", name="relu"),
         node("Gemm", ["x", "Wb"], "h2", name="fc2", transB=1),
         node("Add", ["r", "h2"], "s", name="residual"),
         node("Add", ["s", "c"], "y", name="shift")],
        ["N", 2], {"W1": W1, "b1": B1, "Wb": wb, "c": c})
    e = bbp_ref.explain(proto, X, target=0, rule="signed", check="full")
    assert e.output == pytest.approx(0.5, abs=1e-12) and e.bias == pytest.approx(0.5, abs=1e-12)
    np.testing.assert_allclose(e.gradient, [3.0, 3.0], atol=1e-12)
    np.testing.assert_allclose(e.bias_attribution, [1.0, -0.5], atol=1e-12)
    several = bbp_ref.explain(proto, X, target=[0, 1], rule="signed")  # the shared path
    np.testing.assert_allclose(several.bias_attribution[0], [1.0, -0.5], atol=1e-12)


@pytest.mark.parametrize("name", ["residual", "conv_variants", "mlp"])
def test_signed_fallback_rows_served_in_the_same_pass_equal_a_separate_abs_pass(name):
    """`signed` serves its fallback rows (sigma = 0, or no input pushing with the mass)
    with its own four terms, all selected (they sum to |z|); the same rule with the
    fallback as a separate `abs` pass over those rows gives the same attribution."""
    from architectures import ARCHITECTURES

    from bbp_ref.attribution import rules

    rng = np.random.default_rng(5)
    proto, shape = ARCHITECTURES[name](rng)
    x = rng.normal(size=(4, *shape)).astype(np.float32)
    separate = bbp_ref.Rule("signed", rules._signed_terms, rules.ABS, builtin=True)
    assert not separate.fallback_sums_terms and rules.SIGNED.fallback_sums_terms
    calls = []
    original = rules.distribute

    def counting(local, view, rule):
        calls.append(rule.name)
        return original(local, view, rule)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(rules, "distribute", counting)
        one_pass = bbp_ref.explain(proto, x, rule="signed", check=False)
        in_one_pass = list(calls)
        calls.clear()
        two_passes = bbp_ref.explain(proto, x, target=one_pass.target, rule=separate,
                                     check=False)
    assert "abs" in calls, "the case has no fallback rows"
    assert "abs" not in in_one_pass
    np.testing.assert_allclose(one_pass.bias_attribution, two_passes.bias_attribution,
                               rtol=1e-12, atol=1e-12 * np.abs(two_passes.bias).max())
