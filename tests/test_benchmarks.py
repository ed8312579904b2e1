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
