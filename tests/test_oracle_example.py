"""The worked example of docs/oracle.md: an independent float32 PyTorch implementation of
BBp (dense alpha matrices, autograd gradients) passes `bbp-ref verify`, and a planted
bug in it does not."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from bbp_ref.cli import main

pytest.importorskip("torch")
pytestmark = pytest.mark.torch

ROOT = Path(__file__).resolve().parent.parent
MODEL = str(ROOT / "bbp_ref" / "data" / "digits_cnn.onnx")


def _example():
    spec = importlib.util.spec_from_file_location(
        "torch_bbp", ROOT / "docs" / "examples" / "torch_bbp.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_independent_torch_implementation_passes_verify(tmp_path, capsys):
    _example().main(str(tmp_path))
    code = main(["verify", MODEL, str(tmp_path / "x.npy"), str(tmp_path / "candidate.npz")])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "bias_attribution/signed" in out and "PASSED" in out


def test_a_planted_bug_in_it_is_caught(tmp_path, capsys, monkeypatch):
    example = _example()
    original = example._scores

    def flipped_signed(z, rule, sigma):  # sigma's sign flipped: a classic slip
        return original(z, rule, -sigma)

    monkeypatch.setattr(example, "_scores", flipped_signed)
    example.main(str(tmp_path))
    code = main(["verify", MODEL, str(tmp_path / "x.npy"), str(tmp_path / "candidate.npz")])
    out = capsys.readouterr().out
    assert code == 1
    failed = [line for line in out.splitlines() if "FAIL" in line and "/" in line]
    assert [line.split()[0] for line in failed] == ["bias_attribution/signed"]
