"""Domain errors to POP3 failures: the one table the POP3 server answers them from.

Protocol-neutral errors come from the user database (:class:`FailureReason`) and the mail
store (:class:`StoreError`); each becomes a :class:`~roost.pop3.render.Failure`, which
``roost.pop3.render.failure`` turns into ``-ERR [CODE] text`` (RFC 2449 §8, RFC 3206):

=========================================  =====================  ===================
error                                      Failure                reply code
=========================================  =====================  ===================
FailureReason.UNKNOWN_USER / BAD_PASSWORD  AUTH_FAILED            ``[AUTH]``
/ DISABLED
FailureReason.BACKEND_ERROR, throttled     AUTH_UNAVAILABLE       ``[SYS/TEMP]``
LockTimeout (maildrop locked)              IN_USE                 ``[IN-USE]``
StoreError, temporary                      TEMPORARY              ``[SYS/TEMP]``
StoreError, permanent                      PERMANENT              ``[SYS/PERM]``
=========================================  =====================  ===================

Not a sans-IO module in the strict sense: ``roost.auth.users`` imports asyncio.
"""

from __future__ import annotations

from roost.auth.users import FailureReason
from roost.pop3.render import Failure
from roost.store.errors import LockTimeout, StoreError

__all__ = ["login_failure", "store_failure"]


def login_failure(reason: FailureReason) -> Failure:
    """The failure for a refused password check (``VerifyResult.failure``).

    Unknown user, wrong password and disabled login get the same reply, so a client
    cannot tell them apart; only a backend error is temporary.
    """
    return Failure.AUTH_UNAVAILABLE if reason.temporary else Failure.AUTH_FAILED


def store_failure(error: StoreError) -> Failure:
    """The failure for a store error while opening, reading or updating the maildrop.

    :class:`LockTimeout` while opening means another session holds the maildrop
    (``[IN-USE]``, RFC 2449 §8.1.1); ``ServerState.update_finished`` answers it as
    ``[SYS/TEMP]`` at QUIT.
    """
    if isinstance(error, LockTimeout):
        return Failure.IN_USE
    return Failure.TEMPORARY if error.temporary else Failure.PERMANENT
