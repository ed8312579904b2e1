"""Reading an ONNX model from a path, bytes or a ModelProto, safely: external data
must lie inside the model's folder, and nothing else on disk is read."""

from __future__ import annotations

import os
from pathlib import Path

import onnx
import onnx.inliner
from onnx import external_data_helper

from ..errors import ModelLoadError

MIN_OPSET = 6


def read_model(source: object) -> onnx.ModelProto:
    """The model as a ModelProto with external data loaded and local functions
    inlined. ``source`` is a path, bytes, or an ``onnx.ModelProto`` (not modified)."""
    if isinstance(source, onnx.ModelProto):
        model = onnx.ModelProto()
        model.CopyFrom(source)
        if _has_external_data(model):
            raise ModelLoadError(
                "the ModelProto refers to external data files that are not loaded; "
                "pass the model's path instead so they can be read from its folder")
    elif isinstance(source, (bytes, bytearray, memoryview)):
        model = _parse(bytes(source), "the given bytes")
        if _has_external_data(model):
            raise ModelLoadError("a model given as bytes cannot refer to external data")
    elif isinstance(source, (str, os.PathLike)):
        model = _read_path(Path(source))
    else:
        raise ModelLoadError(
            f"cannot load a model from {type(source).__name__}: "
            "expected a path, bytes or an onnx.ModelProto")
    _check(model)
    if model.functions:
        try:
            model = onnx.inliner.inline_local_functions(model)
        except Exception as exc:  # noqa: BLE001 - onnx raises many types here
            raise ModelLoadError(f"cannot inline the model's local functions: {exc}") from exc
    return model


def default_opset(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    raise ModelLoadError("the model imports no version of the default ONNX opset")


def _parse(data: bytes, what: str) -> onnx.ModelProto:
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and friends
        raise ModelLoadError(f"{what} is not an ONNX model: {exc}") from exc
    if not model.HasField("graph"):
        raise ModelLoadError(f"{what} is not an ONNX model: it has no graph")
    return model


def _read_path(path: Path) -> onnx.ModelProto:
    if path.is_dir():
        raise ModelLoadError(f"{path} is a directory, not an ONNX model file")
    if not path.is_file():
        raise ModelLoadError(f"model file not found: {path}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelLoadError(f"cannot read model file {path}: {exc}") from exc
    model = _parse(data, str(path))
    if _has_external_data(model):
        folder = path.resolve().parent
        for tensor in external_data_helper._get_all_tensors(model):
            if external_data_helper.uses_external_data(tensor):
                _check_location(tensor, folder)
        try:
            external_data_helper.load_external_data_for_model(model, str(folder))
        except Exception as exc:  # noqa: BLE001
            raise ModelLoadError(f"cannot read the external data of {path}: {exc}") from exc
    return model


def _has_external_data(model: onnx.ModelProto) -> bool:
    return any(external_data_helper.uses_external_data(t)
               for t in external_data_helper._get_all_tensors(model))


def _check_location(tensor: onnx.TensorProto, folder: Path) -> None:
    try:
        location = external_data_helper.ExternalDataInfo(tensor).location
        target = (folder / location).resolve()
    except (ValueError, OSError) as exc:  # a bad offset/length, a NUL in the location
        raise ModelLoadError(f"initializer {tensor.name!r} has an invalid external data "
                             f"entry: {exc}") from exc
    if os.path.isabs(location) or not target.is_relative_to(folder):
        raise ModelLoadError(
            f"initializer {tensor.name!r} refers to external data {location!r} outside "
            f"the model's folder {folder}; refusing to read it")
    if not target.is_file():
        raise ModelLoadError(
            f"initializer {tensor.name!r}: external data file {location!r} not found "
            f"in {folder}")


def _check(model: onnx.ModelProto) -> None:
    opset = default_opset(model)
    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise ModelLoadError(
            f"the model uses opset {opset}; bbp_ref supports opsets {MIN_OPSET} to {newest}")
    try:
        onnx.checker.check_model(model)
    except Exception as exc:  # noqa: BLE001 - ValidationError and protobuf errors
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"invalid ONNX model: {first}") from exc
