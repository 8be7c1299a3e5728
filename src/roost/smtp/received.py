"""Trace headers the SMTP server adds: Received (RFC 5321 §4.4), Message-ID and Date.

The Received header has Postfix's shape, with the TLS details in a comment and the
``with`` keyword from the RFC 3848 registry (ESMTP, ESMTPS, ESMTPA, ESMTPSA)::

    Received: from client.example (client.example [192.0.2.1])
            (using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits))
            by mx.example.com (roost) with ESMTPS id 4Wk3nB0h2Fz1x
            for <alice@example.com>; Sat, 21 Nov 2026 06:00:00 +0000
"""

from __future__ import annotations

import datetime
import email.utils
import re
import time
from typing import Final

__all__ = ["header_facts", "message_id", "received_header"]

_RECEIVED_RE: Final = re.compile(rb"^received[ \t]*:", re.I | re.M)
_MESSAGE_ID_RE: Final = re.compile(rb"^message-id[ \t]*:[ \t]*(.*)$", re.I | re.M)
_DATE_RE: Final = re.compile(rb"^date[ \t]*:", re.I | re.M)


def received_header(
    *,
    helo: str | None,
    client_name: str,
    client_address: str,
    hostname: str,
    mail_name: str,
    protocol: str,
    queue_id: str,
    recipient: str | None,
    tls: str | None,
    now: float,
) -> bytes:
    """Render the Received header this server prepends (CRLF line endings, folded).

    Args:
        helo: the HELO/EHLO name (None: the client gave none).
        client_name: the verified reverse name, or ``unknown``.
        client_address: the client's IP address.
        hostname: ``myhostname``.
        mail_name: ``mail_name``, in the ``by`` comment.
        protocol: the ``with`` value (RFC 3848).
        queue_id: the queue ID, for ``id``.
        recipient: the only recipient (``for <...>`` appears with exactly one), or None.
        tls: the TLS description for the comment, or None without TLS.
        now: the arrival time in seconds since the epoch.
    """
    literal = f"IPv6:{client_address}" if ":" in client_address else client_address
    lines = [f"Received: from {helo or client_name} ({client_name} [{literal}])"]
    if tls:
        lines.append(f"\t(using {tls})")
    by = f"\tby {hostname} ({mail_name}) with {protocol} id {queue_id}"
    date = _date(now)
    if recipient is not None:
        lines.append(by)
        lines.append(f"\tfor <{recipient}>; {date}")
    else:
        lines.append(f"{by};")
        lines.append(f"\t{date}")
    return ("\r\n".join(lines) + "\r\n").encode("utf-8", "surrogateescape")


def _dt(now: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(now, datetime.UTC)


_last_date: tuple[int, str] = (-1, "")


def _date(now: float) -> str:
    """The RFC 5322 date-time for ``now`` in local time, e.g. ``Sat, 21 Nov 2026 06:00:00
    +0100``: computed once per second (``email.utils.localtime`` is slow)."""
    global _last_date
    second = int(now // 1)
    cached = _last_date
    if cached[0] != second:
        cached = _last_date = (
            second,
            email.utils.format_datetime(email.utils.localtime(_dt(second))),
        )
    return cached[1]


def message_id(queue_id: str, hostname: str, now: float | None = None) -> str:
    """Return a Message-ID like Postfix's cleanup: ``<YYYYMMDDhhmmss.QUEUEID@host>``."""
    stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(now if now is not None else time.time()))
    return f"<{stamp}.{queue_id}@{hostname}>"


def header_facts(header_block: bytes) -> tuple[int, bytes | None, bool]:
    """Return (number of Received headers, the Message-ID value or None, has Date)."""
    match = _MESSAGE_ID_RE.search(header_block)
    found_id = match.group(1).strip() if match else None
    return (
        len(_RECEIVED_RE.findall(header_block)),
        found_id,
        _DATE_RE.search(header_block) is not None,
    )
