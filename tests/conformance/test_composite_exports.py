"""Composite ops as PyTorch's exporters write them (docs/math.md §7.4), against the fused
ONNX ops and torch autograd in float64.

Small seeded models `Linear/Conv -> norm -> Linear` are exported by the TorchScript
exporter at opsets 13 and 17 and by the dynamo exporter. What the exporters write:

* nn.LayerNorm: decomposed at opset 13 (ReduceMean, Sub, Pow, ReduceMean, Add, Sqrt, Div,
  Mul, Add), LayerNormalization at opset 17 and by dynamo;
* nn.GroupNorm: Reshape [N, G, -1], InstanceNormalization, Reshape back, Mul, Add
  (every exporter); compared with a fused GroupNormalization (opset 21) of the same
  weights;
* nn.InstanceNorm2d: InstanceNormalization (every exporter); compared with its
  decomposition written by hand (`test_composite_ops`);
* nn.RMSNorm (dynamo): decomposed at the default opset, RMSNormalization at 23.

* nn.LocalResponseNorm: Mul, Reshape, a zero Pad, AveragePool, Squeeze, Mul, Add, Pow,
  Div (TorchScript: the Squeeze inside an If on a constant condition); compared with LRN;
* F.normalize: ReduceL1/ReduceL2, Clip, Expand, Div; compared with LpNormalization;
* nn.AvgPool2d(padding=1) at opset 9 (a zero Pad and an AveragePool) and 13 (one pool).

For each: the fused and the decomposed graph give the same `W^x`, `b^x`, `B(x)` for every
rule to 1e-12 (invariant 9), and `W^x` and `f(x)` equal torch autograd's in float64 to
1e-12 (invariant 8).

ONNX attributes are float32, torch's float64 module keeps the Python float: an epsilon
that float32 does not hold exactly (1e-3) puts the two ~1e-10 apart, so the epsilons
here are float32-exact (2**-10) or small enough not to matter (LayerNorm's 1e-5).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from builders import model, node
from onnx import numpy_helper
from test_composite_ops import assert_same_explanations
from torch_helpers import assert_matches_reference, export, module_reference, seeded, torch

import bbp_ref

nn = torch.nn

pytestmark = pytest.mark.torch

AUTOGRAD_RTOL = 1e-12
EXPORTERS = {"ts13": dict(dynamo=False, opset_version=13),
             "ts17": dict(dynamo=False, opset_version=17),
             "dynamo": dict(dynamo=True)}


def _export(module: nn.Module, x: np.ndarray, path, options: dict) -> onnx.ModelProto:
    return export(module, (torch.from_numpy(x),), path, options)


def _randomized(module: nn.Module, seed: int) -> nn.Module:
    return seeded(module, seed, 0.5)


def assert_matches_autograd(proto: onnx.ModelProto, module: nn.Module, x: np.ndarray) -> None:
    out, jacobian = module_reference(module, x)
    assert_matches_reference(bbp_ref.load(proto), x, out, jacobian, AUTOGRAD_RTOL,
                             AUTOGRAD_RTOL)


def _weights(proto: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}


class _Sandwich(nn.Module):
    def __init__(self, before: nn.Module, norm: nn.Module, after: nn.Module) -> None:
        super().__init__()
        self.before, self.norm, self.after = before, norm, after

    def forward(self, x):
        return self.after(self.norm(self.before(x)))


def _conv_sandwich(norm: nn.Module, channels: int, seed: int) -> nn.Module:
    after = nn.Sequential(nn.Flatten(), nn.Linear(channels * 9, 3))
    return _randomized(_Sandwich(nn.Conv2d(2, channels, 3, padding=1), norm, after), seed)


def test_layer_norm_fused_and_decomposed_exports_agree(tmp_path) -> None:
    module = _randomized(_Sandwich(nn.Linear(5, 8), nn.LayerNorm(8), nn.Linear(8, 3)), 0)
    x = np.random.default_rng(0).normal(size=(3, 5)).astype(np.float32)
    protos = {name: _export(module, x, tmp_path / f"{name}.onnx", options)
              for name, options in EXPORTERS.items()}
    ops = {name: {n.op_type for n in p.graph.node} for name, p in protos.items()}
    assert "LayerNormalization" not in ops["ts13"] and {"ReduceMean", "Pow"} <= ops["ts13"]
    assert "LayerNormalization" in ops["ts17"] and "LayerNormalization" in ops["dynamo"]
    assert_same_explanations(protos["ts17"], protos["ts13"], x)
    assert_same_explanations(protos["dynamo"], protos["ts13"], x)
    for proto in protos.values():
        assert_matches_autograd(proto, module, x)


def test_group_norm_export_agrees_with_fused_group_normalization(tmp_path) -> None:
    channels, groups = 4, 2
    module = _conv_sandwich(nn.GroupNorm(groups, channels, eps=2.0**-10), channels, 1)
    x = np.random.default_rng(1).normal(size=(3, 2, 3, 3)).astype(np.float32)
    exports = {name: _export(module, x, tmp_path / f"{name}.onnx", EXPORTERS[name])
               for name in ("ts13", "dynamo")}
    for exported in exports.values():
        assert "InstanceNormalization" in {n.op_type for n in exported.graph.node}
        assert_matches_autograd(exported, module, x)
    weights = {k: v.detach().numpy() for k, v in module.state_dict().items()}
    nodes = [node("Conv", ["x", "before.weight", "before.bias"], "h", pads=[1, 1, 1, 1]),
             node("GroupNormalization", ["h", "norm.weight", "norm.bias"], "n",
                  num_groups=groups, epsilon=2.0**-10),
             node("Flatten", ["n"], "flat"),
             node("Gemm", ["flat", "after.1.weight", "after.1.bias"], "y", transB=1)]
    fused = model(nodes, ["N", 2, 3, 3], weights, opset=21)
    assert_matches_autograd(fused, module, x)
    for exported in exports.values():
        assert_same_explanations(fused, exported, x)


def test_instance_norm_export_agrees_with_its_decomposition(tmp_path) -> None:
    channels = 4
    module = _conv_sandwich(nn.InstanceNorm2d(channels, affine=True), channels, 2)
    x = np.random.default_rng(2).normal(size=(3, 2, 3, 3)).astype(np.float32)
    exported = _export(module, x, tmp_path / "ts13.onnx", EXPORTERS["ts13"])
    assert "InstanceNormalization" in {n.op_type for n in exported.graph.node}
    assert_matches_autograd(exported, module, x)
    weights = {k: v.detach().numpy() for k, v in module.state_dict().items()}
    epsilon = np.float32(module.norm.eps)
    nodes = [node("Conv", ["x", "before.weight", "before.bias"], "h", pads=[1, 1, 1, 1]),
             node("ReduceMean", ["h"], "mean", axes=[2, 3]),
             node("Sub", ["h", "mean"], "centered"), node("Pow", ["centered", "two"], "sq"),
             node("ReduceMean", ["sq"], "variance", axes=[2, 3]),
             node("Add", ["variance", "eps"], "shifted"), node("Sqrt", ["shifted"], "std"),
             node("Div", ["centered", "std"], "normalized"),
             node("Mul", ["normalized", "gamma"], "scaled"), node("Add", ["scaled", "beta"], "n"),
             node("Flatten", ["n"], "flat"),
             node("Gemm", ["flat", "after.1.weight", "after.1.bias"], "y", transB=1)]
    inits = {**weights, "two": np.float32(2.0), "eps": epsilon,
             "gamma": weights["norm.weight"].reshape(channels, 1, 1),
             "beta": weights["norm.bias"].reshape(channels, 1, 1)}
    inits = {k: v for k, v in inits.items() if not k.startswith("norm.")}
    decomposed = model(nodes, ["N", 2, 3, 3], inits, opset=13)
    assert_same_explanations(exported, decomposed, x)


@pytest.mark.parametrize("size", [3, 4])
def test_lrn_against_autograd(size: int) -> None:
    """The fused LRN against nn.LocalResponseNorm for odd sizes; for even sizes PyTorch
    pads `size // 2` channels before and `(size - 1) // 2` after, ONNX the other way
    round, so torch's module is given the channels in reverse order there."""
    channels = 5
    norm = nn.LocalResponseNorm(size, alpha=0.5, beta=0.75, k=2.0)
    module = _conv_sandwich(norm, channels, 3)
    weights = {k: v.detach().numpy() for k, v in module.state_dict().items()}
    x = np.random.default_rng(3).normal(size=(3, 2, 3, 3)).astype(np.float32)
    if size % 2 == 0:
        module.norm = _Reversed(norm)
    nodes = [node("Conv", ["x", "before.weight", "before.bias"], "h", pads=[1, 1, 1, 1]),
             node("LRN", ["h"], "n", size=size, alpha=0.5, beta=0.75, bias=2.0),
             node("Flatten", ["n"], "flat"),
              node("Gemm", ["flat", "after.1.weight", "after.1.bias"], "y", transB=1)]
    assert_matches_autograd(model(nodes, ["N", 2, 3, 3], weights), module, x)


