"""Recurrent models exported from PyTorch, against torch autograd in float64
(docs/math.md §7.5, §7.7).

Small seeded models (an LSTM classifier, a bidirectional GRU tagger, an nn.RNN, all
``batch_first`` on float features) are exported with a batch of one by the TorchScript
exporter (``dynamo=False``) and the torch.export-based one (``dynamo=True``); both write
ONNX LSTM/GRU/RNN nodes with the batch moved to axis 1 by Transposes. For a float32 batch
``x``, with ``model.double()`` on the same (float32) weights:

* ``Model.forward`` equals torch's float64 output to 1e-12 of its largest magnitude, and
  onnxruntime's to float32 rounding (``explain(check=True)``);
* ``Model.jacobian`` equals torch autograd's per-example Jacobian to 1e-9 relative;
* for every rule, the decomposition and completeness residuals are <= 1e-10.

``nn.MultiheadAttention`` without ``batch_first`` is refused with a clear error naming a
Reshape: its model input is ``[seq, batch, embed]``, whose axis 0 bbp_ref reads as the batch
(docs/math.md §2 decision 4), and its export reshapes to ``[seq, batch * heads, head_dim]``,
merging axes with the batch, which docs/math.md §7.5 does not track.
"""

from __future__ import annotations

import io
import os
import warnings

import numpy as np
import pytest

if os.environ.get("BBP_REQUIRE_TORCH"):
    import onnxscript  # noqa: F401
    import torch
else:
    torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import bbp_ref  # noqa: E402
from bbp_ref.errors import UnsupportedOpError  # noqa: E402

pytestmark = pytest.mark.torch

FORWARD_RTOL = 1e-12
JACOBIAN_RTOL = 1e-9
RESIDUAL_TOL = 1e-10
STEPS, FEATURES = 5, 3


class LSTMClassifier(nn.Module):
    """A 2-layer LSTM; the mean over time of its outputs feeds a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(FEATURES, 4, num_layers=2, batch_first=True)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.rnn(x)
        return self.head(y.mean(dim=1))


class GRUTagger(nn.Module):
    """A bidirectional GRU with a linear head at every step."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(FEATURES, 4, bidirectional=True, batch_first=True)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.rnn(x)
        return self.head(y)


class ElmanLastStep(nn.Module):
    """A 2-layer nn.RNN (tanh); its output at the last step through a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.RNN(FEATURES, 4, num_layers=2, batch_first=True)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.rnn(x)
        return self.head(y[:, -1:, :].squeeze(1))


class ElmanFinalState(nn.Module):
    """A 2-layer nn.RNN; the last layer's final state `h[-1]` (a Gather on the axis before
    the batch) through a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.RNN(FEATURES, 4, num_layers=2, batch_first=True)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, h = self.rnn(x)
        return self.head(h[-1])


MODELS = {"lstm_classifier": LSTMClassifier, "gru_tagger": GRUTagger,
          "rnn_last_step": ElmanLastStep, "rnn_final_state": ElmanFinalState}


