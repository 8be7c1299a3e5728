"""The values the store hands to the IMAP and POP3 servers: frozen, slotted, comparable."""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "Changes",
    "FlagUpdate",
    "MailboxInfo",
    "MailboxStatus",
    "MessageInfo",
    "StoreFlagsResult",
    "StoreMode",
]


class StoreMode(enum.Enum):
    """How STORE combines the given flags with a message's flags (RFC 9051 §6.4.6)."""

    ADD = "+FLAGS"
    REMOVE = "-FLAGS"
    REPLACE = "FLAGS"


@dataclass(frozen=True, slots=True)
class MessageInfo:
    """One message as the index knows it.

    Attributes:
        uid: the IMAP UID (RFC 9051 §2.3.1.1), from ``dovecot-uidlist``.
        flags: IMAP system flags (``"\\\\Seen"``, ``"\\\\Answered"``, ``"\\\\Flagged"``,
            ``"\\\\Deleted"``, ``"\\\\Draft"``) and keywords (``"$Junk"``). Never
            ``\\Recent``: see :attr:`roost.store.Mailbox.recent`.
        size: bytes in the file (LF line ends, as Dovecot stores them).
        vsize: RFC822.SIZE: bytes with CRLF line ends, what :meth:`read_message_crlf`
            returns.
        internal_date: INTERNALDATE (RFC 9051 §2.3.3): the file's mtime, seconds since
            the epoch.
        save_date: SAVEDATE (RFC 8514): when the message was saved into this mailbox
            (seconds since the epoch); the file's ctime for messages found on disk.
        modseq: the CONDSTORE mod-sequence of its last change (RFC 7162 §3.1).
        base_name: the Maildir base file name (before ``:2,``), stable across flag
            changes; Dovecot's default message GUID.
        filename: the path below the mailbox directory when last seen, e.g.
            ``"cur/1700000000.M1P2.host,S=120,W=123:2,S"``; changes with the flags.
        directory: the mailbox (Maildir) directory.
        pop3_uidl: a POP3 UIDL kept from a migration (``dovecot-uidlist`` field ``P``),
            or ``""`` for the default ``%08Xu%08Xv``.
    """

    uid: int
    flags: frozenset[str]
    size: int
    vsize: int
    internal_date: float
    save_date: float
    modseq: int
    base_name: str
    filename: str
    directory: str = field(repr=False, compare=False)
    pop3_uidl: str = ""

    @property
    def path(self) -> Path:
        """The message file when last seen (it moves when another session changes flags)."""
        return Path(self.directory, self.filename)

    @property
    def fspath(self) -> str:
        """:attr:`path` as a string (cheaper than building a :class:`Path`)."""
        return os.path.join(self.directory, self.filename)


@dataclass(frozen=True, slots=True)
class FlagUpdate:
    """A message's flags after STORE (or after another session's change).

    Attributes:
        uid: the message.
        flags: all its flags now (IMAP names, keywords included).
        modseq: its mod-sequence now (RFC 7162 FETCH MODSEQ).
    """

    uid: int
    flags: frozenset[str]
    modseq: int


@dataclass(frozen=True, slots=True)
class StoreFlagsResult:
    """What :meth:`roost.store.Mailbox.store_flags` did.

    Attributes:
        updated: every message that passed the UNCHANGEDSINCE test (all of them without
            it), in UID order, with its flags and mod-sequence now; messages whose flags
            were already as asked keep their mod-sequence (RFC 7162 §3.1.3).
        failed: UIDs that failed UNCHANGEDSINCE: IMAP answers ``OK [MODIFIED ...]``.
    """

    updated: tuple[FlagUpdate, ...] = ()
    failed: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Changes:
    """What changed in a mailbox since the previous :meth:`~roost.store.Mailbox.sync`.

    Changes made through the same :class:`~roost.store.Mailbox` object by
    ``store_flags`` and ``expunge`` are not repeated here (their results said so);
    ``append`` and ``copy``/``move`` into it are, as new messages.

    Attributes:
        added: new messages in UID order (IMAP ``EXISTS``).
        expunged: UIDs gone, in ascending order (IMAP ``EXPUNGE`` / ``VANISHED``).
        flags: messages whose flags or mod-sequence changed (IMAP ``FETCH (FLAGS)``).
        recent: UIDs among ``added`` that this session is first to see (``\\Recent``).
        uid_validity_changed: the mailbox was recreated or renumbered; everything the
            client knows is void (IMAP: ``OK [CLOSED]`` / ``BYE``). ``added`` then holds
            every message.
    """

    added: tuple[MessageInfo, ...] = ()
    expunged: tuple[int, ...] = ()
    flags: tuple[FlagUpdate, ...] = ()
    recent: tuple[int, ...] = ()
    uid_validity_changed: bool = False

    def __bool__(self) -> bool:
        return bool(self.added or self.expunged or self.flags or self.uid_validity_changed)


@dataclass(frozen=True, slots=True)
class MailboxInfo:
    """One name in the mailbox list.

    Attributes:
        name: the Unicode name with ``.`` as hierarchy separator, e.g. ``"Archive.2024"``.
        attributes: RFC 9051 §7.3.1 attributes: ``\\HasChildren`` or ``\\HasNoChildren``;
            ``\\Noselect`` (and ``\\NonExistent``) for a parent that exists only because
            of its children; ``\\Subscribed`` when subscribed.
        special_use: the RFC 6154 attribute (``"\\\\Sent"``...) or None.
    """

    name: str
    attributes: frozenset[str]
    special_use: str | None = None


@dataclass(frozen=True, slots=True)
class MailboxStatus:
    """The STATUS items (RFC 9051 §6.3.11, RFC 7162 HIGHESTMODSEQ, RFC 8438 SIZE).

    Attributes:
        messages: number of messages.
        recent: messages with ``\\Recent`` for the first session to select the mailbox.
        uid_next: the UID the next message will get.
        uid_validity: UIDVALIDITY.
        unseen: messages without ``\\Seen``.
        deleted: messages with ``\\Deleted``.
        highest_modseq: HIGHESTMODSEQ.
        size: sum of the messages' RFC822.SIZE, bytes.
    """

    messages: int
    recent: int
    uid_next: int
    uid_validity: int
    unseen: int
    deleted: int
    highest_modseq: int
    size: int
