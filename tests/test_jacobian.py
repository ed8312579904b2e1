"""`Model.jacobian`: `W^x` of every output by one batched reverse pass (the trace repeated
once per output, `bbp_ref.engine.repeat`; at most `JACOBIAN_BLOCK` outputs a pass), against
one reverse pass per output and against central differences of the float64 model run by
`onnx.reference`."""

from __future__ import annotations

import numpy as np
import pytest
from architectures import ARCHITECTURES
from builders import f32, model, node, to_float64
from onnx.reference import ReferenceEvaluator
from test_tangent_model import attention

import bbp_ref
from bbp_ref import model as model_module
from bbp_ref.engine.trace import input_gradient


def conv_map(rng: np.random.Generator) -> tuple[object, tuple[int, ...]]:
    """Conv 1 -> 2 channels, ReLU, Conv 2 -> 2 on an 8x8 image: 128 outputs, more than one
    block of `JACOBIAN_BLOCK`."""
    inits = {"w1": f32(rng, 2, 1, 3, 3), "b1": f32(rng, 2), "w2": f32(rng, 2, 2, 3, 3),
             "b2": f32(rng, 2)}
    nodes = [node("Conv", ["x", "w1", "b1"], "h", pads=[1, 1, 1, 1]),
             node("Relu", ["h"], "r"),
             node("Conv", ["r", "w2", "b2"], "y", pads=[1, 1, 1, 1])]
    return model(nodes, ["N", 1, 8, 8], inits), (1, 8, 8)


MODELS = {**ARCHITECTURES, "conv_map": conv_map,
          "attention": lambda rng: (attention(), (3, 4))}


def _setup(name: str, batch: int = 2) -> tuple[object, np.ndarray]:
    rng = np.random.default_rng(0)
    proto, shape = MODELS[name](rng)
    return proto, rng.normal(size=(batch, *shape)).astype(np.float32)


def _per_output(loaded: bbp_ref.Model, x: np.ndarray) -> np.ndarray:
    """One reverse pass per output element, each seeded with that element (the former
    `Model.jacobian`)."""
    batch, _ = loaded.prepare(x)
    trace = loaded.trace(batch)
    size = int(np.prod(trace.output.shape[1:]))
    rows = []
    for k in range(size):
        seed = np.zeros((len(batch), size))
        seed[:, k] = 1.0
        rows.append(input_gradient(trace, seed.reshape(trace.output.shape)))
    return np.stack(rows, axis=1).reshape(len(batch), *trace.output.shape[1:],
                                          *batch.shape[1:])


def _central_differences(proto: object, x: np.ndarray, h: float = 1e-5) -> np.ndarray:
    """`(f(x + h e_q) - f(x - h e_q)) / 2h` of the float64 model by `onnx.reference`, every
    example at once (they are independent): [N, *out, *in]."""
    session = ReferenceEvaluator(to_float64(proto))
    x64 = x.astype(np.float64)
    n, columns = len(x), []
    for q in range(x64[0].size):
        step = np.zeros(x64[0].size)
        step[q] = h
        step = step.reshape(x64.shape[1:])
        plus = session.run(None, {"x": x64 + step})[0]
        minus = session.run(None, {"x": x64 - step})[0]
        columns.append((plus - minus).reshape(n, -1) / (2 * h))
    out_shape = session.run(None, {"x": x64})[0].shape[1:]
    return np.stack(columns, axis=2).reshape(n, *out_shape, *x.shape[1:])


@pytest.mark.parametrize("name", MODELS)
def test_jacobian_equals_one_reverse_pass_per_output(name: str) -> None:
    proto, x = _setup(name)
    loaded = bbp_ref.load(proto)
    jacobian = loaded.jacobian(x)
    expected = _per_output(loaded, x)
    assert jacobian.shape == expected.shape
    np.testing.assert_allclose(jacobian, expected, rtol=1e-12,
                               atol=1e-12 * np.abs(expected).max())
    np.testing.assert_allclose(loaded.jacobian(x[0]), jacobian[0], rtol=1e-12,
                               atol=1e-12 * np.abs(expected).max())


@pytest.mark.parametrize("name", ["mlp", "cnn", "conv_map", "attention"])
def test_jacobian_equals_central_differences(name: str) -> None:
    """Independent of the engine: the float64 model by `onnx.reference`. h = 1e-5: the
    truncation error (smooth attention, O(h^2)) and the rounding (~1e-16 |f| / h) are far
    below 1e-6 of the largest entry; an input within h of a kink would show as an O(1)
    error (none here)."""
    proto, x = _setup(name)
    jacobian = bbp_ref.load(proto).jacobian(x)
    differences = _central_differences(proto, x)
    assert jacobian.shape == differences.shape
    np.testing.assert_allclose(jacobian, differences, rtol=0,
                               atol=1e-6 * np.abs(differences).max())


@pytest.mark.parametrize(("name", "passes"), [("mlp", 1), ("attention", 1), ("conv_map", 2)])
def test_jacobian_is_one_reverse_pass_per_block_of_outputs(name: str, passes: int,
                                                           monkeypatch) -> None:
    """The mlp's 3 outputs and the attention's 6 take one pass; conv_map's 128, two."""
    proto, x = _setup(name)
    loaded = bbp_ref.load(proto)
    calls = []

    def counted(trace, seed, pullbacks=None):  # noqa: ANN001, ANN202
        calls.append(seed.shape[0])
        return input_gradient(trace, seed, pullbacks)

    monkeypatch.setattr(model_module, "input_gradient", counted)
    loaded.jacobian(x)
    size = int(np.prod(loaded.forward(x).shape[1:]))
    assert len(calls) == passes == -(-size // model_module.JACOBIAN_BLOCK)
    assert sum(calls) == len(x) * size
