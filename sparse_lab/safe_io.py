"""Files that survive a kill and load without pickle: written to a temporary file in the destination's
folder, flushed to disk and renamed over the destination (``os.replace``), so a process killed mid-write
(SIGKILL, a crashed node) leaves the previous file whole; read with ``torch.load(weights_only=True)``,
a bad file being one UserError line. Only torch is imported here.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch

from sparse_lab.errors import UserError


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to ``path`` so that ``path`` is always either the previous file or the new one."""
    atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
    """``write(file)`` into ``path`` so that ``path`` is always either the previous file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:  # the rename itself reaches the disk with the folder's entry
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load(path: str | os.PathLike, what: str = "checkpoint") -> dict:
    """``torch.load(path, weights_only=True)`` onto the CPU; a missing, truncated, corrupt or foreign
    file is one UserError line naming it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        reason = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise UserError(f"{what} {path} cannot be read (truncated, corrupt or not a checkpoint): {reason}") from None
    if not isinstance(data, dict):
        raise UserError(f"{what} {path} is not a checkpoint (it holds a {type(data).__name__})")
    return data
