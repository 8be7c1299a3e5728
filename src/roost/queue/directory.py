"""The queue directory on disk: blocking, thread-safe primitives and crash recovery.

This is the synchronous half of the spool. :class:`QueueDirectory` knows the layout, the
file names and the order of system calls that makes every change atomic and durable. The
daemon uses it through the asyncio :class:`roost.queue.spool.Spool` (which runs it in
threads and batches fsyncs); command-line tools (``mailq``, ``roost queue``) may call it
directly. ``docs/spool.md`` is the reference for everything written here.

Every change is a *job* with the same phases, so that many jobs can share one batch:

1. ``prepare``: write new files (content, envelope temp files) and list their fds.
2. the batch flushes every listed fd (``fdatasync``, or one ``syncfs``).
3. ``apply``: the renames and links that make the change visible, and list the
   directories they touched.
4. the batch fsyncs each touched directory once (Postfix parameter ``queue_directory``).
5. ``finish``: tidy up what no longer matters for correctness (close fds, unlink the
   source link of a move); ``rollback`` instead when any phase failed.
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
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

from roost.queue.envelope import Envelope, EnvelopeError
from roost.queue.errors import SpoolError, SpoolErrorKind
from roost.queue.queue_id import QUEUE_ID_LENGTH, is_queue_id

__all__ = [
    "ENVELOPE_SUFFIX",
    "TEMP_SUFFIX",
    "QueueDirectory",
    "QueueName",
    "RecoveryReport",
    "SyncMethod",
]

logger = logging.getLogger("roost.queue")

#: The envelope of message ``ID`` is the file ``ID.env``; its presence commits the message.
ENVELOPE_SUFFIX: Final = ".env"
#: Files being written end in ``.tmp``; they are never part of a committed message.
TEMP_SUFFIX: Final = ".tmp"
_FILE_MODE: Final = 0o600
_DIR_MODE: Final = 0o700
_READ_CHUNK: Final = 64 * 1024


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
        removed: paths relative to the queue directory of the temp files and uncommitted
            content files deleted, e.g. ``incoming/4Wk3nB0h2Fz1xQ7b``.
        requeued: queue IDs moved from ``active/`` back to ``incoming/``.
        corrupt: queue IDs whose envelope was moved to ``corrupt/`` (no content beside it).
    """

    removed: tuple[str, ...] = ()
    requeued: tuple[str, ...] = ()
    corrupt: tuple[str, ...] = ()


def _load_writeback_starter() -> Callable[[int, int, int, int], int] | None:
    """Find ``sync_file_range(2)`` in the C library (Linux); None elsewhere."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        function = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


def _load_syncfs() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        function = ctypes.CDLL(name, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int]
    function.restype = ctypes.c_int
    return function


_sync_file_range: Final = _load_writeback_starter()
_syncfs: Final = _load_syncfs()
_SYNC_FILE_RANGE_WRITE: Final = 2
_fdatasync: Final = getattr(os, "fdatasync", os.fsync)


def _start_writeback(fd: int) -> None:
    """Ask the kernel to start writing ``fd``'s dirty pages now, without waiting."""
    if _sync_file_range is not None:
        _sync_file_range(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)  # a hint: errors surface in fsync


def _call_syncfs(fd: int) -> None:
    if _syncfs is None:
        raise OSError(errno.ENOSYS, "syncfs is not available on this system")
    if _syncfs(fd) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def _write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data).cast("B")
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _close_quietly(fd: int | None) -> None:
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        logger.warning("cannot remove %s: %s", path, exc.strerror)


def _create_locked(path: Path) -> int:
    """Create ``path`` exclusively and hold an exclusive ``flock`` on it.

    The lock tells :meth:`QueueDirectory.recover` in another process that the file is
    being written. Between ``open`` and ``flock`` recovery may take the lock and delete
    the new file; the link count says so, and the caller gets ``EAGAIN`` (temporary).

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


def _is_locked(path: Path) -> bool:
    """Tell whether another open file description holds a ``flock`` on ``path``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


