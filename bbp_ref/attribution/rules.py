"""The attribution rules of docs/math.md §4.1, written once on top of each affine node's
forward and vector-Jacobian product.

A rule describes the scores `alpha[p, q]` of a node as a sum of *terms*; a term is a
map of the node's linear coefficients and one non-negative factor per operand, so its
contribution is `rows[p] * W_t[p, q] * u_t[q]` with `W_t = term.coefficients(W)`:

* ``abs``:     one term, `|W|` and `|u|` (`|z[p, q]|`);
* ``signed``:  `max(0, sigma_p z)` split by sign: `W+ u+`, `W- u-` on rows with
  `sigma_p > 0`, `W+ (-u-)`, `(-W-) u+` on rows with `sigma_p < 0`; the four sum to `|z|`,
  so rows with `sigma_p = 0`, and rows whose scores vanish, take all four: the fallback
  ``abs`` in the same passes;
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
    """`max(-w, 0)` with one temporary: `0 - min(w, 0)` (the same numbers, +0.0 where
    `w >= 0`)."""
    out = np.asarray(np.minimum(w, 0.0), dtype=float)
    return np.subtract(0.0, out, out=out)


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
    """A named attribution rule; rows whose scores all vanish go to ``fallback``.
    ``fallback_sums_terms``: the fallback's scores are the sum of this rule's terms with
    every row selected (``signed``: its four sign terms sum to `|z|`, the scores of
    ``abs``), so the fallback rows are served by the same forwards and vector-Jacobian
    products, not by a second pass."""

    name: str
    terms: Callable[[NodeView], Sequence[Term]]
    fallback: Rule | None = None
    builtin: bool = False
    fallback_sums_terms: bool = False


def _uniform_terms(view: NodeView) -> list[Term]:
    return [Term(_connectivity, [np.ones((1,) * u.ndim) for u in view.operands])]


def _abs_terms(view: NodeView) -> list[Term]:
    return [Term(np.abs, [np.abs(u) for u in view.operands])]


def _signed_terms(view: NodeView) -> list[Term]:
    # rows with sigma = 0 are selected by all four terms, whose sum is |z|: there the rule
    # is `abs`, its fallback, without a second pass (docs/math.md §4.1)
    direction = view.mass * view.gradient
    up, down = direction >= 0, direction <= 0
    pos, neg = (list(parts) for parts in zip(*(_parts(u) for u in view.operands)))
    return [Term(_positive, pos, up), Term(_negative, neg, up),
            Term(_positive, neg, down), Term(_negative, pos, down)]


UNIFORM = Rule("uniform", _uniform_terms, None, builtin=True)
ABS = Rule("abs", _abs_terms, UNIFORM, builtin=True)
SIGNED = Rule("signed", _signed_terms, ABS, builtin=True, fallback_sums_terms=True)
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
    they add exact zeros. Terms with the same operand factors (``signed``'s `W+ u+` and
    `W- u+`) share them: their forwards are one call (`AffineOperator.linear_many`, which
    a convolution answers with one gathering of its windows), and their vector-Jacobian
    products are summed before the factor multiplies them (`vjp_sum`)."""
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
    shapes = [u.shape for u in view.operands]
    n = shapes[0][0]
    # the distinct operand factors (a factor object may enter several terms), with the
    # largest element of each per example: all factors are >= 0, so a factor whose largest
    # element is 0 everywhere is all zero and its terms vanish
    largest = {(id(f), len(s)): _row_max(f, len(s), n)
               for term in terms for f, s in zip(term.operands, shapes)}
    # terms with an all-zero factor add exact zeros; so do terms that select no row, unless
    # the rule's fallback rows may need them
    kept = [term for term in terms if not _vanishes(term, shapes, largest)
            and (rule.fallback_sums_terms or term.rows is None or np.any(term.rows))]
    operator = local.operator.rule_view()
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
    # one power of two per example brings the largest factor to [0.5, 1): `alpha` does not
    # change (numerator and denominator scale alike, exactly), but tiny inputs no longer
    # make the denominator subnormal
    exponent = np.frexp(np.max([np.zeros(n)] + [largest[id(f), len(s)] for term in kept
                                                for f, s in zip(term.operands, shapes)],
                               axis=0))[1]
    scaled = {(id(f), j): np.broadcast_to(_scaled(f, exponent, len(s)), s)
              for term in kept for j, (f, s) in enumerate(zip(term.operands, shapes))}
    rows_of = partial(_by_example, repeats=repeats)
    selected = {id(term): rows_of(np.broadcast_to(term.rows, view.mass.shape))
                for term in kept if term.rows is not None}
    # the terms with a selected row; the others matter only to fallback rows
    active = [term for term in kept if term.rows is None or np.any(term.rows)]
    forwards = partial(_forwards, by_map, scaled)
    mass, mass_exponent = _normalised(view.mass)
    # [N, 1, ...] (one per example, shared by its targets) unless a term selects rows
    examples = view.mass.shape[0] // repeats
    den_shape = (examples, repeats if selected else 1, *view.mass.shape[1:])
    parts = forwards(active)
    served = rule  # the rule whose scores the rows now have (its fallback takes the rest)
    denominator = np.zeros(den_shape)
    for term in active:
        denominator += parts[id(term)] if term.rows is None \
            else parts[id(term)] * selected[id(term)]
    # a row whose scores vanish, or are too small to divide by (subnormal), has none
    empty = denominator < np.finfo(float).tiny
    some_empty = bool(empty.any())
    if some_empty and rule.fallback_sums_terms:
        # the fallback's rows: every term selected, the denominator the sum of all of them
        pending = empty & rows_of(view.mass != 0)
        if pending.any():
            parts.update(forwards([term for term in kept if id(term) not in parts]))
            for term in kept:
                if term.rows is not None:
                    selected[id(term)] = np.maximum(selected[id(term)], pending)
            denominator = np.where(pending, sum(parts[id(term)] for term in kept), denominator)
            empty = denominator < np.finfo(float).tiny
            some_empty = bool(empty.any())
            active = kept
            served = rule.fallback if rule.fallback is not None else rule
    del parts
    ratio = np.divide(rows_of(mass), denominator, out=np.zeros(rows_of(mass).shape),
                      where=~empty) if some_empty else rows_of(mass) / denominator
    shares: list[Array | None] = [None] * len(shapes)
    for factors, members in _by_factors(active):
        maps = [by_map[term.coefficients] for term in members]
        grads = [(ratio if term.rows is None else ratio * selected[id(term)])
                 .reshape(view.mass.shape) for term in members]
        back = maps[0].vjp_sum(maps, grads)
        values = [scaled[id(f), k] for k, f in enumerate(factors)]
        for j, (factor, part) in enumerate(zip(values, back)):
            product = factor[:, None] * rows_of(part)
            share = shares[j]
            if share is None:
                shares[j] = product.reshape(view.mass.shape[0], *shapes[j][1:])
            else:
                rows_of(share)[...] += product
    result = [np.zeros((view.mass.shape[0], *s[1:])) if share is None else share
              for share, s in zip(shares, shapes)]
    with np.errstate(over="ignore"):
        for share in result:
            np.ldexp(share, _per_example(mass_exponent, share.ndim), out=share)
    if some_empty:
        pending = (empty & rows_of(view.mass != 0)).reshape(view.mass.shape)
        if pending.any():
            if served.fallback is None:
                raise RuleError(f"rule {served.name!r} gives node {view.name!r} ({view.op}) "
                                "output elements that carry bias mass but have no score")
            rest = NodeView(view.name, view.op, view.operands, view.gradient,
                            np.where(pending, view.mass, 0.0))
            for j, part in enumerate(distribute(local, rest, served.fallback)):
                result[j] += part
    return result


