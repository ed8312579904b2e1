"""Reading an ONNX model from a path, bytes or a ModelProto, safely: the file's size and
every tensor's are checked against the byte budget, external data is read only from
inside the model's folder (`external_data`), sparse tensors are made dense, NaN attribute
values are refused, and nothing else on disk is read."""

from __future__ import annotations

import math
import os
from pathlib import Path

import onnx
import onnx.inliner

from .. import budget
from ..errors import ModelLoadError
from .external_data import has_external_data, load_external_data
from .sparse_tensors import densify
from .tensors import all_attributes

MIN_OPSET = 6


def read_model(source: object) -> onnx.ModelProto:
    """The model as a ModelProto with external data loaded, sparse tensors made dense
    and local functions inlined. ``source`` is a path, bytes, or an
    ``onnx.ModelProto`` (not modified). Sizes are checked against `budget.max_bytes`."""
    if isinstance(source, onnx.ModelProto):
        _check_model_size(source.ByteSize(), "the model")
        model = onnx.ModelProto()
        model.CopyFrom(source)
        if has_external_data(model):
            raise ModelLoadError(
                "the ModelProto refers to external data files that are not loaded; "
                "pass the model's path instead so they can be read from its folder")
    elif isinstance(source, (bytes, bytearray, memoryview)):
        _check_model_size(len(source), "the model")
        model = _parse(bytes(source), "the given bytes")
        if has_external_data(model):
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
    densify(model)
    return model


def _check_model_size(nbytes: int, what: str) -> None:
    if nbytes > budget.PROTOBUF_MAX_BYTES:
        raise ModelLoadError(f"{what} has {budget.describe(nbytes)}, more than an ONNX protobuf "
                             "can hold (2 GiB); large weights belong in external data")
    budget.check_bytes(nbytes, what)


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
    try:
        if path.is_dir():
            raise ModelLoadError(f"{path} is a directory, not an ONNX model file")
        if not path.is_file():
            raise ModelLoadError(f"model file not found: {path}")
        _check_model_size(path.stat().st_size, f"the model file {path}")
        data = path.read_bytes()
    except OSError as exc:
        raise ModelLoadError(f"cannot read model file {path}: {exc.strerror}") from exc
    model = _parse(data, str(path))
    if has_external_data(model):
        load_external_data(model, path.resolve().parent)
    return model


def _check(model: onnx.ModelProto) -> None:
    _check_attributes(model)
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


def _check_attributes(model: onnx.ModelProto) -> None:
    """NaN attribute values are refused: a NaN Clip bound or LeakyRelu slope would make
    every output NaN, and NaN compares false in every check."""
    for attribute, where in all_attributes(model):
        values = list(attribute.floats)
        if attribute.HasField("f"):
            values.append(attribute.f)
        if any(math.isnan(v) for v in values):
            raise ModelLoadError(f"{where} is NaN")
