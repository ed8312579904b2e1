"""The attribution rules of docs/math.md §4.1, written once on top of each affine node's
forward and vector-Jacobian product.

A rule describes the scores `alpha[p, q]` of a node as a sum of *terms*; a term is a
map of the node's linear coefficients and one non-negative factor per operand, so its
contribution is `rows[p] * W_t[p, q] * u_t[q]` with `W_t = term.coefficients(W)`:

* ``abs``:     one term, `|W|` and `|u|` (`|z[p, q]|`);
* ``signed``:  `max(0, sigma_p z)` split by sign: `W+ u+`, `W- u-` on rows with
  `sigma_p > 0`, `W+ (-u-)`, `(-W-) u+` on rows with `sigma_p < 0`;
* ``uniform``: ones for the coefficients and the operands (the node's connectivity),
  so the denominator counts `|RF(p)|`.

Distributing mass `beta` is then, per term, "forward, divide, vector-Jacobian
product, multiply" (as in Zennit's LRP rules): the denominator is
`den = sum_t rows_t * A_t(u_t)`, and operand `q` receives
`sum_t u_t[q] * A_t^T(rows_t * beta / den)[q]`. No dense `alpha` is built.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

import numpy as np

from ..engine.operator import AffineLocal, AffineOperator, Array, CoefficientMap
from ..errors import BBpError, InputError, RuleError

T = TypeVar("T")


def _positive(w: Array) -> Array:
    return np.maximum(w, 0.0)


def _negative(w: Array) -> Array:
    return np.maximum(-w, 0.0)


def _parts(u: Array) -> tuple[Array, Array]:
    """`(u+, u-)` with `u = u+ - u-`; a part that is all zero (`u-` after a Relu) is a
    one-element zero, so that the terms it enters are skipped without a full array."""
    zero = np.zeros((1,) * u.ndim)
    if u.size and u.min() >= 0:
        return u, zero
    if u.size and u.max() <= 0:
        return zero, np.negative(u)
    return _positive(u), _negative(u)


def _connectivity(w: Array) -> Array:
    """Ones in the shape of ``w``, as a read-only view that takes no memory."""
    return np.broadcast_to(np.ones((), dtype=float), np.shape(w))


@dataclass(frozen=True)
class Term:
    """One summand of a rule's scores: ``coefficients`` maps the node's coefficient
    arrays (result >= 0), ``operands`` gives one factor (>= 0) per operand, and
    ``rows`` (optional, 0/1) selects the output elements it applies to."""

    coefficients: CoefficientMap
    operands: Sequence[Array]
    rows: Array | None = None


@dataclass(frozen=True)
class NodeView:
    """What a rule sees of an affine node: its name and op, the operand values `u`,
    the gradient `g` at its output and the bias mass `beta` it hands out."""

    name: str
    op: str
    operands: Sequence[Array]
    gradient: Array
    mass: Array


@dataclass(frozen=True)
class Rule:
    """A named attribution rule; rows whose scores all vanish go to ``fallback``."""

    name: str
    terms: Callable[[NodeView], Sequence[Term]]
    fallback: Rule | None = None
    builtin: bool = False


def _uniform_terms(view: NodeView) -> list[Term]:
    return [Term(_connectivity, [np.ones((1,) * u.ndim) for u in view.operands])]


def _abs_terms(view: NodeView) -> list[Term]:
    return [Term(np.abs, [np.abs(u) for u in view.operands])]


def _signed_terms(view: NodeView) -> list[Term]:
    sigma = np.sign(view.mass * view.gradient)
    up, down = (sigma > 0).astype(float), (sigma < 0).astype(float)
    pos, neg = (list(parts) for parts in zip(*(_parts(u) for u in view.operands)))
    return [Term(_positive, pos, up), Term(_negative, neg, up),
            Term(_positive, neg, down), Term(_negative, pos, down)]


UNIFORM = Rule("uniform", _uniform_terms, None, builtin=True)
ABS = Rule("abs", _abs_terms, UNIFORM, builtin=True)
SIGNED = Rule("signed", _signed_terms, ABS, builtin=True)
RULES = {rule.name: rule for rule in (ABS, SIGNED, UNIFORM)}


def resolve_rule(rule: object) -> Rule:
    """A `Rule` from a name (``"abs"``, ``"signed"``, ``"uniform"``), a `Rule`, or a
    callable ``NodeView -> Sequence[Term]`` (its rows without scores fall back to
    ``uniform``)."""
    if isinstance(rule, Rule):
        return rule
    if isinstance(rule, str):
        if rule not in RULES:
            raise InputError(f"unknown rule {rule!r}; choose one of {sorted(RULES)} "
                             "or pass a callable")
        return RULES[rule]
    if callable(rule):
        return Rule(getattr(rule, "__name__", "custom"), rule, UNIFORM)
    raise InputError(f"rule must be a name, a Rule or a callable, not {type(rule).__name__}")


def distribute(local: AffineLocal, view: NodeView, rule: Rule) -> list[Array]:
    """The bias mass each operand of an affine node receives: `sum_p alpha[p, q] beta[p]`.

    The mass may hold several rows per example (several targets, `engine.repeat`): with
    operands [N, ...] and mass [N * T, ...], a built-in rule's forward runs once per example
    and is shared by its T rows; a user rule sees the operands repeated. Terms that vanish
    (an all-zero operand factor, e.g. `u-` after a Relu, or no selected row) are skipped:
    they add exact zeros."""
    repeats = view.mass.shape[0] // view.operands[0].shape[0]
    if repeats > 1 and not rule.builtin:
        view = NodeView(view.name, view.op, [np.repeat(u, repeats, axis=0)
                                             for u in view.operands], view.gradient, view.mass)
        repeats = 1
    if rule.builtin:
        terms = rule.terms(view)
    else:
        terms = _user_call(rule, view, lambda: rule.terms(view))
        _check_terms(view, rule, terms)
    operator = local.operator.rule_view()
    kept = [term for term in terms if not _vanishes(term)]
    by_map: dict[CoefficientMap, AffineOperator] = {}
    for term in kept:
        if term.coefficients not in by_map:
            mapping = partial(operator.map_coefficients, term.coefficients)
            by_map[term.coefficients] = mapping() if rule.builtin \
                else _user_call(rule, view, mapping)
    if not rule.builtin and not all(_non_negative(c) for op in by_map.values()
                                    for c in op.coefficients):
        raise RuleError(f"rule {rule.name!r} maps the coefficients of node {view.name!r} "
                        "to negative values (or NaN); scores must be non-negative numbers")
    shapes = [u.shape for u in view.operands]
    exponent = _largest_exponent([f for term in kept for f in term.operands], shapes[0][0])
    factors = [[np.broadcast_to(_scaled(f, exponent, len(s)), s)
                for f, s in zip(term.operands, shapes)] for term in kept]
    rows_of = partial(_by_example, repeats=repeats)
    selected = {id(term): rows_of(np.broadcast_to(term.rows, view.mass.shape))
                for term in kept if term.rows is not None}
    mass, mass_exponent = _normalised(view.mass)
    # [N, 1, ...] (one per example, shared by its targets) unless a term selects rows
    examples = view.mass.shape[0] // repeats
    denominator = np.zeros((examples, repeats if selected else 1, *view.mass.shape[1:]))
    for term, operands in zip(kept, factors):
        part = by_map[term.coefficients].linear(operands)[:, None]
        denominator += part if term.rows is None else part * selected[id(term)]
    # a row whose scores vanish, or are too small to divide by (subnormal), has none
    empty = denominator < np.finfo(float).tiny
    ratio = np.zeros(rows_of(mass).shape)
    np.divide(rows_of(mass), denominator, out=ratio, where=~empty)
    shares = [np.zeros((view.mass.shape[0], *s[1:])) for s in shapes]
    for term, operands in zip(kept, factors):
        grad = ratio if term.rows is None else ratio * selected[id(term)]
        back = by_map[term.coefficients].vjp(grad.reshape(view.mass.shape))
        for share, factor, part in zip(shares, operands, back):
            rows_of(share)[...] += factor[:, None] * rows_of(part)
    with np.errstate(over="ignore"):
        for share in shares:
            np.ldexp(share, _per_example(mass_exponent, share.ndim), out=share)
    pending = (empty & rows_of(view.mass != 0)).reshape(view.mass.shape)
    if pending.any():
        if rule.fallback is None:
            raise RuleError(f"rule {rule.name!r} gives node {view.name!r} ({view.op}) output "
                            "elements that carry bias mass but have no score")
        rest = NodeView(view.name, view.op, view.operands, view.gradient,
                        np.where(pending, view.mass, 0.0))
        for j, part in enumerate(distribute(local, rest, rule.fallback)):
            shares[j] += part
    return shares


def _vanishes(term: Term) -> bool:
    """Whether a term's scores are all zero: no row selected, or every factor zero."""
    if term.rows is not None and not np.any(term.rows):
        return True
    return not any(np.any(f) for f in term.operands)


