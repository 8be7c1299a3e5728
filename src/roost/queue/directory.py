"""The queue directory on disk: blocking, thread-safe primitives and crash recovery.

This is the synchronous half of the spool. :class:`QueueDirectory` knows the layout, the
file names and the order of system calls that makes every change atomic and durable. The
daemon uses it through the asyncio :class:`roost.queue.spool.Spool` (which runs it in
threads and batches fsyncs); command-line tools (``mailq``, ``roost queue``) may call it
directly. ``docs/spool.md`` is the reference for everything written here.

A message is one *queue file* ``<queue>/<ID>``: the content, then the envelope, then a
fixed-size trailer that commits it (the trailer is to roost what the queue file's mode bit
is to Postfix). An envelope changed later by the queue manager lives beside it in
``<queue>/<ID>.env`` and overrides the one inside the queue file.

Every change is a *job* with the same phases, so that many jobs can share one batch:

1. ``prepare``: write new files (a new queue file, envelope temp files) and list their fds,
   and the directories whose new entries must be durable (``sync_dirs``).
2. the batch flushes every listed fd and directory at once (``fdatasync`` from several
   threads, or one ``syncfs``). A new message is committed here: no rename follows.
3. ``apply``: the renames and links that make other changes visible, and list the
   directories they touched.
4. the batch fsyncs each touched directory once (Postfix parameter ``queue_directory``).
5. ``finish``: tidy up what no longer matters for correctness (close fds, unlink the
   source's envelope after a move); ``rollback`` instead when any phase failed.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import ctypes.util
import enum
import errno
import fcntl
import io
import logging
import os
import random
import stat
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence, Set
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final, Protocol

from roost.files import start_writeback
from roost.queue.envelope import Envelope, EnvelopeError
from roost.queue.errors import SpoolError, SpoolErrorKind
from roost.queue.queue_id import QUEUE_ID_LENGTH, is_queue_id

__all__ = [
    "DEFAULT_POOL_LIMIT",
    "ENVELOPE_SUFFIX",
    "POOL_DIRECTORY",
    "TEMP_SUFFIX",
    "TRAILER_LENGTH",
    "QueueDirectory",
    "QueueFileLayout",
    "QueueName",
    "RecoveryReport",
    "SyncMethod",
]

logger = logging.getLogger("roost.queue")

#: ``ID.env``: a newer envelope that overrides the one inside the queue file ``ID``.
ENVELOPE_SUFFIX: Final = ".env"
#: Files being written end in ``.tmp``; they are never part of a committed message.
TEMP_SUFFIX: Final = ".tmp"
_FILE_MODE: Final = 0o600
_DIR_MODE: Final = 0o700
_READ_CHUNK: Final = 64 * 1024

#: The trailer that ends (and commits) every queue file; see docs/spool.md.
_TRAILER_MAGIC: Final = b"roost-queue-file 1 "
#: Bytes in the trailer: magic, content length (16 hex digits), envelope length (8), CRC-32
#: of content and envelope (8), separated by spaces, and a newline.
TRAILER_LENGTH: Final = len(_TRAILER_MAGIC) + 16 + 1 + 8 + 1 + 8 + 1
#: Queues where new queue files are created (and may be found unfinished after a crash);
#: every queue file in another queue got there by a rename of a committed one.
_CREATED_IN: Final = frozenset({"incoming", "maildrop"})
_TEMP_ENVELOPE: Final = ENVELOPE_SUFFIX + TEMP_SUFFIX
#: The pool of recycled queue files: a directory beside the queues, not a queue (no
#: message is ever in it). See docs/spool.md, "Recycled queue files".
POOL_DIRECTORY: Final = "free"
#: Most empty files kept in the pool; a removal beyond it unlinks the queue file.
DEFAULT_POOL_LIMIT: Final = 256
#: Seconds between two counts of the pool's files (each process counts for itself, and
#: knows only its own adds and takes in between: the workers take what the master adds).
_POOL_RECOUNT: Final = 0.1
#: Seconds a process waits before listing an empty pool again.
_POOL_RELIST: Final = 0.005


class QueueName(enum.StrEnum):
    """The queues: subdirectories of ``queue_directory``, as in Postfix's qmgr(8)."""

    MAILDROP = "maildrop"
    """Submitted by sendmail(1) while the daemon is down; picked up into incoming."""
    INCOMING = "incoming"
    """Newly received and committed; waiting for the queue manager."""
    ACTIVE = "active"
    """Being delivered by the queue manager; moved back to incoming after a crash."""
    DEFERRED = "deferred"
    """Some recipients failed temporarily; waiting for their ``next_try``."""
    HOLD = "hold"
    """Set aside by the administrator (``roost queue hold``); never delivered."""
    CORRUPT = "corrupt"
    """Unreadable envelopes, kept for the administrator to inspect."""


class SyncMethod(enum.Enum):
    """How a batch makes its new files durable before the commit rename."""

    FSYNC = "fsync"
    """``fdatasync`` each new file, from several threads at once (write-back is started
    early with ``sync_file_range`` on Linux). Correct on any POSIX file system."""
    SYNCFS = "syncfs"
    """One ``syncfs(2)`` for the whole file system (Linux). Fastest when the queue directory
    has a file system of its own; with other busy writers on it, it waits for their data
    too."""


@dataclass(frozen=True, slots=True)
class RecoveryReport:
    """What :meth:`QueueDirectory.recover` did.

    Attributes:
        removed: paths relative to the queue directory of the temp files, unfinished
            queue files and left-over ``ID.env`` files deleted, e.g.
            ``incoming/4Wk3nB0h2Fz1x``.
        requeued: queue IDs moved from ``active/`` back to ``incoming/``.
        corrupt: queue IDs whose queue file (outside ``incoming/`` and ``maildrop/``) had
            no valid trailer, moved to ``corrupt/``.
    """

    removed: tuple[str, ...] = ()
    requeued: tuple[str, ...] = ()
    corrupt: tuple[str, ...] = ()


def _load_syncfs() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        function = ctypes.CDLL(name, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int]
    function.restype = ctypes.c_int
    return function


def _load_renameat2() -> Callable[[int, bytes, int, bytes, int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        function = ctypes.CDLL(name, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    ]
    function.restype = ctypes.c_int
    return function


_renameat2: Final = _load_renameat2()
_RENAME_NOREPLACE: Final = 1
_syncfs: Final = _load_syncfs()
_fdatasync: Final = getattr(os, "fdatasync", os.fsync)


def _call_syncfs(fd: int) -> None:
    if _syncfs is None:
        raise OSError(errno.ENOSYS, "syncfs is not available on this system")
    if _syncfs(fd) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def _rename_noreplace(src_dir: int, src: str, dst_dir: int, dst: str) -> None:
    """Rename ``src`` (relative to the directory fd ``src_dir``) to ``dst`` (relative to
    ``dst_dir``), failing with ``EEXIST`` rather than replacing an existing ``dst``: the
    ``O_EXCL`` of a queue file taken from the pool. Falls back to a plain rename where
    ``renameat2(2)`` or its flag is missing (queue IDs are unique anyway).

    Raises:
        OSError: the rename failed (``FileNotFoundError``: ``src`` is gone).
    """
    if _renameat2 is not None:
        if _renameat2(src_dir, src.encode(), dst_dir, dst.encode(), _RENAME_NOREPLACE) == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOSYS):
            raise OSError(code, os.strerror(code), src)
    os.rename(src, dst, src_dir_fd=src_dir, dst_dir_fd=dst_dir)


def _write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data).cast("B")
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _close_quietly(fd: int | None) -> None:
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)


def _unlink_quietly(path: str | os.PathLike[str]) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        logger.warning("cannot remove %s: %s", path, exc.strerror)


def make_trailer(content_length: int, envelope_length: int, crc: int) -> bytes:
    """Render the trailer that ends and commits a queue file (docs/spool.md).

    Args:
        content_length: bytes of content at the start of the file.
        envelope_length: bytes of envelope (JSON and newline) after it; 0 when the
            envelope is only in ``ID.env``.
        crc: ``zlib.crc32`` of the content followed by the envelope.
    """
    return b"%s%016x %08x %08x\n" % (_TRAILER_MAGIC, content_length, envelope_length, crc)


@dataclass(frozen=True, slots=True)
class QueueFileLayout:
    """Where the parts of a committed queue file are, read from its trailer.

    Attributes:
        content_length: bytes of content, from offset 0.
        envelope_length: bytes of envelope after the content (0: only in ``ID.env``).
        crc: CRC-32 of content and envelope, as the trailer states it.
    """

    content_length: int
    envelope_length: int
    crc: int


