"""Where the commands write their files: a new folder in the current directory unless
``--out`` says otherwise, never into the source tree unless asked."""

from __future__ import annotations

from pathlib import Path

from .errors import InputError


def new_folder(stem: str, parent: str | Path = ".") -> Path:
    """Create and return a folder that did not exist before: ``parent/stem``, else
    ``stem-2``, ``stem-3``, ... (`InputError` if ``parent`` is not writable)."""
    base = Path(parent)
    for k in range(1, 10_000):
        folder = base / (stem if k == 1 else f"{stem}-{k}")
        try:
            folder.mkdir(parents=True)
        except FileExistsError:
            continue
        except OSError as exc:
            raise InputError(f"cannot create the output folder {folder}: {exc}") from exc
        return folder
    raise InputError(f"no free name for a new folder {stem!r} in {base}")


def out_folder(out: str | Path | None, stem: str) -> Path:
    """``out`` (created if missing), or a new folder ``stem`` in the current directory."""
    if out is None:
        return new_folder(stem)
    folder = Path(out)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the output folder {folder}: {exc}") from exc
    return folder