def _by_example(a: Array, repeats: int) -> Array:
    """``a`` [N * T, ...] as [N, T, ...] (a view): the T rows of an example (its targets)
    side by side, so that a per-example array [N, 1, ...] broadcasts against them without
    being repeated."""
    return a.reshape(a.shape[0] // repeats, repeats, *a.shape[1:])


def _largest_exponent(factors: list[Array], n: int) -> Array:
    """Per example, the binary exponent of the largest operand factor: scaling every
    factor by `2^-exponent` brings the largest to [0.5, 1). `alpha` does not change
    (numerator and denominator scale alike, exactly), but tiny inputs no longer make the
    denominator subnormal."""
    largest = np.zeros(n)
    for f in factors:
        f = np.asarray(f, dtype=float)
        row_max = np.abs(f).max(axis=tuple(range(1, f.ndim)), initial=0.0) \
            if f.ndim > 1 else np.abs(f)
        largest = np.maximum(largest, row_max)
    return np.frexp(largest)[1]


def _scaled(f: Array, exponent: Array, ndim: int) -> Array:
    """``f`` (broadcastable to a batched operand of ``ndim`` axes) times `2^-exponent` of
    each example; one scaling if the exponents are all equal, so that a factor broadcast
    along the batch axis stays small. ldexp, not a product with `2^-exponent`: for a
    subnormal largest factor (1e-310) that power of two itself would overflow."""
    f = np.asarray(f, dtype=float)
    if (exponent == exponent[0]).all():
        return np.ldexp(f, -exponent[0])
    f = f.reshape((1,) * (ndim - f.ndim) + f.shape)
    return np.ldexp(f, _per_example(-exponent, ndim))


def _normalised(mass: Array) -> tuple[Array, Array]:
    """``mass`` times one power of two per example bringing its largest magnitude to
    [0.5, 1), and the exponent that undoes it. Exact; it keeps `beta / den` finite for
    masses near the float64 limit (a bias of 1.5e308) and for subnormal ones."""
    n = mass.shape[0]
    _, exponent = np.frexp(np.abs(mass).reshape(n, -1).max(axis=1, initial=0.0))
    return np.ldexp(mass, _per_example(-exponent, mass.ndim)), exponent


def _per_example(exponent: Array, ndim: int) -> Array:
    return exponent.reshape(-1, *([1] * (ndim - 1)))


def _user_call(rule: Rule, view: NodeView, call: Callable[[], T]) -> T:
    """Run a user rule's code; its exceptions become a `RuleError` naming the node."""
    try:
        return call()
    except BBpError:
        raise
    except Exception as exc:  # noqa: BLE001 - user code raises anything
        raise RuleError(f"rule {rule.name!r} failed at node {view.name!r} ({view.op}): "
                        f"{type(exc).__name__}: {exc}") from exc


def _non_negative(values: object) -> bool:
    """All >= 0 (NaN is not: ``NaN < 0`` is False, so test ``>= 0``)."""
    try:
        return bool((np.asarray(values, dtype=float) >= 0).all())
    except (TypeError, ValueError):
        return False


def _check_terms(view: NodeView, rule: Rule, terms: object) -> None:
    if not isinstance(terms, (list, tuple)) or not all(isinstance(t, Term) for t in terms):
        raise RuleError(f"rule {rule.name!r} must return a list of bbp_ref.Term for node "
                        f"{view.name!r}, got {type(terms).__name__}")
    if not terms:
        raise RuleError(f"rule {rule.name!r} returned no terms for node {view.name!r}")
    for term in terms:
        if not isinstance(term.operands, (list, tuple)) or not callable(term.coefficients):
            raise RuleError(f"rule {rule.name!r} gives node {view.name!r} a Term whose "
                            "coefficients are not a function or whose operands are not a list")
        if len(term.operands) != len(view.operands):
            raise RuleError(f"rule {rule.name!r} gives {len(term.operands)} operand factors "
                            f"for node {view.name!r}, which has {len(view.operands)}")
        for factor, operand in zip(term.operands, view.operands):
            try:
                np.broadcast_to(np.asarray(factor, dtype=float), operand.shape)
            except (TypeError, ValueError):
                raise RuleError(f"rule {rule.name!r} gives node {view.name!r} an operand "
                                f"factor that is not a number array broadcasting to "
                                f"{list(operand.shape)}") from None
        if not all(_non_negative(f) for f in term.operands) or (
                term.rows is not None and not _non_negative(term.rows)):
            raise RuleError(f"rule {rule.name!r} gives node {view.name!r} a negative "
                            "operand factor or row weight (or NaN); scores must be non-negative "
                            "numbers")
