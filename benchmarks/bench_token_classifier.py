"""One explanation of a transformer token classifier (docs/math.md §7.5, §7.6): time and
peak memory of loading and of one `explain` per rule, with respect to the embedding
output, the padding mask given through ``inputs=``.

The model: embedding + positional embedding, ``--layers``
nn.TransformerEncoderLayer (``batch_first``, ``--width`` wide, ``--heads`` heads, a
4x-wide feed-forward), the mean over the unmasked tokens, a linear head; exported by
PyTorch's TorchScript exporter (opset 17, dynamic batch). Needs the ``conformance`` extra
(torch).

    python benchmarks/bench_token_classifier.py [--layers 6] [--width 256] [--heads 8]
        [--tokens 128]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_lstm import measure  # noqa: E402 - the same timing and tracemalloc peak

import bbp_ref  # noqa: E402

VOCAB, CLASSES = 1000, 4


class TokenClassifier(nn.Module):
    def __init__(self, layers: int, width: int, heads: int, tokens: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(VOCAB, width)
        self.position = nn.Parameter(torch.randn(1, tokens, width) * 0.1)
        layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0,
                                           batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(width, CLASSES)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # a float padding mask (0 keep, -30 masked): a bool one exports an additive -inf
        h = self.encoder(self.embedding(ids) + self.position,
                         src_key_padding_mask=(mask - 1.0) * 30.0)
        weights = mask.unsqueeze(-1)
        return self.head((h * weights).sum(1) / weights.sum(1))


def export(module: nn.Module, ids: np.ndarray, mask: np.ndarray) -> onnx.ModelProto:
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings(), \
            contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        path = str(Path(folder) / "tokens.onnx")
        torch.onnx.export(module, (torch.from_numpy(ids), torch.from_numpy(mask)), path,
                          dynamo=False, opset_version=17, input_names=["ids", "mask"],
                          output_names=["y"],
                          dynamic_axes={"ids": {0: "batch"}, "mask": {0: "batch"}})
        return onnx.load(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=128)
    args = parser.parse_args()
    torch.manual_seed(0)
    module = TokenClassifier(args.layers, args.width, args.heads, args.tokens).eval()
    rng = np.random.default_rng(1)
    ids = rng.integers(0, VOCAB, size=(1, args.tokens)).astype(np.int64)
    mask = np.ones((1, args.tokens), np.float32)
    mask[0, -args.tokens // 4:] = 0.0
    proto = export(module, ids, mask)
    (wrt,) = [n.output[0] for n in proto.graph.node
              if n.op_type == "Gather" and n.input[0] == "embedding.weight"]
    print(f"token classifier: {args.layers} layers, width {args.width}, {args.heads} heads, "
          f"{args.tokens} tokens; wrt={wrt!r}")
    bind = {"wrt": wrt, "inputs": {"mask": mask}}
    model = measure("load + first forward",
                    lambda: (m := bbp_ref.load(proto), m.forward(ids, **bind))[0])
    for rule in ("abs", "signed", "uniform"):
        e = measure(f"explain rule={rule}",
                    lambda r=rule: bbp_ref.explain(model, ids, rule=r, **bind))
        print(f"  checks passed: {e.checks.passed} (decomposition "
              f"{float(np.max(e.checks.decomposition)):.1e}, completeness "
              f"{float(np.max(e.checks.completeness)):.1e})")


if __name__ == "__main__":
    main()