@pytest.mark.parametrize("p", [1, 2])
def test_lp_normalization_against_autograd(p: int) -> None:
    norm = _NormalizeChannels(p)
    module = _conv_sandwich(norm, 4, 4)
    weights = {k: v.detach().numpy() for k, v in module.state_dict().items()}
    x = np.random.default_rng(4).normal(size=(3, 2, 3, 3)).astype(np.float32)
    nodes = [node("Conv", ["x", "before.weight", "before.bias"], "h", pads=[1, 1, 1, 1]),
             node("LpNormalization", ["h"], "n", p=p, axis=1),
             node("Flatten", ["n"], "flat"),
             node("Gemm", ["flat", "after.1.weight", "after.1.bias"], "y", transB=1)]
    assert_matches_autograd(model(nodes, ["N", 2, 3, 3], weights), module, x)


class _NormalizeChannels(nn.Module):
    def __init__(self, p: int, eps: float = 0.0) -> None:
        super().__init__()
        self.p, self.eps = p, eps

    def forward(self, h):
        return nn.functional.normalize(h, p=self.p, dim=1, eps=self.eps)


class _Reversed(nn.Module):
    """``norm`` applied to the channels in reverse order."""

    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.norm = norm

    def forward(self, h):
        return self.norm(h.flip(1)).flip(1)


