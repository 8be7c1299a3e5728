"""One open mailbox: a Maildir directory, its Dovecot control files and its index.

Synchronisation, as in Dovecot's maildir-sync:

1. A quick check compares ``new/`` and ``cur/`` mtimes and the ``dovecot-uidlist`` and
   ``dovecot-keywords`` stamps with those the index recorded at its last sync. Nothing to
   do when they match, unless a directory changed so shortly before that sync that a
   later change could share its mtime (the race window).
2. Otherwise, holding ``dovecot-uidlist.lock``, the changed directories are listed
   (``new/`` before ``cur/``, so a message moved between them is seen) and reconciled with
   the index: renamed files are flag changes by another program, vanished files are
   expunges, unknown files are new messages. Their UIDs come from ``dovecot-uidlist``
   when another process (Dovecot) gave them one; the rest get the next UIDs, in the order
   of their base names, and are appended to the uidlist.
3. Each :class:`Mailbox` object then reads from the index what changed since its own last
   sync (by MODSEQ) and reports it as :class:`~roost.store.model.Changes`.

Every change (flags, expunge, append, copy) is made under the same lock and bumps
HIGHESTMODSEQ (RFC 7162), so two sessions, or two processes, stay consistent.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import shutil
import sqlite3
import stat
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import BinaryIO, Final

from roost.store._fs import FsPolicy, unlink_quietly, write_all
from roost.store.bus import ChangeBus, ChangeCallback, Subscription
from roost.store.dotlock import dotlock, is_live_template, keep_template, release_template
from roost.store.errors import LockTimeout, MailboxNotFound, MessageNotFound, StoreError
from roost.store.filename import (
    DELETED,
    FLAG_LETTERS,
    LETTER_FLAGS,
    SEEN,
    SYSTEM_FLAGS,
    crlf_size,
    filename_letters,
    generate_base,
    normalize_flag,
    render_filename,
    size_from_base,
    split_filename,
    to_crlf,
    to_lf,
)
from roost.store.index import Index, IndexState, LogSync, Row, decode_flags, encode_flags
from roost.store.keywords import KEYWORDS_NAME, Keywords
from roost.store.model import (
    Changes,
    FlagUpdate,
    MailboxStatus,
    MessageInfo,
    StoreFlagsResult,
    StoreMode,
)
from roost.store.packed import PackedMessages, PackedUids
from roost.store.uidlist import UIDLIST_NAME, UidList, UidRecord
from roost.store.uidvalidity import next_uid_validity

__all__ = ["Mailbox", "pop3_uidl"]

logger = logging.getLogger("roost.store")

NEW: Final = "new"
CUR: Final = "cur"
TMP: Final = "tmp"
_SUBDIRS: Final = (NEW, CUR)
#: A directory whose mtime is this close to the last scan may hide a later change with
#: the same mtime (timestamps advance by clock ticks): scan it again.
_RACE_WINDOW_NS: Final = 100_000_000
#: The same for file systems with whole-second mtimes.
_RACE_WINDOW_COARSE_NS: Final = 2_000_000_000
#: Rewrite dovecot-uidlist once this many expunged records (and a third of the live
#: ones) accumulated in it (Dovecot: UIDLIST_COMPRESS_PERCENTAGE).
_COMPRESS_MIN: Final = 64
_LINK_FALLBACK_ERRNOS: Final = frozenset(
    {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES, errno.ENOSYS}
)

#: Dovecot's ``MAILDIR_TMP_DELETE_SECS``: files in ``tmp/`` whose inode has not changed
#: for this long are left over by a writer that died; they are deleted.
TMP_DELETE_SECONDS: Final = 36 * 60 * 60
#: Dovecot's ``MAILDIR_TMP_SCAN_SECS``: ``tmp/`` is scanned at most this often (by its
#: atime, which the scan sets).
TMP_SCAN_SECONDS: Final = 8 * 60 * 60

QuotaCheck = Callable[[int], None]


def clean_tmp(mailbox_dir: str, now: float) -> int:
    """Delete the files of ``<mailbox_dir>/tmp/`` left over by dead writers (Dovecot's
    ``maildir_check_tmp`` + ``unlink_old_files``, at mailbox open).

    Nothing is done unless ``tmp/``'s atime is more than :data:`TMP_SCAN_SECONDS` before
    ``now``; a scan first sets that atime to ``now`` (its mtime is kept), so other
    processes skip it. A scan deletes the non-directory entries whose *ctime* is more
    than :data:`TMP_DELETE_SECONDS` before ``now``, as Dovecot: not the mtime, which an
    APPEND in progress sets to the message's INTERNALDATE (any age) before renaming the
    file into ``cur/``; every write, ``utime`` or link changes the ctime, so a file being
    delivered and a lock template (refreshed at each lock) are young. Lock templates of
    live processes of this host are kept whatever their age. Errors (a read-only
    mailbox, a file gone meanwhile) are ignored: the next scan tries again.

    Args:
        mailbox_dir: the Maildir (the directory holding ``cur/``, ``new/``, ``tmp/``).
        now: the current time, seconds since the epoch.

    Returns:
        How many files were deleted.
    """
    tmp_dir = os.path.join(mailbox_dir, TMP)
    try:
        st = os.stat(tmp_dir)
        if st.st_atime >= now - TMP_SCAN_SECONDS:
            return 0
        os.utime(tmp_dir, ns=(int(now * 1e9), st.st_mtime_ns))
        entries = list(os.scandir(tmp_dir))
    except OSError:
        return 0
    cutoff = now - TMP_DELETE_SECONDS
    deleted = 0
    for entry in entries:
        try:
            old = entry.stat(follow_symlinks=False)
            if stat.S_ISDIR(old.st_mode) or old.st_ctime >= cutoff:
                continue
            if is_live_template(entry.name):
                continue
            os.unlink(entry.path)
        except OSError:
            continue
        deleted += 1
        logger.info("deleted old temporary file %s", entry.path)
    return deleted


def pop3_uidl(uid_validity: int, message: MessageInfo) -> str:
    """Return the POP3 UIDL of a message, as Dovecot's default ``%08Xu%08Xv``.

    A UIDL kept in ``dovecot-uidlist`` (field ``P``, e.g. from a migration) wins.

    See Also: RFC 1939 §7 (UIDL); Dovecot setting ``pop3_uidl_format``.
    """
    if message.pop3_uidl:
        return message.pop3_uidl
    return f"{message.uid:08X}{uid_validity:08X}"


def _replaced(recorded: str, current: str) -> bool:
    """Tell whether the uidlist was replaced since ``recorded`` (not merely appended to)."""
    if recorded == current:
        return False
    if not recorded or not current:
        return True
    old_inode, old_size, _ = recorded.split(":")
    new_inode, new_size, _ = current.split(":")
    return old_inode != new_inode or int(new_size) < int(old_size)


def _race_window(mtime_ns: int) -> int:
    return _RACE_WINDOW_COARSE_NS if mtime_ns % 1_000_000_000 == 0 else _RACE_WINDOW_NS


def _ends_race_window(state: IndexState, stamps: dict[str, int], synced_at_ns: int) -> bool:
    """True if recording ``synced_at_ns`` takes a directory out of the race window."""
    for subdir, stamp in stamps.items():
        window = _race_window(stamp)
        recorded = state.new_mtime_ns if subdir == NEW else state.cur_mtime_ns
        in_window_now = recorded == stamp and stamp >= state.synced_at_ns - window
        if in_window_now and stamp < synced_at_ns - window:
            return True
    return False


class Mailbox:
    """An open mailbox; get one from :meth:`roost.store.MailStore.open`.

    One object serves one session; use it from one thread at a time (the IMAP server runs
    its calls in worker threads). Several objects, in this process or others, may have the
    same mailbox open: each sees the others' changes on :meth:`sync`.

    Args:
        name: the mailbox name (Unicode, ``.`` separated).
        directory: its Maildir directory.
        index_path: its index file.
        root: the Maildir root (for ``dovecot-uidvalidity``).
        policy: modes, ownership, fsync.
        bus: where changes are published.
        readonly: EXAMINE: no \\Recent is claimed and ``new/`` is left alone; writes
            are still possible (the caller decides what EXAMINE allows).
        quota_check: called with the bytes about to be added; raises OverQuota.
        view: False to skip loading the message list (for STATUS and quota: only
            :meth:`status` and :attr:`physical_size` are meaningful then).

    Raises:
        MailboxNotFound: the directory has no ``cur/``.
        StoreError: the Maildir cannot be read.
    """

    def __init__(
        self,
        name: str,
        directory: Path,
        *,
        index_path: Path,
        root: Path,
        policy: FsPolicy,
        bus: ChangeBus,
        readonly: bool = False,
        quota_check: QuotaCheck | None = None,
        view: bool = True,
    ) -> None:
        self.name = name
        self.directory = directory
        self.readonly = readonly
        self._dir = os.fspath(directory)
        self._root = root
        self._policy = policy
        self._bus = bus
        self._quota_check = quota_check
        if not os.path.isdir(os.path.join(self._dir, CUR)):
            raise MailboxNotFound(f"mailbox {name!r} does not exist", mailbox=name)
        clean_tmp(self._dir, time.time())
        # Made at first use, dropped by suspend() (a forgotten UidList is a new one).
        self._uidlist_kept: UidList | None = None
        self._keywords = Keywords(
            directory / KEYWORDS_NAME,
            fsync=policy.fsync,
            file_mode=policy.file_mode,
            chown=policy.chown_fd,
        )
        # While suspended, the view and \\Recent are packed (see :meth:`suspend`); the
        # properties _view and _recent unpack them at their next use.
        self._packed: tuple[PackedMessages, PackedUids] | None = None
        self._view_dict: dict[int, MessageInfo] = {}
        self._sorted: list[MessageInfo] | None = None
        self._view_in_order = True
        self._top_uid = 0
        self._recent_set: set[int] | None = set()  # None: none (or packed)
        self._cursor = 0
        self._uid_validity = 0
        self._uid_next = 1
        self._modseq_floor = 0
        self._known_keywords: dict[str, str] | None = None
        # subdir -> (index generation, file names the index has there): a rescan that
        # lists the same names at the same generation has nothing to reconcile.
        self._listing: dict[str, tuple[int, set[str]]] = {}
        self._notes: list[tuple[str, str | None, str | None]] = []
        # Inside _writing: the MODSEQ at which the view was current when the write
        # began, if it was (see _step_cursor), else None.
        self._write_base: int | None = None
        self._subscriptions: list[Subscription] = []
        self._closed = False
        self._has_view = view
        # The lock template is kept between writes, but not while suspended (suspend).
        self._template_kept = False
        try:
            self._index = Index(
                index_path,
                fsync=policy.fsync,
                file_mode=policy.file_mode,
                chown=policy.chown_path,
            )
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open index {index_path}: {exc}", mailbox=name) from exc
        try:
            with self._errors("open"):
                self._sync_disk_if_needed()
                with self._index.read():
                    state = self._require_state()
                    rows = self._index.all_rows() if view else []
                self._load(state, rows)
                if view:
                    self._recent = set(self._claim_recent(self._view))
        except BaseException:
            self._index.close()
            self._release_template()
            raise
        if view:  # a session's mailbox: its writes lock by linking a template
            self._keep_template()

    # ----------------------------------------------------------------- properties

    @property
    def _uidlist(self) -> UidList:
        """The ``dovecot-uidlist`` reader (a new one, with nothing read, after
        :meth:`suspend`)."""
        uidlist = self._uidlist_kept
        if uidlist is None:
            policy = self._policy
            uidlist = self._uidlist_kept = UidList(
                os.path.join(self._dir, UIDLIST_NAME),
                fsync=policy.fsync,
                file_mode=policy.file_mode,
                chown=policy.chown_fd,
            )
        return uidlist

    @property
    def _view(self) -> dict[int, MessageInfo]:
        """uid -> message, this session's view (unpacked if :meth:`suspend` packed it)."""
        if self._packed is not None:
            self._unpack()
        return self._view_dict

    @_view.setter
    def _view(self, view: dict[int, MessageInfo]) -> None:
        if self._packed is not None:
            self._unpack()
        self._view_dict = view

    @property
    def _recent(self) -> set[int]:
        if self._packed is not None:
            self._unpack()
        recent = self._recent_set
        if recent is None:
            recent = self._recent_set = set()
        return recent

    @_recent.setter
    def _recent(self, recent: set[int]) -> None:
        if self._packed is not None:
            self._unpack()
        self._recent_set = recent

    def _unpack(self) -> None:
        packed, self._packed = self._packed, None
        if packed is not None:
            messages, recent = packed
            self._view_dict = {info.uid: info for info in messages.unpack()}
            self._view_in_order = True
            self._recent_set = recent.unpack()

    def packed_view(self) -> tuple[PackedMessages, PackedUids] | None:
        """The packed view and \\Recent UIDs while :meth:`suspend` keeps them packed,
        else None; for a holder of an equal copy to share (the IMAP selected mailbox)."""
        return self._packed

    @property
    def uid_validity(self) -> int:
        """UIDVALIDITY (RFC 9051 §2.3.1.1), from ``dovecot-uidlist``."""
        return self._uid_validity

    @property
    def uid_next(self) -> int:
        """The UID the next message will get (UIDNEXT), as of the last sync."""
        return self._uid_next

    @property
    def highest_modseq(self) -> int:
        """HIGHESTMODSEQ (RFC 7162 §3.1.2.1) as of the last sync of this object."""
        return self._cursor

    @property
    def recent(self) -> frozenset[int]:
        """UIDs that are ``\\Recent`` in this session (RFC 3501 §2.3.2)."""
        return frozenset(self._recent)

    def __len__(self) -> int:
        if self._packed is not None:
            return len(self._packed[0])
        return len(self._view_dict)

    def __enter__(self) -> Mailbox:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def suspended(self) -> bool:
        """True when the index connection is released (or the mailbox closed)."""
        return self._closed or self._index.suspended

    def suspend(self) -> None:
        """Release the index connection while the session idles (reopened on next use).

        Cheap to call; the view, the subscriptions and the rest of the state stay. The
        caches that are rebuilt on demand go: the ``dovecot-uidlist`` reader (the next
        sync reads only what the index does not know, as at an open), the directory
        listings of the race-window check (the next sync rescans under the lock if a
        directory is still that recent), the sorted message list and the lock template's
        registry entry (:func:`~roost.store.dotlock.keep_template`, taken again by the
        next write; about 0.4 KiB a session). The view and the
        \\Recent UIDs are packed (:class:`~roost.store.packed.PackedMessages`, about a
        quarter of the memory) until their next use.
        """
        if not self._closed:
            self._index.suspend()
            self._uidlist_kept = None  # its copy of the file, and its path string
            self._listing.clear()
            self._sorted = None
            self._release_template()
            if self._has_view and self._packed is None and self._view_dict:
                view = self._view_dict
                messages: Iterable[MessageInfo] = view.values()
                if not self._view_in_order:
                    messages = sorted(messages, key=lambda message: message.uid)
                self._packed = (PackedMessages(messages), PackedUids(self._recent_set or ()))
                self._view_dict = {}
                self._recent_set = None

    def close(self) -> None:
        """Release the index and stop change notifications (idempotent)."""
        if self._closed:
            return
        self._closed = True
        for subscription in self._subscriptions:
            subscription.cancel()
        self._subscriptions.clear()
        self._index.close()
        self._release_template()

    def _keep_template(self) -> None:
        """Keep the lock template of a session's mailbox (:func:`keep_template`) until
        :meth:`suspend` or :meth:`close`: its writes link it instead of making one."""
        if self._has_view and not self._template_kept and not self._closed:
            keep_template(self.directory / UIDLIST_NAME)
            self._template_kept = True

    def _release_template(self) -> None:
        if self._template_kept:
            self._template_kept = False
            release_template(self.directory / UIDLIST_NAME)

    # ---------------------------------------------------------------- reading

    def messages(self) -> list[MessageInfo]:
        """Every message of this session's view, in UID order (message sequence numbers)."""
        if self._sorted is None:
            values = list(self._view.values())
            if not self._view_in_order:
                values.sort(key=lambda message: message.uid)
                self._view = {message.uid: message for message in values}
                self._view_in_order = True
            self._sorted = values
        return list(self._sorted)

    def message(self, uid: int) -> MessageInfo:
        """The message with that UID in this session's view.

        Raises:
            MessageNotFound: no such UID in the view.
        """
        info = self._view.get(uid)
        if info is None:
            raise MessageNotFound(f"no message with UID {uid}", mailbox=self.name)
        return info

    @property
    def physical_size(self) -> int:
        """Bytes in all message files of the mailbox (for quota), as the index has it."""
        self._check_open()
        with self._errors("read the index"):
            return self._require_state().total_size

    def status(self) -> MailboxStatus:
        """STATUS items of this session's view (RFC 9051 §6.3.11, RFC 7162, RFC 8438)."""
        if not self._has_view:
            return self._index_status()
        unseen = deleted = size = 0
        for info in self._view.values():
            flags = info.flags
            if SEEN not in flags:
                unseen += 1
            if DELETED in flags:
                deleted += 1
            size += info.vsize
        return MailboxStatus(
            messages=len(self._view),
            recent=len(self._recent),
            uid_next=self._uid_next,
            uid_validity=self._uid_validity,
            unseen=unseen,
            deleted=deleted,
            highest_modseq=self._cursor,
            size=size,
        )

    def _index_status(self) -> MailboxStatus:
        self._check_open()
        with self._errors("read the index"), self._index.read() as db:
            state = self._require_state()
            unseen, deleted, recent = db.execute(
                "SELECT coalesce(sum(instr(flags, '\\Seen') = 0), 0),"
                " coalesce(sum(instr(flags, '\\Deleted') > 0), 0),"
                " coalesce(sum(uid >= ?), 0) FROM messages",
                (state.first_recent_uid,),
            ).fetchone()
        return MailboxStatus(
            messages=state.messages,
            recent=recent,
            uid_next=state.uid_next,
            uid_validity=state.uid_validity,
            unseen=unseen,
            deleted=deleted,
            highest_modseq=state.highest_modseq,
            size=state.total_vsize,
        )

    def pop3_uidl(self, message: MessageInfo) -> str:
        """POP3 UIDL of ``message`` (see :func:`pop3_uidl`)."""
        return pop3_uidl(self._uid_validity, message)

    def changed_since(self, modseq: int) -> list[MessageInfo]:
        """Messages changed (or added) after ``modseq``: FETCH CHANGEDSINCE (RFC 7162 §3.1.4)."""
        return [info for info in self.messages() if info.modseq > modseq]

    def expunged_since(self, modseq: int) -> list[int]:
        """UIDs expunged after ``modseq`` and already gone from this view (ascending).

        For QRESYNC ``VANISHED (EARLIER)`` (RFC 7162 §3.2.5.2). When ``modseq`` predates
        the index's expunge history (``modseq_floor``: the index was rebuilt), every UID
        below UIDNEXT that is not in the view is returned, which the RFC allows.
        """
        self._check_open()
        if modseq < self._modseq_floor:
            return [uid for uid in range(1, self._uid_next) if uid not in self._view]
        with self._errors("read the expunge history"):
            expunged = self._index.expunged_since(modseq)
        return [uid for uid in expunged if uid not in self._view]

    @property
    def modseq_floor(self) -> int:
        """The MODSEQ where the expunge history starts (the index's creation)."""
        return self._modseq_floor

    def open_message(self, uid: int) -> BinaryIO:
        """Open the message file for reading (LF line ends, as stored).

        Raises:
            MessageNotFound: the UID is not in the view, or the file is gone (expunged
                by another session or program).
        """
        info = self.message(uid)
        try:
            return open(info.fspath, "rb")
        except FileNotFoundError:
            pass
        # Another session or program renamed it (flags) or expunged it: look again.
        with self._errors("open a message"):
            for attempt in range(2):
                rows = self._index.rows_for([uid])
                if rows:
                    path = os.path.join(self._dir, rows[0][2], rows[0][3])
                    try:
                        return open(path, "rb")
                    except FileNotFoundError:
                        pass
                if attempt == 0:
                    self._sync_disk_if_needed(force=True)
        raise MessageNotFound(f"message {uid} was expunged", mailbox=self.name)

    def read_message(self, uid: int) -> bytes:
        """The message as stored (LF line ends).

        Raises:
            MessageNotFound: see :meth:`open_message`.
        """
        with self.open_message(uid) as handle:
            return handle.read()

    def read_message_crlf(self, uid: int) -> bytes:
        """The message with CRLF line ends, as IMAP sends it; ``len() == vsize``.

        Raises:
            MessageNotFound: see :meth:`open_message`.
        """
        return to_crlf(self.read_message(uid))

    def cache_get(self, uid: int, field: str) -> bytes | None:
        """A blob the IMAP server cached for a message (ENVELOPE, BODYSTRUCTURE...)."""
        self._check_open()
        with self._errors("read the cache"):
            return self._index.cache_get(uid, field)

    def cache_get_many(self, uids: Sequence[int], field: str) -> dict[int, bytes]:
        """uid -> the blob cached as ``field``, for those of ``uids`` that have one."""
        self._check_open()
        with self._errors("read the cache"):
            return self._index.cache_get_many(uids, field)

    def cache_put(self, uid: int, field: str, value: bytes) -> None:
        """Cache a blob for a message (dropped with the message); ignored if expunged.

        Not fsynced: a cache entry lost in a crash is parsed again.
        """
        self.cache_put_many(field, {uid: value})

    def cache_put_many(self, field: str, values: Mapping[int, bytes]) -> None:
        """Cache blobs for several messages in one (not fsynced) transaction."""
        self._check_open()
        if not values:
            return
        with self._errors("write the cache"), self._index.write(durable=False):
            for uid, value in values.items():
                self._index.cache_put(uid, field, value)

    # -------------------------------------------------------------- notification

    def watch(self, callback: ChangeCallback) -> Subscription:
        """Call ``callback(directory)`` when another session or a delivery changes this
        mailbox (not for this object's own writes). Cancelled by :meth:`close`."""
        subscription = self._bus.subscribe(self.directory, callback, owner=self)
        self._subscriptions.append(subscription)
        return subscription

    # ------------------------------------------------------------------ syncing

    def sync(self) -> Changes:
        """Look for changes (other sessions, deliveries, other programs) and report them.

        Returns:
            What changed since this object's previous sync (see
            :class:`~roost.store.model.Changes`).

        Raises:
            MailboxNotFound: the mailbox was deleted.
            StoreError: reading the Maildir or the index failed.
        """
        self._check_open()
        with self._errors("sync"):
            state = self._index.state()
            if self._index_current(state):
                return self._refresh_view(state)
            with self._locked():
                self._sync_disk()
            return self._refresh_view()

    def reselect(self) -> None:
        """Start this session's view over, as closing and opening the mailbox again
        would (a SELECT or EXAMINE of the mailbox the session has selected, in the same
        mode): sync, then keep as ``\\Recent`` only what an open would show so.

        Read-write, that is what this sync claimed (what the session saw before was
        claimed by it, and an open would not see it as recent); read-only, every
        message at or above the index's first recent UID, as an open computes it. The
        index connection, the lock template and the subscriptions stay (no open, no
        schema check, no ``tmp/`` clean-up: the first open did that).

        Raises:
            MailboxNotFound: the mailbox was deleted.
            StoreError: reading the Maildir or the index failed, or the mailbox is
                closed.
        """
        changes = self.sync()
        if self.readonly:
            with self._errors("open"):
                self._recent = set(self._claim_recent(self._view))
        else:
            self._recent = set(changes.recent)

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("mailbox is closed", temporary=False, mailbox=self.name)

    @contextlib.contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except StoreError:
            raise
        except FileNotFoundError as exc:
            if not os.path.isdir(os.path.join(self._dir, CUR)):
                raise MailboxNotFound(
                    f"mailbox {self.name!r} was deleted", mailbox=self.name
                ) from exc
            raise StoreError.from_os_error(
                exc, f"{action} in {self.name}", mailbox=self.name
            ) from exc
        except OSError as exc:
            raise StoreError.from_os_error(
                exc, f"{action} in {self.name}", mailbox=self.name
            ) from exc
        except sqlite3.Error as exc:
            raise StoreError(f"{action} in {self.name}: index: {exc}", mailbox=self.name) from exc

    @contextlib.contextmanager
    def _locked(self, *, nowait: bool = False) -> Iterator[None]:
        self._keep_template()  # released by suspend()
        with dotlock(
            self.directory / UIDLIST_NAME,
            mode=self._policy.file_mode,
            chown=self._policy.chown_fd,
            **({"timeout": 0.0} if nowait else {}),
        ):
            self._notes = []
            try:
                yield
            except BaseException:
                self._listing.clear()  # it may describe a change that was rolled back
                raise

    def _require_state(self) -> IndexState:
        state = self._index.state()
        if state is None:
            raise StoreError(f"index of {self.name} has no state", mailbox=self.name)
        return state

    def _disk_stamps(self) -> tuple[int, int]:
        return (
            os.stat(os.path.join(self._dir, NEW)).st_mtime_ns,
            os.stat(os.path.join(self._dir, CUR)).st_mtime_ns,
        )

    def _dirty_dirs(self, state: IndexState) -> list[str]:
        dirty: list[str] = []
        for subdir, now, recorded in zip(
            _SUBDIRS, self._disk_stamps(), (state.new_mtime_ns, state.cur_mtime_ns), strict=True
        ):
            if now != recorded or recorded >= state.synced_at_ns - _race_window(recorded):
                dirty.append(subdir)
        return dirty

    def _index_current(self, state: IndexState | None) -> bool:
        """Without the lock: tell whether the index matches the Maildir, nothing to
        rescan.

        The directories' mtimes, the control files' stamps and (read-write) messages
        left in ``new/`` are compared with the index; a directory whose mtime is within
        the race window of the last scan is listed and its names compared with the
        index's (:meth:`_only_race_window`).
        """
        if state is None:
            return False
        checked_at = time.time_ns()  # before the stamps: the window ends no sooner
        stamps = self._disk_stamps()
        in_window = False
        for now, recorded in zip(stamps, (state.new_mtime_ns, state.cur_mtime_ns), strict=True):
            if now != recorded:
                return False
            if recorded >= state.synced_at_ns - _race_window(recorded):
                in_window = True
        if self._uidlist.stamp() != state.uidlist_stamp:
            return False
        if self._keywords.stamp() != state.keywords_stamp:
            return False
        if not self.readonly and self._index.has_new():
            return False
        return not in_window or self._only_race_window(state, stamps, checked_at)

    def _sync_disk_if_needed(self, *, force: bool = False) -> None:
        if not force and self._index_current(self._index.state()):
            return
        with self._locked():
            self._sync_disk(force=force)

    def _only_race_window(
        self, state: IndexState, stamps: tuple[int, int], checked_at: int
    ) -> bool:
        """The part of :meth:`_index_current` for directories in the race window:
        ``stamps`` (their mtimes, equal to the index's) were taken at ``checked_at`` or
        after; their listings must hold the names the index has there.

        Then nothing needs the lock or a write transaction; the time of this check is
        recorded (without fsync: it only saves rescans) once it ends the race window.
        """
        ends_window = True
        for subdir, recorded in zip(_SUBDIRS, stamps, strict=True):
            window = _race_window(recorded)
            if recorded < state.synced_at_ns - window:
                continue
            names = self._indexed_names(subdir, state.generation)
            if names is None or names != set(os.listdir(os.path.join(self._dir, subdir))):
                return False
            if recorded >= checked_at - window:
                ends_window = False
        if ends_window:
            with self._index.write(durable=False) as db:
                db.execute(
                    "UPDATE state SET synced_at_ns = ? WHERE id = 1 AND synced_at_ns < ?"
                    " AND generation = ?",
                    (checked_at, checked_at, state.generation),
                )
        return True

    def _indexed_names(self, subdir: str, generation: int) -> set[str] | None:
        """The file names the index has in ``subdir`` at ``generation``, or None if the
        index has moved on to another generation.

        From this object's cache when it has them, else from the index (and cached): a
        session that just opened a mailbox another one wrote a moment ago (a SELECT after
        a login/logout cycle) checks the race window without the lock either.
        """
        cached = self._listing.get(subdir)
        if cached is not None and cached[0] == generation:
            return cached[1]
        with self._index.read():
            state = self._index.state()
            if state is None or state.generation != generation:
                return None
            names = self._index.filenames(subdir)
        self._listing[subdir] = (generation, names)
        return names

    def _sync_disk(self, *, force: bool = False) -> None:
        """Reconcile the index with the Maildir (the caller holds the uidlist lock)."""
        uidlist = self._uidlist
        known = self._index.state()
        if known is not None:
            uidlist.refresh(known.uidlist_stamp, known.uid_next)
        else:
            uidlist.refresh()
        before = self._keywords.snapshot()
        keywords_changed = self._keywords.refresh()
        meanings_changed = keywords_changed and any(
            old is not None and old != new
            for old, new in zip(before, self._keywords.snapshot(), strict=True)
        )
        state = self._index.state()
        if not uidlist.exists:
            self._create_uidlist(state)
        with self._index.write():
            state = self._index.state()
            replaced = state is None or _replaced(state.uidlist_stamp, uidlist.stamp())
            if state is None or state.uid_validity != uidlist.uid_validity:
                if state is not None and state.uid_validity:
                    logger.warning(
                        "%s: UIDVALIDITY changed %d -> %d, forgetting the index",
                        self._dir,
                        state.uid_validity,
                        uidlist.uid_validity,
                    )
                uidlist.ensure_complete()
                self._index.reset(uidlist.uid_validity, uidlist.next_uid)
                state = self._require_state()
                replaced = True
            full = force or replaced or meanings_changed
            dirty = list(_SUBDIRS) if full else self._dirty_dirs(state)
            if dirty:
                self._reconcile(dirty, check_uids=replaced, reparse=meanings_changed)
            if not self.readonly:
                self._move_new_to_cur()
            self._finish(uidlist)

    def _create_uidlist(self, state: IndexState | None) -> None:
        """Write a missing dovecot-uidlist: from the index if it has one (UIDs survive)."""
        if state is not None and state.uid_validity:
            records = [UidRecord(uid, base) for uid, base, *_ in self._index.all_rows()]
            self._uidlist.rewrite(records, uid_validity=state.uid_validity, next_uid=state.uid_next)
            logger.warning("%s: dovecot-uidlist was missing; rebuilt from the index", self._dir)
            return
        validity = next_uid_validity(
            self._root, file_mode=self._policy.file_mode, chown=self._policy.chown_fd
        )
        self._uidlist.rewrite([], uid_validity=validity, next_uid=1)

    def _list(self, dirty: list[str]) -> tuple[dict[str, list[str]], dict[str, int]]:
        """List the dirty subdirectories: subdir -> file names, and their mtimes."""
        listing: dict[str, list[str]] = {}
        stamps: dict[str, int] = {}
        for _ in range(3):
            before = [os.stat(os.path.join(self._dir, subdir)).st_mtime_ns for subdir in dirty]
            for subdir in dirty:  # new/ first: a message moving to cur/ is not missed
                listing[subdir] = os.listdir(os.path.join(self._dir, subdir))
            after = [os.stat(os.path.join(self._dir, subdir)).st_mtime_ns for subdir in dirty]
            stamps = dict(zip(dirty, before, strict=True))
            if before == after:
                break
        return listing, stamps

    def _by_base(self, subdir: str, filenames: list[str]) -> dict[str, str]:
        """base -> file name, without dot files and names that cannot be messages."""
        entries: dict[str, str] = {}
        for filename in filenames:
            if filename.startswith(".") or "\n" in filename or "\r" in filename:
                continue
            base = filename.partition(":")[0]
            if base in entries:
                logger.warning("%s/%s: duplicate file %s", self._dir, subdir, filename)
                continue
            entries[base] = filename
        return entries

    def _reconcile(self, dirty: list[str], *, check_uids: bool, reparse: bool) -> None:
        """Make the index match the listing of ``dirty`` (write transaction open)."""
        index = self._index
        uidlist = self._uidlist
        synced_at = time.time_ns()
        names, stamps = self._list(dirty)
        before = self._require_state()
        generation = before.generation
        if not check_uids and not reparse:
            for subdir in list(dirty):
                cached = self._listing.get(subdir)
                if (
                    cached is not None
                    and cached[0] == generation
                    and cached[1] == set(names[subdir])
                ):
                    dirty.remove(subdir)  # exactly what the index has: nothing to do
        listing = {subdir: self._by_base(subdir, names[subdir]) for subdir in dirty}
        known = {subdir: index.locations(subdir) for subdir in dirty}
        modseq = 0

        def next_modseq() -> int:
            nonlocal modseq
            if not modseq:
                modseq = index.next_modseq()
            return modseq

        expunged: list[int] = []
        unknown: list[tuple[str, str, str]] = []  # subdir, base, filename
        moved_away: dict[str, tuple[int, str, str]] = {}  # base -> (uid, filename, flags)
        for subdir in dirty:
            disk = listing[subdir]
            for base, (uid, old_name, flags) in known[subdir].items():
                if check_uids and uidlist.uid_of(base) not in (None, uid):
                    # dovecot-uidlist gives this file another UID: it wins.
                    expunged.append(uid)
                    if base in disk:
                        unknown.append((subdir, base, disk[base]))
                    continue
                new_name = disk.get(base)
                if new_name is None:
                    moved_away[base] = (uid, old_name, flags)
                elif new_name != old_name or reparse:
                    self._update_from_name(uid, subdir, new_name, flags, next_modseq)
            for base, filename in disk.items():
                if base not in known[subdir]:
                    unknown.append((subdir, base, filename))

        fresh: list[tuple[str, str, str]] = []
        elsewhere = index.uids_of_bases([base for _, base, _ in unknown if base not in moved_away])
        for subdir, base, filename in unknown:
            previous = moved_away.pop(base, None)
            if previous is not None:  # moved between new/ and cur/
                uid, _, flags = previous
                self._update_from_name(uid, subdir, filename, flags, next_modseq)
                continue
            other = elsewhere.get(base)
            if other is not None and other not in expunged:
                # Known in the other (unchanged) directory: a second copy of a file.
                logger.warning("%s: %s/%s duplicates UID %d", self._dir, subdir, filename, other)
                continue
            fresh.append((subdir, base, filename))
        for uid, _, _ in moved_away.values():
            expunged.append(uid)
        if expunged:
            index.expunge(expunged, next_modseq())
        if fresh:
            self._add_found(fresh, next_modseq)
        if check_uids:
            self._check_uidlist_records()
        for subdir in dirty:
            self._listing[subdir] = (generation, index.filenames(subdir))
        values: dict[str, int | str] = {
            f"{subdir}_mtime_ns": stamp for subdir, stamp in stamps.items()
        }
        if (
            index.changed_in_transaction()
            or any(getattr(before, name) != value for name, value in values.items())
            or _ends_race_window(before, stamps, synced_at)
        ):
            index.set_state(synced_at_ns=synced_at, **values)

    def _flags_from_name(self, filename: str, old_flags: frozenset[str]) -> frozenset[str]:
        letters = filename_letters(split_filename(filename)[1])
        flags: set[str] = set()
        keywords = self._keywords
        for letter in letters:
            flag = LETTER_FLAGS.get(letter)
            if flag is not None:
                flags.add(flag)
            elif "a" <= letter <= "z":
                keyword = keywords.keyword(letter)
                flags.add(keyword if keyword is not None else keywords.name_unknown(letter))
        for flag in old_flags:  # keywords beyond the 26 letters live in the index only
            if flag not in SYSTEM_FLAGS and keywords.letter(flag) is None:
                flags.add(flag)
        return frozenset(flags)

    def _update_from_name(
        self,
        uid: int,
        subdir: str,
        filename: str,
        old_text: str,
        next_modseq: Callable[[], int],
    ) -> None:
        flags = self._flags_from_name(filename, decode_flags(old_text))
        text = encode_flags(flags)
        if text != old_text:
            self._index.set_flags(uid, subdir, filename, text, next_modseq())
        else:
            self._index.move(uid, subdir, filename)

    def _add_found(self, fresh: list[tuple[str, str, str]], next_modseq: Callable[[], int]) -> None:
        """Index files found on disk, with the uidlist's UID or a new one."""
        index = self._index
        uidlist = self._uidlist
        adopted: list[tuple[int, str, str, str]] = []
        new: list[tuple[str, str, str]] = []
        recorded = [uid for _, base, _ in fresh if (uid := uidlist.uid_of(base)) is not None]
        taken = index.existing_uids(recorded) | index.expunged_uids(recorded)
        # The uidlist may have been read from where the index left off: the index knows
        # the base names of the older, expunged records.
        restored = index.expunged_bases([base for _, base, _ in fresh])
        for subdir, base, filename in fresh:
            uid = uidlist.uid_of(base)
            if uid is None and base not in restored:
                new.append((subdir, base, filename))
            elif uid is None or uid in taken:
                # An expunged message restored from a backup (or a clash): a new UID, and
                # a new base name so that the uidlist's old record cannot claim it again.
                new_base = generate_base(*self._sizes_of(subdir, filename, base))
                info = split_filename(filename)[1]
                new_name = f"{new_base}:{info}" if info else new_base
                os.rename(
                    os.path.join(self._dir, subdir, filename),
                    os.path.join(self._dir, subdir, new_name),
                )
                logger.warning("%s: %s came back after expunge; renamed", self._dir, filename)
                new.append((subdir, new_base, new_name))
            else:
                adopted.append((uid, subdir, base, filename))
        new.sort(key=lambda item: item[1])
        records: list[UidRecord] = []
        for subdir, base, filename in new:
            records.append(UidRecord(uidlist.next_uid + len(records), base))
            adopted.append((records[-1].uid, subdir, base, filename))
        if records:
            uidlist.append(records)
        rows: list[Row] = []
        for uid, subdir, base, filename in sorted(adopted):
            path = os.path.join(self._dir, subdir, filename)
            try:
                st = os.stat(path)
            except FileNotFoundError:
                continue  # gone again; the next sync will notice
            record = uidlist.records.get(uid)
            vsize = size_from_base(base, "W")
            if vsize is None and record is not None:
                field = record.field("W")
                vsize = int(field) if field and field.isdigit() else None
            if vsize is None:
                vsize = _file_vsize(path)
            pop3 = ""
            if record is not None:
                field = record.field("P")
                if field is not None:
                    pop3 = field or base  # "P" without a value: the base name
            flags = encode_flags(self._flags_from_name(filename, frozenset()))
            rows.append(
                (uid, base, subdir, filename, flags, st.st_size, vsize,
                 st.st_mtime, st.st_ctime, next_modseq(), pop3)
            )  # fmt: skip
        index.insert(rows)

    def _sizes_of(self, subdir: str, filename: str, base: str) -> tuple[int, int]:
        path = os.path.join(self._dir, subdir, filename)
        size = os.stat(path).st_size
        vsize = size_from_base(base, "W")
        return size, vsize if vsize is not None else _file_vsize(path)

    def _check_uidlist_records(self) -> None:
        """After the uidlist was replaced: rewrite it if it lacks live messages."""
        by_base = self._uidlist.by_base
        for uid, base, *_ in self._index.all_rows():
            if by_base.get(base) != uid:
                self._uidlist.needs_rewrite = True
                return

    def _find_by_base(self, base: str) -> tuple[str, str] | None:
        """Look for a message file by its base name: (subdir, file name), or None."""
        for subdir in _SUBDIRS:
            for filename in os.listdir(os.path.join(self._dir, subdir)):
                if filename.partition(":")[0] == base:
                    return subdir, filename
        return None

    def _move_new_to_cur(self) -> None:
        """Move messages from ``new/`` to ``cur/`` (a session has seen them): lock held."""
        rows = self._index.db.execute(
            "SELECT uid, filename FROM messages WHERE subdir = 'new'"
        ).fetchall()
        for uid, filename in rows:
            base, info = split_filename(filename)
            target = filename if info else f"{base}:2,"
            try:
                os.rename(
                    os.path.join(self._dir, NEW, filename), os.path.join(self._dir, CUR, target)
                )
            except FileNotFoundError:
                continue  # moved or removed meanwhile; the next scan sees where
            self._index.move(uid, CUR, target)
            self._notes += [(NEW, filename, None), (CUR, None, target)]

    @staticmethod
    def _uidlist_rewrite_due(state: IndexState, uidlist: UidList) -> bool:
        """The uidlist needs rewriting, or expunged records pile up in it (Dovecot also
        drops them only when it rewrites the file)."""
        return uidlist.needs_rewrite or state.uidlist_stale > max(
            _COMPRESS_MIN, state.messages // 3
        )

    def _finish(self, uidlist: UidList) -> None:
        """Rewrite the uidlist if due, record the disk stamps and a new generation.

        Called at the end of every write transaction under the lock.
        """
        state = self._require_state()
        stale = state.uidlist_stale
        # A nowait write (on the event loop) never rewrites (and fsyncs) the uidlist: a
        # rewrite due is left to the next write, which then runs in a thread.
        rewrite = not self._index.defer_sync and self._uidlist_rewrite_due(state, uidlist)
        if not rewrite and not self._notes and not self._index.changed_in_transaction():
            new_ns, cur_ns = self._disk_stamps()
            if (
                new_ns == state.new_mtime_ns
                and cur_ns == state.cur_mtime_ns
                and state.uid_next >= uidlist.next_uid
                and uidlist.stamp() == state.uidlist_stamp
                and self._keywords.stamp() == state.keywords_stamp
            ):
                return  # nothing changed: no commit to fsync, the generation stays
        if rewrite:
            # Expunged records pile up (Dovecot drops them when it rewrites, too).
            uidlist.ensure_complete()
            kept: list[UidRecord] = []
            for uid, base, vsize in self._index.db.execute(
                "SELECT uid, base, vsize FROM messages ORDER BY uid"
            ):
                old = uidlist.records.get(uid)
                fields = old.fields if old is not None and old.base == base else ()
                if size_from_base(base, "W") is None and not any(f.startswith("W") for f in fields):
                    fields = (*fields, f"W{vsize}")
                kept.append(UidRecord(uid, base, fields))
            uidlist.rewrite(kept, next_uid=max(uidlist.next_uid, state.uid_next))
            stale = 0
        new_ns, cur_ns = self._disk_stamps()
        changed_dirs: dict[str, int | str] = {}
        if new_ns != state.new_mtime_ns:
            changed_dirs["new_mtime_ns"] = new_ns
        if cur_ns != state.cur_mtime_ns:
            changed_dirs["cur_mtime_ns"] = cur_ns
        if changed_dirs:  # our own renames: a concurrent one is caught by the race window
            changed_dirs["synced_at_ns"] = time.time_ns()
        # A random generation: one that was rolled back is never reused by another writer.
        generation = secrets.randbits(62)
        notes, self._notes = self._notes, []
        for subdir, (cached_generation, names) in list(self._listing.items()):
            if cached_generation != state.generation:
                del self._listing[subdir]
                continue
            for noted_subdir, removed, added in notes:
                if noted_subdir == subdir:
                    if removed is not None:
                        names.discard(removed)
                    if added is not None:
                        names.add(added)
            self._listing[subdir] = (generation, names)
        self._index.set_state(
            uid_next=max(uidlist.next_uid, state.uid_next),
            uidlist_stamp=uidlist.stamp(),
            keywords_stamp=self._keywords.stamp(),
            generation=generation,
            uidlist_stale=stale,
            **changed_dirs,
        )

    # ------------------------------------------------------------------ the view

    def _info(self, row: Row) -> MessageInfo:
        uid, base, subdir, filename, flags, size, vsize, idate, sdate, modseq, pop3 = row
        return MessageInfo(
            uid, decode_flags(flags), size, vsize, idate, sdate, modseq, base,
            f"{subdir}/{filename}", self._dir, pop3,
        )  # fmt: skip

    def _load(self, state: IndexState, rows: list[Row]) -> None:
        directory = self._dir
        self._view = {
            row[0]: MessageInfo(
                row[0], decode_flags(row[4]), row[5], row[6], row[7], row[8], row[9], row[1],
                f"{row[2]}/{row[3]}", directory, row[10],
            )
            for row in rows
        }  # fmt: skip
        self._view_in_order = True
        self._top_uid = rows[-1][0] if rows else 0
        self._view_changed()
        self._recent = set()
        self._cursor = state.highest_modseq
        self._uid_validity = state.uid_validity
        self._uid_next = state.uid_next
        self._modseq_floor = state.modseq_floor

    def _claim_recent(self, uids: Iterable[int]) -> list[int]:
        """Return which of ``uids`` are \\Recent for this session, claiming them."""
        candidates = sorted(uids)
        if not candidates:
            return []
        if self.readonly:
            state = self._require_state()
            return [uid for uid in candidates if uid >= state.first_recent_uid]
        with self._index.write(durable=False) as db:
            first: int = db.execute("SELECT first_recent_uid FROM state").fetchone()[0]
            if candidates[-1] >= first:
                db.execute("UPDATE state SET first_recent_uid = ?", (candidates[-1] + 1,))
        return [uid for uid in candidates if uid >= first]

    def _refresh_view(self, current: IndexState | None = None) -> Changes:
        """Bring the view up to the index; ``current``: the state just read (a sync that
        found the Maildir as the index has it), which spares a read when it shows
        nothing new."""
        if (
            current is not None
            and current.uid_validity == self._uid_validity
            and current.highest_modseq == self._cursor
        ):
            self._uid_next = current.uid_next
            return Changes()
        with self._index.read():
            state = self._require_state()
            renumbered = state.uid_validity != self._uid_validity
            if renumbered:
                rows = self._index.all_rows()
            elif state.highest_modseq == self._cursor:
                self._uid_next = state.uid_next
                return Changes()
            else:
                rows = self._index.rows_since(self._cursor)
                gone = self._index.expunged_since(self._cursor)
        if renumbered:
            self._load(state, rows)
            self._recent = set(self._claim_recent(self._view))
            return Changes(
                added=tuple(self._view.values()),
                recent=tuple(sorted(self._recent)),
                uid_validity_changed=True,
            )
        view = self._view
        expunged = [uid for uid in gone if uid in view]
        for uid in expunged:
            del view[uid]
            self._recent.discard(uid)
        added: list[MessageInfo] = []
        updates: list[FlagUpdate] = []
        for row in rows:
            info = self._info(row)
            old = view.get(info.uid)
            if old is None:
                added.append(info)
                if info.uid < self._top_uid:
                    self._view_in_order = False
                self._top_uid = max(self._top_uid, info.uid)
            elif old.flags != info.flags or old.modseq != info.modseq:
                updates.append(FlagUpdate(info.uid, info.flags, info.modseq))
            view[info.uid] = info
        recent = self._claim_recent(info.uid for info in added)
        self._recent.update(recent)
        self._cursor = state.highest_modseq
        self._uid_next = state.uid_next
        self._view_changed()
        return Changes(
            added=tuple(added),
            expunged=tuple(expunged),
            flags=tuple(updates),
            recent=tuple(recent),
        )

    def _view_changed(self) -> None:
        self._sorted = None
        self._known_keywords = None

    def keywords(self) -> list[str]:
        """Keywords defined in this mailbox (the IMAP FLAGS response, RFC 9051 §7.3.5).

        Those of ``dovecot-keywords`` in letter order, then others in use, sorted.
        """
        names = self._keywords.names
        seen = {name.lower() for name in names}
        extra = sorted({kw for kw in self._keyword_spellings().values() if kw.lower() not in seen})
        return names + extra

    def _keyword_spellings(self) -> dict[str, str]:
        if self._known_keywords is None:
            known: dict[str, str] = {}
            for flags in {info.flags for info in self._view.values()}:
                for flag in flags:
                    if flag not in SYSTEM_FLAGS:
                        known.setdefault(flag.lower(), flag)
            self._known_keywords = known
        return self._known_keywords

    # ----------------------------------------------------------------- writing

    @contextlib.contextmanager
    def _writing(self, action: str, *, nowait: bool = False) -> Iterator[None]:
        """Lock, bring the index up to date, run the change, record, publish.

        With ``nowait``, a lock held by anyone else raises LockTimeout at once, and so
        does a mailbox that needs a rescan first (it may write and fsync the uidlist);
        the index commits are not synced (:meth:`sync_index` does it).
        """
        self._check_open()
        index = self._index
        with self._errors(action), self._locked(nowait=nowait):
            index.defer_sync = nowait
            try:
                state = index.state()
                self._write_base = None
                if state is not None and self._index_current(state):
                    if (
                        state.highest_modseq == self._cursor
                        and state.uid_validity == self._uid_validity
                    ):
                        self._write_base = state.highest_modseq
                    # The index is current: only this object's copies of the control
                    # files may lag (another session wrote them).
                    self._uidlist.refresh(state.uidlist_stamp, state.uid_next)
                    self._keywords.refresh()
                    if nowait and self._uidlist_rewrite_due(state, self._uidlist):
                        raise LockTimeout(f"{action} in {self.name}: the uidlist is due a rewrite")
                elif nowait:
                    raise LockTimeout(f"{action} in {self.name}: the mailbox needs a rescan")
                else:
                    self._sync_disk()
                yield
            finally:
                index.defer_sync = False
                self._write_base = None
        self._bus.publish(self.directory, origin=self)

    def _step_cursor(self, base: int | None, modseq: int) -> None:
        """After a write that gave its changes MODSEQ ``modseq`` and applied them to the
        view: when the view was current at ``base`` (:attr:`_write_base`) and nothing
        else changed since (``modseq`` is the next one), the view is current at
        ``modseq``, and the next sync need not read the write's own rows back."""
        if base is not None and modseq == base + 1:
            self._cursor = modseq

    def sync_index(self) -> None:
        """Make the index commits of the writes called with ``nowait`` durable (an
        fdatasync of the index's log; in a worker thread: it waits for the disk).

        Raises:
            StoreError: the sync failed.
        """
        with self._errors("sync index"):
            self._index.sync_log()

    def open_index_log(self) -> LogSync | None:
        """:meth:`sync_index` in two parts, for a caller on an event loop: the index's
        log opened now, to ``sync()`` in a worker thread and ``close()`` after; None
        when no write awaits a sync.

        Raises:
            StoreError: opening the log failed.
        """
        with self._errors("sync index"):
            return self._index.open_log()

    def _canonical_flags(self, flags: Iterable[str]) -> frozenset[str]:
        """Validate flags; fold keywords onto the spelling already in use here."""
        out: set[str] = set()
        known = self._keyword_spellings()
        for flag in flags:
            canonical = normalize_flag(flag)
            if canonical not in SYSTEM_FLAGS:
                canonical = (
                    self._keywords.lookup(canonical) or known.get(canonical.lower()) or canonical
                )
            out.add(canonical)
        return frozenset(out)

    def _letters(self, flags: Iterable[str]) -> str:
        letters: list[str] = []
        for flag in flags:
            letter = FLAG_LETTERS.get(flag)
            if letter is None:
                letter = self._keywords.letter(flag)
            if letter is not None:
                letters.append(letter)
        return "".join(letters)

    def append(
        self,
        data: bytes,
        flags: Iterable[str] = (),
        internal_date: float | None = None,
    ) -> int:
        """Add a message (IMAP APPEND, RFC 9051 §6.3.12; UIDPLUS APPENDUID, RFC 4315).

        The message is written to ``tmp/`` with LF line ends, fsynced, renamed into
        ``cur/`` with its flags, and gets its UID at once. It is reported as new by the
        next :meth:`sync` of every session, this one included.

        Args:
            data: the message (CRLF or LF line ends).
            flags: IMAP flags and keywords to set (``\\Recent`` is not allowed).
            internal_date: INTERNALDATE, seconds since the epoch (default: now).

        Returns:
            The new message's UID.

        Raises:
            ValueError: a flag that cannot be stored.
            OverQuota: the quota (or the disk) is full.
            StoreError: writing failed.
        """
        self._check_open()
        wanted = self._canonical_flags(flags)
        body = to_lf(data)
        if self._quota_check is not None:
            self._quota_check(len(body))
        base = generate_base(len(body), crlf_size(body))
        temp = os.path.join(self._dir, TMP, base)
        with self._errors("append"):
            self._write_temp(temp, body, internal_date)
            try:
                with self._writing("append"):
                    [uid] = self._commit_new([(temp, base, wanted, time.time())])
            finally:
                unlink_quietly(temp)
        if uid is None:  # only sources found again by a resolver can vanish
            raise StoreError("append: the new message vanished", mailbox=self.name)
        return uid

    def _write_temp(self, temp: str, body: bytes, internal_date: float | None) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        fd = os.open(temp, flags, self._policy.file_mode)
        try:
            write_all(fd, body)
            self._policy.chown_fd(fd)
            if internal_date is not None:
                os.utime(fd, (internal_date, internal_date))
            if self._policy.fsync:
                os.fdatasync(fd)
        except BaseException:
            os.close(fd)
            unlink_quietly(temp)
            raise
        os.close(fd)

    def _commit_new(
        self,
        items: list[tuple[str, str, frozenset[str], float]],
        resolve: Callable[[str], str | None] | None = None,
    ) -> list[int | None]:
        """Rename files from ``tmp/`` (or link them) into ``cur/`` and give them UIDs.

        Args:
            items: (source path, new base name, flags, save date); a source outside this
                mailbox's ``tmp/`` is hard-linked (or copied), not moved.
            resolve: finds a source again by its path when it was renamed meanwhile
                (returns None when it is gone).

        Returns:
            The new UIDs, None for a source that vanished. The caller holds the lock
            and has synced.
        """
        keywords = {flag for _, _, flags, _ in items for flag in flags} - SYSTEM_FLAGS
        if keywords:
            self._keywords.assign(sorted(keywords))
        uidlist = self._uidlist
        tmp_dir = os.path.join(self._dir, TMP)
        placed: list[tuple[str, str, frozenset[str], float, os.stat_result]] = []
        slots: list[int | None] = []

        def place(source: str, target: str, base: str) -> os.stat_result:
            # Size and mtime from the source: the same inode (or an exact copy), and a
            # program that does not lock may rename the target at once.
            st = os.stat(source)
            if os.path.dirname(source) == tmp_dir:
                os.rename(source, target)
            else:
                _link_or_copy(source, target, tmp_dir, base, self._policy)
            return st

        try:
            for source, base, flags, save_date in items:
                filename = render_filename(base, self._letters(flags))
                target = os.path.join(self._dir, CUR, filename)
                try:
                    st = place(source, target, base)
                except FileNotFoundError:
                    again = None if resolve is None else resolve(source)
                    if again is None:
                        if resolve is None:
                            raise
                        slots.append(None)
                        continue
                    st = place(again, target, base)
                slots.append(len(placed))
                placed.append((base, filename, flags, save_date, st))
                self._notes.append((CUR, None, filename))
        except BaseException:
            for _, filename, *_ in placed:
                unlink_quietly(os.path.join(self._dir, CUR, filename))
            raise
        self._policy.fsync_dir(os.path.join(self._dir, CUR))
        first = uidlist.next_uid
        uidlist.append(UidRecord(first + n, base) for n, (base, *_) in enumerate(placed))
        with self._index.write():
            modseq = self._index.next_modseq()
            rows: list[Row] = []
            for n, (base, filename, flags, save_date, st) in enumerate(placed):
                vsize = size_from_base(base, "W")
                rows.append(
                    (first + n, base, CUR, filename, encode_flags(flags), st.st_size,
                     st.st_size if vsize is None else vsize, st.st_mtime, save_date, modseq, "")
                )  # fmt: skip
            self._index.insert(rows)
            self._finish(uidlist)
        return [None if slot is None else first + slot for slot in slots]

    def store_flags(
        self,
        uids: Collection[int],
        flags: Iterable[str],
        mode: StoreMode,
        unchanged_since: int | None = None,
        *,
        nowait: bool = False,
    ) -> StoreFlagsResult:
        """Change flags (IMAP STORE, RFC 9051 §6.4.6; CONDSTORE, RFC 7162 §3.1.3).

        Files are renamed to carry the new flags; keywords get letters in
        ``dovecot-keywords`` while letters last. UIDs not in this view are ignored.

        Args:
            uids: the messages.
            flags: flags and keywords (case of system flags is folded).
            mode: add, remove or replace.
            unchanged_since: UNCHANGEDSINCE: skip messages whose MODSEQ is higher.
            nowait: for a caller on an event loop: raise LockTimeout at once if another
                writer holds the mailbox's lock or the mailbox needs a rescan first
                (retry in a thread), and leave the index commit unsynced: call
                :meth:`sync_index` before reporting success.

        Returns:
            The messages' flags and MODSEQs now, and the UIDs that failed UNCHANGEDSINCE.
            Changed messages share one new MODSEQ.

        Raises:
            ValueError: a flag that cannot be stored.
            StoreError: renaming failed.
        """
        self._check_open()
        given = self._canonical_flags(flags)
        targets = sorted(uid for uid in set(uids) if uid in self._view)
        if not targets:
            return StoreFlagsResult()
        fresh: list[Row] = []
        failed: list[int] = []
        modseq = 0
        current_at: int | None = None
        with self._writing("store flags", nowait=nowait):
            current_at = self._write_base
            keywords = given - SYSTEM_FLAGS
            if keywords and mode is not StoreMode.REMOVE:
                self._keywords.assign(sorted(keywords))
            with self._index.write():
                modseq = 0
                for row in self._index.rows_for(targets):
                    uid, base, subdir, filename, text, *_ = row
                    if unchanged_since is not None and row[9] > unchanged_since:
                        failed.append(uid)
                        continue
                    old = decode_flags(text)
                    new = _combine(old, given, mode)
                    if new == old:
                        fresh.append(row)
                        continue
                    new_name = ""
                    for _ in range(2):
                        info = split_filename(filename)[1]
                        wanted = render_filename(base, self._letters(new), info)
                        if subdir == CUR and wanted == filename:
                            new_name = wanted
                            break
                        try:
                            os.rename(
                                os.path.join(self._dir, subdir, filename),
                                os.path.join(self._dir, CUR, wanted),
                            )
                        except FileNotFoundError:
                            # A program that does not lock renamed (or removed) it: find
                            # it, take its flags as they are now, and try again.
                            found = self._find_by_base(base)
                            if found is None:
                                break
                            subdir, filename = found
                            new = _combine(self._flags_from_name(filename, old), given, mode)
                            continue
                        self._notes += [(subdir, filename, None), (CUR, None, wanted)]
                        new_name = wanted
                        break
                    if not new_name:
                        continue  # expunged meanwhile
                    if not modseq:
                        modseq = self._index.next_modseq()
                    new_text = encode_flags(new)
                    self._index.set_flags(uid, CUR, new_name, new_text, modseq)
                    fresh.append((uid, base, CUR, new_name, new_text, *row[5:9], modseq, row[10]))
                self._finish(self._uidlist)
        updated: list[FlagUpdate] = []
        for row in fresh:
            message = self._info(row)
            self._view[message.uid] = message
            updated.append(FlagUpdate(message.uid, message.flags, message.modseq))
        self._view_changed()
        if modseq:
            self._step_cursor(current_at, modseq)
        return StoreFlagsResult(updated=tuple(updated), failed=tuple(failed))

    def expunge(self, uids: Collection[int] | None = None, *, nowait: bool = False) -> list[int]:
        """Remove the messages flagged ``\\Deleted`` (EXPUNGE; UID EXPUNGE, RFC 4315).

        Only messages of this session's view are considered; their ``\\Deleted`` flag is
        read from the index (another session may have set or cleared it).

        Args:
            uids: only these among the ``\\Deleted`` messages (UID EXPUNGE), or all.
            nowait: as for :meth:`store_flags`.

        Returns:
            The UIDs expunged, ascending (the IMAP server sends EXPUNGE/VANISHED).

        Raises:
            StoreError: removing files failed.
        """
        self._check_open()
        restrict = None if uids is None else set(uids)
        with self._writing("expunge", nowait=nowait):
            victims = [
                (uid, subdir, filename)
                for uid, subdir, filename in self._index.deleted()
                if uid in self._view and (restrict is None or uid in restrict)
            ]
            done = self._remove(victims)
        return done

    def _expunge_uids(self, uids: Iterable[int]) -> list[int]:
        """Remove messages whatever their flags (MOVE, RFC 6851)."""
        wanted = sorted(uid for uid in set(uids) if uid in self._view)
        if not wanted:
            return []
        with self._writing("expunge"):
            victims = [(row[0], row[2], row[3]) for row in self._index.rows_for(wanted)]
            done = self._remove(victims)
        return done

    def _remove(self, victims: list[tuple[int, str, str]]) -> list[int]:
        """Unlink files and record the expunges (lock held, index synced)."""
        if not victims:
            return []
        missing: list[tuple[int, str, str]] = []
        for uid, subdir, filename in victims:
            try:
                os.unlink(os.path.join(self._dir, subdir, filename))
            except FileNotFoundError:
                missing.append((uid, subdir, filename))
            self._notes.append((subdir, filename, None))
        if missing:
            self._listing.clear()
            # Renamed by a program that does not lock: find the new names by base.
            found: dict[str, str] = {}
            for subdir in _SUBDIRS:
                for filename in os.listdir(os.path.join(self._dir, subdir)):
                    found[filename.partition(":")[0]] = os.path.join(self._dir, subdir, filename)
            for _, _, filename in missing:
                path = found.get(filename.partition(":")[0])
                if path is not None:
                    unlink_quietly(path)
        done = [uid for uid, _, _ in victims]
        current_at = self._write_base
        with self._index.write():
            modseq = self._index.next_modseq()
            self._index.expunge(done, modseq)
            self._finish(self._uidlist)
        for uid in done:
            self._view.pop(uid, None)
            self._recent.discard(uid)
        self._view_changed()
        self._step_cursor(current_at, modseq)
        return done

    def copy(self, uids: Collection[int], dest: Mailbox) -> list[tuple[int, int]]:
        """Copy messages into ``dest`` (COPY, RFC 9051 §6.4.7; UIDPLUS COPYUID).

        Files are hard-linked, as Dovecot does, or copied when the file system refuses a
        link. Flags and INTERNALDATE are kept; keywords get ``dest``'s letters. ``dest``
        reports the new messages on its next :meth:`sync`.

        Args:
            uids: messages of this view (others are ignored).
            dest: the target mailbox (may be this one).

        Returns:
            (source UID, new UID) pairs, by source UID.

        Raises:
            OverQuota: the quota is full.
            StoreError: linking or writing failed.
        """
        self._check_open()
        infos = [self._view[uid] for uid in sorted(set(uids)) if uid in self._view]
        if not infos:
            return []
        if dest._quota_check is not None:
            dest._quota_check(sum(info.size for info in infos))
        items: list[tuple[str, str, frozenset[str], float]] = []
        sources: list[int] = []
        now = time.time()
        for info in infos:
            path = self._current_path(info)
            if path is None:
                continue  # expunged meanwhile
            items.append((path, generate_base(info.size, info.vsize), info.flags, now))
            sources.append(info.uid)
        if not items:
            return []
        with dest._writing("copy"):
            new_uids = dest._commit_new(items, self._resolve_path)
        return [(old, new) for old, new in zip(sources, new_uids, strict=True) if new is not None]

    def _resolve_path(self, path: str) -> str | None:
        """Where the message file ``path`` of this mailbox is now, or None if gone."""
        found = self._find_by_base(os.path.basename(path).partition(":")[0])
        return None if found is None else os.path.join(self._dir, *found)

    def _current_path(self, info: MessageInfo) -> str | None:
        if os.path.exists(info.fspath):
            return info.fspath
        with self._errors("find a message"):
            rows = self._index.rows_for([info.uid])
            if not rows:
                return None
            path = os.path.join(self._dir, rows[0][2], rows[0][3])
        return path if os.path.exists(path) else None

    def move(self, uids: Collection[int], dest: Mailbox) -> list[tuple[int, int]]:
        """Move messages into ``dest`` (MOVE, RFC 6851): copy, then expunge here.

        Returns:
            (source UID, new UID) pairs; the source UIDs are expunged from this view
            (the IMAP server sends EXPUNGE/VANISHED for them).

        Raises:
            OverQuota, StoreError: as :meth:`copy`; nothing is expunged then.
        """
        pairs = self.copy(uids, dest)
        self._expunge_uids(old for old, _ in pairs)
        return pairs