class _Job:
    """One change to the queue; see the module docs for the phases."""

    __slots__ = ("error", "prepared", "queue_id", "sync_fds", "touched", "where")

    def __init__(self, queue_id: str, where: QueueName) -> None:
        self.queue_id = queue_id
        self.where = where
        self.prepared = False
        self.error: SpoolError | None = None
        self.sync_fds: list[int] = []
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
    """Commit a new message: content (maybe partly written), then the envelope rename."""

    __slots__ = (
        "_content_fd",
        "_envelope",
        "_envelope_fd",
        "_owns_content",
        "_tail",
        "committed",
        "queue",
    )

    def __init__(
        self,
        queue: QueueName,
        queue_id: str,
        content_fd: int | None,
        tail: bytes | bytearray,
        envelope: bytes,
    ) -> None:
        super().__init__(queue_id, queue)
        self.queue = queue
        self._content_fd = content_fd
        self._owns_content = content_fd is not None  # never delete a file we did not create
        self._tail = tail
        self._envelope = envelope
        self._envelope_fd: int | None = None
        self.committed = False

    def prepare(self, qd: QueueDirectory) -> None:
        if self._content_fd is None:
            self._content_fd = _create_locked(qd.content_path(self.queue, self.queue_id))
            self._owns_content = True
        _write_all(self._content_fd, self._tail)
        self._tail = b""
        self._envelope_fd = os.open(
            qd.temp_path(self.queue, self.queue_id),
            os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC,
            _FILE_MODE,
        )
        _write_all(self._envelope_fd, self._envelope)
        self.sync_fds += [self._content_fd, self._envelope_fd]

    def apply(self, qd: QueueDirectory) -> None:
        _close_quietly(self._envelope_fd)  # flushed already; close errors change nothing
        self._envelope_fd = None
        os.rename(
            qd.temp_path(self.queue, self.queue_id), qd.envelope_path(self.queue, self.queue_id)
        )
        self.committed = True
        self.touched.add(self.queue)

    def finish(self, qd: QueueDirectory) -> None:
        _close_quietly(self._content_fd)  # releases the lock; the envelope now protects it
        self._content_fd = None

    def rollback(self, qd: QueueDirectory) -> None:
        _close_quietly(self._envelope_fd)
        self._envelope_fd = None
        if self.committed:  # the directory fsync failed: take the commit back
            _unlink_quietly(qd.envelope_path(self.queue, self.queue_id))
            self.committed = False
        _unlink_quietly(qd.temp_path(self.queue, self.queue_id))
        if self._owns_content:
            _unlink_quietly(qd.content_path(self.queue, self.queue_id))
        _close_quietly(self._content_fd)
        self._content_fd = None


class _UpdateJob(_Job):
    """Replace a committed message's envelope: write temp, fsync, rename over."""

    __slots__ = ("_envelope", "_fd", "queue")

    def __init__(self, queue: QueueName, queue_id: str, envelope: bytes) -> None:
        super().__init__(queue_id, queue)
        self.queue = queue
        self._envelope = envelope
        self._fd: int | None = None

    def prepare(self, qd: QueueDirectory) -> None:
        qd.require_message(self.queue, self.queue_id)
        self._fd = os.open(
            qd.temp_path(self.queue, self.queue_id),
            os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC,
            _FILE_MODE,
        )
        _write_all(self._fd, self._envelope)
        self.sync_fds.append(self._fd)

    def apply(self, qd: QueueDirectory) -> None:
        _close_quietly(self._fd)
        self._fd = None
        os.rename(
            qd.temp_path(self.queue, self.queue_id), qd.envelope_path(self.queue, self.queue_id)
        )
        self.touched.add(self.queue)

    def rollback(self, qd: QueueDirectory) -> None:
        _close_quietly(self._fd)
        self._fd = None
        _unlink_quietly(qd.temp_path(self.queue, self.queue_id))