def test_rms_norm_fused_and_decomposed_exports_agree(tmp_path) -> None:
    """nn.RMSNorm: the dynamo exporter decomposes it at its default opset (Pow,
    ReduceMean, Add, Sqrt, Reciprocal, Mul, Mul) and writes RMSNormalization at 23."""
    module = _randomized(_Sandwich(nn.Linear(5, 8), nn.RMSNorm(8, eps=2.0**-10),
                                   nn.Linear(8, 3)), 5)
    x = np.random.default_rng(5).normal(size=(3, 5)).astype(np.float32)
    decomposed = _export(module, x, tmp_path / "rms.onnx", EXPORTERS["dynamo"])
    fused = _export(module, x, tmp_path / "rms23.onnx", dict(dynamo=True, opset_version=23))
    assert "RMSNormalization" not in {n.op_type for n in decomposed.graph.node}
    assert "RMSNormalization" in {n.op_type for n in fused.graph.node}
    assert_same_explanations(fused, decomposed, x)
    for proto in (fused, decomposed):
        assert_matches_autograd(proto, module, x)


def _fused_around(module: nn.Module, core: list) -> onnx.ModelProto:
    """``core`` (reading ``h``, writing ``n``) between ``module``'s Conv and Linear."""
    weights = {k: v.detach().numpy() for k, v in module.state_dict().items()
               if k.startswith(("before.", "after."))}
    nodes = ([node("Conv", ["x", "before.weight", "before.bias"], "h", pads=[1, 1, 1, 1])]
             + core + [node("Flatten", ["n"], "flat"),
                       node("Gemm", ["flat", "after.1.weight", "after.1.bias"], "y",
                            transB=1)])
    return model(nodes, ["N", 2, 3, 3], weights)


@pytest.mark.parametrize("size", [3, 5])
def test_lrn_exports_agree_with_fused_lrn(size: int, tmp_path) -> None:
    """PyTorch writes LRN as Mul, Reshape, a zero Pad, AveragePool, Squeeze (TorchScript:
    inside an If on a constant condition), Mul, Add, Pow, Div; the zero Pad folds into
    the pool's padding, so every rule agrees with the fused LRN."""
    channels = 5
    module = _conv_sandwich(nn.LocalResponseNorm(size, alpha=0.5, beta=0.75, k=2.0),
                            channels, 6)
    x = np.random.default_rng(6).normal(size=(3, 2, 3, 3)).astype(np.float32)
    fused = _fused_around(module, [node("LRN", ["h"], "n", size=size, alpha=0.5, beta=0.75,
                                        bias=2.0)])
    assert_matches_autograd(fused, module, x)
    for name in ("ts13", "dynamo"):
        exported = _export(module, x, tmp_path / f"{name}.onnx", EXPORTERS[name])
        assert {"Pad", "AveragePool"} <= {n.op_type for n in exported.graph.node}
        assert_same_explanations(fused, exported, x)


@pytest.mark.parametrize("p", [1, 2])
def test_normalize_exports_agree_with_lp_normalization(p: int, tmp_path) -> None:
    """F.normalize exports as ReduceL1/ReduceL2, Clip(min=eps), Expand, Div: the same
    explanations as LpNormalization wherever the norm exceeds eps."""
    module = _conv_sandwich(_NormalizeChannels(p, eps=1e-12), 4, 7)
    x = np.random.default_rng(7).normal(size=(3, 2, 3, 3)).astype(np.float32)
    fused = _fused_around(module, [node("LpNormalization", ["h"], "n", p=p, axis=1)])
    for name in ("ts13", "dynamo"):
        exported = _export(module, x, tmp_path / f"{name}.onnx", EXPORTERS[name])
        assert {f"ReduceL{p}", "Expand"} <= {n.op_type for n in exported.graph.node}
        assert_same_explanations(fused, exported, x)


def test_padded_average_pool_at_opset_9_and_13_agree(tmp_path) -> None:
    """nn.AvgPool2d(padding=1) exports as a zero Pad and an AveragePool at opset 9, as
    one AveragePool with pads from opset 11: the same explanation for every rule."""
    module = _randomized(nn.Sequential(nn.Conv2d(2, 3, 3), nn.AvgPool2d(3, 1, padding=1),
                                       nn.Flatten(), nn.Linear(48, 2)), 8)
    x = np.random.default_rng(8).normal(size=(3, 2, 6, 6)).astype(np.float32)
    old = _export(module, x, tmp_path / "ts9.onnx", dict(dynamo=False, opset_version=9))
    new = _export(module, x, tmp_path / "ts13.onnx", EXPORTERS["ts13"])
    assert "Pad" in {n.op_type for n in old.graph.node}
    assert "Pad" not in {n.op_type for n in new.graph.node}
    assert_same_explanations(old, new, x)
    assert_matches_autograd(new, module, x)
