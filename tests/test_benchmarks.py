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


def test_bench_exact_ig_compares_two_trees_in_alternating_runs(tmp_path, monkeypatch, capsys):
    """`--against TREE` runs the other tree's script and this tree's in turn and
    summarises them: medians, their ratio, the least favourable pairing (checked on
    made-up figures by hand). The other tree here is a stand-in script that reports fixed
    figures, so each side's runs are known to come from its own tree."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    bench = importlib.import_module("bench_exact_ig")
    summary = bench.summarise([150.0, 148.0, 152.0], [50.0, 47.0, 46.0])
    assert (summary["other_median"], summary["this_median"]) == (150.0, 47.0)
    assert summary["speedup"] == 150.0 / 47.0 and summary["slowest_pair"] == 148.0 / 50.0
    other = tmp_path / "other"
    (other / "benchmarks").mkdir(parents=True)
    (other / "benchmarks" / "bench_exact_ig.py").write_text(
        "import json, sys\n"
        "out = sys.argv[sys.argv.index('--json') + 1]\n"
        "json.dump([{'size': 16, 'pieces': 7, 'cpu_seconds': 99.0}], open(out, 'w'))\n")
    out = tmp_path / "compare.json"
    assert bench.main(["--sizes", "16", "--against", str(other), "--rounds", "2",
                       "--json", str(out)]) == 0
    (result,) = json.loads(out.read_text())
    assert result["size"] == 16 and result["pieces"]["other"] == [7, 7]
    assert len(result["pieces"]["this"]) == 2 and min(result["pieces"]["this"]) > 100
    assert result["other_cpu_seconds"] == [99.0, 99.0]
    assert result["speedup"] == 99.0 / result["this_median"]
    printed = capsys.readouterr().out
    assert printed.index("other (") < printed.index("this (") and "16x16: other median" in printed
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
