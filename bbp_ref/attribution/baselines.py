"""Baseline attributions on the same exact float64 engine: the gradient, gradient x input
and DeepLIFT (Rescale rule); the `Attribution` result and what the methods share.

Every function takes ``model`` (anything `load` takes), ``x`` (one example or a batch)
and ``target`` with `explain`'s conventions (an index into one example's flattened
output, default its argmax, or one index per example) and returns an `Attribution`:
batched fields for a batch, unbatched for one example, attributions shaped like ``x``.
Integrated gradients is in `integrated_gradients`.

DeepLIFT with the Rescale rule (Shrikumar et al. 2017), as Captum's ``DeepLift`` computes
it (``multiply_by_inputs=True``, ``eps=1e-10``) but for the departures listed below: the
attribution is `(x - b) * m`, where `m` is the reverse pass of the target through the
graph with every gate's derivative replaced by a *multiplier* (affine nodes and routes keep
their linear maps):

* element-wise gates (Relu, LeakyRelu, PRelu, Clip, and the smooth gates of docs/math.md
  §7: Sigmoid, Tanh, Gelu, ...): `m = (h(x) - h(b)) / (u(x) - u(b))`
  where `|u(x) - u(b)| >= eps`, else the gate's ordinary derivative at `x` (the engine's
  one-sided convention, which is autograd's). Captum hooks only ``nn.ReLU``,
  ``nn.LeakyReLU`` (and smooth activations); it back-propagates the plain gradient
  through ``nn.PReLU`` and ``nn.Hardtanh``, which breaks summation-to-delta there. We
  apply the Rescale rule to every element-wise gate, so the property holds for all.
  The nodes of a stable Softmax expansion use their values as computed (`exp(u - m)`
  with each point's own shift), for which the same identity holds.
* products (docs/math.md §7): `u v - u' v' = (u - u') (v + v')/2 + (u + u')/2 (v - v')`,
  so the multipliers are the operands' midpoints `(v + v')/2` and `(u + u')/2` (the
  same for a MatMul of two data tensors): exact, so summation-to-delta holds.
* MaxPool / GlobalMaxPool (Captum's ``maxpool`` rule): with `y = maxpool(u(x))`,
  `y' = maxpool(u(b))` and `M = max(y, y')`, output `p` with incoming multiplier `g[p]`
  sends `g[p] (M[p] - y'[p])` to the arg-max of its window at `x` and `g[p] (y[p] - M[p])`
  to the arg-max at `b` (these two sum to `g[p] (y[p] - y'[p])`); each input element's
  total is divided by its `u(x) - u(b)`. Where `|u(x) - u(b)| < eps` the ordinary
  gradient (routing `g` to the arg-max at `x`) is used instead. The numerator can be
  non-zero only where `u(x) != u(b)`, so summation-to-delta holds.

Where Captum 0.9 departs from its own rules (so agreement is tested only on models
without these cases): (1) a hooked module whose output feeds another hooked module (a
ReLU directly followed by a MaxPool) receives the plain gradient of the second instead
of its multipliers (captum#1104): summation-to-delta fails; (2) with overlapping pooling
windows ``max_unpool`` keeps one of several shares routed to the same input, where we
add them; (3) the MaxPool fallback uses the batch's first example's gradient
(``grad_input[0]``, captum#1276), where we use each example's own.

Summation-to-delta: `sum_q attribution[q] = f_t(x) - f_t(b)` up to rounding (and up to
`eps` times a multiplier where an `|u(x) - u(b)|` is below `eps` but not 0);
``Attribution.delta`` is Captum's convergence delta `sum attribution - (f_t(x) - f_t(b))`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import numpy as np

from ..binding import Binding, for_each_example, needs_binding, pick_baseline, pick_example
from ..engine.affine import Sum
from ..engine.einsum import BilinearEinsum, EinsumProduct
from ..engine.gates import ElementwiseLocal, MaxPool, MaxPoolLocal
from ..engine.memory import keeps_freed_memory
from ..engine.operator import GATE, PRODUCT, SMOOTH, AffineLocal, Array, Pullback
from ..engine.products import BilinearMatMul, MatMulProduct, Product
from ..engine.trace import Trace, forward, input_gradient
from ..errors import InputError, UnsupportedOpError
from ..graph import Graph
from ..model import Model, load
from .targets import resolve_targets

DEEPLIFT_EPS = 1e-10  # Captum's default: |u(x) - u(b)| below this uses the gradient


@dataclass(frozen=True)
class Attribution:
    """An attribution of output ``target`` of the model at ``x`` (float64).

    For a batch every array field has a leading batch axis; for one example it has none.
    ``attribution``: shaped like `x`; ``method``: ``"gradient"``, ``"gradient_x_input"``,
    ``"integrated_gradients"`` or ``"deeplift"``; ``target``: `t`, an index into the
    flattened output of one example; ``output``: `f_t(x)`; ``baseline_output``: `f_t(b)`
    (None without a baseline); ``delta``: `sum attribution - (f_t(x) - f_t(b))`, Captum's
    convergence delta (None without a baseline); ``logits``: the whole explained output
    `f(x)`; ``stripped``: the final ops cut off (e.g. a Softmax); ``integration``: for
    integrated gradients, ``"exact"`` or the quadrature rule; ``n_steps``: the number of
    quadrature points (None for ``"exact"``); ``n_pieces``: for exact integrated
    gradients, the number of linear pieces of the path walked (int, per example);
    ``wrt_value``: with ``wrt``/``inputs``, the explained tensor's value (else None).
    """

    attribution: np.ndarray
    method: str
    target: np.ndarray
    output: np.ndarray
    baseline_output: np.ndarray | None
    delta: np.ndarray | None
    logits: np.ndarray
    stripped: tuple[str, ...]
    integration: str | None = None
    n_steps: int | None = None
    n_pieces: np.ndarray | None = None
    wrt_value: np.ndarray | None = None

    def __repr__(self) -> str:
        """One line: the method, target, output and convergence, not the arrays."""
        how = ""
        if self.integration is not None:
            how = f" ({self.integration}" + (f", {self.n_steps} steps)" if self.n_steps
                                             else ")")
        if np.ndim(self.output) == 0:
            delta = "" if self.delta is None else f", delta={float(self.delta):.3g}"
            pieces = "" if self.n_pieces is None else f", n_pieces={int(self.n_pieces)}"
            return (f"Attribution({self.method!r}{how}, target={int(self.target)}, "
                    f"f_t(x)={float(self.output):.6g}, sum="
                    f"{float(np.sum(self.attribution)):.6g}{delta}{pieces}, "
                    f"shape {list(np.shape(self.attribution))})")
        delta = ("" if self.delta is None else
                 f", max |delta|={float(np.max(np.abs(self.delta))):.3g}")
        return (f"Attribution({self.method!r}{how}, batch of {len(self.output)}, targets "
                f"{np.asarray(self.target)[:4].tolist()}{', ...' if len(self.output) > 4 else ''}"
                f"{delta}, shape {list(np.shape(self.attribution)[1:])} each)")

    def unbatched(self) -> Attribution:
        """The first example's fields without the batch axis."""

        def first(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[0]

        return Attribution(
            attribution=self.attribution[0], method=self.method, target=self.target[0],
            output=self.output[0], baseline_output=first(self.baseline_output),
            delta=first(self.delta), logits=self.logits[0], stripped=self.stripped,
            integration=self.integration, n_steps=self.n_steps,
            n_pieces=first(self.n_pieces))


@dataclass(frozen=True)
class Setup:
    """A prepared call: the model, the float64 batch, whether it was one example, the
    graph for its shape, the forward trace at it, the targets and the one-hot seed."""

    model: Model
    batch: Array
    single: bool
    trace: Trace
    targets: Array
    seed: Array

    @property
    def graph(self) -> Graph:
        return self.trace.graph

    @property
    def logits(self) -> Array:
        return self.trace.output

    @property
    def output(self) -> Array:
        return self.selected(self.logits)

    def selected(self, out: Array) -> Array:
        """``out`` (a batched model output) at each example's target."""
        n = out.shape[0]
        return out.reshape(n, -1)[np.arange(n), self.targets]

    def finish(self, attribution: Attribution) -> Attribution:
        return attribution.unbatched() if self.single else attribution


def setup(model: object, x: object, target: object, linearize: bool = True,
          output: str | None = None) -> Setup:
    """Load (``output``: the tensor to explain, see `load`), prepare ``x``, run the forward
    trace and resolve ``target`` (`explain`'s rules)."""
    loaded = loaded_for(model, x, output)
    batch, single = loaded.prepare(x)
    trace = loaded.trace(batch, linearize=linearize)
    n = batch.shape[0]
    flat = trace.output.reshape(n, -1)
    targets = resolve_targets(target, flat, single)
    seed = np.zeros_like(flat)
    seed[np.arange(n), targets] = 1.0
    return Setup(loaded, batch, single, trace, targets, seed.reshape(trace.output.shape))


def loaded_for(model: object, x: object, output: str | None = None) -> Model:
    """``model`` loaded (`load`) to explain ``output`` at ``x`` (the example a torch module
    is exported for); a `Model` loaded for another output is an `InputError`."""
    if isinstance(model, Model) and output is not None and output not in (
            model.output_name, *_explained(model)):
        raise InputError(f"the model was loaded to explain {model.output_name!r}, not "
                         f"{output!r}: load it with output={output!r}, or pass its path")
    return load(model, output=output, example=x)


def _explained(model: Model) -> tuple[str, ...]:
    if model.needs_binding:
        return ()
    return (model.signature.output, model.signature.explained)


def baseline_batch(baselines: object, batch: Array, single: bool) -> Array:
    """``baselines`` as a float64 array shaped like ``batch``: a scalar, one example's
    shape (shared by the batch) or, for a batch input, the batch's shape."""
    try:
        array = np.asarray(baselines, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"baselines must be a number or an array: {exc}") from exc
    example = batch.shape[1:]
    if array.ndim == 0 or array.shape == example:
        out = np.broadcast_to(array, batch.shape)
    elif not single and array.shape == batch.shape:
        out = array
    else:
        allowed = "a scalar or one example's shape " + str(list(example))
        if not single:
            allowed += " or the batch's shape " + str(list(batch.shape))
        raise InputError(f"baselines of shape {list(array.shape)} must be {allowed}")
    if not np.isfinite(out).all():
        raise InputError("baselines contain NaN or infinite values")
    return np.array(out, dtype=np.float64)


def bound_call(model: object, x: object, wrt: str | None, inputs: object,
               run: Callable[[Model, Array, int | None], Attribution]) -> Attribution | None:
    """With ``wrt``/``inputs`` (or a model with several inputs), ``run`` per example on
    the bound one-input models, stacked (`bbp_ref.binding`); else None."""
    binding = Binding.of(wrt, inputs)
    loaded = load(model, example=x)
    if not needs_binding(loaded, binding):
        return None
    return for_each_example(loaded, x, binding, run,
                            lambda a, value: replace(a, wrt_value=value))


@keeps_freed_memory
def gradient(model: object, x: object, target: object = None, *, wrt: str | None = None,
             inputs: Mapping[str, object] | None = None) -> Attribution:
    """`W^x[t]`, the gradient of `f_t` at `x` (Captum's ``Saliency(abs=False)``);
    ``wrt``/``inputs`` as in `bbp_ref.explain`."""
    return _gradient_method(model, x, target, wrt, inputs, "gradient")


@keeps_freed_memory
def gradient_x_input(model: object, x: object, target: object = None, *,
                     wrt: str | None = None,
                     inputs: Mapping[str, object] | None = None) -> Attribution:
    """`W^x[t] * x` (Captum's ``InputXGradient``). It sums to `f_t(x) - b^x`, the
    decomposition `explain` completes with the bias attribution."""
    return _gradient_method(model, x, target, wrt, inputs, "gradient_x_input")


def _gradient_method(model: object, x: object, target: object, wrt: str | None,
                     inputs: Mapping[str, object] | None, method: str) -> Attribution:
    """`W^x[t]` (``method`` "gradient"), or times `x` ("gradient_x_input"), by one reverse
    pass; per example through the binding with ``wrt``/``inputs``."""
    bound = bound_call(model, x, wrt, inputs, lambda m, xi, i: _gradient_method(
        m, xi, pick_example(target, i), None, None, method))
    if bound is not None:
        return bound
    s = setup(model, x, target)
    grad = input_gradient(s.trace, s.seed)
    attribution = grad * s.batch if method == "gradient_x_input" else grad
    return s.finish(_result(s, attribution, method))


def _result(s: Setup, attribution: Array, method: str) -> Attribution:
    return Attribution(attribution=attribution, method=method, target=s.targets,
                       output=s.output, baseline_output=None, delta=None, logits=s.logits,
                       stripped=s.model.stripped)


def with_delta(s: Setup, attribution: Array, baseline_logits: Array, method: str,
               integration: str | None = None, n_steps: int | None = None,
               n_pieces: Array | None = None) -> Attribution:
    """An attribution against a baseline, with Captum's convergence delta."""
    n = s.batch.shape[0]
    baseline_output = s.selected(baseline_logits)
    delta = attribution.reshape(n, -1).sum(axis=1) - (s.output - baseline_output)
    return Attribution(attribution=attribution, method=method, target=s.targets,
                       output=s.output, baseline_output=baseline_output, delta=delta,
                       logits=s.logits, stripped=s.model.stripped, integration=integration,
                       n_steps=n_steps, n_pieces=n_pieces)


@keeps_freed_memory
def deeplift(model: object, x: object, baselines: object = 0.0, target: object = None,
             eps: float = DEEPLIFT_EPS, *, wrt: str | None = None,
             inputs: Mapping[str, object] | None = None) -> Attribution:
    """DeepLIFT with the Rescale rule against ``baselines`` (a scalar, one example's
    shape, or the batch's shape), as Captum's ``DeepLift`` (see the module docstring)."""
    bound = bound_call(model, x, wrt, inputs, lambda m, xi, i: deeplift(
        m, xi, pick_baseline(baselines, i, xi), pick_example(target, i), eps))
    if bound is not None:
        return bound
    s = setup(model, x, target)
    base = baseline_batch(baselines, s.batch, s.single)
    at_base = forward(s.graph, base, linearize=False)
    multipliers = input_gradient(s.trace, s.seed, rescale_maps(s.trace, at_base, eps))
    attribution = (s.batch - base) * multipliers
    return s.finish(with_delta(s, attribution, at_base.output, "deeplift"))


def rescale_maps(at_x: Trace, at_b: Trace, eps: float) -> dict[str, Pullback]:
    """Every gate's and product's pullback replaced by its DeepLIFT multipliers against
    the trace at `b` (affine nodes and routes keep their local maps)."""
    local: dict[str, Pullback] = {}
    for node in at_x.graph:
        if node.operator is None or node.operator.kind not in (GATE, SMOOTH, PRODUCT):
            continue
        operands = [at_x.values[name] for name in node.inputs]
        references = [at_b.values[name] for name in node.inputs]
        h, h_ref = at_x.values[node.name], at_b.values[node.name]
        frozen = at_x.local[node.name]
        if node.operator.kind == PRODUCT:
            local[node.name] = _product_multipliers(node.operator, operands, references)
        elif isinstance(frozen, ElementwiseLocal) and len(operands) == 1:
            delta_in = operands[0] - references[0]
            small = np.abs(delta_in) < eps
            ratio = (h - h_ref) / np.where(small, 1.0, delta_in)
            slope = np.broadcast_to(frozen.slope, delta_in.shape)
            local[node.name] = ElementwiseLocal(np.where(small, slope, ratio), None)
        elif isinstance(node.operator, MaxPool):
            assert isinstance(frozen, MaxPoolLocal)
            ref = node.operator.linearize(references)
            assert isinstance(ref, MaxPoolLocal)
            local[node.name] = RescaleMaxPool(frozen, ref, h, h_ref,
                                              operands[0] - references[0], eps)
        else:
            raise UnsupportedOpError(node.op, node.name, "DeepLIFT has no rule for this gate")
    return local


def _product_multipliers(operator: object, operands: list[Array],
                         references: list[Array]) -> Pullback:
    """A product's multipliers: `u v - u' v' = (u - u') (v + v') / 2 + (u + u') / 2 (v - v')`
    exactly (the same for `@`), so summation-to-delta holds; docs/math.md §7."""
    (u, v), (u_ref, v_ref) = operands, references
    u_mid, v_mid = (u + u_ref) / 2, (v + v_ref) / 2
    if isinstance(operator, EinsumProduct):
        return AffineLocal(BilinearEinsum(operator.equation, v_mid, u_mid, None,
                                          operator.operand_shapes), operands)
    if isinstance(operator, MatMulProduct):
        return AffineLocal(BilinearMatMul(v_mid, u_mid, None, operator.operand_shapes),
                           operands)
    assert isinstance(operator, Product)
    shape = np.broadcast_shapes(u.shape, v.shape)
    return AffineLocal(Sum([np.broadcast_to(v_mid, shape), np.broadcast_to(u_mid, shape)],
                           None, operator.operand_shapes), operands)


class RescaleMaxPool(Pullback):
    """Captum's DeepLIFT ``maxpool`` multiplier: a map that exists only backwards."""

    def __init__(self, at_x: MaxPoolLocal, at_b: MaxPoolLocal, y: Array, y_ref: Array,
                 delta_in: Array, eps: float) -> None:
        self.at_x = at_x
        self.at_b = at_b
        top = np.maximum(y, y_ref)
        self.to_x = top - y_ref  # >= 0, routed to the arg-max at x
        self.to_b = y - top  # <= 0, routed to the arg-max at b
        self.delta_in = delta_in
        self.small = np.abs(delta_in) < eps

    def vjp(self, grad: Array) -> list[Array]:
        (plain,) = self.at_x.vjp(grad)
        (to_x,) = self.at_x.vjp(grad * self.to_x)
        (to_b,) = self.at_b.vjp(grad * self.to_b)
        ratio = (to_x + to_b) / np.where(self.small, 1.0, self.delta_in)
        return [np.where(self.small, plain, ratio)]
