"""Maildir delivery, as Dovecot's LDA writes it.

A message is written under ``tmp/`` with a unique name, fsynced, renamed into
``new/`` with its sizes in the name, and ``new/`` is fsynced; a failure at any step leaves
nothing behind in ``tmp/`` or ``new/``. The fsync of ``new/`` is a group commit: deliveries
into the same directory from several threads at once share one fsync (each returns only
after an fsync that started after its own link), so N concurrent deliveries cost N file
fsyncs but about one directory fsync. File names look like::

    1700000000.M123456P4242Q1.mx.example.com,S=2042,W=2091

``S=`` is the file size in bytes; ``W=`` the "virtual" size with each LF counted as CRLF
(what IMAP ``RFC822.SIZE`` reports), so readers need not open the file. In the host name,
``/`` is written ``\\057`` and ``:`` ``\\072``.

Blocking (writes and fsyncs): call from a worker thread (``asyncio.to_thread``).

See Also: the Maildir specification (cr.yp.to/proto/maildir.html), Maildir++ (Courier:
``.Folder`` subfolders, ``maildirfolder``, ``maildirsize``), Dovecot's maildir format
("Filename extensions"), Postfix local(8) "MAILBOX DELIVERY" (``mailbox_size_limit``).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import re
import socket
import stat
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from roost.delivery._stream import MessageReadError, MessageSource, UnixConverter, with_prepend
from roost.delivery.errors import DeliveryError, QuotaExceeded
from roost.files import start_writeback

__all__ = [
    "DIRECTORY_SYNC",
    "DirectorySync",
    "MaildirDelivery",
    "deliver_maildir",
    "deliver_maildir_files",
    "ensure_maildir",
    "maildir_usage",
    "unique_name",
]

_SUBDIRS: Final = ("cur", "new", "tmp")
_DIR_MODE: Final = 0o700
_FILE_MODE: Final = 0o600
_SIZE_IN_NAME: Final = re.compile(r",S=(\d+)")
#: Bytes gathered before a write() of the message file.
_WRITE_SIZE: Final = 64 * 1024

#: Maildirs this process has seen complete (``cur``, ``new``, ``tmp``): no ``mkdir``
#: probes for them on each delivery. A Maildir removed meanwhile is created again.
_known_maildirs: set[str] = set()
_KNOWN_MAILDIRS_SIZE: Final = 10000

_counter = itertools.count(1)
_counter_lock = threading.Lock()
#: ``P<pid>Q`` of the name: this process's pid (a forked child sets its own, below).
_pid_part = f"P{os.getpid()}Q"


def _after_fork() -> None:
    """A forked child: its own pid in names; a fresh lock (another thread may have held
    the parent's at the fork)."""
    global _pid_part, _counter_lock
    _pid_part = f"P{os.getpid()}Q"
    _counter_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork)


@functools.lru_cache(maxsize=16)
def _host_part(hostname: str | None) -> str:
    """The name's host part, escaped (computed once per host name; None: this host's)."""
    host = hostname or socket.gethostname()
    return host.replace("/", "\\057").replace(":", "\\072")


def unique_name(hostname: str | None = None, now: float | None = None) -> str:
    """Return a new Maildir base name ``<secs>.M<usecs>P<pid>Q<counter>.<host>``.

    ``<usecs>`` has six digits (zero-padded), so that names sort as the deliveries happened:
    readers that give new messages their UIDs in name order (roost's store does) then
    number them in delivery order, also across a tenth of a second (``M99999`` would sort
    after ``M100000``).

    Args:
        hostname: the host name to embed (None: ``socket.gethostname()``); ``/`` and
            ``:`` are escaped as ``\\057`` and ``\\072`` (Dovecot).
        now: the time in seconds (None: now).

    Returns:
        The name, without the ``,S=...,W=...`` sizes.
    """
    moment = time.time() if now is None else now
    seconds = int(moment)
    micros = int((moment - seconds) * 1_000_000)
    with _counter_lock:
        number = next(_counter)
    return f"{seconds}.M{micros:06d}{_pid_part}{number}.{_host_part(hostname)}"


