"""LSTM, GRU and RNN unrolled into primitives (docs/math.md §7.7) and the moving batch
axis (§7.5), on hand-built ONNX models.

`test_ops.verify` checks the forward against onnxruntime, the decomposition and
completeness for every rule, and `W^x` against central finite differences of the float64
model run by `onnx.reference`. onnxruntime has no ``layout=1``: those models are
compared with the equivalent layout-0 model (``Case.reference``). onnx.reference ignores
``clip``, ``input_forget`` and the ``activations`` list: for those the Jacobian is
compared with central differences of the engine's float64 forward instead, itself
checked against onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from builders import f32, model, node
from test_ops import FD_STEP, FD_TOL, Case, verify

import bbp_ref
from bbp_ref.errors import UnsupportedOpError
from bbp_ref.importer import unrolling

STEPS, INPUT, HIDDEN = 4, 3, 2
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def _recurrent_model(op: str, layout: int, inits: dict, attributes: dict,
                     states: tuple[str, ...], output: str) -> onnx.ModelProto:
    """x [N, steps, input] -> (Transpose to [steps, N, input] for layout 0) -> op ->
    ``output`` back with the batch first."""
    nodes = []
    if layout == 0:
        nodes.append(node("Transpose", ["x"], "xt", perm=[1, 0, 2]))
    outputs = ["Y", "Y_h", "Y_c"][:3 if op == "LSTM" else 2]
    inputs = ["xt" if layout == 0 else "x", "W", "R", "B", *states]
    while inputs and inputs[-1] == "":
        inputs.pop()
    nodes.append(node(op, inputs, outputs, name="rnn", layout=layout, **attributes))
    if output == "Y":
        perm = [2, 0, 1, 3] if layout == 0 else [0, 1, 2, 3]
    else:
        perm = [1, 0, 2] if layout == 0 else [0, 1, 2]
    nodes.append(node("Transpose", [output], "y", perm=perm))
    return model(nodes, ["N", STEPS, INPUT], inits, opset=14)


def recurrent_case(op: str, direction: str = "forward", layout: int = 0, output: str = "Y",
                   states: dict | None = None, seed: int = 0, **attributes: object) -> Case:
    """A case around one recurrent node with random weights; ``states`` maps extra input
    names (sequence_lens, initial_h, initial_c, P in the op's order) to initializers."""
    rng = np.random.default_rng(seed)
    directions = 2 if direction == "bidirectional" else 1
    rows = GATES[op] * HIDDEN
    inits = {"W": f32(rng, directions, rows, INPUT), "R": f32(rng, directions, rows, HIDDEN),
             "B": f32(rng, directions, 2 * rows)}
    order = ["sequence_lens", "initial_h", "initial_c", "P"]
    names = [""] * (len(order) if op == "LSTM" else 2)
    for name, value in (states or {}).items():
        inits[name] = value
        names[order.index(name)] = name
    attributes = {"direction": direction, "hidden_size": HIDDEN, **attributes}
    x = f32(rng, 3, STEPS, INPUT)
    proto = _recurrent_model(op, layout, inits, attributes, tuple(names), output)
    if layout == 0:
        return Case(proto, x)
    reference = _recurrent_model(op, 0, inits, attributes, tuple(names), output)
    return Case(proto, x, reference=reference, ort_runs_proto=False)


def engine_finite_differences(m: bbp_ref.Model, x: np.ndarray) -> None:
    """`W^x` against central differences of the engine's own float64 forward."""
    x64 = x.astype(np.float64)
    n, size = x.shape[0], int(np.prod(x.shape[1:]))
    jacobian = m.jacobian(x).reshape(n, -1, size)
    for q in range(size):
        step = np.zeros(size)
        step[q] = FD_STEP
        step = step.reshape(x.shape[1:])
        slope = (m.forward(x64 + step) - m.forward(x64 - step)).reshape(n, -1) / (2 * FD_STEP)
        scale = max(1.0, float(np.abs(m.forward(x64)).max()),
                    float(np.abs(jacobian).max() * np.abs(x64).max()))
        np.testing.assert_allclose(jacobian[:, :, q], slope, rtol=0, atol=FD_TOL * scale)


DIRECTIONS = ["forward", "reverse", "bidirectional"]


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("layout", [0, 1])
def test_recurrent_sequence_output(op: str, direction: str, layout: int) -> None:
    m, explanations = verify(recurrent_case(op, direction, layout))
    assert not explanations[0].piecewise_linear
    assert any(name.startswith("rnn/forward/t0/") or name.startswith("rnn/reverse/t0/")
               for name in explanations[0].tangent_nodes)


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("layout", [0, 1])
def test_recurrent_final_state(op: str, layout: int) -> None:
    verify(recurrent_case(op, "bidirectional", layout, output="Y_h"))


@pytest.mark.parametrize("layout", [0, 1])
def test_lstm_final_cell(layout: int) -> None:
    verify(recurrent_case("LSTM", "bidirectional", layout, output="Y_c"))


def test_gru_linear_before_reset() -> None:
    verify(recurrent_case("GRU", "bidirectional", linear_before_reset=1))


# (op, attributes): variants onnx.reference does not implement
ENGINE_FD_VARIANTS = [
    ("LSTM", {"direction": "bidirectional", "clip": 0.7}),
    ("GRU", {"clip": 0.5}),
    ("RNN", {"clip": 0.3}),
    ("LSTM", {"input_forget": 1}),
    ("RNN", {"activations": ["Relu"]}),
    ("RNN", {"activations": ["LeakyRelu"], "activation_alpha": [0.2]}),
    ("RNN", {"activations": ["ThresholdedRelu"], "activation_alpha": [0.1]}),
    ("RNN", {"activations": ["Affine"], "activation_alpha": [0.5], "activation_beta": [0.25]}),
    ("RNN", {"activations": ["ScaledTanh"], "activation_alpha": [1.5],
             "activation_beta": [0.5]}),
    ("RNN", {"activations": ["HardSigmoid"], "activation_alpha": [0.3],
             "activation_beta": [0.4]}),
    ("RNN", {"activations": ["Elu"], "activation_alpha": [0.8]}),
    ("RNN", {"activations": ["Softsign"]}),
    ("RNN", {"activations": ["Softplus"]}),
    ("RNN", {"activations": ["LeakyRelu"]}),  # the default alpha, 0.01
    # alphas are consumed in order by the functions that take one
    ("GRU", {"activations": ["HardSigmoid", "Elu", "Sigmoid", "Tanh"],
             "activation_alpha": [0.3, 0.7], "activation_beta": [0.6],
             "direction": "bidirectional"}),
    ("LSTM", {"activations": ["Sigmoid", "Tanh", "Softsign"]}),
    # a function without alpha does not consume one
    ("GRU", {"activations": ["Sigmoid", "LeakyRelu", "HardSigmoid", "Tanh"],
             "activation_alpha": [0.2, 0.3], "activation_beta": [0.6],
             "direction": "bidirectional"}),
]


@pytest.mark.parametrize(("op", "attributes"), ENGINE_FD_VARIANTS,
                         ids=[f"{op}-{i}" for i, (op, _) in enumerate(ENGINE_FD_VARIANTS)])
def test_recurrent_attributes(op: str, attributes: dict) -> None:
    case = recurrent_case(op, **attributes)
    case.fd = False
    m, _ = verify(case)
    engine_finite_differences(m, case.x)


def _with_broadcast_states(op: str, seed: int = 3) -> tuple[Case, dict]:
    """Constant initial states [1, 1, H] expanded to the batch at run time (as the
    TorchScript exporter writes them; folded at batch size one)."""
    rng = np.random.default_rng(seed)
    rows = GATES[op] * HIDDEN
    inits = {"W": f32(rng, 1, rows, INPUT), "R": f32(rng, 1, rows, HIDDEN),
             "B": f32(rng, 1, 2 * rows), "h0": f32(rng, 1, 1, HIDDEN),
             "c0": f32(rng, 1, 1, HIDDEN), "P": f32(rng, 1, 3 * HIDDEN),
             "sl": np.full(1, STEPS, np.int32), "zero": np.array([0], np.int64),
             "one": np.array([1], np.int64), "h": np.array([HIDDEN], np.int64)}
    nodes = [node("Transpose", ["x"], "xt", perm=[1, 0, 2]),
             node("Shape", ["x"], "shape"), node("Gather", ["shape", "zero"], "n", axis=0),
             node("Concat", ["one", "n", "h"], "state_shape", axis=0),
             node("Expand", ["h0", "state_shape"], "h0n"),
             node("Expand", ["c0", "state_shape"], "c0n"),
             node("Expand", ["sl", "n"], "sln")]
    if op == "LSTM":
        inputs = ["xt", "W", "R", "B", "sln", "h0n", "c0n", "P"]
        outputs = ["Y", "Y_h", "Y_c"]
    else:
        inputs = ["xt", "W", "R", "B", "sln", "h0n"]
        outputs = ["Y", "Y_h"]
    nodes += [node(op, inputs, outputs, name="rnn", hidden_size=HIDDEN),
              node("Transpose", ["Y"], "y", perm=[2, 0, 1, 3])]
    return Case(model(nodes, ["N", STEPS, INPUT], inits, opset=14),
                f32(rng, 3, STEPS, INPUT)), inits


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
def test_constant_initial_states_and_peepholes(op: str) -> None:
    case, _ = _with_broadcast_states(op)
    case.fd = op == "GRU" or op == "RNN"  # onnx.reference's LSTM ignores peepholes
    m, _ = verify(case)
    if op == "LSTM":
        engine_finite_differences(m, case.x)


def test_initial_state_from_the_input() -> None:
    """initial_h computed from x: [1, N, H] by an Unsqueeze that moves the batch to
    axis 1; the state is then a structural input of the first step."""
    rng = np.random.default_rng(5)
    inits = {"W": f32(rng, 1, 3 * HIDDEN, INPUT), "R": f32(rng, 1, 3 * HIDDEN, HIDDEN),
             "B": f32(rng, 1, 6 * HIDDEN), "wh": f32(rng, INPUT, HIDDEN),
             "axes": np.array([1], np.int64), "zero": np.array([0], np.int64)}
    nodes = [node("Transpose", ["x"], "xt", perm=[1, 0, 2]),
             node("ReduceMean", ["x"], "mean", axes=[1], keepdims=0),
             node("MatMul", ["mean", "wh"], "proj"), node("Tanh", ["proj"], "h"),
             node("Unsqueeze", ["h", "zero"], "h0"),
             node("GRU", ["xt", "W", "R", "B", "", "h0"], ["Y", "Y_h"], name="rnn",
                  hidden_size=HIDDEN),
             node("Transpose", ["Y"], "y", perm=[2, 0, 1, 3])]
    verify(Case(model(nodes, ["N", STEPS, INPUT], inits, opset=14),
                f32(rng, 3, STEPS, INPUT)))


def test_two_layers_through_the_moved_batch() -> None:
    """As exporters write a 2-layer LSTM: Y [T, 1, N, H] squeezed to [T, N, H] feeds the
    next layer with the batch still at axis 1; Y_h of the last layer, [1, N, H], is
    squeezed to [N, H] (batch back at axis 0) and read by a Gemm."""
    rng = np.random.default_rng(11)
    inits = {"W1": f32(rng, 1, 4 * HIDDEN, INPUT), "R1": f32(rng, 1, 4 * HIDDEN, HIDDEN),
             "W2": f32(rng, 1, 4 * HIDDEN, HIDDEN), "R2": f32(rng, 1, 4 * HIDDEN, HIDDEN),
             "axis1": np.array([1], np.int64), "axis0": np.array([0], np.int64),
             "wo": f32(rng, HIDDEN, 3), "bo": f32(rng, 3)}
    nodes = [node("Transpose", ["x"], "xt", perm=[1, 0, 2]),
             node("LSTM", ["xt", "W1", "R1"], ["Y1"], name="layer1", hidden_size=HIDDEN),
             node("Squeeze", ["Y1", "axis1"], "h1"),
             node("LSTM", ["h1", "W2", "R2"], ["", "H2"], name="layer2", hidden_size=HIDDEN),
             node("Squeeze", ["H2", "axis0"], "last"),
             node("Gemm", ["last", "wo", "bo"], "y")]
    verify(Case(model(nodes, ["N", STEPS, INPUT], inits, opset=14),
                f32(rng, 3, STEPS, INPUT)))


# -- refusals -----------------------------------------------------------------------------

def _load_error(proto: onnx.ModelProto) -> UnsupportedOpError:
    with pytest.raises(UnsupportedOpError) as info:
        bbp_ref.load(proto).forward(np.zeros((1, STEPS, INPUT), np.float32))
    return info.value


def test_shorter_sequence_lengths_are_refused() -> None:
    case = recurrent_case("GRU", states={"sequence_lens": np.array([STEPS - 1], np.int32)})
    error = _load_error(case.proto)
    assert (error.op_type, error.node_name) == ("GRU", "rnn")
    assert "sequence_lens" in str(error) and "masking" in str(error)


def test_batch_at_the_wrong_axis_is_refused() -> None:
    """X with the batch at axis 0 fed to layout 0 (which reads axis 1 as the batch)."""
    case = recurrent_case("RNN", layout=1)
    for n in case.proto.graph.node:
        if n.op_type == "RNN":
            n.attribute.remove(next(a for a in n.attribute if a.name == "layout"))
    error = _load_error(case.proto)
    assert error.node_name == "rnn" and "axis 0" in str(error) and "layout=0" in str(error)


def test_moved_batch_refused_by_an_op_that_does_not_opt_in() -> None:
    """A Gemm reading a tensor whose batch sits at axis 1 is refused, naming it."""
    rng = np.random.default_rng(0)
    nodes = [node("Transpose", ["x"], "t", perm=[1, 0]),
             node("Gemm", ["t", "w"], "g", name="gemm"),
             node("Transpose", ["g"], "y", perm=[1, 0])]
    proto = model(nodes, ["N", 3], {"w": f32(rng, 3, 3)})
    with pytest.raises(UnsupportedOpError, match="holds the batch at ONNX axis 1") as info:
        bbp_ref.load(proto).forward(np.zeros((1, 3), np.float32))
    assert info.value.node_name == "gemm"


def test_moved_batch_output_is_refused() -> None:
    rng = np.random.default_rng(0)
    inits = {"W": f32(rng, 1, HIDDEN, INPUT), "R": f32(rng, 1, HIDDEN, HIDDEN)}
    nodes = [node("Transpose", ["x"], "xt", perm=[1, 0, 2]),
             node("RNN", ["xt", "W", "R"], ["y"], name="rnn", hidden_size=HIDDEN)]
    error = _load_error(model(nodes, ["N", STEPS, INPUT], inits, opset=14))
    assert error.node_name == "rnn" and "batch at ONNX axis 2" in str(error)


def test_unrolling_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(unrolling, "MAX_UNROLLED_NODES", 30)
    error = _load_error(recurrent_case("LSTM").proto)
    assert error.node_name == "rnn" and "limit of 30 unrolled nodes" in str(error)
