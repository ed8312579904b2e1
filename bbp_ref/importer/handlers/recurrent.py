"""LSTM, GRU and RNN unrolled over the sequence into primitive canonical nodes
(docs/math.md §7.7), so that BBp runs through time and every gate nonlinearity is a
gate of its own (tangent for Sigmoid/Tanh).

Per direction, `X W^T + (Wb + Rb)` is one affine node over the whole sequence; each
step then reads its row (a route), adds `H_{t-1} R^T` (an affine node of the previous
state), splits the gates, and combines them with products, exactly as the ONNX
operator pages write the equations. A constant state (absent: zeros; or a constant
input) makes the terms that read it constants. Y, Y_h and Y_c are routes gathering the
states; Y keeps the batch at ONNX axis 2 (axis 0 with ``layout=1``), Y_h/Y_c at axis 1
(axis 0), per docs/math.md §7.5.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ...engine import functions as fn
from ...engine.affine import MatMul, Scale, Sum
from ...engine.elementwise import function_gate
from ...engine.functions import Function
from ...engine.gates import PiecewiseLinear
from ...engine.operator import Operator
from ...engine.products import Product
from ...engine.routes import IndexRoute
from ..context import OWN_BATCH_AXIS, NodeContext, handler
from ..unrolling import reserve_unrolled_nodes
from ..values import Const, Value, Var

Operand = Var | np.ndarray
"""A per-example tensor of the unrolled cell: a canonical node, or a constant."""

# activation name (lower case) -> (uses alpha, uses beta, default alpha, default beta);
# the defaults are those of the ONNX operators of the same name
ACTIVATIONS: dict[str, tuple[bool, bool, float, float]] = {
    "sigmoid": (False, False, 0.0, 0.0), "tanh": (False, False, 0.0, 0.0),
    "relu": (False, False, 0.0, 0.0), "softsign": (False, False, 0.0, 0.0),
    "softplus": (False, False, 0.0, 0.0), "leakyrelu": (True, False, 0.01, 0.0),
    "thresholdedrelu": (True, False, 1.0, 0.0), "elu": (True, False, 1.0, 0.0),
    "affine": (True, True, 1.0, 0.0), "scaledtanh": (True, True, 1.0, 1.0),
    "hardsigmoid": (True, True, 0.2, 0.5),
}


@dataclass(frozen=True)
class Activation:
    name: str  # lower case, a key of ACTIVATIONS
    alpha: float
    beta: float


@dataclass(frozen=True)
class Spec:
    """What differs between the three ops."""

    gates: int  # gate blocks in W and R
    activations: int  # activation functions per direction
    defaults: tuple[str, ...]
    nodes_per_step: int  # with the default activations, no clip, no peepholes


SPECS = {
    "LSTM": Spec(4, 3, ("sigmoid", "tanh", "tanh"), 16),
    "GRU": Spec(3, 2, ("sigmoid", "tanh"), 18),
    "RNN": Spec(1, 1, ("tanh",), 4),
}


class Cell:
    """Builds the unrolled nodes of one recurrent ONNX node: small algebra on
    `Operand`s that makes a node only where a data tensor is involved."""

    def __init__(self, ctx: NodeContext, hidden: int) -> None:
        self.ctx = ctx
        self.hidden = hidden
        self.prefix = ""

    def node(self, operator: Operator, inputs: Sequence[Var], shape: tuple[int, ...],
             part: str) -> Var:
        return self.ctx.add(operator, inputs, shape, part=self.prefix + part, batch_axis=0)

    def affine(self, u: Operand, weight: np.ndarray, bias: np.ndarray | None,
               part: str) -> Operand:
        """`u @ weight + bias`."""
        if isinstance(u, np.ndarray):
            return u @ weight + (0.0 if bias is None else bias)
        shape = (*u.shape[:-1], weight.shape[1])
        return self.node(MatMul(weight, None if bias is None else bias[None], u.shape),
                         [u], shape, part)

    def add(self, a: Operand, b: Operand, part: str, b_coefficient: np.ndarray | None = None
            ) -> Operand:
        """`a + c * b` (``c`` = ``b_coefficient``, default 1)."""
        c = np.ones((1, 1)) if b_coefficient is None else b_coefficient.reshape(1, -1)
        if isinstance(b, np.ndarray):
            constant = (c * b).reshape(b.shape)
            return self.add(constant, a, part) if isinstance(a, Var) else a + constant
        if isinstance(a, np.ndarray):
            if not a.any() and b_coefficient is None:
                return b
            return self.node(Scale(c, np.broadcast_to(a, b.shape)[None].copy(), b.shape),
                             [b], b.shape, part)
        return self.node(Sum([np.ones((1, 1)), c], None, [a.shape, b.shape]), [a, b], a.shape,
                         part)

    def multiply(self, a: Operand, b: Operand, part: str) -> Operand:
        """`a * b` element-wise: a product node of two data tensors."""
        if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
            return a * b
        if isinstance(a, np.ndarray):
            a, b = b, a
        assert isinstance(a, Var)
        if isinstance(b, np.ndarray):
            if not b.any():
                return np.zeros(a.shape)
            return self.node(Scale(np.broadcast_to(b, a.shape)[None].copy(), None, a.shape),
                             [a], a.shape, part)
        return self.node(Product([a.shape, b.shape]), [a, b], a.shape, part)

    def one_minus(self, a: Var, part: str) -> Var:
        return self.node(Scale(-np.ones((1, 1)), np.ones((1, 1)), a.shape), [a], a.shape, part)

    def route(self, operands: Sequence[Var], index: np.ndarray, part: str) -> Var:
        return self.node(IndexRoute([v.shape for v in operands], index), list(operands),
                         index.shape, part)

    def block(self, u: Var, k: int, part: str) -> Var:
        """Gate block ``k`` (elements `k H` to `(k + 1) H`) of a vector of gates."""
        h = self.hidden
        return self.route([u], np.arange(k * h, (k + 1) * h), part)

    def clip(self, u: Var, bound: float | None, part: str) -> Var:
        if bound is None:
            return u
        return self.node(PiecewiseLinear(0.0, -bound, bound), [u], u.shape, part)

    def activate(self, activation: Activation, u: Var, part: str) -> Var:
        name, alpha, beta = activation.name, activation.alpha, activation.beta
        ones = np.ones((1, 1))
        if name in ("affine", "hardsigmoid", "scaledtanh"):
            scale = beta if name == "scaledtanh" else alpha
            offset = None if name == "scaledtanh" else beta * ones
            u = self.node(Scale(scale * ones, offset, u.shape), [u], u.shape, part + "/affine")
            if name == "affine":
                return u
            if name == "hardsigmoid":
                return self.node(PiecewiseLinear(0.0, 0.0, 1.0), [u], u.shape, part)
            inner = self.node(function_gate(Function("Tanh", fn.tanh)), [u], u.shape,
                              part + "/tanh")
            return self.node(Scale(alpha * ones, None, u.shape), [inner], u.shape, part)
        operator: Operator
        if name == "relu":
            operator = PiecewiseLinear(0.0)
        elif name == "leakyrelu":
            operator = PiecewiseLinear(alpha)
        else:
            operator = function_gate(_FUNCTIONS[name](alpha))
        return self.node(operator, [u], u.shape, part)


_FUNCTIONS = {
    "sigmoid": lambda a: Function("Sigmoid", fn.sigmoid),
    "tanh": lambda a: Function("Tanh", fn.tanh),
    "softsign": lambda a: Function("Softsign", fn.softsign),
    "softplus": lambda a: Function("Softplus", fn.softplus),
    "elu": lambda a: Function("Elu", fn.elu(a)),
    "thresholdedrelu": lambda a: Function("ThresholdedRelu", fn.thresholded_relu(a),
                                          piecewise_linear=True),
}


def _activations(ctx: NodeContext, spec: Spec, directions: int) -> list[list[Activation]]:
    """The activation functions of each direction; ``activation_alpha``/``_beta`` are
    consumed in order by the functions that take them, the operator's default where
    the list runs out (as onnxruntime does)."""
    names = ctx.attr("activations")
    names = list(spec.defaults) * directions if names is None else [
        n.decode() if isinstance(n, bytes) else str(n) for n in names]
    if len(names) != spec.activations * directions:
        raise ctx.error(f"activations lists {len(names)} functions; {ctx.op_type} with "
                        f"{directions} direction(s) takes {spec.activations * directions}")
    alphas = iter([float(a) for a in ctx.attr("activation_alpha", []) or []])
    betas = iter([float(b) for b in ctx.attr("activation_beta", []) or []])
    chosen = []
    for name in names:
        key = name.lower()
        if key not in ACTIVATIONS:
            raise ctx.error(f"activation {name!r} is not supported (supported: "
                            + ", ".join(sorted(ACTIVATIONS)) + ")")
        uses_alpha, uses_beta, alpha, beta = ACTIVATIONS[key]
        alpha = next(alphas, alpha) if uses_alpha else alpha
        beta = next(betas, beta) if uses_beta else beta
        chosen.append(Activation(key, alpha, beta))
    k = spec.activations
    return [chosen[d * k:(d + 1) * k] for d in range(directions)]


@dataclass
class Setup:
    """The checked inputs and attributes of a recurrent node."""

    x: Var
    weights: np.ndarray  # [directions, gates * H, input]
    recurrence: np.ndarray  # [directions, gates * H, H]
    bias: np.ndarray  # [directions, 2 * gates * H]
    initial: list[Value | None]  # initial_h (and initial_c for LSTM)
    layout: int
    directions: int
    hidden: int
    steps: int
    clip: float | None
    activations: list[list[Activation]]


def _setup(ctx: NodeContext, spec: Spec) -> Setup:
    layout = int(ctx.attr("layout", 0))
    if layout not in (0, 1):
        raise ctx.error(f"layout={layout} is not 0 or 1")
    x = ctx.var(0, "X")
    expected_axis = 1 if layout == 0 else 0
    if x.batch_axis != expected_axis or x.rank != 3:
        raise ctx.error(
            f"input X (ONNX shape {list(x.onnx_shape)} for a batch of one) holds the batch at "
            f"axis {x.batch_axis}; with layout={layout} the op reads axis {expected_axis} as "
            "the batch (X must be [sequence, batch, input] for layout 0, [batch, sequence, "
            "input] for layout 1): its other axes would mix examples")
    steps, inputs = x.shape
    direction = ctx.attr("direction", "forward")
    directions = {"forward": 1, "reverse": 1, "bidirectional": 2}.get(direction)
    if directions is None:
        raise ctx.error(f"unknown direction {direction!r}")
    weights = ctx.float_const(1, "W")
    recurrence = ctx.float_const(2, "R")
    hidden = recurrence.shape[-1] if recurrence.ndim == 3 else 0
    rows = spec.gates * hidden
    if weights.shape != (directions, rows, inputs) or recurrence.shape != (directions, rows,
                                                                           hidden):
        raise ctx.error(f"W {list(weights.shape)} and R {list(recurrence.shape)} do not match "
                        f"{directions} direction(s), {spec.gates} gate(s) and input size "
                        f"{inputs}")
    if ctx.attr("hidden_size") is not None and int(ctx.attr("hidden_size")) != hidden:
        raise ctx.error(f"hidden_size={ctx.attr('hidden_size')} but R has {hidden} columns")
    bias = ctx.optional_const(3, "B")
    bias = np.zeros((directions, 2 * rows)) if bias is None else np.asarray(bias, np.float64)
    if bias.shape != (directions, 2 * rows):
        raise ctx.error(f"B has shape {list(bias.shape)}, expected {[directions, 2 * rows]}")
    if ctx.has_input(4):
        lengths = np.asarray(ctx.const(4, "sequence_lens")).ravel()
        if (lengths != steps).any():
            raise ctx.error(f"sequence_lens {lengths.tolist()} differ from the sequence "
                            f"length {steps}; shorter sequences (masking) are not supported")
    clip = ctx.attr("clip")
    if clip is not None and not float(clip) > 0:
        raise ctx.error(f"clip={clip} must be positive")
    state_inputs = (5, 6) if ctx.op_type == "LSTM" else (5,)
    initial = [ctx.inputs[i] if ctx.has_input(i) else None for i in state_inputs]
    return Setup(x, weights, recurrence, bias, initial, layout, directions, hidden, steps,
                 None if clip is None else float(clip), _activations(ctx, spec, directions))


def _initial_state(ctx: NodeContext, cell: Cell, setup: Setup, index: int, value: Value | None,
                   direction: int) -> Operand:
    """Direction ``direction``'s initial state from initial_h/initial_c
    ([directions, batch, H], or [batch, directions, H] with layout 1)."""
    what = "initial_h" if index == 5 else "initial_c"
    hidden = setup.hidden
    if value is None:
        return np.zeros(hidden)
    if isinstance(value, Const):
        array = np.asarray(value.value, np.float64)
        batch_axis = 1 if setup.layout == 0 else 0
        if array.ndim != 3 or array.shape[batch_axis] != 1:
            raise ctx.error(f"{what} of shape {list(array.shape)}: a constant state must "
                            f"have length 1 on the batch axis ({batch_axis})")
        array = np.moveaxis(array, batch_axis, 0)[0]
        if array.shape != (setup.directions, hidden):
            raise ctx.error(f"{what} has {list(array.shape)} per example, expected "
                            f"{[setup.directions, hidden]}")
        return array[direction]
    state = ctx.var(index, what)
    expected_axis = 1 if setup.layout == 0 else 0
    if state.batch_axis != expected_axis or state.shape != (setup.directions, hidden):
        raise ctx.error(f"{what} (ONNX shape {list(state.onnx_shape)} for a batch of one, "
                        f"batch at axis {state.batch_axis}) does not match layout="
                        f"{setup.layout}, {setup.directions} direction(s), hidden size "
                        f"{hidden}")
    return cell.route([state], np.arange(setup.directions * hidden)[
        direction * hidden:(direction + 1) * hidden], f"{what}")


def _step_order(ctx: NodeContext, setup: Setup, direction: int) -> list[int]:
    """The times in the order direction ``direction`` visits them."""
    reverse = ctx.attr("direction", "forward") == "reverse" or direction == 1
    return list(range(setup.steps))[::-1] if reverse else list(range(setup.steps))


def _var(operand: Operand) -> Var:
    """An operand known to depend on the input (it sums a data tensor)."""
    assert isinstance(operand, Var)
    return operand


def _label(direction: int) -> str:
    return "reverse/" if direction else "forward/"


def _input_terms(cell: Cell, setup: Setup, direction: int, bias: np.ndarray) -> Var:
    """`X W^T + bias` over the whole sequence: [steps, gates * H] per example."""
    term = cell.affine(setup.x, setup.weights[direction].T, bias, "input")
    assert isinstance(term, Var)
    return term


def _row(cell: Cell, terms: Var, t: int) -> Var:
    width = terms.shape[1]
    return cell.route([terms], np.arange(terms.shape[0] * width)[t * width:(t + 1) * width],
                      "input_row")


def _pre_activation(cell: Cell, setup: Setup, terms: Var, state: Operand, direction: int,
                    t: int, name: str) -> Var:
    """`x_t W^T + bias + h_{t-1} R^T` of step ``t``, every gate at once: the input row plus
    the recurrence (LSTM, RNN; the GRU splits its recurrence by gate)."""
    pre = cell.add(_row(cell, terms, t),
                   cell.affine(state, setup.recurrence[direction].T, None, "recurrence"), name)
    return _var(pre)


def _lstm_direction(ctx: NodeContext, cell: Cell, setup: Setup, direction: int
                    ) -> tuple[list[Var], Var, Var]:
    h = setup.hidden
    f_act, g_act, h_act = setup.activations[direction]
    w_bias, r_bias = np.split(setup.bias[direction], 2)
    terms = _input_terms(cell, setup, direction, w_bias + r_bias)
    peepholes = ctx.optional_const(7, "P")
    if peepholes is not None:
        peepholes = np.asarray(peepholes, np.float64)
        if peepholes.shape != (setup.directions, 3 * h):
            raise ctx.error(f"P has shape {list(peepholes.shape)}, expected "
                            f"{[setup.directions, 3 * h]}")
        p_i, p_o, p_f = np.split(peepholes[direction], 3)
    coupled = bool(ctx.attr("input_forget", 0))
    cell.prefix = _label(direction)
    state = _initial_state(ctx, cell, setup, 5, setup.initial[0], direction)
    memory = _initial_state(ctx, cell, setup, 6, setup.initial[1], direction)
    outputs: list[Var] = []
    for t in _step_order(ctx, setup, direction):
        cell.prefix = f"{_label(direction)}t{t}/"
        gates = _pre_activation(cell, setup, terms, state, direction, t, "gates")
        i_pre, o_pre, f_pre, c_pre = (cell.block(gates, k, name) for k, name in
                                      enumerate(("i_pre", "o_pre", "f_pre", "c_pre")))
        if peepholes is not None:
            i_pre = _var(cell.add(i_pre, memory, "i_peephole", p_i))
            f_pre = _var(cell.add(f_pre, memory, "f_peephole", p_f))
        i = cell.activate(f_act, cell.clip(i_pre, setup.clip, "i_clip"), "i")
        if coupled:
            f = cell.one_minus(i, "f")
        else:
            f = cell.activate(f_act, cell.clip(f_pre, setup.clip, "f_clip"), "f")
        c = cell.activate(g_act, cell.clip(c_pre, setup.clip, "c_clip"), "c")
        memory = cell.add(cell.multiply(f, memory, "f_memory"),
                          cell.multiply(i, c, "i_c"), "memory")
        if peepholes is not None:
            o_pre = _var(cell.add(o_pre, memory, "o_peephole", p_o))
        o = cell.activate(f_act, cell.clip(o_pre, setup.clip, "o_clip"), "o")
        assert isinstance(memory, Var) and isinstance(o_pre, Var)
        state = cell.multiply(o, cell.activate(h_act, memory, "memory_activation"), "h")
        assert isinstance(state, Var)
        outputs.append(state)
    assert isinstance(memory, Var)
    return outputs, outputs[-1], memory


def _gru_direction(ctx: NodeContext, cell: Cell, setup: Setup, direction: int
                   ) -> tuple[list[Var], Var, Var]:
    h = setup.hidden
    f_act, g_act = setup.activations[direction]
    w_bias, r_bias = np.split(setup.bias[direction], 2)
    before_reset = bool(ctx.attr("linear_before_reset", 0))
    input_bias = w_bias + r_bias
    if before_reset:  # Rbh is added to H R_h^T, inside the reset gate's product
        input_bias[2 * h:] = w_bias[2 * h:]
    terms = _input_terms(cell, setup, direction, input_bias)
    r_z, r_r, r_h = np.split(setup.recurrence[direction], 3)
    cell.prefix = _label(direction)
    state = _initial_state(ctx, cell, setup, 5, setup.initial[0], direction)
    outputs: list[Var] = []
    for t in _step_order(ctx, setup, direction):
        cell.prefix = f"{_label(direction)}t{t}/"
        row = _row(cell, terms, t)
        z_in, r_in, h_in = (cell.block(row, k, name) for k, name in
                            enumerate(("z_input", "r_input", "h_input")))
        z_pre = cell.add(z_in, cell.affine(state, r_z.T, None, "z_recurrence"), "z_pre")
        r_pre = cell.add(r_in, cell.affine(state, r_r.T, None, "r_recurrence"), "r_pre")
        assert isinstance(z_pre, Var) and isinstance(r_pre, Var)
        z = cell.activate(f_act, cell.clip(z_pre, setup.clip, "z_clip"), "z")
        r = cell.activate(f_act, cell.clip(r_pre, setup.clip, "r_clip"), "r")
        if before_reset:
            reset = cell.multiply(r, cell.affine(state, r_h.T, r_bias[2 * h:],
                                                 "h_recurrence"), "reset")
        else:
            reset = cell.affine(cell.multiply(r, state, "reset"), r_h.T, None, "h_recurrence")
        h_pre = cell.add(h_in, reset, "h_pre")
        assert isinstance(h_pre, Var)
        candidate = cell.activate(g_act, cell.clip(h_pre, setup.clip, "h_clip"), "candidate")
        state = cell.add(cell.multiply(cell.one_minus(z, "update"), candidate, "new"),
                         cell.multiply(z, state, "kept"), "h")
        assert isinstance(state, Var)
        outputs.append(state)
    return outputs, outputs[-1], outputs[-1]


def _rnn_direction(ctx: NodeContext, cell: Cell, setup: Setup, direction: int
                   ) -> tuple[list[Var], Var, Var]:
    (f_act,) = setup.activations[direction]
    w_bias, r_bias = np.split(setup.bias[direction], 2)
    terms = _input_terms(cell, setup, direction, w_bias + r_bias)
    cell.prefix = _label(direction)
    state = _initial_state(ctx, cell, setup, 5, setup.initial[0], direction)
    outputs: list[Var] = []
    for t in _step_order(ctx, setup, direction):
        cell.prefix = f"{_label(direction)}t{t}/"
        pre = _pre_activation(cell, setup, terms, state, direction, t, "pre")
        state = cell.activate(f_act, cell.clip(pre, setup.clip, "clip"), "h")
        outputs.append(state)
    return outputs, outputs[-1], outputs[-1]


_DIRECTIONS = {"LSTM": _lstm_direction, "GRU": _gru_direction, "RNN": _rnn_direction}


@handler("LSTM", "GRU", "RNN", batch_axis=OWN_BATCH_AXIS)
def recurrent(ctx: NodeContext) -> list[Value]:
    """Y [steps, directions, batch, H] (layout 1: [batch, steps, directions, H]), Y_h and
    Y_c [directions, batch, H] (layout 1: [batch, directions, H])."""
    spec = SPECS[ctx.op_type]
    if ctx.op_type == "GRU" and ctx.opset < 3:
        raise ctx.error("GRU-1 is not supported (opset >= 3)")
    setup = _setup(ctx, spec)
    what = f"{setup.steps} steps x {setup.directions} direction(s)"
    estimate = spec.nodes_per_step * setup.steps * setup.directions
    reserve_unrolled_nodes(ctx, estimate, what)  # before making any node
    made = len(ctx.builder.nodes)
    cell = Cell(ctx, setup.hidden)
    per_direction = [_DIRECTIONS[ctx.op_type](ctx, cell, setup, d)
                     for d in range(setup.directions)]
    ctx.builder.unrolled_nodes -= estimate
    reserve_unrolled_nodes(ctx, len(ctx.builder.nodes) - made + 3, what)
    cell.prefix = ""
    h, steps, dirs = setup.hidden, setup.steps, setup.directions
    results: list[Value] = []
    if ctx.output_used(0):
        # operand k = d * steps + (position of step t in direction d's order)
        states: list[Var] = []
        index = np.zeros((steps, dirs, h), dtype=np.int64)
        for d, (outputs, _, _) in enumerate(per_direction):
            order = _step_order(ctx, setup, d)
            for k, t in enumerate(order):
                index[t, d] = (len(states) + k) * h + np.arange(h)
            states.extend(outputs)
        y = ctx.add(IndexRoute([v.shape for v in states], index), states, index.shape,
                    batch_axis=2 if setup.layout == 0 else 0)
        results.append(y)
    else:
        results.append(Const(np.zeros(0)))  # unused output: never read
    last_axis = 1 if setup.layout == 0 else 0
    for output in (1, 2) if ctx.op_type == "LSTM" else (1,):
        if not ctx.output_used(output):
            results.append(Const(np.zeros(0)))
            continue
        finals = [final_h if output == 1 else final_c for _, final_h, final_c in per_direction]
        final_index = np.arange(dirs * h).reshape(dirs, h)
        results.append(ctx.add(IndexRoute([v.shape for v in finals], final_index), finals,
                               final_index.shape, output=output, batch_axis=last_axis))
    return results
