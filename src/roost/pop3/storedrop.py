"""The POP3 maildrop over the mail store: the user's INBOX, listed and locked at login.

:class:`StoreMaildrop` implements :class:`roost.pop3.maildrop.Maildrop` over a
:class:`roost.store.Mailbox` (the INBOX of the user's Maildir++), as Dovecot's POP3
server does over its own storage:

* The listing is the INBOX at login: message ``uid`` is the IMAP UID, ``size`` the size
  with CRLF line ends (the store's ``vsize``, Dovecot's virtual size), ``uidl`` the
  ``P`` field of ``dovecot-uidlist`` when a migration left one, else
  ``pop3_uidl_format`` expanded (:class:`UidlFormat`; default ``%08Xu%08Xv``: UID and
  UIDVALIDITY as 8 lowercase hex digits each, as Dovecot's ``X`` modifier prints them).
* UPDATE (RFC 1939 §6) sets ``\\Deleted`` on the marked messages and expunges them through
  the store, which publishes the change on its bus: IMAP sessions that have INBOX selected
  see ``EXPUNGE`` at once.
* ``\\Seen``: the session tells :meth:`StoreMaildrop.mark_seen` which messages were
  retrieved (RETR, not TOP) when it ends, by QUIT or not, as Dovecot does unless
  ``pop3_no_flag_updates = yes``. With ``pop3_no_flag_updates`` the INBOX is also opened
  read-only: new messages stay in ``new/`` and keep ``\\Recent`` for IMAP.
* ``pop3_lock_session`` (:class:`SessionLock`): one POP3 session per maildrop. The lock
  is Dovecot's ``dovecot-pop3-session.lock`` in the Maildir root (a dot-lock holding
  ``<pid>:<hostname>``, overridden when its process is gone or when it was not refreshed
  for 5 minutes; refreshed every minute while held), so a Dovecot and a roost POP3 server
  on the same Maildir exclude each other too. It does not block deliveries or IMAP.

Every store call blocks; they run in the executor given, one call at a time per maildrop
(opening, locking and listing in a single call: a round trip to a worker thread costs
more than most of that work). One exception: RETR/TOP of a message of at most 256 KB
that is wholly in the page cache is read on the event loop with ``preadv(RWF_NOWAIT)``,
which never waits for the disk (a message not cached goes to a thread). That halves the
CPU of retrieving small messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import os
import re
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol, TypeVar

from roost.pop3.maildrop import MaildropMessage, valid_uidl
from roost.store import LockTimeout, MailboxProtocol, MessageInfo, StoreError, StoreMode
from roost.store.dotlock import lock_content, remove_if_stale

__all__ = [
    "DEFAULT_UIDL_FORMAT",
    "SESSION_LOCK_NAME",
    "InboxStore",
    "MaildropPlace",
    "SessionLock",
    "StoreMaildrop",
    "UidlFormat",
    "open_maildrop",
]

log = logging.getLogger("roost.pop3")

_T = TypeVar("_T")

DEFAULT_UIDL_FORMAT: Final = "%08Xu%08Xv"
"""Dovecot's default ``pop3_uidl_format`` (since v1.1)."""

SESSION_LOCK_NAME: Final = "dovecot-pop3-session.lock"
"""Dovecot's POP3 session lock file (``POP3_LOCK_FNAME``), in the mail root directory."""
SESSION_LOCK_TIMEOUT: Final = 10.0
"""Seconds a login waits for another session's lock before ``-ERR [IN-USE]`` (Dovecot: 10)."""
SESSION_LOCK_STALE: Final = 300.0
"""A lock not refreshed for this many seconds is overridden (Dovecot: 5 minutes)."""
SESSION_LOCK_REFRESH: Final = 60.0
"""Seconds between refreshes (mtime updates) of a held lock."""
_LOCK_POLL: Final = 0.1
_CACHED_READ_MAX: Final = 256 * 1024
"""Largest message (octets) read on the event loop when it is all in the page cache."""
_RWF_NOWAIT: Final[int | None] = getattr(os, "RWF_NOWAIT", None)
_SEEN: Final = "\\Seen"
_DELETED: Final = "\\Deleted"


# --- pop3_uidl_format ---------------------------------------------------------------------


