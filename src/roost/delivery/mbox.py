"""mbox delivery: append one message to a UNIX mailbox file, or to a ``/file`` alias target.

Locking, as Postfix local(8) with ``mailbox_delivery_lock = fcntl, dotlock``:

1. ``<mbox>.lock`` is created with ``O_EXCL`` (a dotlock); a lock older than
   ``stale_lock_time`` is removed; when the directory does not let us create it
   (EACCES, EROFS) delivery goes on with the kernel lock alone, as Postfix does for
   mailboxes;
2. the mbox is opened (created mode 0600 when missing) and locked with ``fcntl()``
   (``lockf``) and/or ``flock()``.

Every lock is retried every ``lock_delay`` seconds until ``lock_timeout`` has passed, then
the delivery fails temporarily (4.2.0). POSIX record locks do not exclude threads of one
process from each other, so deliveries in this process are also serialized per path.

The message is written in mboxrd form (RFC 4155 and qmail's mbox(5)): a ``From_`` line,
the prepended headers, the message with LF line endings where every ``>*From `` line gets
one more ``>``, and an empty line. It is fsynced; on any failure the file is truncated back
to its old size, so it is byte for byte what it was.

Blocking (locks, writes and fsyncs): call from a worker thread (``asyncio.to_thread``).

See Also: Postfix local(8) "MAILBOX DELIVERY", "EXTERNAL FILE DELIVERY";
postconf(5) ``mailbox_delivery_lock``, ``deliver_lock_attempts``, ``deliver_lock_delay``,
``stale_lock_time``, ``mailbox_size_limit``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Final

from roost.delivery._stream import MessageReadError, MessageSource, UnixConverter, with_prepend
from roost.delivery.errors import DeliveryError, QuotaExceeded
from roost.delivery.headers import from_line

__all__ = ["LOCK_TYPES", "deliver_mbox"]

#: The lock kinds ``locks`` may name (Postfix ``mailbox_delivery_lock``).
LOCK_TYPES: Final = frozenset({"fcntl", "flock", "dotlock"})

_FILE_MODE: Final = 0o600
_WRITE_BYTES: Final = 64 * 1024
#: Creating the dotlock failed for want of permission: go on with the kernel lock.
_DOTLOCK_MAY_FAIL: Final = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})

_log = logging.getLogger(__name__)

_local_locks: dict[str, threading.Lock] = {}
_local_locks_guard = threading.Lock()


def _remaining(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


@contextlib.contextmanager
def _process_lock(path: Path, deadline: float) -> Iterator[None]:
    """Serialize deliveries to one path within this process (fcntl locks cannot)."""
    key = os.path.abspath(path)
    with _local_locks_guard:
        lock = _local_locks.setdefault(key, threading.Lock())
    if not lock.acquire(timeout=_remaining(deadline)):
        raise DeliveryError(True, "4.2.0", f"unable to lock {path}: busy in this process")
    try:
        yield
    finally:
        lock.release()


def _acquire_dotlock(lock_path: Path, deadline: float, delay: float, stale_after: float) -> bool:
    """Create ``lock_path`` (Postfix ``dot_lockfile()``); False: not permitted, go on."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
    while True:
        try:
            fd = os.open(lock_path, flags, _FILE_MODE)
        except FileExistsError:
            try:
                age = time.time() - os.lstat(lock_path).st_mtime
            except FileNotFoundError:
                continue
            if age > stale_after:
                _log.warning("removing stale lock file %s (%.0f seconds old)", lock_path, age)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(lock_path)
                continue
            left = _remaining(deadline)
            if left <= 0:
                raise DeliveryError(
                    True, "4.2.0", f"unable to create lock file {lock_path}: File exists"
                ) from None
            time.sleep(min(delay, left))
            continue
        except OSError as exc:
            if exc.errno in _DOTLOCK_MAY_FAIL:
                _log.warning("cannot create lock file %s: %s", lock_path, exc.strerror)
                return False
            raise DeliveryError.from_os_error(
                exc, f"unable to create lock file {lock_path}"
            ) from exc
        try:
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError:
            pass  # an empty dotlock locks just as well
        finally:
            os.close(fd)
        return True