class _MoveJob(_Job):
    """Move a message between queues, content first (as a hard link), envelope last.

    At every instant the envelope has its content beside it: link ``dst/ID`` to
    ``src/ID``, rename ``src/ID.env`` to ``dst/ID.env`` (the move's commit), fsync, and only
    then unlink ``src/ID``. A crash leaves at worst a second link to the content without an
    envelope, which recovery deletes. With ``envelope``, the new envelope is first written
    over ``src/ID.env`` (temp, fsync, rename), so no state has two envelopes.
    """

    __slots__ = ("_envelope", "_fd", "_linked", "_moved", "dst", "require_content", "src")

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
        self._linked = False
        self._moved = False

    def prepare(self, qd: QueueDirectory) -> None:
        if self.require_content:
            qd.require_message(self.src, self.queue_id)
        elif not qd.envelope_path(self.src, self.queue_id).exists():
            raise SpoolError(
                f"no such message in {self.src}", SpoolErrorKind.NOT_FOUND, queue_id=self.queue_id
            )
        if qd.envelope_path(self.dst, self.queue_id).exists():
            raise SpoolError(
                f"cannot move to {self.dst}: a message with this queue ID is there",
                SpoolErrorKind.LOCAL_ERROR,
                queue_id=self.queue_id,
            )
        if self._envelope is not None:
            self._fd = os.open(
                qd.temp_path(self.src, self.queue_id),
                os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC,
                _FILE_MODE,
            )
            _write_all(self._fd, self._envelope)
            self.sync_fds.append(self._fd)

    def apply(self, qd: QueueDirectory) -> None:
        src_envelope = qd.envelope_path(self.src, self.queue_id)
        if self._fd is not None:
            _close_quietly(self._fd)
            self._fd = None
            os.rename(qd.temp_path(self.src, self.queue_id), src_envelope)
            self.touched.add(self.src)
        src_content = qd.content_path(self.src, self.queue_id)
        dst_content = qd.content_path(self.dst, self.queue_id)
        try:
            os.link(src_content, dst_content)
        except FileExistsError:  # a leftover link from an interrupted move: no envelope
            dst_content.unlink()
            os.link(src_content, dst_content)
        except FileNotFoundError:
            if self.require_content:
                raise
        else:
            self._linked = True
        self.touched.add(self.dst)
        os.rename(src_envelope, qd.envelope_path(self.dst, self.queue_id))
        self._moved = True
        self.touched.add(self.src)

    def finish(self, qd: QueueDirectory) -> None:
        _unlink_quietly(qd.content_path(self.src, self.queue_id))

    def rollback(self, qd: QueueDirectory) -> None:
        _close_quietly(self._fd)
        self._fd = None
        _unlink_quietly(qd.temp_path(self.src, self.queue_id))
        if self._linked and not self._moved:
            _unlink_quietly(qd.content_path(self.dst, self.queue_id))


