"""Password logins of the mail access services (IMAP and POP3): throttle, verify, log.

IMAP and POP3 check a login the same way (Dovecot's login processes): refuse a client
address that failed too often (``auth_failure_delay`` and friends, :mod:`roost.auth.throttle`),
wait the growing delay after failures, verify the password, record the outcome. They log
in Dovecot's shapes, built here so both stay byte-identical::

    imap-login: Login: user=<alice>, method=PLAIN, rip=127.0.0.1, lip=127.0.0.1,
        mpid=4242, TLS, session=<...>
    pop3-login: Disconnected (auth failed, 1 attempts in 2 secs): user=<alice>, ...
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass
from typing import TypeVar

from roost.auth.throttle import Throttle
from roost.auth.users import User, UserDatabase

__all__ = [
    "Checked",
    "UserIPCounts",
    "check_password",
    "decrement",
    "log_disconnected",
    "login_fields",
    "wait_throttle",
]

_K = TypeVar("_K")


async def wait_throttle(throttle: Throttle, remote_ip: str, login: str) -> bool:
    """Wait the failed-login delay of ``login`` from ``remote_ip`` (seconds, from ``throttle``).

    Returns:
        False, without waiting, when the address failed too often and is refused for now
        (the caller answers with its protocol's error and disconnects).
    """
    if throttle.refused(remote_ip):
        return False
    delay = throttle.delay_for(remote_ip, login)
    if delay > 0:
        await asyncio.sleep(delay)
    return True


@dataclass(frozen=True, slots=True)
class Checked:
    """The outcome of :func:`check_password`.

    Attributes:
        user: the user who logged in, None when the login failed.
        temporary: the failure was the backend's (IMAP ``NO [UNAVAILABLE]``, POP3
            ``-ERR [SYS/TEMP]``), not a wrong login or password.
    """

    user: User | None
    temporary: bool = False


async def check_password(
    users: UserDatabase,
    throttle: Throttle,
    log: logging.Logger,
    login: str,
    password: str,
    remote_ip: str,
) -> Checked:
    """Verify ``login`` and ``password`` and record the outcome in ``throttle``.

    A backend failure is logged (``auth: <login>: <message>``) and not counted as a failed
    login; a wrong login or password is counted.
    """
    result = await users.verify(login, password, remote_address=remote_ip)
    if result.failure is not None or result.user is None:
        if result.failure is not None and result.failure.temporary:
            log.warning("auth: %s: %s", login, result.message)
            return Checked(None, temporary=True)
        throttle.record_failure(remote_ip, login)
        return Checked(None)
    throttle.record_success(remote_ip, login)
    return Checked(result.user)


def login_fields(
    login: str,
    method: str,
    remote_ip: str,
    local_ip: str,
    session_id: str,
    *,
    tls: bool,
    secured: bool,
    mpid: bool = False,
) -> str:
    """Dovecot's login log fields: ``user=<..>, method=.., rip=.., lip=.., [mpid=..,]
    TLS|secured, session=<..>`` (``method`` left out when empty)."""
    fields = [f"user=<{login}>"]
    if method:
        fields.append(f"method={method}")
    fields += [f"rip={remote_ip}", f"lip={local_ip}"]
    if mpid:
        fields.append(f"mpid={os.getpid()}")
    if tls:
        fields.append("TLS")
    elif secured:
        fields.append("secured")
    fields.append(f"session=<{session_id}>")
    return ", ".join(fields)


def log_disconnected(
    log: logging.Logger,
    reason: str,
    fields: str,
    *,
    plain: bool,
    attempts: int,
    started: float,
    disallowed: str = "",
) -> None:
    """Log the end of a session that never logged in, as Dovecot's login process does.

    ``Disconnected (auth failed, 2 attempts in 5 secs): <fields>``, or ``Disconnected:
    <reason> (...)`` unless ``plain``. ``started`` is the session's ``time.monotonic()``
    start; ``disallowed`` names an auth the client was not allowed ("plaintext").
    """
    seconds = int(time.monotonic() - started)
    if attempts:
        summary = f"auth failed, {attempts} attempts in {seconds} secs"
    elif disallowed:
        summary = f"tried to use disallowed {disallowed} auth"
    else:
        summary = f"no auth attempts in {seconds} secs"
    what = "Disconnected" if plain else f"Disconnected: {reason}"
    log.info("%s (%s): %s", what, summary, fields)


def decrement(counts: dict[_K, int], key: _K) -> None:
    """Take one from ``counts[key]``; the key goes when nothing is left."""
    left = counts.get(key, 0) - 1
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)


class UserIPCounts:
    """Logins per user and client address (Dovecot's ``mail_max_userip_connections``).

    The base of the IMAP and POP3 session registries; used on the event loop only. The
    worker processes swap ``per_user_ip`` for a shared table
    (:func:`roost.daemon.shared.share_registry`).
    """

    def __init__(self) -> None:
        self.per_user_ip: dict[tuple[str, str], int] = {}

    def add_user(self, key: tuple[str, str], limit: int) -> bool:
        """Count a login of ``(user, address)``; False when ``limit`` (not 0) is reached."""
        count = self.per_user_ip.get(key, 0)
        if limit and count >= limit:
            return False
        self.per_user_ip[key] = count + 1
        return True

    def remove_user(self, key: tuple[str, str]) -> None:
        """Forget a login."""
        decrement(self.per_user_ip, key)
