"""Replacing a small file atomically: main.cf (``roost conf -e``), a passwd-file
(``roost user``), the self-signed certificate and its key.

Blocking (writes and fsyncs): for the command line and start-up, not the event loop.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["existing_mode", "write_atomically"]


def existing_mode(path: Path, default: int) -> int:
    """The permission bits of ``path`` (e.g. ``0o644``), or ``default`` when it does not
    exist."""
    try:
        return os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        return default


def write_atomically(path: Path, data: bytes, mode: int) -> None:
    """Replace ``path`` with ``data``: readers see the old file or the new one, never a
    part, and after a crash the file is one of the two.

    The data goes to a temporary file in the same directory, which gets ``mode`` (before
    any byte is written: a key is never readable by others) and is fsynced, then renamed
    over ``path``; the directory is fsynced last. On failure the temporary file is
    removed and ``path`` is unchanged.

    Args:
        path: the file to replace (or create); its directory must exist.
        data: the new content, in bytes.
        mode: the new file's permission bits, e.g. ``0o600``.

    Raises:
        OSError: the file or its directory cannot be written.
    """
    fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as temp:
            os.fchmod(temp.fileno(), mode)
            temp.write(data)
            temp.flush()
            os.fsync(temp.fileno())
        os.replace(temp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp_name)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
