"""Spool errors: protocol-neutral, each carrying the kind of failure that the SMTP server,
the queue manager and the ``roost queue`` commands turn into their own replies.

Suggested SMTP mapping (the SMTP package owns its table):

=====================  =============================================  ==========  =========
kind                   cause                                          temporary   reply
=====================  =============================================  ==========  =========
INSUFFICIENT_STORAGE   ENOSPC, EDQUOT                                 yes         452 4.3.1
MESSAGE_TOO_LARGE      EFBIG (``RLIMIT_FSIZE``, file size limits)     no          552 5.3.4
LOCAL_ERROR            EIO, EACCES, EROFS, EMFILE... any other OSError yes         451 4.3.0
NOT_FOUND              no such message in that queue                  no          (none)
CORRUPT                unreadable envelope; moved to ``corrupt/``     no          (none)
=====================  =============================================  ==========  =========

EIO is reported as LOCAL_ERROR (RFC 3463 4.3.0, "other mail system status") rather than as
4.3.1 ("mail system full"): it says the disk is failing, not full. Both are temporary.
"""

from __future__ import annotations

import enum
import errno
from typing import Final

__all__ = ["SpoolError", "SpoolErrorKind"]


class SpoolErrorKind(enum.Enum):
    """What went wrong, in terms a protocol can answer."""

    INSUFFICIENT_STORAGE = "insufficient storage"
    """The file system or the quota is full (ENOSPC, EDQUOT): RFC 3463 4.3.1."""
    MESSAGE_TOO_LARGE = "message too large"
    """A file size limit stopped the write (EFBIG): RFC 3463 5.3.4, as Postfix's cleanup."""
    LOCAL_ERROR = "local error"
    """Any other I/O error (EIO, EACCES, EROFS...): RFC 3463 4.3.0."""
    NOT_FOUND = "not found"
    """The message is not (or no longer) in that queue."""
    CORRUPT = "corrupt"
    """The envelope could not be parsed; the message was moved to ``corrupt/``."""


_KIND_BY_ERRNO: Final = {
    errno.ENOSPC: SpoolErrorKind.INSUFFICIENT_STORAGE,
    errno.EDQUOT: SpoolErrorKind.INSUFFICIENT_STORAGE,
    errno.EFBIG: SpoolErrorKind.MESSAGE_TOO_LARGE,
}
_PERMANENT: Final = frozenset(
    {SpoolErrorKind.MESSAGE_TOO_LARGE, SpoolErrorKind.NOT_FOUND, SpoolErrorKind.CORRUPT}
)


class SpoolError(Exception):
    """A spool operation failed; nothing half-written is visible as a committed message.

    Args:
        message: what failed, for the log.
        kind: the kind of failure (see the module docs for the reply each implies).
        queue_id: the message concerned, or ``""`` (e.g. a batch-wide failure).
        errno: the OS error number when the cause is an ``OSError``, else None.

    Attributes:
        kind, queue_id, errno: as given.
    """

    def __init__(
        self,
        message: str,
        kind: SpoolErrorKind,
        *,
        queue_id: str = "",
        errno: int | None = None,
    ) -> None:
        super().__init__(f"{queue_id}: {message}" if queue_id else message)
        self.kind = kind
        self.queue_id = queue_id
        self.errno = errno

    @property
    def temporary(self) -> bool:
        """True when trying again later may succeed (answer 4xx, keep the message)."""
        return self.kind not in _PERMANENT

    @classmethod
    def from_os_error(cls, exc: OSError, action: str, *, queue_id: str = "") -> SpoolError:
        """Wrap an ``OSError``; chain it with ``raise SpoolError.from_os_error(...) from exc``.

        Args:
            exc: the error the system call raised.
            action: what was being done, e.g. ``"write incoming/4Wk3nB0h2Fz1x"``.
            queue_id: the message concerned, if any.

        Returns:
            A SpoolError whose kind follows from ``exc.errno`` (ENOENT too is a
            LOCAL_ERROR here: reading operations that mean "no such message" raise
            NOT_FOUND themselves).
        """
        kind = _KIND_BY_ERRNO.get(exc.errno or 0, SpoolErrorKind.LOCAL_ERROR)
        reason = exc.strerror or str(exc)
        return cls(f"{action}: {reason}", kind, queue_id=queue_id, errno=exc.errno)