_VARIABLE: Final = re.compile(r"%(0?)(\d*)([LUX]*)(?:\{([a-z_]+)\}|(.))", re.DOTALL)
_LONG_NAMES: Final = {"uidvalidity": "v", "uid": "u", "filename": "f", "guid": "g"}


@dataclass(frozen=True, slots=True)
class _Variable:
    key: str  # "u", "v", "f" or "g"
    zero_pad: bool
    width: int
    modifiers: str


@dataclass(frozen=True, slots=True)
class UidlFormat:
    """Dovecot's ``pop3_uidl_format``: how a message's UIDL is made (RFC 1939 §7).

    Variables (Dovecot's ``var_expand``): ``%u`` / ``%{uid}`` the UID, ``%v`` /
    ``%{uidvalidity}`` the UIDVALIDITY, ``%f`` / ``%{filename}`` and ``%g`` /
    ``%{guid}`` the Maildir base file name (Dovecot's storage ID and GUID for Maildir);
    ``%%`` is ``%``. Before the key: ``0`` pads with zeros, digits give the width (without
    ``0``, the value is cut to it), modifiers ``X`` (decimal to lowercase hex, as
    Dovecot's ``%llx``), ``L`` (lower case) and ``U`` (upper case). ``%m`` (the header
    MD5) is not supported.

    Build one with :meth:`parse`.
    """

    pieces: tuple[str | _Variable, ...]

    @classmethod
    def parse(cls, text: str) -> UidlFormat:
        """Parse a ``pop3_uidl_format`` value.

        Raises:
            ValueError: an unsupported variable, or no variable that tells messages apart
                (Dovecot: "Invalid pop3_uidl_format").
        """
        pieces: list[str | _Variable] = []
        position = 0
        for match in _VARIABLE.finditer(text):
            if match.start() > position:
                pieces.append(text[position : match.start()])
            position = match.end()
            zero, width, modifiers, long_key, short_key = match.groups()
            if short_key == "%" and not (zero or width or modifiers):
                pieces.append("%")
                continue
            key = _LONG_NAMES.get(long_key, "") if long_key else short_key
            if key not in ("u", "v", "f", "g"):
                shown = f"%{{{long_key}}}" if long_key else f"%{short_key}"
                raise ValueError(f"unsupported variable {shown} (use %u, %v, %f or %g)")
            pieces.append(_Variable(key, bool(zero), int(width or 0), modifiers))
        if position < len(text):
            rest = text[position:]
            if "%" in rest:
                raise ValueError(f"incomplete variable in {rest!r}")
            pieces.append(rest)
        keys = {piece.key for piece in pieces if isinstance(piece, _Variable)}
        if not keys & {"u", "f", "g"}:
            raise ValueError("needs %u, %f or %g to tell messages apart")
        return cls(tuple(pieces))

    @property
    def is_default(self) -> bool:
        """Whether this is Dovecot's default ``%08Xu%08Xv``."""
        return self == _DEFAULT

    def uidl(self, message: MessageInfo, uid_validity: int) -> str:
        """The UIDL of ``message``: its ``P`` field if it has one, else this format."""
        if message.pop3_uidl:
            return message.pop3_uidl
        if self.is_default:
            return f"{message.uid:08x}{uid_validity:08x}"
        values = {
            "u": str(message.uid),
            "v": str(uid_validity),
            "f": message.base_name,
            "g": message.base_name,
        }
        out: list[str] = []
        for piece in self.pieces:
            if isinstance(piece, str):
                out.append(piece)
                continue
            value = values[piece.key]
            for modifier in piece.modifiers:
                if modifier == "X":
                    value = f"{int(value):x}" if value.isdigit() else "0"
                elif modifier == "L":
                    value = value.lower()
                else:
                    value = value.upper()
            if piece.zero_pad:
                value = value.rjust(piece.width, "0")
            elif piece.width:
                value = value[: piece.width]
            out.append(value)
        return "".join(out)


_DEFAULT: Final = UidlFormat(
    (_Variable("u", True, 8, "X"), _Variable("v", True, 8, "X")),
)


# --- the session lock ---------------------------------------------------------------------


_held: Final[set[str]] = set()
_held_lock = threading.Lock()


def _forget_after_fork() -> None:
    global _held_lock
    _held_lock = threading.Lock()
    _held.clear()


os.register_at_fork(after_in_child=_forget_after_fork)


