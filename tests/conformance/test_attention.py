"""Attention exported from PyTorch, with the batch merged into the heads axis
(docs/math.md §7.5), against torch autograd in float64.

Small seeded models, exported with a dynamic batch by the TorchScript exporter
(``dynamo=False``, opset 17) and the torch.export-based one (``dynamo=True``):

* ``nn.MultiheadAttention`` with and without ``batch_first`` (the module transposes to
  ``[T, N, E]`` and reshapes to ``[T, N * H, Dh]`` either way), with the attention weights
  (explicit MatMul/Softmax) and without (``F.scaled_dot_product_attention`` inside), and
  with a causal ``attn_mask`` plus a ``key_padding_mask`` given as a second input through
  ``inputs=``;
* ``F.scaled_dot_product_attention`` on ``[N, H, T, Dh]`` (batch first throughout);
* a token classifier: embedding + positional embedding + two
  ``nn.TransformerEncoderLayer`` (``batch_first``) + masked mean pooling + linear head,
  int64 ids and a float mask, explained with ``wrt=`` the embedding output.

For each: ``W^x`` (with respect to ``wrt`` where given) equals torch autograd's in float64
to 1e-9 relative, the forward equals torch's float64 output to 1e-9 and onnxruntime's to
float32 rounding (``explain(check=True)``), and the decomposition and completeness
residuals are <= 1e-10 for every rule. Explaining through ``wrt`` equals explaining the
model cut at that tensor. Head sizes are 16 (or 1) so that the exported scales
(`1/sqrt(Dh)`, and its square root inside scaled_dot_product_attention) are exact in
float32, as torch's float64 module has them.
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
from conformance_checks import RULES
from torch_helpers import (
    assert_every_rule_checks,
    assert_matches_reference,
    example_jacobians,
    export,
    seeded,
    torch,
)

import bbp_ref

nn = torch.nn
F = torch.nn.functional

pytestmark = pytest.mark.torch

JACOBIAN_RTOL = 1e-9
FORWARD_RTOL = 1e-9
T, E, HEADS = 4, 32, 2


def _export(module: nn.Module, args: tuple, names: list[str], dynamo: bool,
            path) -> onnx.ModelProto:
    """Export with a dynamic batch (axis 0 of every input); TorchScript at opset 17."""
    options = dict(dynamo=True) if dynamo else dict(dynamo=False, opset_version=17)
    return export(module, args, path, options, input_names=names)


def _seeded(module: nn.Module, seed: int) -> nn.Module:
    return seeded(module, seed, 0.3)


def _torch_jacobian(function, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float64 outputs [N, *out] and per-example Jacobians [N, *out, *in] of
    ``function(example, i)``."""
    return example_jacobians(function, x, vectorize=True)


def _check(m: bbp_ref.Model, x: np.ndarray, expected_out: np.ndarray,
           expected_jacobian: np.ndarray, **bind: object) -> list:
    """The forward and W^x against torch, and every rule's residuals and checks."""
    assert_matches_reference(m, x, expected_out, expected_jacobian, FORWARD_RTOL,
                             JACOBIAN_RTOL, **bind)
    return assert_every_rule_checks(m, x, **bind)


def padding_bias(keep: torch.Tensor) -> torch.Tensor:
    """A float key-padding mask, added to the scores: 0 to keep a key, -30 to mask it (a
    bool mask, exported as -inf, is tested with `BoolMaskedAttention`)."""
    return (keep - 1.0) * 30.0