def parse_trailer(trailer: bytes, file_size: int) -> QueueFileLayout | None:
    """Parse a queue file's last :data:`TRAILER_LENGTH` bytes; None unless it is a valid
    trailer whose lengths add up to ``file_size`` (i.e. the file is committed)."""
    if len(trailer) != TRAILER_LENGTH or not trailer.startswith(_TRAILER_MAGIC):
        return None
    fields = trailer[len(_TRAILER_MAGIC) : -1].split(b" ")
    if trailer[-1:] != b"\n" or len(fields) != 3:
        return None
    content_field, envelope_field, crc_field = fields
    if len(content_field) != 16 or len(envelope_field) != 8 or len(crc_field) != 8:
        return None
    try:
        content_length = int(content_field, 16)
        envelope_length = int(envelope_field, 16)
        crc = int(crc_field, 16)
    except ValueError:
        return None
    if content_length + envelope_length + TRAILER_LENGTH != file_size:
        return None
    return QueueFileLayout(content_length, envelope_length, crc)


def _read_layout(fd: int) -> QueueFileLayout | None:
    """Read the trailer of the open queue file ``fd``; None when it is not committed."""
    size = os.fstat(fd).st_size
    if size < TRAILER_LENGTH:
        return None
    return parse_trailer(os.pread(fd, TRAILER_LENGTH, size - TRAILER_LENGTH), size)


def _crc_matches(fd: int, layout: QueueFileLayout) -> bool:
    """Check the CRC-32 of content and envelope against the trailer (reads the file)."""
    crc = 0
    offset = 0
    remaining = layout.content_length + layout.envelope_length
    while remaining > 0:
        chunk = os.pread(fd, min(remaining, 1024 * 1024), offset)
        if not chunk:
            return False
        crc = zlib.crc32(chunk, crc)
        offset += len(chunk)
        remaining -= len(chunk)
    return crc == layout.crc


class _ContentReader(io.RawIOBase):
    """Reads the first ``limit`` bytes of a queue file (its content) and nothing after."""

    def __init__(self, raw: io.FileIO, limit: int) -> None:
        super().__init__()
        self._raw = raw
        self._remaining = limit

    def readable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._raw.fileno()

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._remaining <= 0:
            return 0
        view = memoryview(buffer).cast("B")
        got = self._raw.readinto(view[: min(len(view), self._remaining)]) or 0
        self._remaining -= got
        return got

    def close(self) -> None:
        try:
            self._raw.close()
        finally:
            super().close()