class SessionLock:
    """Dovecot's POP3 session lock (``pop3_lock_session``): ``dovecot-pop3-session.lock``.

    A dot-lock created with ``O_EXCL`` that holds ``<pid>:<hostname>``. An existing lock
    is overridden when it is stale: its process is gone (same host), it is a leftover of
    an earlier process with this process's pid, or it was not refreshed for
    :data:`SESSION_LOCK_STALE` seconds. Within this process a held lock is never stale.

    Every method does file I/O: call them in a worker thread.

    Args:
        path: the lock file.
        uid: owner to give the lock file (``None``: the process's).
        gid: its group.
        stale_seconds: age after which a lock file is overridden.
    """

    def __init__(
        self,
        path: Path,
        *,
        uid: int | None = None,
        gid: int | None = None,
        stale_seconds: float = SESSION_LOCK_STALE,
    ) -> None:
        self.path = path
        self._key = ""  # the real path, resolved in try_acquire (a worker thread)
        self._uid = uid
        self._gid = gid
        self._stale_seconds = stale_seconds
        self._inode = 0
        self.held = False

    def try_acquire(self) -> bool:
        """Take the lock if it is free (or stale).

        Returns:
            True when the lock is now held; False when another session holds it.

        Raises:
            OSError: the lock file cannot be created (permissions, no directory).
        """
        if not self._key:
            self._key = os.path.realpath(self.path)
        with _held_lock:
            if self.held:
                return True
            if self._key in _held:
                return False
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
            for _ in range(2):
                try:
                    fd = os.open(self.path, flags, 0o600)
                except FileExistsError:
                    if not self._remove_if_stale():
                        return False
                    continue
                try:
                    os.write(fd, lock_content())
                    if self._uid is not None or self._gid is not None:
                        os.fchown(
                            fd,
                            -1 if self._uid is None else self._uid,
                            -1 if self._gid is None else self._gid,
                        )
                    self._inode = os.fstat(fd).st_ino
                except BaseException:
                    with contextlib.suppress(OSError):
                        os.unlink(self.path)
                    raise
                finally:
                    os.close(fd)
                _held.add(self._key)
                self.held = True
                return True
            return False

    def _remove_if_stale(self) -> bool:
        # Our own pid but not held here (``_held``): a leftover of an earlier process.
        return remove_if_stale(
            self.path, self._stale_seconds, own_pid_is_stale=True, on_stale=self._log_stale
        )

    def _log_stale(self, content: bytes) -> None:
        log.warning("removing stale POP3 session lock %s (%s)", self.path, content[:64])

    def refresh(self) -> bool:
        """Update the lock file's mtime so others do not take it for stale.

        Returns:
            False if the lock file is gone or was replaced (someone overrode it).
        """
        if not self.held:
            return False
        try:
            if os.stat(self.path).st_ino != self._inode:
                return False
            os.utime(self.path)
        except OSError:
            return False
        return True

    def release(self) -> None:
        """Remove the lock file if it is still ours (idempotent)."""
        with _held_lock:
            if not self.held:
                return
            self.held = False
            _held.discard(self._key)
            with contextlib.suppress(OSError):
                if os.stat(self.path).st_ino == self._inode:
                    os.unlink(self.path)


# --- the maildrop -------------------------------------------------------------------------


