"""Reading and writing the files of the front ends (the CLI, golden vectors) safely.

- ``.npy``/``.npz`` files are untrusted: pickles are refused, and every array's declared
  size (its header; a zip member's uncompressed size) is checked against the byte
  budget and the file's own size before anything is allocated.
- Output files are written exactly where asked, atomically (a temporary file in the
  same folder, renamed over the target), so a failure leaves nothing half-written; a
  target that is a directory, a device, a symbolic link or another non-regular file is
  refused rather than followed.
- Names from a model (node names) are made safe for archive member names and for the
  terminal.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

import numpy as np

from . import budget
from .errors import InputError

_SAFE_MEMBER = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-+")


def read_npy(path: str | Path) -> np.ndarray:
    """The array in an ``.npy`` file, after checking its header against the budget."""
    file = _regular_file(path, "input file")
    try:
        with open(file, "rb") as stream:
            nbytes = _header_bytes(stream, str(path))
            remaining = os.fstat(stream.fileno()).st_size - stream.tell()
            if nbytes > remaining:
                raise InputError(f"{path}: its header declares {nbytes} bytes of data, but "
                                 f"the file holds {remaining}")
            stream.seek(0)
            return np.load(stream, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"cannot read {path} as a .npy array (pickles are refused): "
                         f"{exc}") from exc


def read_npz(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` archive, after checking every member's uncompressed
    size (a zip bomb) and declared array size against the budget."""
    file = _regular_file(path, "archive")
    try:
        with zipfile.ZipFile(file) as archive:
            members = archive.infolist()
            budget.check_bytes(sum(m.file_size for m in members),
                               f"the arrays of {path} (uncompressed)", InputError)
            arrays = {}
            for member in members:
                name = member.filename.removesuffix(".npy")
                with archive.open(member) as stream:
                    nbytes = _header_bytes(stream, f"{path}, member {member.filename!r}")
                    if nbytes > member.file_size:
                        raise InputError(f"{path}, member {member.filename!r}: its header "
                                         f"declares more data than the member holds")
                with archive.open(member) as stream:
                    arrays[name] = np.lib.format.read_array(stream, allow_pickle=False)
            return arrays
    # zipfile raises NotImplementedError for a compression method it does not implement
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, NotImplementedError) as exc:
        raise InputError(f"cannot read {path} as an .npz of arrays (pickles are refused): "
                         f"{exc}") from exc


def _regular_file(path: str | Path, what: str) -> Path:
    file = Path(path)
    try:
        if not file.is_file():
            raise InputError(f"{what} not found (or not a regular file): {path}")
        budget.check_bytes(file.stat().st_size, f"the {what} {path}", InputError)
    except OSError as exc:
        raise InputError(f"cannot read {what} {path}: {exc.strerror}") from exc
    return file


def _header_bytes(stream: IO[bytes], what: str) -> int:
    """The data size an ``.npy`` header declares (checked against the budget)."""
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(stream)
    else:
        shape, _, dtype = np.lib.format.read_array_header_2_0(stream)
    if dtype.hasobject:
        raise InputError(f"{what} holds Python objects (a pickle); refused")
    nbytes = budget.count(shape) * dtype.itemsize
    budget.check_bytes(nbytes, f"the array of shape {list(shape)} in {what}", InputError)
    return nbytes


def write_atomically(path: str | Path, write: Callable[[IO[bytes]], object]) -> Path:
    """Write exactly ``path`` with ``write(stream)``: into a temporary file in the same
    folder, then renamed over ``path``. An existing ``path`` must be a regular file
    (never followed if it is a symbolic link)."""
    target = Path(path)
    _check_target(target)
    folder = target.parent
    try:
        descriptor, temporary = tempfile.mkstemp(prefix=f".{target.name[:64]}.",
                                                 suffix=".tmp", dir=folder)
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(descriptor, "wb") as stream:
            write(stream)
        os.chmod(temporary, 0o644 & ~_umask())
        os.replace(temporary, target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise InputError(f"cannot write {path}: {exc.strerror or exc}") from exc
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return target


def _check_target(target: Path) -> None:
    try:
        info = os.lstat(target)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise InputError(f"cannot write {target}: {exc.strerror}") from exc
    if stat.S_ISLNK(info.st_mode):
        raise InputError(f"refusing to write {target}: it is a symbolic link")
    if stat.S_ISDIR(info.st_mode):
        raise InputError(f"refusing to write {target}: it is a directory")
    if not stat.S_ISREG(info.st_mode):
        raise InputError(f"refusing to write {target}: it is not a regular file")


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def archive_member(name: str) -> str:
    """``name`` as one safe path component of an archive member: characters outside
    ``[A-Za-z0-9._+-]`` are percent-encoded (so ``fc1/../../x`` stays one name, and
    `urllib.parse.unquote` gives the node name back); a name of dots is encoded too."""
    encoded = "".join(c if c in _SAFE_MEMBER else "".join(f"%{b:02X}" for b in c.encode())
                      for c in name)
    if not encoded.strip("."):
        encoded = encoded.replace(".", "%2E")
    return encoded


def printable(text: str) -> str:
    """``text`` with control characters (newlines, ANSI escapes) written as escapes, so
    that a model's names cannot forge or colour terminal lines."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in text)
