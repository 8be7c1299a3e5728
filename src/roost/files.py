"""Replacing a small file atomically: main.cf (``roost conf -e``), a passwd-file
(``roost user``), the self-signed certificate and its key; and starting a file's
write-back early (:func:`start_writeback`: the spool's queue files, Maildir deliveries).

Blocking (writes and fsyncs): for the command line, start-up and worker threads, not the
event loop.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Final

__all__ = ["existing_mode", "start_writeback", "write_atomically"]

_SYNC_FILE_RANGE_WRITE: Final = 2


@functools.cache
def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """``sync_file_range(2)`` from the C library (Linux), found at the first call (the
    lookup runs ``ldconfig``: only processes that write mail pay it); None elsewhere."""
    name = ctypes.util.find_library("c")
    try:
        function = ctypes.CDLL(name, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


def start_writeback(fd: int) -> None:
    """Ask the kernel to start writing ``fd``'s dirty pages now, without waiting
    (``sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE)``; nothing where it is missing),
    so that the files of a batch are written in parallel before their fsyncs. A hint:
    errors surface in the fsync, which remains the caller's."""
    function = _sync_file_range()
    if function is not None:
        function(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)


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