def _by_factors(terms: list[Term]) -> list[tuple[Sequence[Array], list[Term]]]:
    """The terms grouped by their operand factors (the same objects), in order."""
    groups: dict[tuple[int, ...], tuple[Sequence[Array], list[Term]]] = {}
    for term in terms:
        key = tuple(id(f) for f in term.operands)
        groups.setdefault(key, (term.operands, []))[1].append(term)
    return list(groups.values())


def _forwards(by_map: dict[CoefficientMap, AffineOperator],
              scaled: dict[tuple[int, int], Array],
              terms: list[Term]) -> dict[int, Array]:
    """Each term's forward `A_t(u_t)` [N, 1, ...] by ``id(term)``; terms with the same
    factors in one call (`AffineOperator.linear_many`)."""
    parts = {}
    for factors, members in _by_factors(terms):
        maps = [by_map[term.coefficients] for term in members]
        outputs = maps[0].linear_many(maps, [scaled[id(f), j] for j, f in enumerate(factors)])
        parts.update({id(term): out[:, None] for term, out in zip(members, outputs)})
    return parts


def _vanishes(term: Term, shapes: Sequence[tuple[int, ...]],
              largest: dict[tuple[int, int], Array]) -> bool:
    """Whether a term's factors are all zero (``largest``: each factor's largest element
    per example; factors are >= 0)."""
    return not any(largest[id(f), len(s)].any() for f, s in zip(term.operands, shapes))


def _by_example(a: Array, repeats: int) -> Array:
    """``a`` [N * T, ...] as [N, T, ...] (a view): the T rows of an example (its targets)
    side by side, so that a per-example array [N, 1, ...] broadcasts against them without
    being repeated."""
    return a.reshape(a.shape[0] // repeats, repeats, *a.shape[1:])


def _row_max(f: Array, ndim: int, n: int) -> Array:
    """The largest element per example, [n], of a factor (>= 0) broadcastable to a batched
    operand of ``ndim`` axes and ``n`` examples."""
    f = np.asarray(f, dtype=float)
    f = f.reshape((1,) * (ndim - f.ndim) + f.shape)
    return np.broadcast_to(f.max(axis=tuple(range(1, ndim)), initial=0.0), (n,))


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
    rows = mass.reshape(n, -1)
    largest = np.maximum(rows.max(axis=1, initial=0.0), -rows.min(axis=1, initial=0.0))
    _, exponent = np.frexp(largest)
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
