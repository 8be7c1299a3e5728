"""What the IMAP server, the POP3 server and local delivery depend on.

They are typed against these protocols, not against :class:`~roost.store.MailStore`, so a
second backend (PostgreSQL index, object-store blobs) is an addition, not a rewrite.
``MailStore`` and ``Mailbox`` satisfy them (checked by mypy in ``roost.store``).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import BinaryIO, Protocol, Self

from roost.store.bus import ChangeCallback
from roost.store.model import (
    Changes,
    MailboxInfo,
    MailboxStatus,
    MessageInfo,
    StoreFlagsResult,
    StoreMode,
)
from roost.store.packed import PackedMessages, PackedUids

__all__ = ["Cancellable", "MailStoreProtocol", "MailboxProtocol"]


class Cancellable(Protocol):
    """A registration that can be undone."""

    def cancel(self) -> None:
        """Undo it (idempotent)."""


class IndexLog(Protocol):
    """An index log opened for a sync in a worker thread (``sync``), then ``close``d."""

    def sync(self) -> None:
        """fdatasync (blocks: call in a worker thread)."""

    def close(self) -> None:
        """Close; after a ``sync``, the writes it covers are durable."""


class MailboxProtocol(Protocol):
    """An open mailbox as a session sees it (see :class:`roost.store.Mailbox`)."""

    @property
    def name(self) -> str:
        """The mailbox name."""

    @property
    def directory(self) -> Path:
        """The Maildir directory (the key of change notifications)."""

    @property
    def uid_validity(self) -> int:
        """UIDVALIDITY."""

    @property
    def uid_next(self) -> int:
        """UIDNEXT."""

    @property
    def highest_modseq(self) -> int:
        """HIGHESTMODSEQ."""

    @property
    def recent(self) -> frozenset[int]:
        """This session's \\Recent UIDs."""

    def messages(self) -> list[MessageInfo]:
        """The session's view in UID order."""

    def message(self, uid: int) -> MessageInfo:
        """One message of the view."""

    def sync(self) -> Changes:
        """Changes since the last sync."""

    def status(self) -> MailboxStatus:
        """STATUS items."""

    def keywords(self) -> list[str]:
        """Keywords in use (FLAGS response)."""

    def open_message(self, uid: int) -> BinaryIO:
        """The message file (LF line ends)."""

    def read_message_crlf(self, uid: int) -> bytes:
        """The message with CRLF line ends."""

    def append(
        self, data: bytes, flags: Iterable[str] = (), internal_date: float | None = None
    ) -> int:
        """APPEND; returns the UID."""

    def store_flags(
        self,
        uids: Collection[int],
        flags: Iterable[str],
        mode: StoreMode,
        unchanged_since: int | None = None,
        *,
        nowait: bool = False,
    ) -> StoreFlagsResult:
        """STORE (``nowait``: see :meth:`sync_index`)."""

    def expunge(self, uids: Collection[int] | None = None, *, nowait: bool = False) -> list[int]:
        """EXPUNGE / UID EXPUNGE (``nowait``: see :meth:`sync_index`)."""

    def sync_index(self) -> None:
        """Make durable what a write called with ``nowait`` committed (which then
        raised LockTimeout at once instead of waiting for another writer)."""

    def open_index_log(self) -> IndexLog | None:
        """:meth:`sync_index` in two parts (open now, sync in a thread, close)."""

    def copy(self, uids: Collection[int], dest: Self) -> list[tuple[int, int]]:
        """COPY; (old UID, new UID) pairs."""

    def move(self, uids: Collection[int], dest: Self) -> list[tuple[int, int]]:
        """MOVE; (old UID, new UID) pairs."""

    def expunged_since(self, modseq: int) -> list[int]:
        """QRESYNC VANISHED (EARLIER)."""

    def changed_since(self, modseq: int) -> list[MessageInfo]:
        """CONDSTORE CHANGEDSINCE."""

    def pop3_uidl(self, message: MessageInfo) -> str:
        """POP3 UIDL."""

    def cache_get(self, uid: int, field: str) -> bytes | None:
        """A cached parse result."""

    def cache_get_many(self, uids: Sequence[int], field: str) -> dict[int, bytes]:
        """Cached parse results of several messages (those that have one)."""

    def cache_put(self, uid: int, field: str, value: bytes) -> None:
        """Cache a parse result."""

    def cache_put_many(self, field: str, values: Mapping[int, bytes]) -> None:
        """Cache parse results of several messages."""

    def watch(self, callback: ChangeCallback) -> Cancellable:
        """Be told of changes by other sessions and deliveries."""

    @property
    def readonly(self) -> bool:
        """Opened read-only (EXAMINE)."""

    def reselect(self) -> None:
        """Sync and start the session's view over as a new open would (SELECT of the
        selected mailbox in the same mode)."""

    @property
    def suspended(self) -> bool:
        """True while :meth:`suspend` holds (nothing to release)."""

    def packed_view(self) -> tuple[PackedMessages, PackedUids] | None:
        """The view and \\Recent UIDs packed by :meth:`suspend`, or None."""

    def suspend(self) -> None:
        """Release what an idle session need not hold (reacquired on next use)."""

    def close(self) -> None:
        """Release resources."""


class MailStoreProtocol(Protocol):
    """One user's mailboxes (see :class:`roost.store.MailStore`)."""

    @property
    def separator(self) -> str:
        """The hierarchy separator."""

    def list_mailboxes(self) -> list[MailboxInfo]:
        """LIST."""

    def create(self, name: str, special_use: str | None = None) -> None:
        """CREATE."""

    def delete(self, name: str) -> None:
        """DELETE."""

    def rename(self, old: str, new: str) -> None:
        """RENAME."""

    def subscribe(self, name: str) -> None:
        """SUBSCRIBE."""

    def unsubscribe(self, name: str) -> None:
        """UNSUBSCRIBE."""

    def subscriptions(self) -> list[str]:
        """LSUB / LIST (SUBSCRIBED)."""

    def ensure_special_use(
        self, names: Mapping[str, str] = ..., *, subscribe: bool = True
    ) -> list[str]:
        """Create missing special-use mailboxes at login."""

    def open(self, name: str, *, readonly: bool = False) -> MailboxProtocol:
        """SELECT / EXAMINE."""

    def status(self, name: str) -> MailboxStatus:
        """STATUS."""
