"""Unit tests for roost.pop3.errors: domain errors to POP3 failures (RFC 2449 §8, RFC 3206)."""

from __future__ import annotations

import pytest

from roost.auth.users import FailureReason
from roost.pop3.errors import login_failure, store_failure
from roost.pop3.render import Failure, failure
from roost.store.errors import LockTimeout, MessageNotFound, OverQuota, StoreError


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        (FailureReason.UNKNOWN_USER, Failure.AUTH_FAILED),
        (FailureReason.BAD_PASSWORD, Failure.AUTH_FAILED),
        (FailureReason.DISABLED, Failure.AUTH_FAILED),
        (FailureReason.BACKEND_ERROR, Failure.AUTH_UNAVAILABLE),
    ],
)
def test_login_failure(reason: FailureReason, expected: Failure) -> None:
    assert login_failure(reason) is expected


def test_unknown_user_and_bad_password_look_the_same() -> None:
    unknown = failure(login_failure(FailureReason.UNKNOWN_USER))
    assert unknown == failure(login_failure(FailureReason.BAD_PASSWORD))
    assert unknown == b"-ERR [AUTH] Authentication failed.\r\n"


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (LockTimeout("dovecot-uidlist.lock"), Failure.IN_USE),
        (StoreError("EIO"), Failure.TEMPORARY),
        (StoreError("EACCES", temporary=False), Failure.PERMANENT),
        (MessageNotFound("gone"), Failure.PERMANENT),
        (OverQuota("full"), Failure.PERMANENT),
    ],
)
def test_store_failure(error: StoreError, expected: Failure) -> None:
    assert store_failure(error) is expected