def _create_locked(path: str) -> int:
    """Create the queue file ``path`` exclusively and hold an exclusive ``flock`` on it.

    ``O_EXCL``: queue IDs of two processes can never clash on disk. The lock tells
    :meth:`QueueDirectory.recover` in another process (a daemon starting while sendmail(1)
    writes into ``maildrop/``, or another worker process of the daemon) that the file is
    being written. Between ``open`` and ``flock`` recovery may take the lock and delete the
    new file; the link count says so, and the caller gets ``EAGAIN`` (temporary). The lock
    and the ``fstat`` cost about 2 us of CPU per message here (measured): the create's cost
    is the directory update in the file system's journal, not these calls.

    Returns:
        The open, locked, write-only file descriptor.

    Raises:
        OSError: creating or locking failed (``EEXIST`` when the name is taken).
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.fstat(fd).st_nlink == 0:
            raise OSError(errno.EAGAIN, "new queue file was removed by recovery")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _hold_for_reading(fd: int, path: str) -> bool:
    """Take a shared ``flock`` on the open queue file ``fd`` and tell whether ``path``
    still names it.

    The lock keeps the queue manager from recycling the file while it is read (it then
    unlinks it instead, and the reader keeps the old content); waiting for it takes as
    long as a commit's last step or a recycle. The name check catches a file recycled
    (and perhaps reused for another message) between the reader's ``open`` and its lock.

    Raises:
        OSError: ``flock`` or ``fstat`` failed.
    """
    fcntl.flock(fd, fcntl.LOCK_SH)
    try:
        named = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    info = os.fstat(fd)
    return (named.st_ino, named.st_dev) == (info.st_ino, info.st_dev)


def _write_vector(fd: int, parts: Sequence[bytes | bytearray]) -> None:
    """Write ``parts`` one after another with as few ``writev`` calls as possible."""
    pending = [memoryview(part).cast("B") for part in parts if len(part)]
    while pending:
        written = os.writev(fd, pending)
        while pending and written >= len(pending[0]):
            written -= len(pending[0])
            pending.pop(0)
        if pending and written:
            pending[0] = pending[0][written:]


class _Creating(Protocol):
    """A queue file's create still running in an I/O thread: a ``Future[int]`` of its
    fd, or a spare queue file of :class:`roost.queue.spool.Spool` (which acts as one)."""

    def result(self, timeout: float | None = None) -> int: ...


class _Job:
    """One change to the queue; see the module docs for the phases."""

    __slots__ = ("error", "prepared", "queue_id", "sync_dirs", "sync_fds", "touched", "where")

    def __init__(self, queue_id: str, where: QueueName) -> None:
        self.queue_id = queue_id
        self.where = where
        self.prepared = False
        self.error: SpoolError | None = None
        self.sync_fds: list[int] = []
        self.sync_dirs: set[QueueName] = set()
        self.touched: set[QueueName] = set()

    def prepare(self, qd: QueueDirectory) -> None:
        """Write new files; add their fds to ``sync_fds``. Raise OSError or SpoolError."""

    def apply(self, qd: QueueDirectory) -> None:
        """Rename and link; add the changed queues to ``touched``. Raise OSError."""

    def finish(self, qd: QueueDirectory) -> None:
        """Clean up after success. Never raises."""

    def rollback(self, qd: QueueDirectory) -> None:
        """Undo what can be undone after a failure. Never raises."""

    def describe(self) -> str:
        """Name the message for error messages, e.g. ``incoming/4Wk3nB0h2Fz1x``."""
        return f"{self.where}/{self.queue_id}"

    def fail(self, exc: BaseException, action: str) -> None:
        if self.error is not None:
            return
        if isinstance(exc, SpoolError):
            self.error = exc
        elif isinstance(exc, OSError):
            self.error = SpoolError.from_os_error(exc, action, queue_id=self.queue_id)
        else:
            self.error = SpoolError(
                f"{action}: {exc!r}", SpoolErrorKind.LOCAL_ERROR, queue_id=self.queue_id
            )


class _CommitJob(_Job):
    """Commit a new message: finish its queue file (content tail, envelope, trailer).

    The file is committed once it and its directory entry are durable: the batch's flush
    phase does both (``sync_fds``, ``sync_dirs``); nothing is renamed.
    """

    __slots__ = (
        "_content_fd",
        "_content_length",
        "_crc",
        "_creating",
        "_dir_synced",
        "_envelope",
        "_owns_content",
        "_tail",
        "committed",
    )

    def __init__(
        self,
        queue: QueueName,
        queue_id: str,
        content_fd: int | None,
        tail: bytes | bytearray,
        envelope: bytes,
        *,
        content_length: int,
        crc: int = 0,
        dir_synced: bool = False,
        creating: _Creating | None = None,
    ) -> None:
        super().__init__(queue_id, queue)
        self._dir_synced = dir_synced  # the directory was fsynced after the file's create
        # The create of the queue file, still running in an I/O thread (content_fd is
        # then None): prepare() waits for it.
        self._creating = creating
        self._content_fd = content_fd
        self._owns_content = content_fd is not None  # never delete a file we did not create
        self._tail = tail
        self._envelope = envelope
        self._crc = crc
        self._content_length = content_length
        self.committed = False

    @property
    def queue(self) -> QueueName:
        return self.where

    def prepare(self, qd: QueueDirectory) -> None:
        if self._content_fd is None and self._creating is not None:
            creating, self._creating = self._creating, None
            self._content_fd = creating.result()  # raises the create's SpoolError
            self._owns_content = True
        if self._content_fd is None:
            self._content_fd = _create_locked(qd.file_name(self.where, self.queue_id))
            self._owns_content = True
        crc = zlib.crc32(self._envelope, zlib.crc32(self._tail, self._crc))
        trailer = make_trailer(self._content_length, len(self._envelope), crc)
        _write_vector(self._content_fd, (self._tail, self._envelope, trailer))
        self._tail = b""
        self.sync_fds.append(self._content_fd)
        if not self._dir_synced:
            self.sync_dirs.add(self.where)

    def apply(self, qd: QueueDirectory) -> None:
        self.committed = True  # durable since the flush phase: file and directory entry

    def finish(self, qd: QueueDirectory) -> None:
        _close_quietly(self._content_fd)  # releases a maildrop file's lock
        self._content_fd = None

    def rollback(self, qd: QueueDirectory) -> None:
        self.committed = False
        if self._creating is not None:  # withdrawn before prepare(): wait for the create
            creating, self._creating = self._creating, None
            try:
                self._content_fd = creating.result()
                self._owns_content = True
            except Exception:  # the create failed and left nothing behind
                pass
        if self._owns_content:
            _unlink_quietly(qd.file_name(self.where, self.queue_id))
        _close_quietly(self._content_fd)
        self._content_fd = None


class _UpdateJob(_Job):
    """Replace a committed message's envelope: write ``ID.env.tmp``, fsync, rename it over
    ``ID.env``."""

    __slots__ = ("_envelope", "_fd", "queue")

    def __init__(self, queue: QueueName, queue_id: str, envelope: bytes) -> None:
        super().__init__(queue_id, queue)
        self.queue = queue
        self._envelope = envelope
        self._fd: int | None = None

    def prepare(self, qd: QueueDirectory) -> None:
        qd.require_message(self.queue, self.queue_id)
        self._fd = os.open(
            qd.file_name(self.queue, self.queue_id, _TEMP_ENVELOPE),
            os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC,
            _FILE_MODE,
        )
        _write_all(self._fd, self._envelope)
        self.sync_fds.append(self._fd)

    def apply(self, qd: QueueDirectory) -> None:
        _close_quietly(self._fd)
        self._fd = None
        os.rename(
            qd.file_name(self.queue, self.queue_id, _TEMP_ENVELOPE),
            qd.file_name(self.queue, self.queue_id, ENVELOPE_SUFFIX),
        )
        self.touched.add(self.queue)

    def rollback(self, qd: QueueDirectory) -> None:
        _close_quietly(self._fd)
        self._fd = None
        _unlink_quietly(qd.file_name(self.queue, self.queue_id, _TEMP_ENVELOPE))


class _MoveJob(_Job):
    """Move a message between queues: its envelope first, then the queue file.

    ``dst/ID.env`` is put in place first (the new ``envelope``, written to ``dst/ID.env.tmp``
    and flushed; else a hard link to ``src/ID.env`` if there is one), then the queue file
    is renamed from ``src/ID`` to ``dst/ID``: that rename is the move's commit. After the
    directory fsyncs, ``src/ID.env`` (now stale) is unlinked. A crash leaves at worst an
    ``ID.env`` without its queue file, which recovery gives to the queue that holds ``ID``
    without an envelope of its own, or deletes (docs/spool.md, "Crash recovery").
    """

    __slots__ = (
        "_envelope",
        "_fd",
        "_moved",
        "_placed",
        "_src_envelope",
        "dst",
        "require_content",
        "src",
    )

    def __init__(
        self,
        src: QueueName,
        dst: QueueName,
        queue_id: str,
        envelope: bytes | None,
        *,
        require_content: bool = True,
    ) -> None:
        super().__init__(queue_id, src)
        if src == dst:
            raise ValueError(f"cannot move {queue_id} from {src} to itself")
        self.src = src
        self.dst = dst
        self._envelope = envelope
        self.require_content = require_content
        self._fd: int | None = None
        self._placed = False
        self._moved = False
        self._src_envelope = False

    def prepare(self, qd: QueueDirectory) -> None:
        if self.require_content:
            qd.require_message(self.src, self.queue_id)
        elif not os.path.lexists(qd.file_name(self.src, self.queue_id)):
            raise SpoolError(
                f"no such message in {self.src}", SpoolErrorKind.NOT_FOUND, queue_id=self.queue_id
            )
        if os.path.lexists(qd.file_name(self.dst, self.queue_id)):
            raise SpoolError(
                f"cannot move to {self.dst}: a message with this queue ID is there",
                SpoolErrorKind.LOCAL_ERROR,
                queue_id=self.queue_id,
            )
        if self._envelope is not None:
            self._fd = os.open(
                qd.file_name(self.dst, self.queue_id, _TEMP_ENVELOPE),
                os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC,
                _FILE_MODE,
            )
            _write_all(self._fd, self._envelope)
            self.sync_fds.append(self._fd)

    def apply(self, qd: QueueDirectory) -> None:
        dst_envelope = qd.file_name(self.dst, self.queue_id, ENVELOPE_SUFFIX)
        src_envelope = qd.file_name(self.src, self.queue_id, ENVELOPE_SUFFIX)
        if self._fd is not None:
            _close_quietly(self._fd)
            self._fd = None
            os.rename(qd.file_name(self.dst, self.queue_id, _TEMP_ENVELOPE), dst_envelope)
            self._placed = True
            self._src_envelope = os.path.lexists(src_envelope)
        else:
            # a stale dst/ID.env (left by an interrupted move) must not come into force
            with contextlib.suppress(FileNotFoundError):
                os.unlink(dst_envelope)
            try:
                os.link(src_envelope, dst_envelope)
            except FileNotFoundError:
                pass
            else:
                self._placed = self._src_envelope = True
        self.touched.add(self.dst)
        os.rename(qd.file_name(self.src, self.queue_id), qd.file_name(self.dst, self.queue_id))
        self._moved = True
        self.touched.add(self.src)

    def finish(self, qd: QueueDirectory) -> None:
        if self._src_envelope:
            _unlink_quietly(qd.file_name(self.src, self.queue_id, ENVELOPE_SUFFIX))

    def rollback(self, qd: QueueDirectory) -> None:
        _close_quietly(self._fd)
        self._fd = None
        _unlink_quietly(qd.file_name(self.dst, self.queue_id, _TEMP_ENVELOPE))
        if self._placed and not self._moved:
            _unlink_quietly(qd.file_name(self.dst, self.queue_id, ENVELOPE_SUFFIX))


class _RemoveJob(_Job):
    """Remove a message durably: the queue file first (the removal's commit), then
    ``ID.env``; the batch fsyncs the directory. (Without fsync, and recycling the queue
    file, :meth:`QueueDirectory.remove_many` removes.)"""

    __slots__ = ("queue",)

    def __init__(self, queue: QueueName, queue_id: str) -> None:
        super().__init__(queue_id, queue)
        self.queue = queue

    def apply(self, qd: QueueDirectory) -> None:
        try:
            os.unlink(qd.file_name(self.queue, self.queue_id))
        except FileNotFoundError:
            raise SpoolError(
                f"no such message in {self.queue}",
                SpoolErrorKind.NOT_FOUND,
                queue_id=self.queue_id,
            ) from None
        self.touched.add(self.queue)
        envelope = qd.file_name(self.queue, self.queue_id, ENVELOPE_SUFFIX)
        if _exists(envelope):  # only after an envelope update (most messages have none)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(envelope)


class _DiscardJob(_Job):
    """Clean up after a commit that was cancelled before its batch ran."""

    __slots__ = ("_commit",)

    def __init__(self, commit: _CommitJob) -> None:
        super().__init__(commit.queue_id, commit.queue)
        self._commit = commit

    def apply(self, qd: QueueDirectory) -> None:
        self._commit.rollback(qd)


class QueueDirectory:
    """The spool's files under ``queue_directory`` (blocking calls; thread-safe).

    Args:
        path: the queue directory (Postfix parameter ``queue_directory``), e.g.
            ``/var/spool/roost``.
        sync_method: how batches make new files durable.
        flush_threads: threads that ``fdatasync`` the files of one batch in parallel.
        pool_limit: most empty files kept in the pool of recycled queue files
            (``free/``; 0: none, removed queue files are unlinked). See
            :meth:`remove_many` and :meth:`take_pooled`.

    The methods block on disk I/O, fsync included: call them from a thread, or use
    :class:`roost.queue.spool.Spool` in the daemon.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        sync_method: SyncMethod = SyncMethod.FSYNC,
        *,
        flush_threads: int = 8,
        pool_limit: int = DEFAULT_POOL_LIMIT,
    ) -> None:
        self.path = Path(path)
        self._root = os.fspath(self.path)
        self.sync_method = sync_method
        self._flush_threads = flush_threads
        self._flush_pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._dir_fds: dict[QueueName, int] = {}
        self._lock = threading.Lock()
        self.pool_limit = pool_limit
        self._pool_dir: int | None = None
        # this process's view of the pool: names to try (shuffled, so that processes
        # taking at once rarely try the same), and an estimate of the pool's size
        self._pool_names: list[str] = []
        self._pool_listed = -1e9  # time.monotonic() of the last listing
        self._pool_count = 0
        self._pool_counted = -1e9  # time.monotonic() of the last count

    # -- names -----------------------------------------------------------------------------

    def queue_path(self, queue: QueueName) -> Path:
        """Return the directory of ``queue``."""
        return self.path / QueueName(queue).value

    def file_name(self, queue: QueueName, queue_id: str, suffix: str = "") -> str:
        """Return the path of ``<queue>/<queue_id><suffix>`` as a string (no pathlib: this
        is on the acceptance path)."""
        return f"{self._root}/{queue.value}/{queue_id}{suffix}"

    def content_path(self, queue: QueueName, queue_id: str) -> Path:
        """Return the path of the queue file ``<queue>/<queue_id>`` (content, envelope and
        trailer: read the content with :meth:`open_content`)."""
        return self.queue_path(queue) / queue_id

    def envelope_path(self, queue: QueueName, queue_id: str) -> Path:
        """Return the path of the overriding envelope ``<queue>/<queue_id>.env`` (present
        only after an update; :meth:`load_envelope` knows where the envelope is)."""
        return self.queue_path(queue) / (queue_id + ENVELOPE_SUFFIX)

    def pool_path(self) -> Path:
        """Return the directory of the pool of recycled queue files (``free/``)."""
        return self.path / POOL_DIRECTORY

    def temp_path(self, queue: QueueName, queue_id: str) -> Path:
        """Return the path of the envelope temp file ``<queue>/<queue_id>.env.tmp``."""
        return self.queue_path(queue) / (queue_id + _TEMP_ENVELOPE)

    # -- lifecycle -------------------------------------------------------------------------

    def create(self) -> None:
        """Create the queue directory and every queue subdirectory (mode 0700), durably.

        Raises:
            SpoolError: a directory cannot be created.
        """
        try:
            self.path.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
            created = False
            for directory in [*(self.queue_path(queue) for queue in QueueName), self.pool_path()]:
                try:
                    directory.mkdir(mode=_DIR_MODE)
                    created = True
                except FileExistsError:
                    pass
            if created:
                fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        except OSError as exc:
            raise SpoolError.from_os_error(exc, f"create {self.path}") from exc

    def close(self) -> None:
        """Close the cached directory descriptors and stop the flush threads.

        The object stays usable: both come back when needed.
        """
        with self._lock:
            fds, self._dir_fds = list(self._dir_fds.values()), {}
            if self._pool_dir is not None:
                fds.append(self._pool_dir)
                self._pool_dir = None
            pool, self._flush_pool = self._flush_pool, None
        for fd in fds:
            _close_quietly(fd)
        if pool is not None:
            pool.shutdown(wait=False)

    def __enter__(self) -> QueueDirectory:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _dir_fd(self, queue: QueueName) -> int:
        with self._lock:
            fd = self._dir_fds.get(queue)
            if fd is None:
                fd = os.open(self.queue_path(queue), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                self._dir_fds[queue] = fd
            return fd

    def _pool_fd(self) -> int:
        """The pool directory's descriptor (``free/``), opened once.

        Raises:
            OSError: it cannot be opened (e.g. missing: a spool made by an older release).
        """
        with self._lock:
            if self._pool_dir is None:
                self._pool_dir = os.open(
                    self.pool_path(), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
                )
            return self._pool_dir

    # -- the pool of recycled queue files -------------------------------------------------

    def _recycle_at(self, source: int, pool: int, queue_id: str, fd: int | None = None) -> bool:
        """Remove the queue file ``queue_id`` of the queue whose directory descriptor is
        ``source`` by moving it into the pool (descriptor ``pool``, known to have room),
        emptied (:meth:`remove_many`).

        On ext4 without a journal every freed inode makes later file creations slower
        (the allocator walks past recently freed inodes), so removed queue files are kept
        as empty files for :meth:`take_pooled`. Under the file's exclusive ``flock`` (a
        reader holding a shared one, or a writer, makes this give up): rename it to
        ``free/<queue_id>``, then truncate it to 0 bytes. Neither step is fsynced: like the
        unlink it replaces, a crash may bring the message back; a crash in between leaves
        an empty file in the queue or a non-empty one in the pool, both deleted by
        :meth:`recover`. The caller unlinks ``ID.env``.

        ``fd``: the file already open for writing (:meth:`read_new_message`), which saves
        an ``open``; this call closes it either way. It must be the file named
        ``queue_id`` in ``source`` (queue IDs are unique, and ``roost queue`` leaves the
        messages of the active queue alone).

        Returns:
            True when the file is gone from the queue (pooled); False when it is still
            there and the caller should unlink it: someone holds the file's lock, or the
            rename failed (a name taken, no space for a directory block).

        Raises:
            FileNotFoundError: there is no such file.
        """
        if fd is None:
            try:
                fd = os.open(queue_id, os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW, dir_fd=source)
            except FileNotFoundError:
                raise
            except OSError:
                return False  # e.g. not writable: the unlink may still work
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return False  # a reader (open_content) or a writer has it
            try:
                _rename_noreplace(source, queue_id, pool, queue_id)
            except FileNotFoundError:
                raise
            except OSError:  # EEXIST, or e.g. ENOSPC for a new directory block: unlink
                return False
            try:
                os.ftruncate(fd, 0)
            except OSError as exc:  # never leave content in the pool
                logger.warning("%s: cannot empty the recycled queue file: %s", queue_id, exc)
                with contextlib.suppress(OSError):
                    os.unlink(queue_id, dir_fd=pool)
                return True
        finally:
            os.close(fd)  # lets takers have it
        with self._lock:
            self._pool_count += 1
        return True

    def take_pooled(self, queue: QueueName, queue_id: str) -> int | None:
        """Take an empty file from the pool as the new queue file ``<queue>/<queue_id>``.

        For :class:`roost.queue.spool.Spool`'s spare queue files: the file's exclusive
        ``flock`` is taken first (a file being recycled, or taken by another process, is
        skipped), its size checked (0), then it is renamed into the queue, refusing to
        replace an existing name (the ``O_EXCL`` of :meth:`create_content`). Two processes
        may try the same file: one rename wins, the other tries the next name. The new
        directory entry is not fsynced: the caller fsyncs ``queue`` (and the pool, so that
        the old entry cannot outlive a crash beside the new one).

        Returns:
            The open, locked, write-only fd of the empty queue file (the caller owns it),
            or None when the pool has nothing to give (then create a file).

        Raises:
            SpoolError: the rename failed otherwise (e.g. ``EEXIST``: the queue ID is
                taken).
        """
        _check_queue_id(queue_id)
        if self.pool_limit <= 0:
            return None
        try:
            pool = self._pool_fd()
        except OSError:
            return None
        target = self._dir_fd(queue)
        while (name := self._next_pooled()) is not None:
            try:
                fd = os.open(name, os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW, dir_fd=pool)
            except OSError:
                continue  # taken by another process meanwhile
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                info = os.fstat(fd)
                if info.st_size or info.st_nlink != 1 or not stat.S_ISREG(info.st_mode):
                    os.close(fd)  # being recycled, or reused already: not ours
                    continue
                _rename_noreplace(pool, name, target, queue_id)
            except (BlockingIOError, FileNotFoundError):
                os.close(fd)
                continue
            except OSError as exc:
                os.close(fd)
                raise SpoolError.from_os_error(exc, f"create {queue}/", queue_id=queue_id) from exc
            with self._lock:
                self._pool_count -= 1
            return fd
        return None

    def pool_spare(self, queue: QueueName, queue_id: str, fd: int) -> None:
        """Put back an unused spare queue file (empty, locked by ``fd``) into the pool, or
        unlink it when the pool is full; close ``fd`` either way. Never raises."""
        try:
            if self.pool_limit > 0 and os.fstat(fd).st_size == 0 and self._pool_has_room():
                _rename_noreplace(self._dir_fd(queue), queue_id, self._pool_fd(), queue_id)
                with self._lock:
                    self._pool_count += 1
                _close_quietly(fd)
                return
        except OSError:
            pass
        try:
            _unlink_quietly(self.file_name(queue, queue_id))
        finally:
            _close_quietly(fd)

    def _next_pooled(self) -> str | None:
        """The next pool name to try; lists the pool when this process has none left (at
        most every ``_POOL_RELIST`` seconds)."""
        now = time.monotonic()
        with self._lock:
            if self._pool_names:
                return self._pool_names.pop()
            if now - self._pool_listed < _POOL_RELIST:
                return None
            self._pool_listed = now
        try:
            names = [name for name in os.listdir(self.pool_path()) if is_queue_id(name)]
        except OSError:
            names = []
        random.shuffle(names)
        with self._lock:
            self._pool_count = len(names)
            self._pool_counted = now
            self._pool_names = names
            return self._pool_names.pop() if self._pool_names else None

    def _pool_has_room(self) -> bool:
        """Whether the pool is below ``pool_limit``, by this process's estimate (counted
        again every ``_POOL_RECOUNT`` seconds: other processes take and add)."""
        if self.pool_limit <= 0:
            return False
        now = time.monotonic()
        with self._lock:
            if now - self._pool_counted < _POOL_RECOUNT:
                return self._pool_count < self.pool_limit
            self._pool_counted = now
        try:
            count = len(os.listdir(self.pool_path()))
        except OSError:
            count = self.pool_limit  # no pool (an older spool): recycle nothing
        with self._lock:
            self._pool_count = count
        return count < self.pool_limit

    # -- the batch engine ------------------------------------------------------------------

    def run_batch(self, jobs: Sequence[_Job]) -> None:
        """Run ``jobs`` together, sharing the flushes; each job's ``error`` tells its fate.

        Durability rule: no rename happens before every new file of the batch is flushed,
        and no job counts as done before every directory the batch changed is fsynced.
        """
        live = list(jobs)

        def drop(failed: Iterable[_Job]) -> None:
            for job in failed:
                job.rollback(self)
            failed_ids = {id(job) for job in failed}
            live[:] = [job for job in live if id(job) not in failed_ids]

        # Starting the writeback of each file as it is written lets the first flushes of a
        # batch overlap the writes of the rest; a batch of one flushes at once.
        writeback = len(live) > 1
        live[:] = [
            job for job in live if job.prepared or self.prepare_job(job, writeback=writeback)
        ]

        failed = self._flush_files(live)
        drop(failed)

        failed = []
        for job in live:
            try:
                job.apply(self)
            except Exception as exc:  # OSError, SpoolError; others are bugs, reported too
                job.fail(exc, f"rename {job.describe()}")
                failed.append(job)
        drop(failed)

        failed = []
        for queue in sorted({queue for job in live for queue in job.touched}):
            try:
                os.fsync(self._dir_fd(queue))
            except OSError as exc:
                for job in live:
                    if queue in job.touched:
                        job.fail(exc, f"fsync {queue}/")
                        failed.append(job)
        drop(failed)

        for job in live:
            job.finish(self)

    def prepare_job(self, job: _Job, *, writeback: bool = True) -> bool:
        """Run a job's first phase (writing its new files) ahead of its batch.

        The spool calls this from its I/O threads so that writing overlaps the committer's
        fsyncs; :meth:`run_batch` calls it for jobs not yet prepared.

        Args:
            job: the job.
            writeback: start the writeback of its new files at once (``sync_file_range``),
                so that they reach the disk while the rest of a batch is written.

        Returns:
            True on success; False after a failure (``job.error`` is set and the job rolled
            back; do not pass it to :meth:`run_batch`).
        """
        try:
            job.prepare(self)
        except Exception as exc:  # OSError, SpoolError; others are bugs, reported too
            job.fail(exc, f"write {job.describe()}")
            job.rollback(self)
            return False
        job.prepared = True
        if writeback and self.sync_method is SyncMethod.FSYNC:
            for fd in job.sync_fds:
                start_writeback(fd)
        return True

    def _flush_files(self, jobs: Sequence[_Job]) -> list[_Job]:
        """Make every job's new files and new directory entries durable; return the jobs
        whose flush failed."""
        if not any(job.sync_fds or job.sync_dirs for job in jobs):
            return []
        if self.sync_method is SyncMethod.SYNCFS:
            try:
                fd = next((fd for job in jobs for fd in job.sync_fds), None)
                _call_syncfs(self._dir_fd(QueueName.INCOMING) if fd is None else fd)
            except OSError as exc:
                for job in jobs:
                    job.fail(exc, "syncfs")
                return list(jobs)
            return []

        def flush(job: _Job) -> bool:
            try:
                for fd in job.sync_fds:
                    _fdatasync(fd)
            except OSError as exc:
                job.fail(exc, f"fsync {job.describe()}")
                return False
            return True

        def flush_dir(queue: QueueName) -> OSError | None:
            try:
                os.fsync(self._dir_fd(queue))
            except OSError as exc:
                return exc
            return None

        # New directory entries are made durable together with the files, in parallel:
        # one directory fsync per queue and batch (see docs/spool.md, "Why the directory").
        dirs = sorted({queue for job in jobs for queue in job.sync_dirs})
        if (len(jobs) + len(dirs)) > 1 and self._flush_threads > 1:
            # Flushes issued together share journal commits and overlap their waits: under
            # load, one flush after another costs N latencies, together about one.
            # The committer thread flushes the first file itself: one thread hand-off
            # fewer, which is what a lone message waits for.
            pool = self._flush_executor()
            dir_results = [pool.submit(flush_dir, queue) for queue in dirs]
            others = [pool.submit(flush, job) for job in jobs[1:]]
            results = [flush(jobs[0])] + [f.result() for f in others]
            dir_errors = {queue: f.result() for queue, f in zip(dirs, dir_results, strict=True)}
        else:
            results = [flush(job) for job in jobs]
            dir_errors = {queue: flush_dir(queue) for queue in dirs}
        for queue, error in dir_errors.items():
            if error is None:
                continue
            for job, ok in zip(jobs, results, strict=True):
                if ok and queue in job.sync_dirs:
                    job.fail(error, f"fsync {queue}/")
        return [
            job
            for job, ok in zip(jobs, results, strict=True)
            if not ok or any(dir_errors[queue] is not None for queue in job.sync_dirs)
        ]

    def _flush_executor(self) -> concurrent.futures.ThreadPoolExecutor:
        with self._lock:
            if self._flush_pool is None:
                self._flush_pool = concurrent.futures.ThreadPoolExecutor(
                    self._flush_threads, "roost-spool-flush"
                )
            return self._flush_pool

    def _run_one(self, job: _Job) -> None:
        self.run_batch([job])
        if job.error is not None:
            raise job.error

    # -- writing ---------------------------------------------------------------------------

    def require_message(self, queue: QueueName, queue_id: str) -> None:
        """Check that ``queue`` holds a committed message ``queue_id``.

        Raises:
            SpoolError: NOT_FOUND when it does not; LOCAL_ERROR when reading fails.
        """
        _check_queue_id(queue_id)
        try:
            layout = self._layout(queue, queue_id)
        except FileNotFoundError:
            layout = None
        except OSError as exc:
            raise SpoolError.from_os_error(exc, f"open {queue}/", queue_id=queue_id) from exc
        if layout is None:
            raise SpoolError(
                f"no such message in {queue}", SpoolErrorKind.NOT_FOUND, queue_id=queue_id
            )

    def has_message(self, queue: QueueName, queue_id: str) -> bool:
        """Tell whether ``queue`` holds a committed message ``queue_id`` (False on errors)."""
        try:
            return self._layout(queue, queue_id) is not None
        except OSError:
            return False

    def _layout(self, queue: QueueName, queue_id: str) -> QueueFileLayout | None:
        """Read a queue file's trailer; None when it is not committed.

        Raises:
            OSError: FileNotFoundError when there is no such file, or a read failure.
        """
        fd = os.open(self.file_name(queue, queue_id), os.O_RDONLY | os.O_CLOEXEC)
        try:
            return _read_layout(fd)
        finally:
            os.close(fd)

    def create_content(
        self, queue: QueueName, queue_id: str, *, sync_dir: bool = False, reuse: bool = False
    ) -> int:
        """Create the (uncommitted) queue file for a new message and lock it.

        Args:
            queue: where the message is created.
            queue_id: its queue ID.
            sync_dir: fsync the queue's directory after the create, so that the new entry
                is durable before the commit; the commit then flushes only the file
                (``_CommitJob(dir_synced=True)``). For a message received alone, while
                the client still sends its content (see docs/spool.md).
            reuse: take an empty file from the pool of recycled queue files when it has
                one (:meth:`take_pooled`; the pool's directory is then fsynced, so that
                the file's old name is gone for good before the message is written).

        Returns:
            A write-only fd holding an exclusive ``flock``; the caller owns it.

        Raises:
            SpoolError: the file cannot be created (or, with ``sync_dir``, its directory
                cannot be fsynced: the file is then removed).
        """
        _check_queue_id(queue_id)
        path = self.file_name(queue, queue_id)
        fd = self.take_pooled(queue, queue_id) if reuse else None
        if fd is not None:
            try:
                self.sync_pool()
            except SpoolError:
                _unlink_quietly(path)
                _close_quietly(fd)
                raise
        else:
            try:
                fd = _create_locked(path)
            except OSError as exc:
                raise SpoolError.from_os_error(exc, f"create {queue}/", queue_id=queue_id) from exc
        if sync_dir:
            try:
                os.fsync(self._dir_fd(queue))
            except OSError as exc:
                _unlink_quietly(path)
                _close_quietly(fd)
                raise SpoolError.from_os_error(exc, f"fsync {queue}/", queue_id=queue_id) from exc
        return fd

    def sync_queue(self, queue: QueueName) -> None:
        """fsync the directory of ``queue`` (its new entries become durable).

        Raises:
            SpoolError: the fsync failed.
        """
        try:
            os.fsync(self._dir_fd(queue))
        except OSError as exc:
            raise SpoolError.from_os_error(exc, f"fsync {queue}/") from exc

    def sync_pool(self) -> None:
        """fsync the pool's directory: the names taken from it are gone for good, so that
        after a crash no pool entry can name a file that became a message.

        Raises:
            SpoolError: the fsync failed.
        """
        try:
            os.fsync(self._pool_fd())
        except OSError as exc:
            raise SpoolError.from_os_error(exc, f"fsync {POOL_DIRECTORY}/") from exc

    def commit(
        self,
        queue: QueueName,
        queue_id: str,
        content: bytes,
        envelope: Envelope,
    ) -> None:
        """Store a complete message durably (the synchronous ``Spool.enqueue``).

        Args:
            queue: normally INCOMING; MAILDROP for sendmail(1) while the daemon is down.
            queue_id: a fresh queue ID; ``envelope.queue_id`` must be it.
            content: the message, exactly as received (CRLF line ends).
            envelope: its envelope; ``size`` must be ``len(content)``.

        Raises:
            ValueError: ``envelope.queue_id`` or ``envelope.size`` disagrees.
            SpoolError: the message could not be stored; nothing is left behind.
        """
        if envelope.queue_id != queue_id or envelope.size != len(content):
            raise ValueError("envelope queue_id and size must match the message")
        _check_queue_id(queue_id)
        self._run_one(
            _CommitJob(
                queue,
                queue_id,
                None,
                content,
                encode_envelope(envelope),
                content_length=len(content),
            )
        )

    def update_envelope(self, queue_id: str, envelope: Envelope, queue: QueueName) -> None:
        """Durably replace the envelope of a committed message (``ID.env.tmp``, fsync,
        rename over ``ID.env``, fsync the directory).

        Raises:
            ValueError: ``envelope.queue_id`` is not ``queue_id``.
            SpoolError: NOT_FOUND when there is no such message, else an I/O failure (the
                old envelope then stays in force).
        """
        _check_envelope_id(queue_id, envelope)
        self._run_one(_UpdateJob(queue, queue_id, encode_envelope(envelope)))

    def move(
        self,
        queue_id: str,
        from_queue: QueueName,
        to_queue: QueueName,
        *,
        envelope: Envelope | None = None,
    ) -> None:
        """Move a message to another queue, optionally storing a new envelope on the way.

        Raises:
            ValueError: the queues are the same, or ``envelope.queue_id`` is wrong.
            SpoolError: NOT_FOUND, or an I/O failure (the message is then in exactly one of
                the two queues; recovery tidies the rest).
        """
        if envelope is not None:
            _check_envelope_id(queue_id, envelope)
        _check_queue_id(queue_id)
        data = None if envelope is None else encode_envelope(envelope)
        self._run_one(_MoveJob(from_queue, to_queue, queue_id, data))

    def remove(self, queue_id: str, queue: QueueName, *, durable: bool = True) -> None:
        """Delete a message: its queue file first (the removal's commit), then its ``ID.env``.

        Args:
            queue_id: the message.
            queue: where it is.
            durable: fsync the directory before returning (the default). False is
                :meth:`remove_many` of this one message: no fsync, and the queue file
                kept in the pool of recycled files when there is room; after a crash the
                message may be back, whole (see :meth:`roost.queue.spool.Spool.remove`).

        Raises:
            SpoolError: NOT_FOUND when there is no such message, or an I/O failure.
        """
        if not durable:
            [error] = self.remove_many([(queue_id, queue)])
            if error is not None:
                raise error
            return
        _check_queue_id(queue_id)
        self._run_one(_RemoveJob(queue, queue_id))

    def remove_many(
        self,
        messages: Sequence[tuple[str, QueueName]],
        *,
        no_envelope_file: Set[str] = frozenset(),
        open_files: Mapping[str, int] | None = None,
    ) -> list[SpoolError | None]:
        """:meth:`remove` with ``durable=False`` for each message, in order: the queue
        manager's removal of delivered mail (a crash may bring a message back, whole).

        The same steps and outcomes per message as that call (queue file recycled into the
        pool when there is room, else unlinked; then ``ID.env``), with the per-message
        bookkeeping done once per call: queue IDs checked together, directory descriptors
        looked up once, no job object per message.

        Args:
            messages: (queue ID, queue) pairs.
            no_envelope_file: queue IDs known to have no ``ID.env`` (committed under a new
                queue ID, the envelope never rewritten): none is looked for.
            open_files: descriptors of some of the queue files, open for reading and
                writing (:meth:`read_new_message`), by queue ID: the recycling uses them
                instead of opening the files again. Each is closed by this call, whatever
                happens (also when it raises).

        Returns:
            Per message, in order: None when removed, else the :class:`SpoolError`
            (NOT_FOUND, or an I/O failure), as :meth:`remove` raises it.

        Raises:
            ValueError: a queue ID is malformed (nothing was removed).
        """
        files = dict(open_files) if open_files else {}
        try:
            return self._remove_many(messages, no_envelope_file, files)
        finally:
            for fd in files.values():  # those not handed on (a bad queue ID, a bug)
                _close_quietly(fd)

    def _remove_many(
        self,
        messages: Sequence[tuple[str, QueueName]],
        no_envelope_file: Set[str],
        files: dict[str, int],
    ) -> list[SpoolError | None]:
        """:meth:`remove_many`; takes (and closes) the descriptors it uses out of ``files``."""
        for queue_id, _ in messages:
            _check_queue_id(queue_id)
        pool: int | None = None
        if self.pool_limit > 0:
            with contextlib.suppress(OSError):
                pool = self._pool_fd()
        sources: dict[QueueName, int] = {}
        errors: list[SpoolError | None] = []
        for queue_id, queue in messages:
            try:
                source = sources.get(queue)
                if source is None:
                    source = sources[queue] = self._dir_fd(queue)
                fd = files.pop(queue_id, None) if files else None
                if pool is not None and self._pool_has_room():
                    recycled = self._recycle_at(source, pool, queue_id, fd)
                else:
                    if fd is not None:
                        os.close(fd)
                    recycled = False
                if not recycled:
                    os.unlink(queue_id, dir_fd=source)
                if queue_id not in no_envelope_file:
                    envelope = queue_id + ENVELOPE_SUFFIX
                    if _exists(envelope, source):  # only after an envelope update
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(envelope, dir_fd=source)
            except FileNotFoundError:
                errors.append(
                    SpoolError(
                        f"no such message in {queue}", SpoolErrorKind.NOT_FOUND, queue_id=queue_id
                    )
                )
            except OSError as exc:
                errors.append(
                    SpoolError.from_os_error(exc, f"remove {queue}/{queue_id}", queue_id=queue_id)
                )
            else:
                errors.append(None)
        return errors

    # -- reading ---------------------------------------------------------------------------

    def scan(self, queue: QueueName) -> list[str]:
        """List the committed messages in ``queue``, oldest first.

        In ``incoming/`` and ``maildrop/``, where queue files are created, each file's
        trailer is read so that files still being written are left out; in the other
        queues every queue file is committed (it got there by a rename) and only names are
        read.

        Returns:
            Queue IDs sorted by arrival (their sort order).

        Raises:
            SpoolError: the directory cannot be read.
        """
        try:
            with os.scandir(self.queue_path(queue)) as entries:
                ids = [entry.name for entry in entries if is_queue_id(entry.name)]
        except OSError as exc:
            raise SpoolError.from_os_error(exc, f"scan {queue}/") from exc
        if queue.value in _CREATED_IN:
            ids = [queue_id for queue_id in ids if self.has_message(queue, queue_id)]
        ids.sort()
        return ids

    def read_envelope_data(self, queue: QueueName, queue_id: str) -> bytes | None:
        """Return the bytes of a message's current envelope, without side effects.

        The envelope is ``ID.env`` when that exists, else the one inside the queue file.

        Returns:
            The envelope's JSON (and newline); None when there is no committed message.

        Raises:
            EnvelopeError: the queue file has no envelope (field ``file``).
            OSError: reading failed.
        """
        _check_queue_id(queue_id)
        path = self.file_name(queue, queue_id)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            layout = _read_layout(fd) if _hold_for_reading(fd, path) else None
            if layout is None:
                return None
            envelope = self.file_name(queue, queue_id, ENVELOPE_SUFFIX)
            if _exists(envelope):
                try:
                    with open(envelope, "rb") as handle:
                        return handle.read()
                except FileNotFoundError:
                    pass
            if layout.envelope_length == 0:
                raise EnvelopeError("file", "the queue file has no envelope and no ID.env")
            return os.pread(fd, layout.envelope_length, layout.content_length)
        finally:
            os.close(fd)

    def read_message_data(
        self, queue: QueueName, queue_id: str, content_limit: int, *, envelope_file: bool = True
    ) -> tuple[bytes, bytes | None] | None:
        """Read a message's current envelope and, when small, its content: one ``open``.

        For the queue manager's read of a just-committed message (a page-cache read): a
        queue file of at most ``content_limit`` bytes (content, envelope and trailer) is read
        whole with one ``pread``, so that the delivery need not open it again.

        Args:
            queue: where the message is.
            queue_id: the message.
            content_limit: the largest queue file, in bytes, whose content is returned.
            envelope_file: look for an ``ID.env`` beside the queue file. False only for a
                message just committed (a new queue file under a new queue ID, which no
                ``ID.env`` can belong to yet): it saves a system call per message.

        Returns:
            (envelope JSON, content or None when the file is larger than
            ``content_limit``); None when there is no committed message. The envelope is
            ``ID.env`` when that exists (and ``envelope_file``), as in
            :meth:`read_envelope_data`.

        Raises:
            EnvelopeError: the queue file has no envelope (field ``file``).
            OSError: reading failed.
        """
        _check_queue_id(queue_id)
        directory = self._dir_fd(queue)  # names relative to it: a one-component lookup
        try:
            fd = os.open(queue_id, os.O_RDONLY | os.O_CLOEXEC, dir_fd=directory)
        except FileNotFoundError:
            return None
        try:
            size = os.fstat(fd).st_size
            if size < TRAILER_LENGTH:
                return None
            if size > content_limit:
                layout = parse_trailer(os.pread(fd, TRAILER_LENGTH, size - TRAILER_LENGTH), size)
                data = None
            else:
                data = os.pread(fd, size, 0)
                layout = (
                    parse_trailer(data[size - TRAILER_LENGTH :], size)
                    if len(data) == size
                    else None
                )
            if layout is None:
                return None
            content = None if data is None else data[: layout.content_length]
            env_name = queue_id + ENVELOPE_SUFFIX
            try:
                env_fd = (
                    os.open(env_name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=directory)
                    if envelope_file and _exists(env_name, directory)
                    else None
                )
            except FileNotFoundError:
                env_fd = None
            if env_fd is not None:
                with open(env_fd, "rb") as handle:
                    return handle.read(), content
            if layout.envelope_length == 0:
                raise EnvelopeError("file", "the queue file has no envelope and no ID.env")
            start = layout.content_length
            if data is not None:
                return data[start : start + layout.envelope_length], content
            return os.pread(fd, layout.envelope_length, start), None
        finally:
            os.close(fd)

    def read_new_message(
        self, queue: QueueName, queue_id: str, content_limit: int
    ) -> tuple[bytes, bytes | None, int] | None:
        """:meth:`read_message_data` with ``envelope_file=False`` for a message just
        committed, in two system calls, the file left open for its removal.

        The queue file is opened for reading and writing and read from its start with one
        ``pread`` of ``content_limit + 1`` bytes: fewer mean the whole file (no ``fstat``),
        else its trailer is read as :meth:`read_message_data` does. The descriptor is
        returned open, for :meth:`remove_many` (``open_files``) to recycle the file
        without opening it again; the caller closes it otherwise. For the queue manager's
        read in the event loop (a page-cache read), where each system call may hand the
        interpreter's lock to another thread and back.

        Returns:
            (envelope JSON, content or None when the file is larger than
            ``content_limit``, descriptor); None when there is no committed message (or
            the file cannot be opened for writing: :meth:`read_message_data` then).

        Raises:
            EnvelopeError: the queue file has no envelope (field ``file``).
            OSError: reading failed.
        """
        _check_queue_id(queue_id)
        directory = self._dir_fd(queue)
        try:
            fd = os.open(queue_id, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW, dir_fd=directory)
        except OSError:
            return None
        try:
            data: bytes | None = os.pread(fd, content_limit + 1, 0)
            assert data is not None
            size = len(data)
            if size > content_limit:
                size = os.fstat(fd).st_size
                data = None
                if size < TRAILER_LENGTH:
                    raise _NotCommitted
                layout = parse_trailer(os.pread(fd, TRAILER_LENGTH, size - TRAILER_LENGTH), size)
            elif size < TRAILER_LENGTH:
                raise _NotCommitted
            else:
                layout = parse_trailer(data[size - TRAILER_LENGTH :], size)
            if layout is None:
                raise _NotCommitted
            if layout.envelope_length == 0:
                raise EnvelopeError("file", "the queue file has no envelope and no ID.env")
            start = layout.content_length
            if data is not None:
                return data[start : start + layout.envelope_length], data[:start], fd
            return os.pread(fd, layout.envelope_length, start), None, fd
        except _NotCommitted:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise

    def load_envelope(self, queue_id: str, queue: QueueName) -> Envelope:
        """Read and validate a message's envelope (``ID.env`` if present, else the one in
        the queue file).

        A corrupt envelope (not JSON, a bad field, the wrong queue ID), or a queue file
        outside ``incoming/`` and ``maildrop/`` without a valid trailer, is logged as a
        warning and its message moved to ``corrupt/``.

        Raises:
            SpoolError: NOT_FOUND (also for a file in ``incoming/`` or ``maildrop/`` still
                being written); CORRUPT after moving the message to ``corrupt/``; or an
                I/O failure.
        """
        problem: EnvelopeError | None
        try:
            data = self.read_envelope_data(queue, queue_id)
        except EnvelopeError as exc:
            data, problem = None, exc
        except OSError as exc:
            raise SpoolError.from_os_error(exc, f"read {queue}/", queue_id=queue_id) from exc
        else:
            problem = None
        if data is None and problem is None:
            if queue.value in _CREATED_IN or not os.path.lexists(self.file_name(queue, queue_id)):
                raise SpoolError(
                    f"no such message in {queue}", SpoolErrorKind.NOT_FOUND, queue_id=queue_id
                )
            problem = EnvelopeError("file", "no valid queue file trailer")
        try:
            if problem is not None:
                raise problem
            assert data is not None
            envelope = Envelope.from_json(data)
            if envelope.queue_id != queue_id:
                raise EnvelopeError("queue_id", f"is {envelope.queue_id!r}, not the file name")
        except EnvelopeError as exc:
            self.quarantine(queue_id, queue, str(exc))
            raise SpoolError(
                f"corrupt envelope moved to corrupt/: {exc}",
                SpoolErrorKind.CORRUPT,
                queue_id=queue_id,
            ) from exc
        return envelope

    def open_content(self, queue_id: str, queue: QueueName) -> BinaryIO:
        """Open a message's content for reading (binary, buffered; it ends where the
        content ends, before the envelope and trailer).

        The open file stays readable even if the message is moved or removed meanwhile.

        Raises:
            SpoolError: NOT_FOUND (no committed message), or an I/O failure.
        """
        _check_queue_id(queue_id)
        try:
            raw = io.FileIO(self.file_name(queue, queue_id), "rb")
        except FileNotFoundError:
            raise SpoolError(
                f"no such message in {queue}", SpoolErrorKind.NOT_FOUND, queue_id=queue_id
            ) from None
        except OSError as exc:
            raise SpoolError.from_os_error(exc, f"open {queue}/", queue_id=queue_id) from exc
        try:
            here = _hold_for_reading(raw.fileno(), self.file_name(queue, queue_id))
            layout = _read_layout(raw.fileno()) if here else None
        except OSError as exc:
            raw.close()
            raise SpoolError.from_os_error(exc, f"read {queue}/", queue_id=queue_id) from exc
        if layout is None:
            raw.close()
            raise SpoolError(
                f"no such message in {queue} (queue file not committed)",
                SpoolErrorKind.NOT_FOUND,
                queue_id=queue_id,
            )
        return io.BufferedReader(_ContentReader(raw, layout.content_length), _READ_CHUNK)

    def quarantine(self, queue_id: str, queue: QueueName, reason: str) -> None:
        """Move a message (queue file and ``ID.env``) to ``corrupt/`` and log a warning.

        Never raises: a failure is logged too.
        """
        logger.warning(
            "%s: warning: %s/%s: %s; moved to corrupt/", queue_id, queue, queue_id, reason
        )
        if queue is QueueName.CORRUPT:
            return
        job = _MoveJob(queue, QueueName.CORRUPT, queue_id, None, require_content=False)
        self.run_batch([job])
        if job.error is not None:
            logger.error("%s: cannot move to corrupt/: %s", queue_id, job.error)

    # -- start-up recovery -----------------------------------------------------------------

    def recover(self, *, orphan_age: float = 0.0) -> RecoveryReport:
        """Bring the queue to a clean state after a crash; run before delivery starts.

        In every queue: delete temp files
        (``*.tmp``); in ``incoming/`` and ``maildrop/`` delete queue files that are not
        committed (no valid trailer, or a CRC mismatch), if older than ``orphan_age`` and
        not locked by a writer (so a sendmail(1) writing to maildrop/, or another process
        writing to incoming/, meanwhile is safe);
        upgrade messages of the earlier two-file format (content without trailer beside
        ``ID.env``); give an ``ID.env`` without its queue file to the queue that holds
        ``ID`` without an envelope of its own (an interrupted move), else delete it (an
        interrupted removal). Then move every message in ``active/`` back to
        ``incoming/`` (the queue manager crashed mid-delivery; recipients already marked
        delivered stay so). See docs/spool.md, "Crash recovery".

        Args:
            orphan_age: minimum age in seconds (by mtime) of a file to delete.

        Returns:
            What was done.

        Raises:
            SpoolError: a queue directory cannot be read or the requeue failed.
        """
        removed: list[str] = []
        corrupt: list[str] = []
        horizon = time.time() - orphan_age
        committed: dict[str, set[QueueName]] = {}  # queue ID -> queues with its queue file
        envelopes: dict[QueueName, set[str]] = {}  # queue -> IDs with an ID.env
        for queue in QueueName:
            try:
                with os.scandir(self.queue_path(queue)) as it:
                    names = {entry.name for entry in it}
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise SpoolError.from_os_error(exc, f"scan {queue}/") from exc
            envelopes[queue] = {
                name[: -len(ENVELOPE_SUFFIX)]
                for name in names
                if name.endswith(ENVELOPE_SUFFIX) and is_queue_id(name[: -len(ENVELOPE_SUFFIX)])
            }
            for name in sorted(names):
                path = self.file_name(queue, name)
                if name.endswith(TEMP_SUFFIX):
                    state = "garbage"
                elif is_queue_id(name):
                    state = self._recover_file(queue, name, name in envelopes[queue])
                else:
                    continue
                if state == "committed":
                    committed.setdefault(name, set()).add(queue)
                elif state == "corrupt":
                    self.quarantine(name, queue, "no valid queue file trailer")
                    corrupt.append(name)
                elif state == "garbage" and self._remove_abandoned(
                    path, horizon, check=None if name.endswith(TEMP_SUFFIX) else queue
                ):
                    logger.info(
                        "%s: removed uncommitted file %s/%s", name[:QUEUE_ID_LENGTH], queue, name
                    )
                    removed.append(f"{queue}/{name}")
        for queue, ids in envelopes.items():
            for queue_id in sorted(ids):
                if queue is QueueName.CORRUPT or queue in committed.get(queue_id, ()):
                    continue
                removed += self._recover_envelope(queue, queue_id, committed, envelopes)
        removed += self._recover_pool(horizon)
        requeue = [
            _MoveJob(QueueName.ACTIVE, QueueName.INCOMING, queue_id, None)
            for queue_id in self.scan(QueueName.ACTIVE)
        ]
        self.run_batch(requeue)
        requeued = []
        for job in requeue:
            if job.error is not None:
                raise job.error
            logger.info("%s: requeued from active/ to incoming/", job.queue_id)
            requeued.append(job.queue_id)
        return RecoveryReport(tuple(removed), tuple(requeued), tuple(corrupt))

    def _recover_pool(self, horizon: float) -> list[str]:
        """Check the pool of recycled queue files (``free/``): keep empty, unlocked
        regular files with one link, up to ``pool_limit``; delete the rest (a file whose
        truncation did not reach the disk before a crash, a second name of a file, the
        excess). Names that are no queue IDs are ignored. Return the paths removed."""
        removed: list[str] = []
        try:
            names = sorted(name for name in os.listdir(self.pool_path()) if is_queue_id(name))
        except OSError:
            return removed
        kept = 0
        for name in names:
            path = f"{self._root}/{POOL_DIRECTORY}/{name}"
            try:
                if os.lstat(path).st_mtime > horizon:
                    kept += 1  # too young to judge; counts against the limit
                    continue
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                info = os.fstat(fd)
                if not stat.S_ISREG(info.st_mode):
                    continue  # not ours: left alone, as any other name
                if info.st_size == 0 and info.st_nlink == 1 and kept < self.pool_limit:
                    kept += 1
                    continue
                os.unlink(path)
            except OSError:  # locked: being recycled or taken by a live process
                continue
            finally:
                os.close(fd)
            logger.info("removed %s/%s from the pool of recycled queue files", POOL_DIRECTORY, name)
            removed.append(f"{POOL_DIRECTORY}/{name}")
        return removed

    def _recover_file(self, queue: QueueName, queue_id: str, has_envelope: bool) -> str:
        """Classify one queue file: ``committed``, ``garbage`` (uncommitted, in a queue
        where files are created) or ``corrupt`` (no trailer where only committed files
        arrive); upgrade a file of the two-file format on the way."""
        path = self.file_name(queue, queue_id)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            return "gone"
        try:
            if os.fstat(fd).st_size == 0 and queue is not QueueName.CORRUPT:
                # never a message: a spare, or a recycled queue file whose rename into
                # the pool did not reach the disk before a crash
                return "garbage"
            layout = _read_layout(fd)
            if layout is not None and (queue.value not in _CREATED_IN or _crc_matches(fd, layout)):
                return "committed"
            if layout is None and has_envelope and self._upgrade(queue, queue_id, fd):
                return "committed"
        except OSError as exc:
            logger.warning("%s: cannot read %s/%s: %s", queue_id, queue, queue_id, exc.strerror)
            return "gone"
        finally:
            os.close(fd)
        if queue is QueueName.CORRUPT:
            return "kept"  # left for the administrator, whatever it is
        return "garbage" if queue.value in _CREATED_IN else "corrupt"

    def _upgrade(self, queue: QueueName, queue_id: str, fd: int) -> bool:
        """Turn a message of the earlier two-file format (bare content beside ``ID.env``,
        the envelope's ``size`` equal to the file's) into a queue file by appending a
        trailer that says "envelope in ID.env". Return whether it was one."""
        try:
            data = self.read_envelope_bytes_raw(queue, queue_id)
            size = os.fstat(fd).st_size
            if Envelope.from_json(data).size != size:
                return False
        except (OSError, EnvelopeError):
            return False
        crc = 0
        offset = 0
        while offset < size:
            chunk = os.pread(fd, min(size - offset, 1024 * 1024), offset)
            if not chunk:
                return False
            crc = zlib.crc32(chunk, crc)
            offset += len(chunk)
        out = os.open(self.file_name(queue, queue_id), os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        try:
            _write_all(out, make_trailer(size, 0, crc))
            os.fsync(out)
        finally:
            os.close(out)
        logger.info("%s: upgraded %s/%s to the one-file format", queue_id, queue, queue_id)
        return True

    def read_envelope_bytes_raw(self, queue: QueueName, queue_id: str) -> bytes:
        """Read ``<queue>/<queue_id>.env`` as it is (for recovery and repair tools).

        Raises:
            OSError: it cannot be read (FileNotFoundError when absent).
        """
        with open(self.file_name(queue, queue_id, ENVELOPE_SUFFIX), "rb") as handle:
            return handle.read()

    def _recover_envelope(
        self,
        queue: QueueName,
        queue_id: str,
        committed: dict[str, set[QueueName]],
        envelopes: dict[QueueName, set[str]],
    ) -> list[str]:
        """Resolve an ``ID.env`` without its queue file beside it (an interrupted move or
        removal); return the paths removed."""
        path = self.file_name(queue, queue_id, ENVELOPE_SUFFIX)
        owners = [
            other
            for other in sorted(committed.get(queue_id, ()))
            if queue_id not in envelopes.get(other, set())
        ]
        if owners:
            target = owners[0]
            try:
                os.rename(path, self.file_name(target, queue_id, ENVELOPE_SUFFIX))
                os.fsync(self._dir_fd(target))
                os.fsync(self._dir_fd(queue))
            except OSError as exc:
                raise SpoolError.from_os_error(exc, f"rename {queue}/", queue_id=queue_id) from exc
            envelopes.setdefault(target, set()).add(queue_id)
            logger.info(
                "%s: envelope %s/%s.env given to %s/%s (interrupted move)",
                queue_id,
                queue,
                queue_id,
                target,
                queue_id,
            )
            return []
        logger.info(
            "%s: removed envelope %s/%s.env without its queue file", queue_id, queue, queue_id
        )
        _unlink_quietly(path)
        return [f"{queue}/{queue_id}{ENVELOPE_SUFFIX}"]

    @staticmethod
    def _remove_abandoned(path: str, horizon: float, *, check: QueueName | None) -> bool:
        """Delete an uncommitted file unless it is younger than ``horizon`` or a writer
        holds its lock; return whether it was deleted.

        The file is deleted while *this* call holds its lock, and a queue file (``check``:
        its queue) is read again under the lock first: a writer in another process may
        have committed it (and let go of the lock) since it was found unfinished.
        """
        try:
            if os.lstat(path).st_mtime > horizon:
                return False
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            return False
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return False  # a live writer
            if check is not None:
                layout = _read_layout(fd)
                if layout is not None and (
                    check.value not in _CREATED_IN or _crc_matches(fd, layout)
                ):
                    return False  # committed meanwhile
            _unlink_quietly(path)
            return True
        except OSError:
            return False
        finally:
            os.close(fd)


def encode_envelope(envelope: Envelope) -> bytes:
    """Return the envelope file's bytes: the JSON object in UTF-8 and a newline."""
    return envelope.to_json().encode("utf-8") + b"\n"


class _NotCommitted(Exception):
    """:meth:`QueueDirectory.read_new_message`: the file has no valid trailer (yet)."""


def _exists(path: str, dir_fd: int | None = None) -> bool:
    """Tell whether ``path`` exists (an ``ID.env``, absent for most messages): ``access``
    returns False where a failing ``open``/``unlink`` would raise (2-3 us more in Python).
    The answer may be stale at once; callers still handle ENOENT."""
    return os.access(path, os.F_OK, dir_fd=dir_fd, effective_ids=True, follow_symlinks=False)


def _check_queue_id(queue_id: str) -> None:
    if not is_queue_id(queue_id):
        raise ValueError(f"not a queue ID: {queue_id!r}")


def _check_envelope_id(queue_id: str, envelope: Envelope) -> None:
    _check_queue_id(queue_id)
    if envelope.queue_id != queue_id:
        raise ValueError(f"envelope.queue_id is {envelope.queue_id!r}, expected {queue_id!r}")