def _export(module: nn.Module, example: torch.Tensor, dynamo: bool) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            program = torch.onnx.export(module, (example,), dynamo=True, verbose=False)
            program.optimize()
            return program.model_proto.SerializeToString()
        torch.onnx.export(module, (example,), buffer, dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"])
    return buffer.getvalue()


def _torch_jacobian(module: nn.Module, x: np.ndarray) -> np.ndarray:
    """Per-example Jacobian of the float64 module, [N, *out, *in]."""
    rows = []
    for example in torch.from_numpy(x.astype(np.float64)):
        jacobian = torch.autograd.functional.jacobian(
            lambda v: module(v[None])[0], example)
        rows.append(jacobian.numpy())
    return np.stack(rows)


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_recurrent_model_against_torch(name: str, dynamo: bool) -> None:
    torch.manual_seed(0)
    module = MODELS[name]().eval()
    proto = _export(module, torch.randn(1, STEPS, FEATURES), dynamo)
    x = np.random.default_rng(1).normal(size=(3, STEPS, FEATURES)).astype(np.float32)
    m = bbp_ref.load(proto)
    reference = module.double()
    with torch.no_grad():
        expected = reference(torch.from_numpy(x.astype(np.float64))).numpy()
    out = m.forward(x)
    np.testing.assert_allclose(out, expected, rtol=0,
                               atol=FORWARD_RTOL * np.abs(expected).max())
    jacobian = m.jacobian(x)
    torch_jacobian = _torch_jacobian(reference, x)
    np.testing.assert_allclose(jacobian, torch_jacobian, rtol=0,
                               atol=JACOBIAN_RTOL * np.abs(torch_jacobian).max())
    for rule in ("abs", "signed", "uniform"):
        e = bbp_ref.explain(m, x, rule=rule, check=True)
        assert e.checks.passed, e.checks.summary()
        assert (e.checks.decomposition <= RESIDUAL_TOL).all()
        assert (e.checks.completeness <= RESIDUAL_TOL).all()
        assert not e.piecewise_linear


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_multihead_attention_sequence_first_is_refused(dynamo: bool) -> None:
    class Attention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attention = nn.MultiheadAttention(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y, _ = self.attention(x, x, x, need_weights=False)
            return y.transpose(0, 1)  # the explained output with the batch first

    torch.manual_seed(0)
    proto = _export(Attention().eval(), torch.randn(STEPS, 1, 4), dynamo)
    with pytest.raises(UnsupportedOpError, match="Reshape.*batch axis"):
        bbp_ref.load(proto).forward(np.zeros((STEPS, 1, 4), np.float32))


class StreamingGRU(nn.Module):
    """One chunk of a streaming recurrent model: features and the previous state in, the
    output and the new state out (the state in its own layout, [layers, batch, hidden])."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(FEATURES, 4, batch_first=True)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y, new_state = self.rnn(x, state)
        return self.head(y[:, -1:, :].squeeze(1)), new_state


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_streaming_cell_with_a_state_input(dynamo: bool) -> None:
    """The state is a constant at the point given through ``inputs=`` (docs/math.md §7.6);
    `W^x` with respect to the features equals torch autograd with the state held fixed."""
    torch.manual_seed(0)
    module = StreamingGRU().eval()
    example = (torch.randn(1, STEPS, FEATURES), torch.randn(1, 1, 4))
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            program = torch.onnx.export(module, example, dynamo=True, verbose=False,
                                        input_names=["x", "state"])
            program.optimize()
            proto = program.model_proto.SerializeToString()
        else:
            torch.onnx.export(module, example, buffer, dynamo=False, opset_version=17,
                              input_names=["x", "state"], output_names=["y", "new_state"],
                              dynamic_axes={"x": {0: "batch"}, "state": {1: "batch"}})
            proto = buffer.getvalue()
    rng = np.random.default_rng(2)
    x = rng.normal(size=(1, STEPS, FEATURES)).astype(np.float32)
    state = rng.normal(size=(1, 1, 4)).astype(np.float32)
    m = bbp_ref.load(proto)
    reference = module.double()
    state64 = torch.from_numpy(state.astype(np.float64))
    with torch.no_grad():
        expected = reference(torch.from_numpy(x.astype(np.float64)), state64)[0].numpy()
    out = m.forward(x, inputs={"state": state})
    np.testing.assert_allclose(out, expected, rtol=0,
                               atol=FORWARD_RTOL * np.abs(expected).max())
    jacobian = m.jacobian(x, inputs={"state": state})
    torch_jacobian = torch.autograd.functional.jacobian(
        lambda v: reference(v[None], state64)[0][0],
        torch.from_numpy(x[0].astype(np.float64))).numpy()[None]
    np.testing.assert_allclose(jacobian, torch_jacobian, rtol=0,
                               atol=JACOBIAN_RTOL * np.abs(torch_jacobian).max())
    for rule in ("abs", "signed", "uniform"):
        e = bbp_ref.explain(m, x, rule=rule, inputs={"state": state})
        assert e.checks.passed, e.checks.summary()
        assert (e.checks.completeness <= RESIDUAL_TOL).all()
