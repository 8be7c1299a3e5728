"""File-system policy shared by a store's mailboxes: modes, ownership, fsync."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["FsPolicy", "unlink_quietly", "write_all"]


@dataclass(frozen=True, slots=True)
class FsPolicy:
    """How a store creates files.

    Attributes:
        uid: owner to give new files and directories (None: the process's).
        gid: group to give them (None: the process's).
        fsync: make message files, the uidlist and keywords durable before use.
        dir_mode: permission bits of new directories (Dovecot copies the root's).
        file_mode: permission bits of new files (``dir_mode & 0o666``).
    """

    uid: int | None = None
    gid: int | None = None
    fsync: bool = True
    dir_mode: int = 0o700
    file_mode: int = 0o600

    @property
    def changes_owner(self) -> bool:
        """True when new files must be chown()ed."""
        return self.uid is not None or self.gid is not None

    def _ids(self) -> tuple[int, int]:
        return (-1 if self.uid is None else self.uid, -1 if self.gid is None else self.gid)

    def chown_fd(self, fd: int) -> None:
        """Give an open file the configured owner (no-op without one)."""
        if self.changes_owner:
            os.fchown(
                fd, -1 if self.uid is None else self.uid, -1 if self.gid is None else self.gid
            )

    def chown_path(self, path: str) -> None:
        """Give a path the configured owner (no-op without one)."""
        if self.changes_owner:
            os.chown(
                path, -1 if self.uid is None else self.uid, -1 if self.gid is None else self.gid
            )

    def mkdir(self, path: Path | str) -> None:
        """Create one directory with ``dir_mode`` and the owner.

        Raises:
            FileExistsError: it exists.
            OSError: any other failure.
        """
        os.mkdir(path, self.dir_mode)
        os.chmod(path, self.dir_mode)  # the umask may have removed bits
        self.chown_path(os.fspath(path))

    def fsync_dir(self, path: Path | str) -> None:
        """fsync a directory after renames into it (when ``fsync`` is on)."""
        if not self.fsync:
            return
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_all(fd: int, data: bytes | memoryview) -> None:
    """Write everything, however many ``write`` calls it takes."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def unlink_quietly(path: Path | str) -> None:
    """Remove a file if it exists."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