class _RemoveJob(_Job):
    """Remove a message: envelope first (the removal's commit), then the content."""

    __slots__ = ("queue",)

    def __init__(self, queue: QueueName, queue_id: str) -> None:
        super().__init__(queue_id, queue)
        self.queue = queue

    def apply(self, qd: QueueDirectory) -> None:
        try:
            qd.envelope_path(self.queue, self.queue_id).unlink()
        except FileNotFoundError:
            raise SpoolError(
                f"no such message in {self.queue}",
                SpoolErrorKind.NOT_FOUND,
                queue_id=self.queue_id,
            ) from None
        self.touched.add(self.queue)
        with contextlib.suppress(FileNotFoundError):
            qd.content_path(self.queue, self.queue_id).unlink()


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

    The methods block on disk I/O, fsync included: call them from a thread, or use
    :class:`roost.queue.spool.Spool` in the daemon.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        sync_method: SyncMethod = SyncMethod.FSYNC,
        *,
        flush_threads: int = 8,
    ) -> None:
        self.path = Path(path)
        self.sync_method = sync_method
        self._flush_threads = flush_threads
        self._flush_pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._dir_fds: dict[QueueName, int] = {}
        self._lock = threading.Lock()

    # -- names -----------------------------------------------------------------------------

    def queue_path(self, queue: QueueName) -> Path:
        """Return the directory of ``queue``."""
        return self.path / QueueName(queue).value

    def content_path(self, queue: QueueName, queue_id: str) -> Path:
        """Return the path of the content file ``<queue>/<queue_id>``."""
        return self.queue_path(queue) / queue_id

    def envelope_path(self, queue: QueueName, queue_id: str) -> Path:
        """Return the path of the envelope file ``<queue>/<queue_id>.env``."""
        return self.queue_path(queue) / (queue_id + ENVELOPE_SUFFIX)

    def temp_path(self, queue: QueueName, queue_id: str) -> Path:
        """Return the path of the envelope temp file ``<queue>/<queue_id>.env.tmp``."""
        return self.queue_path(queue) / (queue_id + ENVELOPE_SUFFIX + TEMP_SUFFIX)

    # -- lifecycle -------------------------------------------------------------------------

    def create(self) -> None:
        """Create the queue directory and every queue subdirectory (mode 0700), durably.

        Raises:
            SpoolError: a directory cannot be created.
        """
        try:
            self.path.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
            created = False
            for queue in QueueName:
                try:
                    self.queue_path(queue).mkdir(mode=_DIR_MODE)
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

        live[:] = [job for job in live if job.prepared or self.prepare_job(job)]

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

    def prepare_job(self, job: _Job) -> bool:
        """Run a job's first phase (writing its new files) ahead of its batch.

        The spool calls this from its I/O threads so that writing overlaps the committer's
        fsyncs; :meth:`run_batch` calls it for jobs not yet prepared.

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
        if self.sync_method is SyncMethod.FSYNC:
            for fd in job.sync_fds:
                _start_writeback(fd)
        return True

    def _flush_files(self, jobs: Sequence[_Job]) -> list[_Job]:
        """Make every job's new files durable; return the jobs whose flush failed."""
        if not any(job.sync_fds for job in jobs):
            return []
        if self.sync_method is SyncMethod.SYNCFS:
            try:
                _call_syncfs(next(fd for job in jobs for fd in job.sync_fds))
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

        if len(jobs) > 1 and self._flush_threads > 1:
            # Flushes issued together share journal commits and overlap their waits: under
            # load, one flush after another costs N latencies, together about one.
            results = list(self._flush_executor().map(flush, jobs))
        else:
            results = [flush(job) for job in jobs]
        return [job for job, ok in zip(jobs, results, strict=True) if not ok]

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
        """Check that ``queue`` holds a committed message ``queue_id`` (both files).

        Raises:
            SpoolError: NOT_FOUND when it does not; LOCAL_ERROR when ``stat`` fails.
        """
        _check_queue_id(queue_id)
        try:
            os.stat(self.envelope_path(queue, queue_id))
            os.stat(self.content_path(queue, queue_id))
        except FileNotFoundError:
            raise SpoolError(
                f"no such message in {queue}", SpoolErrorKind.NOT_FOUND, queue_id=queue_id
            ) from None
        except OSError as exc:
            raise SpoolError.from_os_error(exc, f"stat {queue}/", queue_id=queue_id) from exc

    def create_content(self, queue: QueueName, queue_id: str) -> int:
        """Create the (uncommitted) content file for a new message and lock it.

        Returns:
            A write-only fd holding an exclusive ``flock``; the caller owns it.

        Raises:
            SpoolError: the file cannot be created.
        """
        _check_queue_id(queue_id)
        path = self.content_path(queue, queue_id)
        try:
            return _create_locked(path)
        except OSError as exc:
            raise SpoolError.from_os_error(exc, f"create {queue}/", queue_id=queue_id) from exc

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
        self._run_one(_CommitJob(queue, queue_id, None, content, encode_envelope(envelope)))

    def update_envelope(self, queue_id: str, envelope: Envelope, queue: QueueName) -> None:
        """Durably replace the envelope of a committed message (temp, fsync, rename, fsync).

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
                the two queues, with its content; recovery tidies the rest).
        """
        if envelope is not None:
            _check_envelope_id(queue_id, envelope)
        _check_queue_id(queue_id)
        data = None if envelope is None else encode_envelope(envelope)
        self._run_one(_MoveJob(from_queue, to_queue, queue_id, data))

    def remove(self, queue_id: str, queue: QueueName, *, durable: bool = True) -> None:
        """Delete a message: its envelope first, then its content.

        Args:
            queue_id: the message.
            queue: where it is.
            durable: fsync the directory before returning (the default). False unlinks
                only: after a crash the message may be back, whole (see
                :meth:`roost.queue.spool.Spool.remove`).

        Raises:
            SpoolError: NOT_FOUND when there is no such message, or an I/O failure.
        """
        _check_queue_id(queue_id)
        job = _RemoveJob(queue, queue_id)
        if durable:
            self._run_one(job)
            return
        try:
            job.apply(self)
        except Exception as exc:  # OSError, SpoolError
            job.fail(exc, f"remove {job.describe()}")
            assert job.error is not None
            raise job.error from exc
        job.finish(self)

    # -- reading ---------------------------------------------------------------------------

    def scan(self, queue: QueueName) -> list[str]:
        """List the committed messages in ``queue``, oldest first.

        Returns:
            Queue IDs sorted by arrival (their sort order); uncommitted content and temp
            files are not listed.

        Raises:
            SpoolError: the directory cannot be read.
        """
        try:
            with os.scandir(self.queue_path(queue)) as entries:
                ids = [
                    entry.name[: -len(ENVELOPE_SUFFIX)]
                    for entry in entries
                    if entry.name.endswith(ENVELOPE_SUFFIX)
                    and is_queue_id(entry.name[: -len(ENVELOPE_SUFFIX)])
                ]
        except OSError as exc:
            raise SpoolError.from_os_error(exc, f"scan {queue}/") from exc
        ids.sort()
        return ids

    def load_envelope(self, queue_id: str, queue: QueueName) -> Envelope:
        """Read and validate a message's envelope.

        A corrupt envelope (not JSON, a bad field, the wrong queue ID) is logged as a
        warning and its message moved to ``corrupt/``.

        Raises:
            SpoolError: NOT_FOUND; CORRUPT after moving the message to ``corrupt/``; or an
                I/O failure.
        """
        _check_queue_id(queue_id)
        path = self.envelope_path(queue, queue_id)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise SpoolError(
                f"no such message in {queue}", SpoolErrorKind.NOT_FOUND, queue_id=queue_id
            ) from None
        except OSError as exc:
            raise SpoolError.from_os_error(exc, f"read {queue}/", queue_id=queue_id) from exc
        try:
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
        """Open a message's content for reading (binary, buffered).

        The open file stays readable even if the message is moved or removed meanwhile.

        Raises:
            SpoolError: NOT_FOUND, or an I/O failure.
        """
        _check_queue_id(queue_id)
        try:
            raw = io.FileIO(self.content_path(queue, queue_id), "rb")
        except FileNotFoundError:
            raise SpoolError(
                f"no such message in {queue}", SpoolErrorKind.NOT_FOUND, queue_id=queue_id
            ) from None
        except OSError as exc:
            raise SpoolError.from_os_error(exc, f"open {queue}/", queue_id=queue_id) from exc
        return io.BufferedReader(raw, _READ_CHUNK)

    def quarantine(self, queue_id: str, queue: QueueName, reason: str) -> None:
        """Move a message (or a lone envelope) to ``corrupt/`` and log a warning.

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

        In every queue: delete temp files (``*.tmp``) and content files without an
        envelope, if older than ``orphan_age`` and not locked by a writer (so a
        sendmail(1) writing to maildrop/ meanwhile is safe); move an envelope without its
        content to ``corrupt/``. Then move every message in ``active/`` back to
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
        for queue in QueueName:
            try:
                with os.scandir(self.queue_path(queue)) as it:
                    names = {entry.name for entry in it}
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise SpoolError.from_os_error(exc, f"scan {queue}/") from exc
            envelopes = {
                name[: -len(ENVELOPE_SUFFIX)]
                for name in names
                if name.endswith(ENVELOPE_SUFFIX) and is_queue_id(name[: -len(ENVELOPE_SUFFIX)])
            }
            for name in sorted(names):
                path = self.queue_path(queue) / name
                garbage = name.endswith(TEMP_SUFFIX) or (
                    is_queue_id(name) and name not in envelopes
                )
                if garbage and self._old_and_unlocked(path, horizon):
                    logger.info(
                        "%s: removed uncommitted file %s/%s", name[:QUEUE_ID_LENGTH], queue, name
                    )
                    _unlink_quietly(path)
                    removed.append(f"{queue}/{name}")
            if queue is not QueueName.CORRUPT:
                for queue_id in sorted(envelopes - names):
                    self.quarantine(queue_id, queue, "envelope without content")
                    corrupt.append(queue_id)
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

    @staticmethod
    def _old_and_unlocked(path: Path, horizon: float) -> bool:
        try:
            if path.lstat().st_mtime > horizon:
                return False
        except FileNotFoundError:
            return False
        return not _is_locked(path)


def encode_envelope(envelope: Envelope) -> bytes:
    """Return the envelope file's bytes: the JSON object in UTF-8 and a newline."""
    return envelope.to_json().encode("utf-8") + b"\n"


def _check_queue_id(queue_id: str) -> None:
    if not is_queue_id(queue_id):
        raise ValueError(f"not a queue ID: {queue_id!r}")


def _check_envelope_id(queue_id: str, envelope: Envelope) -> None:
    _check_queue_id(queue_id)
    if envelope.queue_id != queue_id:
        raise ValueError(f"envelope.queue_id is {envelope.queue_id!r}, expected {queue_id!r}")
