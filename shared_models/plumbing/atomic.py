"""One way to write state: all or nothing, and still there after a crash.

Every writer of state (privacy ledgers, round and model checkpoints, the run
folder, certificates and keys, the corpus cache) goes through
:func:`atomic_path`: the content is written to a temporary file in the target's
folder, flushed and fsynced, renamed over the target (or linked to it, when an
existing file must never be replaced), and the folder is fsynced so the rename
itself survives a power cut. On any failure the temporary file is removed and
the target is left as it was.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_folder",
    "atomic_path",
    "atomic_write",
    "atomic_write_json",
    "fsync_folder",
    "json_safe",
]


@contextlib.contextmanager
def atomic_path(path: Path, *, mode: int = 0o644, replace: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it becomes ``path``.

    Args:
        path: the file to (re)write.
        mode: permission bits the temporary file is created with (before any
            content is written: a private key is never readable by others).
        replace: replace an existing ``path``; with ``False`` an existing file
            (even one that appears meanwhile) makes it raise ``FileExistsError``.

    The block writes the temporary file (by path, e.g. ``save_file(tensors, tmp)``);
    it is fsynced, renamed or linked into place, and the folder fsynced.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode))
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise
            except OSError:  # a file system without hard links: check, then rename
                if path.exists():
                    raise FileExistsError(errno.EEXIST, "File exists", str(path)) from None
                os.replace(tmp, path)
            tmp.unlink(missing_ok=True)
        fsync_folder(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: Path, data: bytes | str, *, mode: int = 0o644, replace: bool = True) -> None:
    """Write ``data`` (text as UTF-8) to ``path`` with :func:`atomic_path`."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_path(path, mode=mode, replace=replace) as tmp:
        tmp.write_bytes(raw)


def atomic_write_json(path: Path, data: Any, *, indent: int | None = 2) -> None:
    """Write ``data`` as JSON with :func:`atomic_path`; NaN and infinity (not JSON) become null."""
    text = json.dumps(json_safe(data), indent=indent, allow_nan=False, default=str)
    atomic_write(path, text + "\n")


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float (not valid JSON) replaced by ``None``."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


@contextlib.contextmanager
def atomic_folder(path: Path, *, mode: int = 0o700, replace: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it becomes ``path``.

    Args:
        path: the folder to create.
        mode: its permission bits (owner only by default, like the private data
            a data folder holds).
        replace: replace an existing ``path`` (moved aside, then removed);
            with ``False`` an existing non-empty ``path`` makes the rename fail
            with ``OSError``, and an empty one is replaced.

    On an error the temporary folder is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    os.chmod(tmp, mode)
    try:
        yield tmp
        if replace and path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            path.rename(old / path.name)
            shutil.rmtree(old, ignore_errors=True)
        os.rename(tmp, path)  # replaces an empty folder; refuses a non-empty one
        fsync_folder(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def fsync_folder(folder: Path) -> None:
    """Make a rename or new file in ``folder`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