@contextlib.contextmanager
def _dotlock(path: Path, deadline: float, delay: float, stale_after: float) -> Iterator[None]:
    """Hold ``<path>.lock`` while the body runs."""
    lock_path = Path(f"{path}.lock")
    acquired = _acquire_dotlock(lock_path, deadline, delay, stale_after)
    try:
        yield
    finally:
        if acquired:
            with contextlib.suppress(OSError):
                os.unlink(lock_path)


def _kernel_lock(
    fd: int, path: Path, kinds: Collection[str], deadline: float, delay: float
) -> None:
    """Take ``fcntl`` and/or ``flock`` locks on ``fd``, retrying until ``deadline``."""

    def lockf(fd: int, operation: int) -> None:
        fcntl.lockf(fd, operation)

    def flock(fd: int, operation: int) -> None:
        fcntl.flock(fd, operation)

    operations: list[tuple[str, Callable[[int, int], None]]] = []
    if "fcntl" in kinds:
        operations.append(("fcntl", lockf))
    if "flock" in kinds:
        operations.append(("flock", flock))
    for name, operation in operations:
        while True:
            try:
                operation(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise DeliveryError.from_os_error(exc, f"unable to lock {path}") from exc
                left = _remaining(deadline)
                if left <= 0:
                    raise DeliveryError(
                        True, "4.2.0", f"unable to lock {path} ({name}): {exc.strerror}"
                    ) from exc
                time.sleep(min(delay, left))


def _open_mbox(path: Path, uid: int | None, gid: int | None) -> int:
    """Open (or create, mode 0600, owned by uid/gid) the mbox for appending."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC | os.O_NOCTTY
    nofollow = os.O_NOFOLLOW
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        info = None
    if info is not None and stat.S_ISLNK(info.st_mode):
        if info.st_uid != 0:
            raise DeliveryError(
                False, "5.2.0", f"cannot update mailbox {path}: a symbolic link not owned by root"
            )
        nofollow = 0  # Postfix trusts links owned by root
    try:
        fd = os.open(path, flags | nofollow | os.O_CREAT | os.O_EXCL, _FILE_MODE)
    except FileExistsError:
        return os.open(path, flags | nofollow)
    if uid is not None or gid is not None:
        try:
            os.fchown(fd, -1 if uid is None else uid, -1 if gid is None else gid)
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise
    return fd


def _write_all(fd: int, data: bytes | bytearray) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _append(
    fd: int,
    message: MessageSource,
    *,
    envelope_sender: str,
    prepend: bytes,
    arrival_time: float | None,
    room: int | None,
) -> int:
    """Write the mboxrd form of the message; return the bytes written."""
    head = from_line(envelope_sender, arrival_time)
    converter = UnixConverter(quote_from=True)
    buffer = bytearray(head)
    written = 0

    def flush(final: bool) -> None:
        nonlocal written
        if room is not None and written + len(buffer) > room:
            raise QuotaExceeded("mailbox full: the mailbox size limit is reached")
        if buffer and (final or len(buffer) >= _WRITE_BYTES):
            _write_all(fd, buffer)
            written += len(buffer)
            buffer.clear()

    for data in with_prepend(prepend, message):
        buffer += converter.feed(data)
        flush(False)
    buffer += converter.finish()
    if converter.last not in (b"\n", b""):
        buffer += b"\n"
    buffer += b"\n"
    flush(True)
    return written


def deliver_mbox(
    path: Path,
    message: MessageSource,
    *,
    envelope_sender: str,
    prepend: bytes = b"",
    uid: int | None = None,
    gid: int | None = None,
    lock_timeout: float = 20.0,
    lock_delay: float = 1.0,
    stale_lock_time: float = 500.0,
    locks: Collection[str] = ("fcntl", "dotlock"),
    size_limit: int = 0,
    arrival_time: float | None = None,
) -> int:
    """Append a message to an mbox file (a mailbox or a ``/file`` alias target).

    A character device (``/dev/null``) is written to without locks.

    Args:
        path: the mbox file, e.g. ``/var/mail/alice``.
        message: the message (CRLF line endings, as spooled): an open binary file (read
            from its position) or bytes.
        envelope_sender: for the ``From_`` line; ``""`` gives ``MAILER-DAEMON``.
        prepend: header lines to put first, CRLF endings
            (:func:`roost.delivery.headers.delivery_headers`).
        uid, gid: owner of a newly created mbox (None: as created; other owners need
            root).
        lock_timeout: seconds to keep trying each lock (Postfix: ``deliver_lock_attempts``
            times ``deliver_lock_delay``).
        lock_delay: seconds between lock attempts (``deliver_lock_delay``).
        stale_lock_time: seconds after which a dotlock is removed (``stale_lock_time``).
        locks: the lock kinds to use, from :data:`LOCK_TYPES`
            (``mailbox_delivery_lock``).
        size_limit: the largest mbox size in bytes after the append
            (``mailbox_size_limit``; 0: none).
        arrival_time: the ``From_`` line's time (None: now).

    Returns:
        The number of bytes appended.

    Raises:
        QuotaExceeded: the mbox would grow beyond ``size_limit`` (5.2.2).
        DeliveryError: a lock could not be had in time (4.2.0); the path is a symbolic
            link not owned by root, not a regular file, or has several hard links
            (5.2.0); a write failed: ENOSPC (4.3.1), EDQUOT (4.2.2), others (4.3.0);
            reading the message failed (4.3.0). The mbox is left unchanged.
        ValueError: an unknown lock kind, or a sender with a line break.
        Exception: anything else ``message.read()`` raises, after the same truncation.
    """
    unknown = set(locks) - LOCK_TYPES
    if unknown:
        raise ValueError(f"unknown lock type(s): {', '.join(sorted(unknown))}")
    from_line(envelope_sender)  # check the sender before taking any lock
    action = f"cannot update mailbox {path}"
    try:
        info: os.stat_result | None = os.stat(path)
    except FileNotFoundError:
        info = None
    except OSError as exc:
        raise DeliveryError.from_os_error(exc, action) from exc
    if info is not None and stat.S_ISCHR(info.st_mode):
        return _deliver_device(path, message, envelope_sender, prepend, arrival_time)

    deadline = time.monotonic() + lock_timeout
    with contextlib.ExitStack() as held:
        held.enter_context(_process_lock(path, deadline))
        if "dotlock" in locks:
            held.enter_context(_dotlock(path, deadline, lock_delay, stale_lock_time))
        try:
            fd = _open_mbox(path, uid, gid)
        except OSError as exc:
            raise DeliveryError.from_os_error(exc, action) from exc
        held.callback(os.close, fd)
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode):
            raise DeliveryError(False, "5.2.0", f"{action}: not a regular file")
        if opened.st_nlink > 1:
            raise DeliveryError(False, "5.2.0", f"{action}: file has {opened.st_nlink} links")
        _kernel_lock(fd, path, locks, deadline, lock_delay)
        old_size = os.fstat(fd).st_size
        room = None if size_limit <= 0 else max(0, size_limit - old_size)
        try:
            written = _append(
                fd,
                message,
                envelope_sender=envelope_sender,
                prepend=prepend,
                arrival_time=arrival_time,
                room=room,
            )
            os.fsync(fd)
        except BaseException as exc:
            try:
                os.ftruncate(fd, old_size)
                os.fsync(fd)
            except OSError as undo:
                _log.error("cannot truncate %s back to %d bytes: %s", path, old_size, undo)
            if isinstance(exc, MessageReadError):
                raise DeliveryError(True, "4.3.0", f"error reading message: {exc}") from exc
            if isinstance(exc, OSError):
                raise DeliveryError.from_os_error(exc, action) from exc
            raise
    return written


def _deliver_device(
    path: Path,
    message: MessageSource,
    envelope_sender: str,
    prepend: bytes,
    arrival_time: float | None,
) -> int:
    """Write to a character device such as /dev/null: no locks, nothing to truncate."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        raise DeliveryError.from_os_error(exc, f"cannot write {path}") from exc
    try:
        return _append(
            fd,
            message,
            envelope_sender=envelope_sender,
            prepend=prepend,
            arrival_time=arrival_time,
            room=None,
        )
    except MessageReadError as exc:
        raise DeliveryError(True, "4.3.0", f"error reading message: {exc}") from exc
    except OSError as exc:
        raise DeliveryError.from_os_error(exc, f"cannot write {path}") from exc
    finally:
        os.close(fd)
