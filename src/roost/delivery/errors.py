"""Delivery errors: protocol-neutral, each carrying its RFC 3463 status and whether to retry.

The queue manager turns a :class:`DeliveryError` into a defer (``temporary``) or a bounce
(a DSN, RFC 3464, with ``dsn`` as the Status field and ``text`` as the diagnostic).

OS errors map as Postfix's ``mbox_dsn()`` and ``mail_copy()`` do, except that roost keeps
mail queued (temporary) where Postfix bounces on an unexpected write error:

============  ==========  ========================================================
errno         status      meaning
============  ==========  ========================================================
ENOSPC        4.3.1       the file system is full (RFC 3463 "mail system full")
EDQUOT        4.2.2       the user's disk quota is full ("mailbox full")
EFBIG         5.2.2       a file size limit (``mailbox_size_limit``) was exceeded
EAGAIN ESTALE 4.2.0       try again
any other     4.3.0       local error (EIO, EACCES, EROFS...): the admin can fix it
============  ==========  ========================================================
"""

from __future__ import annotations

import errno as errno_codes
import re
from typing import Final

__all__ = ["DeliveryError", "QuotaExceeded", "dsn_for_errno"]

_DSN: Final = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")

_DSN_BY_ERRNO: Final[dict[int, str]] = {
    errno_codes.ENOSPC: "4.3.1",
    errno_codes.EDQUOT: "4.2.2",
    errno_codes.EFBIG: "5.2.2",
    errno_codes.EAGAIN: "4.2.0",
    errno_codes.ESTALE: "4.2.0",
}


def dsn_for_errno(number: int | None, default: str = "4.3.0") -> str:
    """Return the RFC 3463 status for an OS error number (see the module table).

    Args:
        number: ``OSError.errno`` (None: unknown).
        default: the status for numbers not in the table.
    """
    return _DSN_BY_ERRNO.get(number or 0, default)


class DeliveryError(Exception):
    """A delivery failed; nothing was delivered (no partial mail is left behind).

    Args:
        temporary: True when trying again later may succeed (defer, keep the message);
            False for a permanent failure (bounce).
        dsn: the RFC 3463 enhanced status, e.g. ``"4.2.2"``; its class digit must agree
            with ``temporary`` (4 when temporary, 5 otherwise).
        text: the diagnostic for the log and the DSN, e.g. ``"cannot update mailbox
            /var/mail/alice: No space left on device"``.

    Attributes:
        temporary, dsn, text: as given.

    Raises:
        ValueError: ``dsn`` is malformed or its class disagrees with ``temporary``.
    """

    def __init__(self, temporary: bool, dsn: str, text: str) -> None:
        if not _DSN.fullmatch(dsn) or (dsn[0] == "4") != temporary or dsn[0] == "2":
            kind = "temporary" if temporary else "permanent"
            raise ValueError(f"bad status {dsn!r} for a {kind} error")
        super().__init__(f"{dsn} {text}")
        self.temporary = temporary
        self.dsn = dsn
        self.text = text

    @classmethod
    def from_os_error(cls, exc: OSError, action: str) -> DeliveryError:
        """Wrap an ``OSError``; use as ``raise DeliveryError.from_os_error(exc, ...) from exc``.

        Args:
            exc: the error a system call raised.
            action: what was being done, e.g. ``"cannot update mailbox /var/mail/alice"``.

        Returns:
            A DeliveryError with the status from the module's errno table.
        """
        dsn = dsn_for_errno(exc.errno)
        reason = exc.strerror or str(exc) or type(exc).__name__
        return cls(dsn[0] == "4", dsn, f"{action}: {reason}")


class QuotaExceeded(DeliveryError):
    """The mailbox is over its quota (Maildir++ ``maildirsize`` or ``mailbox_size_limit``).

    Permanent (5.2.2) by default, like Dovecot with ``quota_full_tempfail = no``; temporary
    (4.2.2) when the caller asks for it.

    Args:
        text: the diagnostic, e.g. ``"mailbox full: quota 1000000 bytes exceeded"``.
        temporary: defer instead of bouncing.
    """

    def __init__(self, text: str, *, temporary: bool = False) -> None:
        super().__init__(temporary, "4.2.2" if temporary else "5.2.2", text)
