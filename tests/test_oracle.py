"""The oracle: `compare` and its report, golden vectors and their determinism, and the
`bbp-ref verify` / `bbp-ref golden` commands."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from architectures import cnn

import bbp_ref
from bbp_ref import oracle
from bbp_ref.cli import main

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import make_golden  # noqa: E402


@pytest.fixture
def case():
    rng = np.random.default_rng(3)
    proto, shape = cnn(rng)
    return bbp_ref.load(proto), rng.normal(size=(2, *shape)).astype(np.float32)


def _float32_candidate(model, x):
    fields = {}
    for rule in ("abs", "signed", "uniform"):
        e = bbp_ref.explain(model, x, rule=rule, check=False)
        fields[f"bias_attribution/{rule}"] = e.bias_attribution.astype(np.float32)
    fields.update(output=e.output.astype(np.float32), gradient=e.gradient.astype(np.float32),
                  bias=e.bias.astype(np.float32), target=e.target)
    return fields


def test_a_float32_rounding_of_the_truth_passes_the_default_tolerances(case):
    model, x = case
    report = oracle.compare(model, x, _float32_candidate(model, x))
    assert report.passed, str(report)
    assert {r.field for r in report.results} >= {"output", "gradient", "bias_attribution/signed"}


def test_a_wrong_element_fails_and_is_located(case):
    model, x = case
    candidate = _float32_candidate(model, x)
    wrong = candidate["bias_attribution/abs"].copy()
    wrong[1, 0, 3, 5] += 1e-3 * np.abs(wrong).max()
    candidate["bias_attribution/abs"] = wrong
    report = oracle.compare(model, x, candidate)
    assert not report.passed
    result = report["bias_attribution/abs"]
    assert not result.passed and result.worst_index == (1, 0, 3, 5)
    assert report["gradient"].passed
    assert "FAIL" in str(report) and "bias_attribution/abs" in str(report)


def test_shape_mismatch_nan_and_unknown_fields(case):
    model, x = case
    e = bbp_ref.explain(model, x, check=False)
    report = oracle.compare(model, x, {"gradient": e.gradient[0], "bias": e.bias * np.nan})
    assert not report["gradient"].passed and "shape" in report["gradient"].note
    assert not report["bias"].passed
    with pytest.raises(bbp_ref.InputError, match="unknown field"):
        oracle.compare(model, x, {"gradients": e.gradient})
    with pytest.raises(bbp_ref.InputError, match="no node"):
        oracle.compare(model, x, {"layer_bias/nonexistent": e.bias})


def test_candidate_target_is_used(case):
    model, x = case
    e = bbp_ref.explain(model, x, target=[2, 0], check=False)
    report = oracle.compare(model, x, {"target": e.target, "gradient": e.gradient})
    assert report.passed
    assert not oracle.compare(model, x, {"gradient": e.gradient}, target=1).passed


def test_layer_bias_fields_by_node_or_alias(case):
    model, x = case
    e = bbp_ref.explain(model, x, check=False)
    report = oracle.compare(model, x, {"layer_bias/conv1": e.layer_bias["conv1"],
                                       "layer_bias/bn1": e.layer_bias["conv1"]})
    assert report.passed


def _golden_arrays(folder: Path) -> dict[str, dict[str, np.ndarray]]:
    out = {}
    for path in sorted(folder.glob("*.npz")):
        with np.load(path, allow_pickle=False) as archive:
            out[path.name] = {k: archive[k] for k in archive.files}
    return out


def test_golden_regeneration_is_deterministic_and_matches_the_checked_in_set(tmp_path):
    cases = make_golden.cases()
    first = oracle.golden(cases, tmp_path / "a", make_golden.FIELDS).parent
    second = oracle.golden(cases, tmp_path / "b", make_golden.FIELDS).parent
    for path in sorted(first.iterdir()):
        assert path.read_bytes() == (second / path.name).read_bytes(), path.name
    shipped = ROOT / "models" / "golden"
    fresh, stored = _golden_arrays(first), _golden_arrays(shipped)
    assert fresh.keys() == stored.keys()
    for name, arrays in stored.items():
        assert arrays.keys() == fresh[name].keys()
        for field, value in arrays.items():
            scale = max(float(np.abs(value).max()), 1e-300)
            np.testing.assert_allclose(fresh[name][field], value, rtol=1e-10,
                                       atol=1e-12 * scale, err_msg=f"{name} {field}")
    manifests = [json.loads((f / "manifest.json").read_text()) for f in (first, shipped)]
    for manifest in manifests:
        for key in ("bbp_ref", "onnx", "numpy"):
            manifest.pop(key)
    assert manifests[0] == manifests[1]


def test_golden_files_verify_with_the_cli(tmp_path, capsys):
    shipped = ROOT / "models" / "golden"
    manifest = json.loads((shipped / "manifest.json").read_text())
    entry = next(c for c in manifest["cases"] if c["name"] == "cnn.ts17")
    with np.load(shipped / entry["file"], allow_pickle=False) as archive:
        np.save(tmp_path / "x.npy", archive["input"])
    model = ROOT / "models" / "torch" / "cnn.ts17.onnx"
    assert main(["verify", str(model), str(tmp_path / "x.npy"),
                 str(shipped / entry["file"])]) == 0
    assert "PASSED" in capsys.readouterr().out
    with np.load(shipped / entry["file"], allow_pickle=False) as archive:
        broken = {k: archive[k] for k in archive.files}
    broken["bias"] = broken["bias"] + 1.0
    np.savez(tmp_path / "broken.npz", **broken)
    assert main(["verify", str(model), str(tmp_path / "x.npy"), str(tmp_path / "broken.npz")]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_cli_golden_and_verify_errors(tmp_path, capsys):
    model = ROOT / "bbp_ref" / "data" / "digits_cnn.onnx"
    sample = ROOT / "bbp_ref" / "data" / "digits_cnn.sample.npy"
    assert main(["golden", str(tmp_path / "g"), str(model), str(sample)]) == 0
    assert (tmp_path / "g" / "digits_cnn.npz").is_file()
    capsys.readouterr()
    for argv in (["golden", str(tmp_path / "h"), str(model)],
                 ["verify", str(model), str(sample), str(tmp_path / "missing.npz")],
                 ["verify", str(model), str(sample), str(sample)]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("bbp-ref: error:")