def _mkdir(path: Path, uid: int | None, gid: int | None) -> bool:
    """Create one directory with mode 0700; return False when it exists already."""
    try:
        os.mkdir(path, _DIR_MODE)
    except FileExistsError:
        return False
    os.chmod(path, _DIR_MODE)
    if uid is not None or gid is not None:
        os.chown(path, -1 if uid is None else uid, -1 if gid is None else gid)
    return True


def _fsync_dir(path: Path | str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _DirectoryState:
    __slots__ = ("done", "requested", "running", "users")

    def __init__(self) -> None:
        self.requested = 0  # tickets handed out: one per link waiting for durability
        self.done = 0  # every ticket up to this one is durable
        self.running = False  # an fsync of this directory is in progress
        self.users = 0  # threads inside sync() for this directory


class DirectorySync:
    """Group commit for directory fsyncs, shared by the threads that deliver.

    A thread that has just linked a file into a directory calls :meth:`sync` and gets a
    ticket. If no fsync of that directory is running, it runs one (covering every ticket
    handed out so far); otherwise it waits, and the next fsync covers it and everyone who
    arrived meanwhile. So under load one ``fsync(new/)`` makes several deliveries durable,
    while a lone delivery pays exactly one fsync as before. Thread-safe; blocking.
    """

    def __init__(self, fsync: Callable[[str], None] = _fsync_dir) -> None:
        self._fsync = fsync
        self._cond = threading.Condition()
        self._states: dict[str, _DirectoryState] = {}
        self.fsyncs = 0  # directory fsyncs run (for tests and benchmarks)

    def sync(self, directory: str) -> None:
        """Return once an fsync of ``directory`` that started after this call has succeeded.

        Args:
            directory: the directory's path, spelt the same way by every caller.

        Raises:
            OSError: the fsync this thread ran failed. (A thread whose ticket a failed
                fsync covered runs its own fsync instead of failing with it.)
        """
        with self._cond:
            state = self._states.get(directory)
            if state is None:
                state = self._states[directory] = _DirectoryState()
            state.users += 1
            state.requested += 1
            ticket = state.requested
            try:
                while state.done < ticket:
                    if state.running:
                        self._cond.wait()
                        continue
                    state.running = True
                    covers = state.requested
                    self._cond.release()
                    try:
                        self._fsync(directory)
                    finally:
                        self._cond.acquire()
                        state.running = False
                        self._cond.notify_all()
                    self.fsyncs += 1
                    state.done = max(state.done, covers)
            finally:
                state.users -= 1
                if state.users == 0 and not state.running:
                    del self._states[directory]


#: The process-wide directory group commit of Maildir deliveries.
DIRECTORY_SYNC: Final = DirectorySync()


def ensure_maildir(
    maildir: Path, *, uid: int | None = None, gid: int | None = None, folder: bool = False
) -> None:
    """Create a Maildir (and missing parents) with ``cur``, ``new`` and ``tmp``, mode 0700.

    Args:
        maildir: the Maildir (or Maildir++ folder) directory.
        uid, gid: the owner to give to what is created (None: leave as created).
        folder: also create the Maildir++ ``maildirfolder`` marker file.

    Raises:
        OSError: a directory cannot be created or given its owner.
    """
    missing: list[Path] = []
    probe = maildir
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    for directory in reversed(missing):
        _mkdir(directory, uid, gid)
    created = [sub for sub in _SUBDIRS if _mkdir(maildir / sub, uid, gid)]
    if folder and not (maildir / "maildirfolder").exists():
        fd = os.open(maildir / "maildirfolder", os.O_WRONLY | os.O_CREAT, _FILE_MODE)
        try:
            if uid is not None or gid is not None:
                os.fchown(fd, -1 if uid is None else uid, -1 if gid is None else gid)
        finally:
            os.close(fd)
        created.append("maildirfolder")
    if created:
        _fsync_dir(maildir)
    for directory in missing[1:]:
        _fsync_dir(directory)


def maildir_usage(maildir: Path) -> int:
    """Return the bytes a Maildir holds, for quota checks.

    From Maildir++ ``maildirsize`` when present (the sum of its ``bytes count`` lines
    after the quota definition), else the sizes of the files in ``cur/`` and ``new/`` of
    the Maildir and its ``.Folder`` subfolders (``S=`` from the name when present).

    Raises:
        OSError: a directory cannot be read.
    """
    try:
        text = (maildir / "maildirsize").read_text("ascii", "replace")
    except FileNotFoundError:
        pass
    else:
        total = 0
        for line in text.splitlines()[1:]:
            fields = line.split()
            if fields and re.fullmatch(r"-?\d+", fields[0]):
                total += int(fields[0])
        return max(total, 0)
    folders = [maildir]
    with os.scandir(maildir) as entries:
        folders += [
            Path(e.path)
            for e in entries
            if e.name.startswith(".") and e.name not in (".", "..") and e.is_dir()
        ]
    total = 0
    for folder in folders:
        for sub in ("cur", "new"):
            try:
                with os.scandir(folder / sub) as entries:
                    for entry in entries:
                        match = _SIZE_IN_NAME.search(entry.name)
                        if match is not None:
                            total += int(match.group(1))
                        else:
                            with contextlib.suppress(FileNotFoundError):  # expunged
                                total += entry.stat(follow_symlinks=False).st_size
            except FileNotFoundError:
                continue
    return total


def _check_folder(folder: str) -> None:
    if (
        not folder
        or folder.startswith(".")
        or folder.endswith(".")
        or ".." in folder
        or "/" in folder
        or "\x00" in folder
        or folder.lower() == "inbox"
    ):
        raise ValueError(f"bad Maildir++ folder name {folder!r}")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def deliver_maildir(
    maildir: Path,
    message: MessageSource,
    *,
    prepend: bytes = b"",
    folder: str | None = None,
    uid: int | None = None,
    gid: int | None = None,
    quota_bytes: int = 0,
    quota_temporary: bool = False,
    size_limit: int = 0,
    autocreate_folder: bool = False,
    hostname: str | None = None,
    directory_sync: DirectorySync = DIRECTORY_SYNC,
) -> Path:
    """Deliver one message into a Maildir.

    The message (CRLF line endings, as spooled) is streamed into ``tmp/`` with LF endings,
    ``prepend`` first; the file is fsynced, renamed into ``new/`` (as Dovecot does; the
    name is unique) and ``new/`` is fsynced. Missing Maildir directories are created
    (mode 0700, owned by ``uid``/``gid``).

    Args:
        maildir: the Maildir (e.g. ``~alice/Maildir``).
        message: the message, an open binary file (read from its position) or bytes.
        prepend: header lines to put first, CRLF endings
            (:func:`roost.delivery.headers.delivery_headers`).
        folder: a Maildir++ folder (``"Lists.roost"`` is ``.Lists.roost/``), as named on
            disk (modified UTF-7 already applied); None: the INBOX.
        uid, gid: owner for created directories and the message file (None: unchanged;
            changing it needs root).
        quota_bytes: the Maildir++ quota in bytes (0: none); see :func:`maildir_usage`.
        quota_temporary: over quota defers (4.2.2) instead of bouncing (5.2.2), like
            Dovecot's ``quota_full_tempfail``.
        size_limit: the largest message file in bytes (Postfix ``mailbox_size_limit``;
            0: none).
        autocreate_folder: create a missing ``folder`` (Dovecot
            ``lda_mailbox_autocreate``); when false, a missing folder means the INBOX.
        hostname: the host name in the file name (None: ``socket.gethostname()``).
        directory_sync: the group commit that fsyncs ``new/`` (one per process by
            default, so that concurrent deliveries share fsyncs).

    Returns:
        The path of the new message file in ``new/``.

    Raises:
        QuotaExceeded: the Maildir is over ``quota_bytes`` (5.2.2, or 4.2.2) or the message
            is larger than ``size_limit`` (5.2.2).
        DeliveryError: any other failure: ENOSPC (4.3.1), EDQUOT (4.2.2), other OS errors
            (4.3.0), reading the message (4.3.0). Nothing is left in ``tmp/`` or ``new/``.
        ValueError: ``folder`` is not a valid folder name.
        Exception: anything else ``message.read()`` raises, after the same clean-up.
    """
    if folder is not None:
        _check_folder(folder)
    action = f"cannot deliver to maildir {maildir}"
    known = str(maildir)
    try:
        _ensure_known(maildir, uid, gid)
        target = maildir
        if folder is not None:
            candidate = maildir / f".{folder}"
            if autocreate_folder:
                ensure_maildir(candidate, uid=uid, gid=gid, folder=True)
                target = candidate
            elif (candidate / "new").is_dir():
                target = candidate
        used = maildir_usage(maildir) if quota_bytes > 0 else 0
        if quota_bytes > 0 and used >= quota_bytes:
            raise QuotaExceeded(
                f"mailbox full: {maildir} uses {used} of {quota_bytes} bytes",
                temporary=quota_temporary,
            )
    except OSError as exc:
        raise DeliveryError.from_os_error(exc, action) from exc
    directory = str(target)  # str paths from here: no pathlib on the per-message path
    try:
        base, fd, tmp_path = _create_tmp(directory, hostname)
    except DeliveryError as exc:
        if not isinstance(exc.__cause__, FileNotFoundError) or known not in _known_maildirs:
            raise
        # removed since we last created it: create it again (once)
        _known_maildirs.discard(known)
        return deliver_maildir(
            maildir,
            message,
            prepend=prepend,
            folder=folder,
            uid=uid,
            gid=gid,
            quota_bytes=quota_bytes,
            quota_temporary=quota_temporary,
            size_limit=size_limit,
            autocreate_folder=autocreate_folder,
            hostname=hostname,
            directory_sync=directory_sync,
        )
    linked: str | None = None
    try:
        try:
            if uid is not None or gid is not None:
                os.fchown(fd, -1 if uid is None else uid, -1 if gid is None else gid)
            converter = _write_converted(fd, message, prepend, size_limit)
            os.fsync(fd)
        finally:
            os.close(fd)
        size = converter.size
        if quota_bytes > 0 and used + size > quota_bytes:
            raise QuotaExceeded(
                f"mailbox full: {maildir} has no room for {size} bytes (quota {quota_bytes})",
                temporary=quota_temporary,
            )
        new = directory + "/new"
        final = f"{new}/{base},S={size},W={size + converter.newlines}"
        # rename, not link + unlink (the Maildir spec's way): one directory operation less
        # per message. As Dovecot argues (maildir-save.c), the name is unique, so link()'s
        # refusal to replace a file buys no safety here.
        os.rename(tmp_path, final)
        linked = final
        directory_sync.sync(new)
    except BaseException as exc:
        if isinstance(exc, FileNotFoundError):
            _known_maildirs.discard(known)  # check the directories again next time
        for leftover in (tmp_path, linked):
            if leftover is not None:
                with contextlib.suppress(OSError):
                    os.unlink(leftover)
        if isinstance(exc, MessageReadError):
            raise DeliveryError(True, "4.3.0", f"error reading message: {exc}") from exc
        if isinstance(exc, OSError):
            raise DeliveryError.from_os_error(exc, action) from exc
        raise
    _update_maildirsize(known, size)
    return Path(final)


@dataclass(frozen=True, slots=True)
class MaildirDelivery:
    """One message for :func:`deliver_maildir_files`: the arguments of
    :func:`deliver_maildir` that a delivery into a Maildir's INBOX takes."""

    maildir: Path
    message: MessageSource
    prepend: bytes = b""
    uid: int | None = None
    gid: int | None = None
    quota_bytes: int = 0
    quota_temporary: bool = False
    size_limit: int = 0
    hostname: str | None = None


class _Written:
    """A message written into ``tmp/`` whose descriptor is still open (the batch's phase 1)."""

    __slots__ = ("base", "converter", "directory", "fd", "index", "known", "tmp_path")

    def __init__(
        self,
        index: int,
        known: str,
        directory: str,
        base: str,
        fd: int,
        tmp_path: str,
        converter: UnixConverter,
    ) -> None:
        self.index = index
        self.known = known
        self.directory = directory
        self.base = base
        self.fd = fd
        self.tmp_path = tmp_path
        self.converter = converter


def _write_converted(
    fd: int, message: MessageSource, prepend: bytes, size_limit: int
) -> UnixConverter:
    """Write ``prepend`` and the message with LF endings to ``fd``; return the converter
    (its sizes). Raises QuotaExceeded past ``size_limit``, and what the message raises."""
    converter = UnixConverter()
    if type(message) is bytes and len(message) <= _WRITE_SIZE:
        # a message held in memory (the queue manager read it): converted whole, the
        # same bytes the chunked conversion below produces, with one write()
        out = (prepend + message).replace(b"\r\n", b"\n")
        converter.size = len(out)
        converter.newlines = out.count(b"\n")
        converter.last = out[-1:]
        if size_limit and converter.size > size_limit:
            raise QuotaExceeded(f"message larger than the mailbox size limit ({size_limit} bytes)")
        _write_all(fd, out)
        return converter
    pending: list[bytes] = []  # written together: one write() for a small message
    pending_size = 0
    for data in with_prepend(prepend, message):
        out = converter.feed(data)
        if size_limit and converter.size > size_limit:
            raise QuotaExceeded(f"message larger than the mailbox size limit ({size_limit} bytes)")
        pending.append(out)
        pending_size += len(out)
        if pending_size >= _WRITE_SIZE:
            _write_all(fd, b"".join(pending))
            pending.clear()
            pending_size = 0
    pending.append(converter.finish())
    _write_all(fd, b"".join(pending))
    if size_limit and converter.size > size_limit:
        raise QuotaExceeded(f"message larger than the mailbox size limit ({size_limit} bytes)")
    return converter


def _as_delivery_error(exc: Exception, action: str) -> Exception:
    """What :func:`deliver_maildir` raises for ``exc`` (after its clean-up)."""
    if isinstance(exc, MessageReadError):
        error = DeliveryError(True, "4.3.0", f"error reading message: {exc}")
        error.__cause__ = exc
        return error
    if isinstance(exc, OSError):
        error = DeliveryError.from_os_error(exc, action)
        error.__cause__ = exc
        return error
    return exc


def deliver_maildir_files(
    deliveries: Sequence[MaildirDelivery], *, directory_sync: DirectorySync = DIRECTORY_SYNC
) -> list[str | Exception]:
    """Deliver several messages into Maildir INBOXes, their fsyncs grouped.

    Each message gets what :func:`deliver_maildir` does for it (same file names, headers,
    sizes, ``maildirsize`` update, errors), in phases instead of one after the other:
    every message is written into ``tmp/`` and its write-back started; then each is
    fsynced; then each is renamed into ``new/`` (all fsyncs before the first rename: on
    ext4 without a journal a new file's fsync writes ``tmp/`` too, once for the batch
    this way); then each ``new/`` directory is fsynced once (the
    :class:`DirectorySync` group commit) for all of its messages. A message counts as
    delivered only after that last fsync, as with :func:`deliver_maildir`. One thread
    makes the whole batch durable, so a batch costs one thread hand-off where one call
    per message costs one each.

    A message with a quota (``quota_bytes``: the usage must be read after the message
    before it) is delivered by :func:`deliver_maildir`, in order, inside the batch.

    Blocking: call from a worker thread.

    Args:
        deliveries: the messages, each with its Maildir and options.
        directory_sync: the group commit that fsyncs ``new/``.

    Returns:
        One result per message, in order: the new file's path in ``new/`` (a string: no
        ``Path`` made per message), or the exception :func:`deliver_maildir` would have
        raised for it (``DeliveryError``,
        ``QuotaExceeded``, or what reading the message raised). A failed message leaves
        nothing in ``tmp/`` or ``new/``; the others are unaffected, except that a failed
        fsync of ``new/`` fails every message renamed into it.
    """
    results: list[str | Exception | None] = [None] * len(deliveries)
    written: list[_Written] = []
    try:
        for index, delivery in enumerate(deliveries):
            if delivery.quota_bytes > 0:
                one = _deliver_one(delivery, directory_sync)
                results[index] = str(one) if isinstance(one, Path) else one
                continue
            item = _start_one(index, delivery, directory_sync)
            if isinstance(item, _Written):
                written.append(item)
            else:
                results[index] = str(item) if isinstance(item, Path) else item
    except BaseException:
        for item in written:
            _discard(item.fd, item.tmp_path, None)
        raise
    # every file fsynced before any is renamed: on ext4 without a journal the fsync of a
    # file new in tmp/ writes tmp/ as well (its new entry); renamed out between two fsyncs,
    # each would write tmp/ again. Each file is still fsynced before its rename.
    synced: list[_Written] = []
    for position, item in enumerate(written):
        try:
            try:
                os.fsync(item.fd)
            finally:
                fd, item.fd = item.fd, -1
                os.close(fd)
        except BaseException as exc:
            _discard(-1, item.tmp_path, None)
            if isinstance(exc, FileNotFoundError):
                _known_maildirs.discard(item.known)
            if not isinstance(exc, Exception):
                for rest in written[position + 1 :]:
                    _discard(rest.fd, rest.tmp_path, None)
                for earlier in synced:
                    _discard(-1, earlier.tmp_path, None)
                raise
            action = f"cannot deliver to maildir {deliveries[item.index].maildir}"
            results[item.index] = _as_delivery_error(exc, action)
            continue
        synced.append(item)
    renamed: dict[str, list[tuple[_Written, str]]] = {}
    for position, item in enumerate(synced):
        final: str | None = None
        try:
            converter = item.converter
            new = item.directory + "/new"
            final = f"{new}/{item.base},S={converter.size},W={converter.size + converter.newlines}"
            os.rename(item.tmp_path, final)
        except BaseException as exc:
            _discard(-1, item.tmp_path, final)
            if isinstance(exc, FileNotFoundError):
                _known_maildirs.discard(item.known)
            if not isinstance(exc, Exception):
                for rest in synced[position + 1 :]:
                    _discard(-1, rest.tmp_path, None)
                for done in renamed.values():
                    for _item, moved in done:
                        _discard(-1, None, moved)
                raise
            action = f"cannot deliver to maildir {deliveries[item.index].maildir}"
            results[item.index] = _as_delivery_error(exc, action)
            continue
        renamed.setdefault(new, []).append((item, final))
    unconfirmed = list(renamed)
    for new, items in renamed.items():
        try:
            directory_sync.sync(new)
        except BaseException as exc:
            for item, final in items:
                _discard(-1, None, final)
                if isinstance(exc, Exception):
                    action = f"cannot deliver to maildir {deliveries[item.index].maildir}"
                    results[item.index] = _as_delivery_error(exc, action)
            if not isinstance(exc, Exception):
                # not delivered: nothing may stay in new/ that the caller will retry
                for later in unconfirmed[unconfirmed.index(new) + 1 :]:
                    for _item, final in renamed[later]:
                        _discard(-1, None, final)
                raise
            continue
        sizes: dict[str, list[int]] = {}
        for item, final in items:
            sizes.setdefault(item.known, []).append(item.converter.size)
            results[item.index] = final
        for known, added in sizes.items():
            _update_maildirsize(known, *added)
    return [
        result if result is not None else _lost(deliveries[i]) for i, result in enumerate(results)
    ]


def _lost(delivery: MaildirDelivery) -> DeliveryError:
    """A result that was never set (a bug): the message is not delivered."""
    return DeliveryError(
        True, "4.3.0", f"cannot deliver to maildir {delivery.maildir}: internal error"
    )


def _discard(fd: int, tmp_path: str | None, final: str | None) -> None:
    """Close ``fd`` (when >= 0) and unlink what a failed delivery left, ignoring errors."""
    if fd >= 0:
        with contextlib.suppress(OSError):
            os.close(fd)
    for leftover in (tmp_path, final):
        if leftover is not None:
            with contextlib.suppress(OSError):
                os.unlink(leftover)


def _deliver_one(delivery: MaildirDelivery, directory_sync: DirectorySync) -> Path | Exception:
    """:func:`deliver_maildir` for one message of a batch; its exception as the result."""
    try:
        return deliver_maildir(
            delivery.maildir,
            delivery.message,
            prepend=delivery.prepend,
            uid=delivery.uid,
            gid=delivery.gid,
            quota_bytes=delivery.quota_bytes,
            quota_temporary=delivery.quota_temporary,
            size_limit=delivery.size_limit,
            hostname=delivery.hostname,
            directory_sync=directory_sync,
        )
    except Exception as exc:
        return exc


def _start_one(
    index: int, delivery: MaildirDelivery, directory_sync: DirectorySync
) -> _Written | Path | Exception:
    """Phase 1 of a batch for one message: the Maildir made sure of, the message written
    into ``tmp/`` and its write-back started, the descriptor left open. A Maildir removed
    since this process last saw it: :func:`deliver_maildir` whole (it creates it again)."""
    maildir = delivery.maildir
    known = str(maildir)
    action = f"cannot deliver to maildir {maildir}"
    try:
        _ensure_known(maildir, delivery.uid, delivery.gid)
    except OSError as exc:
        return _as_delivery_error(exc, action)
    directory = known
    try:
        base, fd, tmp_path = _create_tmp(directory, delivery.hostname)
    except DeliveryError as exc:
        if isinstance(exc.__cause__, FileNotFoundError) and known in _known_maildirs:
            _known_maildirs.discard(known)
            return _deliver_one(delivery, directory_sync)
        return exc
    try:
        uid, gid = delivery.uid, delivery.gid
        if uid is not None or gid is not None:
            os.fchown(fd, -1 if uid is None else uid, -1 if gid is None else gid)
        converter = _write_converted(fd, delivery.message, delivery.prepend, delivery.size_limit)
        start_writeback(fd)
    except BaseException as exc:
        _discard(fd, tmp_path, None)
        if isinstance(exc, FileNotFoundError):
            _known_maildirs.discard(known)
        if not isinstance(exc, Exception):
            raise
        return _as_delivery_error(exc, action)
    return _Written(index, known, directory, base, fd, tmp_path, converter)


def _ensure_known(maildir: Path, uid: int | None, gid: int | None) -> None:
    """Create the Maildir (:func:`ensure_maildir`) unless this process has already made
    sure of it (``_known_maildirs``, keyed by ``str(maildir)``). Raises OSError."""
    known = str(maildir)
    if known not in _known_maildirs:
        ensure_maildir(maildir, uid=uid, gid=gid)
        if len(_known_maildirs) >= _KNOWN_MAILDIRS_SIZE:
            _known_maildirs.clear()
        _known_maildirs.add(known)


def _create_tmp(target: str, hostname: str | None) -> tuple[str, int, str]:
    """Create a new file in ``tmp/``; return (base name, descriptor, path)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _attempt in range(10):
        base = unique_name(hostname)
        path = f"{target}/tmp/{base}"
        try:
            fd = os.open(path, flags, _FILE_MODE)
        except FileExistsError:
            continue
        except OSError as exc:
            raise DeliveryError.from_os_error(exc, f"cannot create {path}") from exc
        return base, fd, path
    raise DeliveryError(True, "4.3.0", f"cannot create a unique file in {target}/tmp")


def _update_maildirsize(maildir: str, *sizes: int) -> None:
    """Append ``size 1`` for each of ``sizes`` to Maildir++ ``maildirsize`` when the file
    exists (one ``access`` and one ``write`` for them all).

    Whatever roost's own quota: the file carries its quota in its first line, and the
    program that made it (Dovecot's ``maildir`` quota backend, Courier's maildrop) counts
    on every delivery agent adding to it. Its absence (the common case) is told by an
    ``access`` that returns False, not by an ``open`` that raises (2-3 us less per
    delivery); a file made meanwhile is as if made just after the delivery.
    """
    path = maildir + "/maildirsize"
    if not os.access(path, os.F_OK, effective_ids=True, follow_symlinks=False):
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW)
    except OSError:
        return
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            os.write(fd, "".join(f"{size} 1\n" for size in sizes).encode())
    except OSError:
        pass  # the next full recalculation fixes it
    finally:
        os.close(fd)