class Attention(nn.Module):
    """nn.MultiheadAttention on a batch-first input; with ``batch_first=False`` the input is
    transposed to `[T, N, E]` and back. ``masked``: a causal ``attn_mask`` and a float
    ``key_padding_mask`` from a second input (1 = keep)."""

    def __init__(self, batch_first: bool, need_weights: bool, masked: bool) -> None:
        super().__init__()
        self.batch_first, self.need_weights, self.masked = batch_first, need_weights, masked
        self.attention = nn.MultiheadAttention(E, HEADS, batch_first=batch_first)
        self.register_buffer("causal", torch.triu(torch.full((T, T), -1.5), 1))

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        h = x if self.batch_first else x.transpose(0, 1)
        options: dict = dict(need_weights=self.need_weights)
        if self.masked:
            options.update(attn_mask=self.causal.to(x.dtype),
                           key_padding_mask=padding_bias(keep.to(x.dtype)))
        y, _ = self.attention(h, h, h, **options)
        return y if self.batch_first else y.transpose(0, 1)


ATTENTION = [(bf, nw, masked) for bf in (True, False) for nw in (True, False)
             for masked in (False, True)]


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("batch_first,need_weights,masked", ATTENTION,
                         ids=[f"{'bf' if b else 'tf'}-{'weights' if w else 'sdpa'}"
                              f"{'-masked' if m else ''}" for b, w, m in ATTENTION])
def test_multihead_attention(batch_first: bool, need_weights: bool, masked: bool,
                             dynamo: bool, tmp_path) -> None:
    module = _seeded(Attention(batch_first, need_weights, masked), 3)
    rng = np.random.default_rng(4)
    x = rng.normal(size=(3, T, E)).astype(np.float32)
    keep = np.ones((3, T), np.float32)
    keep[1, -1] = keep[2, -2:] = 0.0
    args = (torch.from_numpy(x[:2]), torch.from_numpy(keep[:2])) if masked else \
        (torch.from_numpy(x[:2]),)
    proto = _export(module, args, ["x", "keep"][:len(args)], dynamo, tmp_path / "a.onnx")
    m = bbp_ref.load(proto)
    module64 = copy.deepcopy(module).double()
    keep64 = torch.from_numpy(keep.astype(np.float64))
    out, jacobian = _torch_jacobian(
        lambda v, i: module64(v[None], keep64[i:i + 1] if masked else None)[0], x)
    bind: dict = {"inputs": {"keep": keep}} if masked else {}
    _check(m, x, out, jacobian, **bind)


