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

``nn.MultiheadAttention`` without ``batch_first`` *as the model input* is refused with a
clear error naming a Reshape: the model input is ``[seq, batch, embed]``, whose axis 0
bbp_ref reads as the batch (docs/math.md §2 decision 4), and the static export's Reshape
targets are literal shapes for that sequence length. Attention with the batch first at the
model input, heads merged with the batch inside, is tested in ``test_attention.py``.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from torch_helpers import (
    assert_every_rule_checks,
    assert_matches_reference,
    example_jacobians,
    export,
    module_reference,
    torch,
)

import bbp_ref
from bbp_ref.errors import UnsupportedOpError

nn = torch.nn

pytestmark = pytest.mark.torch

FORWARD_RTOL = 1e-12
JACOBIAN_RTOL = 1e-9
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


def _export(module: nn.Module, example: torch.Tensor, dynamo: bool, path) -> onnx.ModelProto:
    """Export with the static batch of one of ``example``; TorchScript at opset 17."""
    options = dict(dynamo=True) if dynamo else dict(dynamo=False, opset_version=17)
    return export(module, (example,), path, options, batch_axes=None)


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_recurrent_model_against_torch(name: str, dynamo: bool, tmp_path) -> None:
    torch.manual_seed(0)
    module = MODELS[name]().eval()
    proto = _export(module, torch.randn(1, STEPS, FEATURES), dynamo, tmp_path / "r.onnx")
    x = np.random.default_rng(1).normal(size=(3, STEPS, FEATURES)).astype(np.float32)
    m = bbp_ref.load(proto)
    out, jacobian = module_reference(module, x)
    assert_matches_reference(m, x, out, jacobian, FORWARD_RTOL, JACOBIAN_RTOL)
    for e in assert_every_rule_checks(m, x):
        assert not e.piecewise_linear


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_multihead_attention_sequence_first_is_refused(dynamo: bool, tmp_path) -> None:
    class Attention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attention = nn.MultiheadAttention(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y, _ = self.attention(x, x, x, need_weights=False)
            return y.transpose(0, 1)  # the explained output with the batch first

    torch.manual_seed(0)
    proto = _export(Attention().eval(), torch.randn(STEPS, 1, 4), dynamo, tmp_path / "a.onnx")
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
def test_streaming_cell_with_a_state_input(dynamo: bool, tmp_path) -> None:
    """The state is a constant at the point given through ``inputs=`` (docs/math.md §7.6);
    `W^x` with respect to the features equals torch autograd with the state held fixed."""
    torch.manual_seed(0)
    module = StreamingGRU().eval()
    example = (torch.randn(1, STEPS, FEATURES), torch.randn(1, 1, 4))
    # the TorchScript export with a dynamic batch (axis 1 of the state), the dynamo one static
    options = dict(dynamo=True) if dynamo else dict(dynamo=False, opset_version=17)
    proto = export(module, example, tmp_path / "s.onnx", options, input_names=["x", "state"],
                   output_names=["y", "new_state"],
                   batch_axes=None if dynamo else {"x": 0, "state": 1})
    rng = np.random.default_rng(2)
    x = rng.normal(size=(1, STEPS, FEATURES)).astype(np.float32)
    state = rng.normal(size=(1, 1, 4)).astype(np.float32)
    m = bbp_ref.load(proto)
    reference = module.double()
    state64 = torch.from_numpy(state.astype(np.float64))
    out, jacobian = example_jacobians(lambda v, _: reference(v[None], state64)[0][0], x)
    assert_matches_reference(m, x, out, jacobian, FORWARD_RTOL, JACOBIAN_RTOL,
                             inputs={"state": state})
    assert_every_rule_checks(m, x, inputs={"state": state})
