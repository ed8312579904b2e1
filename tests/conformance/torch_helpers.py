"""What the conformance tests against PyTorch share (torch tests only): torch itself,
exporting a module with either exporter, the float64 autograd reference, parameters whose
export is exact, and the standard checks of bbp_ref against that reference.

Importing this module skips the importing test module when torch is not installed; with
``BBP_REQUIRE_TORCH`` set (CI's run of the torch tests) a missing torch or onnxscript is an
error, not a silent skip.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import pytest
from conformance_checks import RESIDUAL_TOL, RULES

if os.environ.get("BBP_REQUIRE_TORCH"):
    import onnxscript  # noqa: F401
    import torch
else:
    torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import bbp_ref  # noqa: E402

# -- export ------------------------------------------------------------------------------------
#: ``batch_axes`` of `export`: axis 0 of every input and output is the (dynamic) batch axis.
BATCH_FIRST = "first"


def export(module: nn.Module, args: tuple, path: Path, options: Mapping[str, object], *,
           input_names: Sequence[str] = ("x",), output_names: Sequence[str] = ("y",),
           batch_axes: Mapping[str, int] | str | None = BATCH_FIRST) -> onnx.ModelProto:
    """Export ``module`` on the example ``args`` to ``path`` with ``torch.onnx.export``'s
    ``options`` (``dynamo`` True or False, an opset, ...), quietly, and read it back.

    ``batch_axes``: `BATCH_FIRST`, a dynamic batch on axis 0 of every input (and output);
    a mapping of tensor names to their batch axis (TorchScript exporter only); None, the
    static shapes of ``args``. (With the static batch of ``args`` the dynamo exporter
    writes the batch size into the Reshape shapes, which bbp_ref refuses: "does not keep
    the batch axis first".)"""
    options = dict(options)
    if options["dynamo"] and not os.environ.get("BBP_REQUIRE_TORCH"):
        pytest.importorskip("onnxscript")
    if batch_axes == BATCH_FIRST and options["dynamo"]:
        batch = torch.export.Dim("batch")
        options["dynamic_shapes"] = tuple({0: batch} for _ in args)
    elif batch_axes == BATCH_FIRST:
        options["dynamic_axes"] = {name: {0: "batch"} for name in [*input_names, *output_names]}
    elif batch_axes is not None:
        assert not options["dynamo"], "batch axes by name are the TorchScript exporter's"
        options["dynamic_axes"] = {name: {axis: "batch"} for name, axis in batch_axes.items()}
    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), input_names=list(input_names),
                          output_names=list(output_names), **options)
    return onnx.load(str(path))


