"""Header lines local delivery adds, and the ``Delivered-To:`` loop check's input.

See Also: Postfix local(8), "MAILBOX DELIVERY" and "EXTERNAL COMMAND DELIVERY": a
``From sender time_stamp`` envelope line (mailbox and command deliveries), then
``Return-Path:``, ``X-Original-To:`` and ``Delivered-To:`` headers, in that order
(Postfix ``mail_copy()``). RFC 4155 §2 for the ``From_`` line; RFC 5321 §4.4 for
``Return-Path``.
"""

from __future__ import annotations

import re
import time
from typing import Final

__all__ = ["MAILER_DAEMON", "delivered_to_addresses", "delivery_headers", "from_line"]

#: The ``From_`` line's sender for the null reverse-path (Postfix ``MAIL_ADDR_MAIL_DAEMON``).
MAILER_DAEMON: Final = "MAILER-DAEMON"

_UNSAFE: Final = re.compile(r"[\x00\r\n]")
_DELIVERED_TO: Final = re.compile(rb"delivered-to[ \t]*:", re.IGNORECASE)


def _check(value: str, what: str) -> bytes:
    if _UNSAFE.search(value):
        raise ValueError(f"{what} contains a line break or NUL: {value!r}")
    return value.encode("utf-8")


def delivery_headers(
    envelope_sender: str, recipient: str, *, original_recipient: str | None = None
) -> bytes:
    """Return the headers local(8) prepends to a delivered message, with CRLF endings.

    The result goes in front of the spool copy of the message (which has CRLF endings);
    the writers convert both to LF together.

    Args:
        envelope_sender: the envelope sender in RFC 5321 form, ``""`` for the null path.
        recipient: the address delivered to, as ``Delivered-To:`` shows it (Postfix writes
            the folded local address with its extension, e.g. ``alice+lists@example.com``).
        original_recipient: the recipient as first given to roost (before aliases and
            .forward), for ``X-Original-To:``; None or ``""`` leaves the header out.

    Returns:
        ``Return-Path: <sender>`` (``<>`` for the null path), the optional
        ``X-Original-To:``, and ``Delivered-To: recipient``, each ending in CRLF.

    Raises:
        ValueError: an argument contains CR, LF or NUL (header injection).
    """
    lines = [b"Return-Path: <" + _check(envelope_sender, "envelope sender") + b">"]
    if original_recipient:
        lines.append(b"X-Original-To: " + _check(original_recipient, "original recipient"))
    lines.append(b"Delivered-To: " + _check(recipient, "recipient"))
    return b"".join(line + b"\r\n" for line in lines)


def from_line(envelope_sender: str, arrival_time: float | None = None) -> bytes:
    """Return the mbox ``From_`` line: ``From sender Thu Jan  1 00:00:00 2024`` and LF.

    Args:
        envelope_sender: the envelope sender; ``""`` (the null path) gives
            ``MAILER-DAEMON``.
        arrival_time: the time to show, in seconds since the epoch (None: now), written
            as local time in ``asctime()`` form.

    Raises:
        ValueError: the sender contains CR, LF or NUL.

    Note:
        One space separates the sender and the date, as RFC 4155 §2 writes it; Postfix
        writes two, which mbox readers accept as well.
    """
    sender = _check(envelope_sender, "envelope sender") or MAILER_DAEMON.encode()
    when = time.asctime(time.localtime(arrival_time)).encode("ascii")
    return b"From " + sender + b" " + when + b"\n"


def delivered_to_addresses(header_section: bytes) -> frozenset[str]:
    """Return the addresses in ``Delivered-To:`` headers, folded to lower case.

    local(8) bounces a recipient whose address is already in one of these headers: "mail
    forwarding loop for X" (5.4.6). Pass the set to
    :func:`roost.delivery.aliases.expand_recipient` as ``delivered_to``.

    Args:
        header_section: the message's header section (the bytes up to the first empty
            line; anything after an empty line is ignored), CRLF or LF endings.
    """
    found: set[str] = set()
    lines = header_section.replace(b"\r\n", b"\n").split(b"\n")
    for index, line in enumerate(lines):
        if not line:
            break
        match = _DELIVERED_TO.match(line)
        if match is None:
            continue
        value = line[match.end() :]
        for folded in lines[index + 1 :]:
            if folded[:1] not in (b" ", b"\t"):
                break
            value += folded
        address = value.decode("utf-8", "replace").strip().strip("<>").strip()
        if address:
            found.add(address.lower())
    return frozenset(found)