class ScaledDotProduct(nn.Module):
    """Projections, `[N, H, T, Dh]` heads, F.scaled_dot_product_attention with a finite
    causal bias (bool masks: `BoolMaskedScaledDotProduct`), back."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(E, 3 * E)
        self.out = nn.Linear(E, E)
        self.register_buffer("causal", torch.triu(torch.full((T, T), -1.5), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        q, k, v = (t.reshape(n, T, HEADS, E // HEADS).transpose(1, 2)
                   for t in self.qkv(x).chunk(3, dim=-1))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=self.causal.to(x.dtype))
        return self.out(y.transpose(1, 2).reshape(n, T, E))


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_scaled_dot_product_attention(dynamo: bool, tmp_path) -> None:
    module = _seeded(ScaledDotProduct(), 5)
    x = np.random.default_rng(6).normal(size=(3, T, E)).astype(np.float32)
    proto = _export(module, (torch.from_numpy(x[:2]),), ["x"], dynamo, tmp_path / "s.onnx")
    module64 = copy.deepcopy(module).double()
    out, jacobian = _torch_jacobian(lambda v, i: module64(v[None])[0], x)
    _check(bbp_ref.load(proto), x, out, jacobian)


VOCAB, WIDTH, TOKENS, CLASSES = 50, 32, 8, 3


class TokenClassifier(nn.Module):
    """Embedding + positional embedding, two TransformerEncoderLayers (batch_first), mean
    over the unmasked tokens, linear head."""

    def __init__(self, boolean: bool = False) -> None:
        super().__init__()
        self.boolean = boolean
        self.embedding = nn.Embedding(VOCAB, WIDTH)
        self.position = nn.Parameter(torch.zeros(1, TOKENS, WIDTH))
        layer = nn.TransformerEncoderLayer(WIDTH, HEADS, 64, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(WIDTH, CLASSES)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.after_embedding(self.embedding(ids), mask)

    def after_embedding(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        padding = mask < 0.5 if self.boolean else padding_bias(mask)
        h = self.encoder(h + self.position, src_key_padding_mask=padding)
        weights = mask.unsqueeze(-1)
        return self.head((h * weights).sum(1) / weights.sum(1))


def _embedding_output(proto: onnx.ModelProto) -> str:
    """The tensor the Gather of the embedding table writes."""
    (name,) = [n.output[0] for n in proto.graph.node
               if n.op_type == "Gather" and n.input[0] == "embedding.weight"]
    return name


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("boolean", [False, True], ids=["float-mask", "bool-mask"])
def test_token_classifier_explained_with_respect_to_the_embeddings(boolean: bool, dynamo: bool,
                                                                   tmp_path) -> None:
    """``boolean``: the encoder's ``src_key_padding_mask`` is the bool ``mask < 0.5``
    (exported as an additive -inf), else the finite float mask of `padding_bias`."""
    module = _seeded(TokenClassifier(boolean), 7)
    rng = np.random.default_rng(8)
    ids = rng.integers(0, VOCAB, size=(3, TOKENS)).astype(np.int64)
    mask = np.ones((3, TOKENS), np.float32)
    mask[1, -2:] = mask[2, -5:] = 0.0
    path = tmp_path / "tok.onnx"
    proto = _export(module, (torch.from_numpy(ids[:2]), torch.from_numpy(mask[:2])),
                    ["ids", "mask"], dynamo, path)
    wrt = _embedding_output(proto)
    m = bbp_ref.load(proto)
    module64 = copy.deepcopy(module).double()
    with torch.no_grad():
        embedded = module64.embedding(torch.from_numpy(ids)).numpy()
    mask64 = torch.from_numpy(mask.astype(np.float64))
    out, jacobian = _torch_jacobian(
        lambda h, i: module64.after_embedding(h[None], mask64[i:i + 1])[0], embedded)
    bind = {"wrt": wrt, "inputs": {"mask": mask}}
    through_wrt = _check(m, ids, out, jacobian, **bind)
    np.testing.assert_array_equal(through_wrt[0].wrt_value, embedded.astype(np.float32))

    cut_path = tmp_path / "cut.onnx"
    onnx.utils.extract_model(str(path), str(cut_path), [wrt, "mask"], ["y"])
    cut = bbp_ref.load(onnx.load(str(cut_path)))
    x = embedded.astype(np.float32)
    for rule, e in zip(RULES, through_wrt):
        direct = bbp_ref.explain(cut, x, rule=rule, check=True, inputs={"mask": mask})
        for field in ("gradient", "bias_attribution", "bias", "output"):
            np.testing.assert_array_equal(getattr(e, field), getattr(direct, field))


class BoolMaskedAttention(nn.Module):
    """nn.MultiheadAttention (batch_first) with bool masks, exported as an additive -inf:
    a ``key_padding_mask`` from a second input ``pad`` (True = padding) and/or a causal
    ``attn_mask`` (True = masked) with ``is_causal=True``."""

    def __init__(self, need_weights: bool, padded: bool, causal: bool) -> None:
        super().__init__()
        self.need_weights, self.padded, self.causal = need_weights, padded, causal
        self.attention = nn.MultiheadAttention(E, HEADS, batch_first=True)
        self.register_buffer("future", torch.triu(torch.ones(T, T, dtype=torch.bool), 1))

    def forward(self, x: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
        options: dict = dict(need_weights=self.need_weights)
        if self.padded:
            options["key_padding_mask"] = pad
        if self.causal:
            options.update(attn_mask=self.future, is_causal=True)
        return self.attention(x, x, x, **options)[0]


BOOL_MASKS = [(True, True, False), (True, False, True), (False, True, True)]


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("need_weights,padded,causal", BOOL_MASKS,
                         ids=[f"{'weights' if w else 'sdpa'}{'-padding' if p else ''}"
                              f"{'-causal' if c else ''}" for w, p, c in BOOL_MASKS])
def test_multihead_attention_with_bool_masks(need_weights: bool, padded: bool, causal: bool,
                                             dynamo: bool, tmp_path) -> None:
    """The masked scores are hard zeros of the Softmax (docs/math.md §7.5): W^x equals
    torch autograd's, every rule's decomposition is exact, and onnxruntime agrees."""
    module = _seeded(BoolMaskedAttention(need_weights, padded, causal), 9)
    x = np.random.default_rng(10).normal(size=(3, T, E)).astype(np.float32)
    pad = np.zeros((3, T), bool)
    pad[1, -1] = pad[2, 1:3] = True  # key 0 is never padded: no row is masked entirely
    args = (torch.from_numpy(x[:2]), torch.from_numpy(pad[:2])) if padded else \
        (torch.from_numpy(x[:2]),)
    proto = _export(module, args, ["x", "pad"][:len(args)], dynamo, tmp_path / "b.onnx")
    module64 = copy.deepcopy(module).double()
    pad_t = torch.from_numpy(pad)
    out, jacobian = _torch_jacobian(
        lambda v, i: module64(v[None], pad_t[i:i + 1] if padded else None)[0], x)
    bind: dict = {"inputs": {"pad": pad}} if padded else {}
    _check(bbp_ref.load(proto), x, out, jacobian, **bind)


def test_a_padding_mask_hiding_every_key_is_refused(tmp_path) -> None:
    """A query row whose every key is masked has no softmax (NaN in PyTorch and
    onnxruntime): refused at the Softmax, naming it."""
    module = _seeded(BoolMaskedAttention(True, True, False), 9)
    x = np.random.default_rng(10).normal(size=(2, T, E)).astype(np.float32)
    pad = np.zeros((2, T), bool)
    proto = _export(module, (torch.from_numpy(x), torch.from_numpy(pad)), ["x", "pad"],
                    False, tmp_path / "b.onnx")
    pad[1] = True
    with pytest.raises(bbp_ref.errors.UnsupportedOpError, match="Softmax.*0 / 0"):
        bbp_ref.load(proto).forward(x, inputs={"pad": pad})


class BoolMaskedScaledDotProduct(ScaledDotProduct):
    """Causal attention three ways: F.scaled_dot_product_attention with
    ``is_causal=True`` or a bool ``attn_mask`` (True = attend), both exported as an
    additive -inf (the dynamo exporter writes is_causal as float32's lowest finite number
    instead), and written out with ``scores.masked_fill(~allowed, -inf)`` (a Where)."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.register_buffer("allowed", torch.tril(torch.ones(T, T, dtype=torch.bool)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        q, k, v = (t.reshape(n, T, HEADS, E // HEADS).transpose(1, 2)
                   for t in self.qkv(x).chunk(3, dim=-1))
        if self.how == "is-causal":
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        elif self.how == "bool-mask":
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=self.allowed)
        else:
            scores = (q @ k.transpose(-2, -1)) * (E // HEADS) ** -0.5
            y = scores.masked_fill(~self.allowed, float("-inf")).softmax(-1) @ v
        return self.out(y.transpose(1, 2).reshape(n, T, E))


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("how", ["is-causal", "bool-mask", "masked-fill"])
def test_scaled_dot_product_attention_with_a_bool_mask(how: str, dynamo: bool,
                                                       tmp_path) -> None:
    module = _seeded(BoolMaskedScaledDotProduct(how), 5)
    x = np.random.default_rng(6).normal(size=(3, T, E)).astype(np.float32)
    proto = _export(module, (torch.from_numpy(x[:2]),), ["x"], dynamo, tmp_path / "s.onnx")
    module64 = copy.deepcopy(module).double()
    out, jacobian = _torch_jacobian(lambda v, i: module64(v[None])[0], x)
    _check(bbp_ref.load(proto), x, out, jacobian)
