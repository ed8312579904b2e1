"""A live ``torch.nn.Module`` as an ONNX model, exported in memory (the ``torch`` extra).

The module is exported for inputs shaped like a given batch (axis 0 is the batch axis,
as PyTorch and Captum take it; the exported batch axis is dynamic), in inference mode
(``eval()``; each submodule's training flag is restored afterwards), with the
torch.export-based exporter (``torch.onnx.export(dynamo=True)``); if that exporter fails,
with the TorchScript one (``dynamo=False``, opset `TORCHSCRIPT_OPSET`), and the result
says so. torch is imported only when a module is given (docs/math.md §2, decision 10).
"""

from __future__ import annotations

import hashlib
import io
import re
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from ..errors import InputError, ModelLoadError

DYNAMO = "torch.export (torch.onnx.export(dynamo=True))"
TORCHSCRIPT = "TorchScript (torch.onnx.export(dynamo=False))"
TORCHSCRIPT_OPSET = 17
INPUT_NAME, OUTPUT_NAME = "input", "output"
INSTALL_HINT = "pip install \"bbp_ref[torch]\" (torch and onnxscript)"


@dataclass(frozen=True)
class Exported:
    """An exported module: the ONNX model, which exporter wrote it, and why the first
    exporter was not used (empty if it was)."""

    proto: onnx.ModelProto
    exporter: str
    fallback_reason: str = ""


def is_torch_module(obj: object) -> bool:
    """Whether ``obj`` is a ``torch.nn.Module``, decided without importing torch (by its
    classes' qualified names), so that a module is recognised even where torch cannot be
    imported."""
    return any(cls.__module__ == "torch.nn.modules.module" and cls.__name__ == "Module"
               for cls in type(obj).__mro__)


def require_torch() -> Any:
    """The ``torch`` module, or an `InputError` naming the extra to install."""
    try:
        import torch
    except ImportError as exc:
        raise InputError(f"explaining a torch.nn.Module needs PyTorch: {INSTALL_HINT}") from exc
    return torch


def as_numpy(x: object) -> object:
    """A torch tensor as a NumPy array (detached, on the CPU); anything else unchanged."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return x


def weights_digest(module: Any) -> str:
    """SHA-256 of the module's state (parameters and buffers: names, dtypes, shapes,
    values): part of the export cache's key, so changed weights mean a new export."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        array = np.ascontiguousarray(tensor.detach().cpu().numpy())
        digest.update(f"{name}|{array.dtype}|{array.shape}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def export_module(module: Any, example: np.ndarray) -> Exported:
    """Export ``module`` for inputs ``[N, *example.shape]`` (traced on two copies of the
    one ``example``) of the dtype of its first floating-point parameter (float32 if it has
    none); see the module docstring. `ModelLoadError` if neither exporter can export it."""
    torch = require_torch()
    dtypes = [p.dtype for p in module.parameters() if p.dtype.is_floating_point]
    batch = torch.as_tensor(np.stack([example, example]),
                            dtype=dtypes[0] if dtypes else torch.float32)
    training = {m: m.training for m in module.modules()}
    module.eval()
    try:
        try:
            return Exported(_dynamo(torch, module, batch), DYNAMO)
        except Exception as exc:  # noqa: BLE001 - the exporter raises anything
            reason = _one_line(exc)
        try:
            proto = _torchscript(torch, module, batch)
        except Exception as exc:  # noqa: BLE001
            raise ModelLoadError(
                f"cannot export the {type(module).__name__} module to ONNX: the torch.export-"
                f"based exporter failed ({reason}) and so did the TorchScript one "
                f"({_one_line(exc)})") from exc
        warnings.warn(f"bbp_ref: the torch.export-based ONNX exporter failed ({reason}); "
                      "the module was exported with the TorchScript exporter", stacklevel=2)
        return Exported(proto, TORCHSCRIPT, reason)
    finally:
        for submodule, flag in training.items():
            submodule.train(flag)


def _dynamo(torch: Any, module: Any, example: Any) -> onnx.ModelProto:
    with _quiet():
        program = torch.onnx.export(
            module, (example,), dynamo=True, external_data=False, input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME], dynamic_shapes=({0: torch.export.Dim("batch")},))
    return program.model_proto


def _torchscript(torch: Any, module: Any, example: Any) -> onnx.ModelProto:
    buffer = io.BytesIO()
    with _quiet():
        torch.onnx.export(module, (example,), buffer, dynamo=False,
                          opset_version=TORCHSCRIPT_OPSET, input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
    return onnx.load_model_from_string(buffer.getvalue())


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporters' progress messages and warnings."""
    sink = io.StringIO()
    with warnings.catch_warnings(), redirect_stdout(sink), redirect_stderr(sink):
        warnings.simplefilter("ignore")
        yield


def _one_line(exc: BaseException) -> str:
    text = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).split())  # no terminal colours
    text = text if len(text) <= 300 else text[:297] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
