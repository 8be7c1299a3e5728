"""Mail store errors: protocol-neutral; each protocol turns them into its own replies.

Suggested mappings (the IMAP and POP3 packages own their tables):

=====================  =====================================  =========  ======================
error                  cause                                  temporary  IMAP (RFC 5530 code)
=====================  =====================================  =========  ======================
MailboxNotFound        no such mailbox (or it was deleted)    no         NO [NONEXISTENT]
MailboxExists          CREATE/RENAME onto an existing name    no         NO [ALREADYEXISTS]
InvalidMailboxName     name not allowed in Maildir++          no         NO [CANNOT]
NotAllowed             delete INBOX, a \\Noselect parent      no         NO [CANNOT]
MessageNotFound        the message was expunged meanwhile     no         NO [EXPUNGEISSUED]
OverQuota              quota (bytes) or ENOSPC/EDQUOT         no         NO [OVERQUOTA]
LockTimeout            dovecot-uidlist.lock held too long     yes        NO [INUSE]
UnsupportedSpecialUse  unknown RFC 6154 attribute             no         NO [USEATTR]
StoreError             any other I/O error (EIO, EACCES...)   yes        NO [UNAVAILABLE]
=====================  =====================================  =========  ======================

POP3 answers ``-ERR [SYS/TEMP]`` for temporary errors and ``-ERR [SYS/PERM]`` otherwise
(RFC 3206); local delivery defers (4.2.2 / 4.3.0) or bounces (5.2.2) from ``temporary``.
"""

from __future__ import annotations

import errno
from typing import Final

__all__ = [
    "InvalidMailboxName",
    "LockTimeout",
    "MailboxExists",
    "MailboxNotFound",
    "MessageNotFound",
    "NotAllowed",
    "OverQuota",
    "StoreError",
    "UnsupportedSpecialUse",
]


class StoreError(Exception):
    """A mail store operation failed; nothing half-done is visible to other sessions.

    Args:
        message: what failed, for the log (and the text after the IMAP response code).
        temporary: True when trying again later may succeed.
        mailbox: the mailbox name concerned, or ``""``.

    Attributes:
        temporary, mailbox: as given.
    """

    default_temporary: bool = True

    def __init__(self, message: str, *, temporary: bool | None = None, mailbox: str = "") -> None:
        super().__init__(message)
        self.temporary = self.default_temporary if temporary is None else temporary
        self.mailbox = mailbox

    @classmethod
    def from_os_error(cls, exc: OSError, action: str, *, mailbox: str = "") -> StoreError:
        """Wrap an ``OSError``; chain it with ``raise StoreError.from_os_error(...) from exc``.

        Args:
            exc: the error the system call raised.
            action: what was being done, e.g. ``"rename cur/1.M2P3.host:2,S"``.
            mailbox: the mailbox concerned, if any.

        Returns:
            :class:`OverQuota` for ENOSPC and EDQUOT (as Dovecot's "Not enough disk
            quota"), else a temporary :class:`StoreError`.
        """
        reason = exc.strerror or str(exc)
        if exc.errno in _QUOTA_ERRNOS:
            return OverQuota(f"{action}: {reason}", mailbox=mailbox)
        return StoreError(f"{action}: {reason}", temporary=True, mailbox=mailbox)


class MailboxNotFound(StoreError):
    """The mailbox does not exist (RFC 5530 NONEXISTENT)."""

    default_temporary = False


class MailboxExists(StoreError):
    """The target name is taken (RFC 5530 ALREADYEXISTS)."""

    default_temporary = False


class InvalidMailboxName(StoreError):
    """The name cannot be a Maildir++ folder (empty level, ``/``, leading ``~``, too long)."""

    default_temporary = False


class NotAllowed(StoreError):
    """The operation is never allowed on this mailbox (RFC 5530 CANNOT).

    Examples: deleting INBOX (RFC 9051 §6.3.5), deleting a \\Noselect name that has
    inferiors, renaming a mailbox into its own subtree.
    """

    default_temporary = False


class MessageNotFound(StoreError):
    """The message was expunged by another session (RFC 5530 EXPUNGEISSUED)."""

    default_temporary = False


class OverQuota(StoreError):
    """The user's quota (bytes) or the file system is full (RFC 5530 OVERQUOTA)."""

    default_temporary = False


class LockTimeout(StoreError):
    """Another process held ``dovecot-uidlist.lock`` for longer than the timeout (INUSE)."""

    default_temporary = True


class UnsupportedSpecialUse(StoreError):
    """A special-use attribute that is not in RFC 6154 / RFC 8457 (RFC 6154 USEATTR)."""

    default_temporary = False


_QUOTA_ERRNOS: Final = frozenset({errno.ENOSPC, errno.EDQUOT})
