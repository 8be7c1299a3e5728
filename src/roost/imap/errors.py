"""The one table that turns protocol-neutral store errors into IMAP responses.

RFC 5530 response codes; texts are Dovecot's where it has one, and never carry the
store's detail (paths, errno texts): that goes to the log.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from roost.imap.response import (
    ALREADYEXISTS,
    CANNOT,
    EXPUNGEISSUED,
    INUSE,
    NONEXISTENT,
    OVERQUOTA,
    TRYCREATE,
    UNAVAILABLE,
    USEATTR,
    ResponseCode,
    TaggedResponse,
)
from roost.store import (
    InvalidMailboxName,
    LockTimeout,
    MailboxExists,
    MailboxNotFound,
    MessageNotFound,
    NotAllowed,
    OverQuota,
    StoreError,
    UnsupportedSpecialUse,
)

__all__ = ["STORE_ERRORS", "store_error_response"]

STORE_ERRORS: Final[Mapping[type[StoreError], tuple[ResponseCode, str]]] = {
    MailboxNotFound: (NONEXISTENT, "Mailbox doesn't exist"),
    MailboxExists: (ALREADYEXISTS, "Mailbox already exists"),
    InvalidMailboxName: (CANNOT, "Invalid mailbox name"),
    NotAllowed: (CANNOT, "Operation not allowed on this mailbox"),
    MessageNotFound: (EXPUNGEISSUED, "Some of the requested messages no longer exist"),
    OverQuota: (OVERQUOTA, "Quota exceeded (mailbox for user is full)"),
    LockTimeout: (INUSE, "Mailbox is locked by another process, try again later"),
    UnsupportedSpecialUse: (USEATTR, "Unsupported special-use attribute"),
    StoreError: (UNAVAILABLE, "Internal error occurred, try again later"),
}
"""Store error class -> (RFC 5530 code, text). Subclasses not listed use their base's row."""


def store_error_response(
    tag: str, error: StoreError, *, missing_target: bool = False
) -> TaggedResponse:
    """The tagged ``NO`` for a store error.

    Args:
        tag: the command's tag.
        error: what the store raised.
        missing_target: the error concerns the target of ``COPY``, ``MOVE`` or ``APPEND``;
            a missing mailbox is then ``NO [TRYCREATE]`` (RFC 9051 §6.3.12, §6.4.7).
    """
    if missing_target and isinstance(error, MailboxNotFound):
        return TaggedResponse(tag, "NO", "Mailbox doesn't exist", TRYCREATE)
    for kind in type(error).__mro__:
        row = STORE_ERRORS.get(kind)
        if row is not None:
            code, text = row
            if isinstance(error, NotAllowed | InvalidMailboxName) and str(error):
                text = _client_text(str(error)) or text
            return TaggedResponse(tag, "NO", text, code)
    raise TypeError(f"not a store error: {error!r}")  # pragma: no cover


def _client_text(detail: str) -> str:
    """A store message that names no path can be shown ("INBOX cannot be deleted")."""
    return "" if "/" in detail else detail[:1].upper() + detail[1:]