# -- the float64 reference -----------------------------------------------------------------------
def example_jacobians(function: Callable[[torch.Tensor, int], torch.Tensor], x: np.ndarray,
                      vectorize: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """float64 outputs ``[N, *out]`` and per-example Jacobians ``[N, *out, *in]`` by torch
    autograd of ``function(example, i)``, the output for example ``i`` of ``x``."""
    outs, rows = [], []
    for i in range(len(x)):
        xi = torch.from_numpy(np.asarray(x[i], dtype=np.float64))
        with torch.no_grad():
            outs.append(function(xi, i).numpy())
        rows.append(torch.autograd.functional.jacobian(lambda v, i=i: function(v, i), xi,
                                                       vectorize=vectorize).numpy())
    return np.stack(outs), np.stack(rows)


def module_reference(module: nn.Module, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float64 output ``[N, *out]`` (one batched forward) and per-example Jacobian
    ``[N, *out, *in]`` of a float64 copy of ``module`` in eval mode (exact: its weights
    are float32)."""
    module64 = copy.deepcopy(module).double().eval()
    with torch.no_grad():
        out = module64(torch.from_numpy(x.astype(np.float64))).numpy()
    _, jacobian = example_jacobians(lambda v, _: module64(v.unsqueeze(0)).squeeze(0), x)
    return out, jacobian


def local_bias(out: np.ndarray, jacobian: np.ndarray,
               x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`b^x = f(x) - J x` of every output from the reference, ``[N, O]`` (outputs
    flattened), and the scale of its rounding, `|f(x)| + sum_q |J[q] x[q]|`."""
    n = len(x)
    flat_out = out.reshape(n, -1)
    terms = jacobian.reshape(n, flat_out.shape[1], -1) * x.reshape(n, 1, -1).astype(np.float64)
    return flat_out - terms.sum(axis=2), np.abs(flat_out) + np.abs(terms).sum(axis=2)


# -- parameters whose export is exact -----------------------------------------------------------
BN_EPS = 2.0**-10
GRID = 2.0**-6


def on_grid(t: torch.Tensor, step: float = GRID) -> torch.Tensor:
    """``t`` rounded to multiples of ``step`` (a power of 2)."""
    return torch.round(t / step) * step


def exact_batch_norm(bn: nn.modules.batchnorm._BatchNorm, gen: torch.Generator) -> None:
    """Running statistics for which `gamma / sqrt(var + eps)` is ±2**j (`var + eps` a power
    of 4, ``eps = 2**-10``) and the shift lies on the 2**-6 grid: an exporter that folds a
    BatchNorm into the preceding Conv/Gemm in float32 (TorchScript at TrainingMode.EVAL, the
    dynamo exporter's optimiser) then folds it exactly."""
    c = bn.num_features
    k = torch.randint(-1, 2, (c,), generator=gen).double()  # var + eps in {1/4, 1, 4}
    j = torch.randint(-1, 2, (c,), generator=gen).double()
    sign = torch.where(torch.rand(c, generator=gen) < 0.3, -1.0, 1.0).double()
    with torch.no_grad():
        bn.eps = BN_EPS
        bn.running_var.copy_(4.0**k - BN_EPS)
        bn.weight.copy_(sign * 2.0**j * 2.0**k)  # sqrt(4**k) = 2**k
        bn.running_mean.copy_(on_grid(torch.randn(c, generator=gen) * 0.5))
        bn.bias.copy_(on_grid(torch.randn(c, generator=gen) * 0.3))


def seeded(module: nn.Module, seed: int, scale: float) -> nn.Module:
    """Every parameter of ``module`` N(0, scale**2) from ``seed``; eval mode."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale)
    return module.eval()


# -- the standard checks --------------------------------------------------------------------------
def assert_matches_reference(m: bbp_ref.Model, x: np.ndarray, out: np.ndarray,
                             jacobian: np.ndarray, forward_rtol: float, jacobian_rtol: float,
                             **bind: object) -> None:
    """``Model.forward`` and ``Model.jacobian`` (`W^x`) at ``x`` (with ``bind``'s
    ``wrt``/``inputs``) equal the reference ``out`` and ``jacobian`` in shape, and in value to
    ``forward_rtol`` and ``jacobian_rtol`` of their largest magnitudes."""
    forward = m.forward(x, **bind)
    assert forward.shape == out.shape
    np.testing.assert_allclose(forward, out, rtol=0, atol=forward_rtol * np.abs(out).max())
    found = m.jacobian(x, **bind)
    assert found.shape == jacobian.shape
    np.testing.assert_allclose(found, jacobian, rtol=0,
                               atol=jacobian_rtol * np.abs(jacobian).max())


def assert_every_rule_checks(m: bbp_ref.Model, x: np.ndarray,
                             **bind: object) -> list[bbp_ref.Explanation]:
    """``explain(check=True)`` with every rule: its checks pass (onnxruntime's output
    included) and its decomposition and completeness residuals are <= `RESIDUAL_TOL`."""
    explanations = []
    for rule in RULES:
        e = bbp_ref.explain(m, x, rule=rule, check=True, **bind)
        assert e.checks.passed, e.checks.summary()
        assert (e.checks.completeness <= RESIDUAL_TOL).all()
        assert (e.checks.decomposition <= RESIDUAL_TOL).all()
        explanations.append(e)
    return explanations
