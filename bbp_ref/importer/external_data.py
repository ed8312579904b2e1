"""External data: tensors whose bytes live in a file beside the model.

bbp_ref reads them itself, for every tensor-carrying field (`tensors.all_tensors`), and
only from regular files inside the model's folder: a location that is absolute, leaves
the folder (``..``, a symbolic link), names a hard-linked file or a device, or asks for
more bytes than the budget is refused before anything is opened. The refusal reads the
same whether or not the named file exists. Afterwards the model holds every tensor
inline, so neither `onnx.reference` (folding) nor onnxruntime (the check) is ever handed
a file name to resolve.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import onnx
from onnx import helper

from .. import budget
from ..errors import ModelLoadError
from .tensors import all_tensors

_LOCATION_SHOWN = 120  # characters of a location quoted in an error message


def uses_external_data(tensor: onnx.TensorProto) -> bool:
    return tensor.data_location == onnx.TensorProto.EXTERNAL


def has_external_data(model: onnx.ModelProto) -> bool:
    return any(uses_external_data(t) for t, _ in all_tensors(model))


def load_external_data(model: onnx.ModelProto, folder: Path) -> None:
    """Read every external tensor of ``model`` from ``folder`` (resolved) into the
    model, checking each location first and the total against the byte budget."""
    total = 0
    for tensor, where in all_tensors(model):
        if not uses_external_data(tensor):
            continue
        location, offset, length = _entry(tensor, where)
        target = _inside(folder, location, where)
        data = _read(target, location, offset, length, where, total)
        total += len(data)
        tensor.raw_data = data
        del tensor.external_data[:]
        tensor.data_location = onnx.TensorProto.DEFAULT


def _entry(tensor: onnx.TensorProto, where: str) -> tuple[str, int, int | None]:
    entries = {e.key: e.value for e in tensor.external_data}
    location = entries.get("location", "")
    try:
        offset = int(entries.get("offset", "0"))
        length = int(entries["length"]) if "length" in entries else None
    except ValueError:
        raise ModelLoadError(f"{where} has an invalid external data entry: offset and "
                             "length must be integers") from None
    if not location or "\x00" in location or offset < 0 or (length is not None and length < 0):
        raise ModelLoadError(f"{where} has an invalid external data entry (location "
                             f"{_shown(location)}, offset {offset}, length {length})")
    if length is None:
        length = _declared_bytes(tensor, where)
    return location, offset, length


def _declared_bytes(tensor: onnx.TensorProto, where: str) -> int | None:
    """The byte size the tensor's dims and type imply (None for strings)."""
    try:
        itemsize = helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except (KeyError, TypeError, ValueError):
        raise ModelLoadError(f"{where} has an unknown element type "
                             f"{tensor.data_type}") from None
    if tensor.data_type == onnx.TensorProto.STRING:
        return None
    return budget.count(tensor.dims) * itemsize


def _inside(folder: Path, location: str, where: str) -> Path:
    """The file ``location`` names, if it lies inside ``folder``. The check uses the
    path only (symbolic links resolved), never whether the file exists, so the error
    for a secret file and for a missing one is the same."""
    refused = ModelLoadError(f"{where} refers to external data {_shown(location)} outside "
                             f"the model's folder {folder}; refusing to read it")
    if os.path.isabs(location):
        raise refused
    try:
        target = (folder / location).resolve()
    except (OSError, RuntimeError, ValueError):  # a name too long, a symlink loop
        raise ModelLoadError(f"{where} has an invalid external data location "
                             f"{_shown(location)}") from None
    if not target.is_relative_to(folder) or target == folder:
        raise refused
    return target


def _read(target: Path, location: str, offset: int, length: int | None, where: str,
          already: int) -> bytes:
    """``length`` bytes (None: to the end) at ``offset`` of the regular file ``target``,
    if ``already`` bytes of external data plus these fit the budget."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        descriptor = os.open(target, flags)
    except FileNotFoundError:
        raise ModelLoadError(f"{where}: external data file {_shown(location)} not found "
                             "in the model's folder") from None
    except OSError as exc:
        raise ModelLoadError(f"{where}: cannot open external data file {_shown(location)}: "
                             f"{exc.strerror}") from None
    with os.fdopen(descriptor, "rb") as file:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ModelLoadError(f"{where}: external data {_shown(location)} is not a "
                                 "regular file")
        if info.st_nlink > 1:
            raise ModelLoadError(f"{where}: external data file {_shown(location)} has "
                                 "other hard links; refusing to read it")
        size = info.st_size - offset if length is None else length
        if offset + max(size, 0) > info.st_size or size < 0:
            raise ModelLoadError(f"{where}: external data {_shown(location)} is too short "
                                 f"(offset {offset}, length {size}, file {info.st_size} "
                                 "bytes)")
        budget.check_bytes(already + size, "the model's external data")
        file.seek(offset)
        data = file.read(size)
    if len(data) != size:
        raise ModelLoadError(f"{where}: external data {_shown(location)} ended early")
    return data


def _shown(location: str) -> str:
    if len(location) > _LOCATION_SHOWN:
        return repr(location[:_LOCATION_SHOWN]) + f"... ({len(location)} characters)"
    return repr(location)
