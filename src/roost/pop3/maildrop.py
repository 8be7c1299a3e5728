"""What the POP3 server needs from the mail store: a locked snapshot of one INBOX.

The store opens the user's INBOX as a :class:`Maildrop` when the user logs in (RFC 1939
§8: the server "acquires an exclusive-access lock on the maildrop"), listing the
messages present at that moment. The POP3 session reads messages by their ``uid`` and,
only after ``QUIT`` in the TRANSACTION state (the UPDATE state, RFC 1939 §6), deletes the
ones the client marked. If the connection drops, nothing is deleted: the session just
closes the maildrop.

Types only: no I/O here. The store implements the protocol; tests use a small fake.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Protocol

__all__ = ["MAX_UIDL_LENGTH", "Maildrop", "MaildropMessage", "valid_uidl"]

MAX_UIDL_LENGTH: Final = 70
"""Longest unique-id listing in characters (RFC 1939 §7, UIDL)."""

_UIDL: Final = re.compile(r"[\x21-\x7e]{1,70}")


def valid_uidl(uidl: str) -> bool:
    """Whether ``uidl`` is a valid unique-id: 1 to 70 characters in ``0x21..0x7E``."""
    return _UIDL.fullmatch(uidl) is not None


@dataclass(frozen=True, slots=True)
class MaildropMessage:
    """One message of the maildrop as listed at login.

    Attributes:
        uid: the store's key for :meth:`Maildrop.read` and :meth:`Maildrop.delete`
            (the INBOX IMAP UID for the Maildir store).
        size: the message size in octets with CRLF line ends (Dovecot's virtual size,
            ``roost.pop3.render.wire_size`` of the stored octets); STAT, LIST and RETR
            report it.
        uidl: the unique-id listing (RFC 1939 §7): 1 to 70 characters ``0x21..0x7E``,
            stable across sessions; for a Dovecot-compatible Maildir the ``P`` field of
            ``dovecot-uidlist`` when present, else Dovecot's default ``%08Xu%08Xv``
            (UID and UIDVALIDITY in hex).
    """

    uid: int
    size: int
    uidl: str


class Maildrop(Protocol):
    """The user's INBOX, opened and locked for one POP3 session.

    The session gets one from the store after a successful login and must call
    :meth:`close` when the session ends, however it ends.
    """

    @property
    def messages(self) -> Sequence[MaildropMessage]:
        """The messages present when the maildrop was opened, in POP3 order (message
        number 1 first); this list does not change during the session."""
        ...

    async def read(self, uid: int) -> bytes:
        """The stored message: raw octets, LF or CRLF line ends.

        Raises:
            roost.store.errors.StoreError: it cannot be read (MessageNotFound when
                another session removed it meanwhile).
        """
        ...

    async def delete(self, uids: Sequence[int]) -> None:
        """Delete these messages (the UPDATE state, RFC 1939 §6); all or as many as possible.

        Raises:
            roost.store.errors.StoreError: some were not deleted.
        """
        ...

    async def close(self) -> None:
        """Release the lock; nothing is deleted. Safe to call more than once."""
        ...