def _combine(old: frozenset[str], given: frozenset[str], mode: StoreMode) -> frozenset[str]:
    if mode is StoreMode.ADD:
        return old | given
    if mode is StoreMode.REMOVE:
        return old - given
    return given


def _file_vsize(path: str) -> int:
    """RFC822.SIZE of a file: its size plus one byte per bare LF."""
    with open(path, "rb") as handle:
        data = handle.read()
    return crlf_size(data)


def _link_or_copy(source: str, target: str, tmp_dir: str, base: str, policy: FsPolicy) -> None:
    """Hard-link ``source`` as ``target``; copy through ``tmp/`` when links fail.

    Raises:
        FileNotFoundError: ``source`` is gone.
        OSError: copying failed.
    """
    try:
        os.link(source, target)
        return
    except OSError as exc:
        if exc.errno not in _LINK_FALLBACK_ERRNOS:
            raise
    temp = os.path.join(tmp_dir, base)
    st = os.stat(source)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    fd = os.open(temp, flags, policy.file_mode)
    try:
        with open(source, "rb") as handle, os.fdopen(os.dup(fd), "wb") as out:
            shutil.copyfileobj(handle, out)
        policy.chown_fd(fd)
        os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))
        if policy.fsync:
            os.fdatasync(fd)
        os.rename(temp, target)
    except BaseException:
        unlink_quietly(temp)
        raise
    finally:
        os.close(fd)
