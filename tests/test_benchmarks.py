"""The exact-IG benchmark script still runs (on a 16x16 image; its figures are in
benchmarks/README.md) and its two walks agree."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def test_bench_exact_ig_runs_and_its_walks_agree(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    bench = importlib.import_module("bench_exact_ig")
    out = tmp_path / "result.json"
    assert bench.main(["--sizes", "16", "--path-walk-up-to", "16", "--json", str(out)]) == 0
    (result,) = json.loads(out.read_text())
    assert result["size"] == 16 and result["pieces"] > 100
    assert result["completeness"] < 1e-12 and result["walks_differ"] < 1e-10
    assert abs(result["pieces"] - result["path_walk_pieces"]) <= 0.01 * result["pieces"] + 2
    assert "16x16:" in capsys.readouterr().out
    sys.modules.pop("bench_exact_ig", None)


def test_bench_gemm_shapes_covers_resnet50(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    bench = importlib.import_module("bench_gemm_shapes")
    layers = bench.resnet50_convolutions()
    assert len(layers) == 53  # the stem and 16 bottlenecks of 3, 4 projections
    # ResNet-50 at 224x224: 4.1 G multiply-adds in its convolutions (torchvision: 4.09 G
    # with the final Gemm's 2 M)
    assert abs(sum(o * ck * p for _, o, ck, p in layers) / 1e9 - 4.09) < 0.01
    sys.modules.pop("bench_gemm_shapes", None)