class StoreMaildrop:
    """A user's INBOX opened for one POP3 session (see the module docstring).

    Get one from :func:`open_maildrop`.

    Args:
        mailbox: the open INBOX.
        messages: the listing at login.
        executor: where the blocking store calls run (``None``: the loop's default).
        lock: the session lock held for this maildrop, if any.
    """

    def __init__(
        self,
        mailbox: MailboxProtocol,
        messages: Sequence[MaildropMessage],
        *,
        executor: Executor | None = None,
        lock: SessionLock | None = None,
    ) -> None:
        self._mailbox = mailbox
        self._messages = tuple(messages)
        self._executor = executor
        self._lock = lock
        self._closed = False
        self._nowait = _RWF_NOWAIT is not None
        self._refresher: asyncio.Task[None] | None = None
        if lock is not None:
            self._refresher = asyncio.get_running_loop().create_task(self._refresh_lock())

    @property
    def messages(self) -> tuple[MaildropMessage, ...]:
        """The messages at login, in UID order (message number 1 first)."""
        return self._messages

    async def _call(self, function: Callable[..., _T], *args: object) -> _T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(function, *args))

    def read_now(self, uid: int) -> bytes | None:
        """The message as stored, if it can be had without waiting; else None.

        That is a message of at most 256 KB whose pages are all in the page cache: read
        with ``preadv(RWF_NOWAIT)``, which never waits for the disk. It saves a thread
        round trip per RETR in the common case, a client downloading mail that was just
        delivered or listed. None means: use :meth:`read`.
        """
        if not self._nowait:
            return None
        try:
            return _read_cached(self._mailbox, uid)
        except _NoWaitUnsupported:
            self._nowait = False  # this file system cannot: always use the executor
            return None

    def still_there(self, uid: int) -> bool:
        """Whether the message file is still where it was when last read (no I/O but one
        ``access(2)``): False once it was expunged, or renamed by a flag change.

        The session checks this before sending a message it read ahead.
        """
        try:
            info = self._mailbox.message(uid)
            return os.access(f"{info.directory}/{info.filename}", os.F_OK)
        except StoreError:
            return False

    async def read(self, uid: int) -> bytes:
        """The message as stored (LF line ends).

        Tries :meth:`read_now` first; any other read runs in the executor.

        Raises:
            roost.store.MessageNotFound: it was expunged meanwhile (by IMAP).
            StoreError: it cannot be read.
        """
        cached = self.read_now(uid)
        if cached is not None:
            return cached
        return await self._call(_read, self._mailbox, uid)

    async def delete(self, uids: Sequence[int]) -> None:
        """Expunge these messages (UPDATE); ones already gone count as deleted.

        Raises:
            StoreError: the store failed; some may remain.
        """
        if uids:
            await self._call(_expunge, self._mailbox, tuple(uids))

    async def mark_seen(self, uids: Sequence[int]) -> None:
        """Add ``\\Seen`` to these messages (the ones retrieved); gone ones are skipped.

        Raises:
            StoreError: the store failed.
        """
        if uids:
            await self._call(_mark_seen, self._mailbox, tuple(uids))

    async def close(self) -> None:
        """Close the INBOX and release the session lock; nothing is deleted. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._refresher is not None:
            self._refresher.cancel()
        await self._call(_close, self._mailbox, self._lock)

    async def _refresh_lock(self) -> None:
        lock = self._lock
        assert lock is not None
        while True:
            await asyncio.sleep(SESSION_LOCK_REFRESH)
            if not await self._call(lock.refresh):
                log.warning("POP3 session lock %s was lost", lock.path)
                return


class _NoWaitUnsupported(Exception):
    """``preadv`` with ``RWF_NOWAIT`` is not available (kernel or file system)."""


def _read_cached(mailbox: MailboxProtocol, uid: int) -> bytes | None:
    """Message ``uid`` if it is small and wholly in the page cache; else None.

    Raises:
        _NoWaitUnsupported: non-blocking reads are not available here.
    """
    if _RWF_NOWAIT is None:
        raise _NoWaitUnsupported
    try:
        info = mailbox.message(uid)  # the listing in memory: no I/O
    except StoreError:
        return None
    size = info.size
    if not 0 < size <= _CACHED_READ_MAX:
        return None
    try:
        fd = os.open(f"{info.directory}/{info.filename}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None  # renamed (flags) or gone: the executor path finds out which
    try:
        buffer = bytearray(size)
        if os.preadv(fd, [buffer], 0, _RWF_NOWAIT) != size:
            return None  # partly cached (or not what the index says): read it properly
        return bytes(buffer)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise _NoWaitUnsupported from None
        return None  # EAGAIN: not (all) in the page cache
    finally:
        os.close(fd)


def _read(mailbox: MailboxProtocol, uid: int) -> bytes:
    with mailbox.open_message(uid) as handle:
        return handle.read()


def _expunge(mailbox: MailboxProtocol, uids: tuple[int, ...]) -> None:
    mailbox.store_flags(uids, (_DELETED,), StoreMode.ADD)
    mailbox.expunge(uids)


def _mark_seen(mailbox: MailboxProtocol, uids: tuple[int, ...]) -> None:
    unseen = []
    for uid in uids:
        with contextlib.suppress(StoreError):
            if _SEEN not in mailbox.message(uid).flags:
                unseen.append(uid)
    if unseen:
        mailbox.store_flags(unseen, (_SEEN,), StoreMode.ADD)


def _listing(mailbox: MailboxProtocol, uidl_format: UidlFormat) -> tuple[MaildropMessage, ...]:
    validity = mailbox.uid_validity
    messages: list[MaildropMessage] = []
    for info in mailbox.messages():
        uidl = uidl_format.uidl(info, validity)
        if not valid_uidl(uidl):
            fallback = _DEFAULT.uidl(info, validity)
            log.warning(
                "%s: UID %d: UIDL %r is not 1-70 printable characters; using %s",
                mailbox.directory,
                info.uid,
                uidl[:80],
                fallback,
            )
            uidl = fallback
        messages.append(MaildropMessage(info.uid, info.vsize, uidl))
    return tuple(messages)


# --- opening ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MaildropPlace:
    """Where a user's INBOX is and how to open it (from ``user_mailbox``).

    Attributes:
        open_store: opens the user's store (blocking); its ``open("INBOX")`` is used.
        lock_directory: where ``dovecot-pop3-session.lock`` goes (the mail root, or
            the index directory when indexes are kept apart, as Dovecot).
        uid: owner of the lock file.
        gid: its group.
    """

    open_store: Callable[[], InboxStore]
    lock_directory: Path
    uid: int | None = None
    gid: int | None = None


class InboxStore(Protocol):
    """What :func:`open_maildrop` needs of a user's store (``roost.store.MailStore``)."""

    def open(self, name: str, *, readonly: bool = False) -> MailboxProtocol:
        """Open a mailbox (here always INBOX)."""
        ...


async def open_maildrop(
    place: MaildropPlace,
    *,
    executor: Executor | None = None,
    lock_session: bool = True,
    readonly: bool = False,
    uidl_format: UidlFormat = _DEFAULT,
    lock_timeout: float = SESSION_LOCK_TIMEOUT,
) -> StoreMaildrop:
    """Lock (``pop3_lock_session``) and open a user's INBOX, and list it.

    Args:
        place: where the mail is.
        executor: where the blocking calls run.
        lock_session: take the POP3 session lock first.
        readonly: open INBOX without claiming ``\\Recent`` or moving ``new/`` to ``cur/``
            (``pop3_no_flag_updates``).
        uidl_format: ``pop3_uidl_format``.
        lock_timeout: seconds to wait for another session's lock.

    Raises:
        LockTimeout: another POP3 session holds the maildrop (``-ERR [IN-USE]``).
        StoreError: the store cannot be opened or read.
    """
    loop = asyncio.get_running_loop()
    lock: SessionLock | None = None
    if lock_session:
        lock = SessionLock(place.lock_directory / SESSION_LOCK_NAME, uid=place.uid, gid=place.gid)
    deadline = loop.time() + lock_timeout
    # One worker-thread call for the whole opening (each round trip to a thread costs
    # more than the work here); another one a little later while the lock is busy.
    while True:
        opened = await loop.run_in_executor(
            executor, functools.partial(_open, place, lock, readonly, uidl_format)
        )
        if opened is not None:
            mailbox, messages = opened
            return StoreMaildrop(mailbox, messages, executor=executor, lock=lock)
        if loop.time() >= deadline:
            assert lock is not None
            raise LockTimeout(f"{lock.path} is held by another POP3 session")
        await asyncio.sleep(_LOCK_POLL)


def _open(
    place: MaildropPlace, lock: SessionLock | None, readonly: bool, uidl_format: UidlFormat
) -> tuple[MailboxProtocol, tuple[MaildropMessage, ...]] | None:
    """Lock, open and list the INBOX (blocking); None while the lock is held elsewhere."""
    store = place.open_store()
    if lock is not None:
        try:
            if not lock.try_acquire():
                return None
        except OSError as exc:
            raise StoreError.from_os_error(exc, f"create {lock.path}") from exc
    try:
        mailbox = store.open("INBOX", readonly=readonly)
        try:
            return mailbox, _listing(mailbox, uidl_format)
        except BaseException:
            mailbox.close()
            raise
    except BaseException:
        if lock is not None:
            lock.release()
        raise


def _close(mailbox: MailboxProtocol, lock: SessionLock | None) -> None:
    try:
        mailbox.close()
    finally:
        if lock is not None:
            lock.release()
