"""Delivery status notifications (RFC 3464) as Postfix's bounce(8) writes them.

A DSN is a ``multipart/report; report-type=delivery-status`` message (RFC 6522) from
``MAILER-DAEMON`` with the null envelope sender, to the original envelope sender:

1. a human-readable part in Postfix's words;
2. ``message/delivery-status``: per-message fields (Reporting-MTA, Arrival-Date,
   Original-Envelope-Id from RFC 3461 ``ENVID``) and per-recipient fields
   (Final-Recipient, Original-Recipient from ``ORCPT``, Action, Status,
   Diagnostic-Code, Remote-MTA, Last-Attempt-Date, Will-Retry-Until);
3. the original message (``message/rfc822``), or only its header
   (``text/rfc822-headers``) when the sender asked ``RET=HDRS`` or the message is larger
   than ``bounce_size_limit``.

Who gets one (RFC 3461 §4.1 ``NOTIFY``): failures unless NOTIFY=NEVER or a NOTIFY list
without FAILURE; delays only with DELAY in the list or no NOTIFY at all; successes only
with SUCCESS. Mail from the null sender never gets a DSN (RFC 3461 §6.2): its failures go
to ``2bounce_notice_recipient`` instead, once.
"""

from __future__ import annotations

import email.utils
import enum
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from roost.queue.envelope import Envelope, Notify, Recipient, Ret

__all__ = ["Action", "DsnRecipient", "build_dsn", "wants_dsn"]

_TEXT: Final = {
    "failed": (
        "Undelivered Mail Returned to Sender",
        "I'm sorry to have to inform you that your message could not\n"
        "be delivered to one or more recipients. It's attached below.\n\n"
        "For further assistance, please send mail to postmaster.\n\n"
        "If you do so, please include this problem report. You can\n"
        "delete your own text from the attached returned message.",
    ),
    "delayed": (
        "Delayed Mail (still being retried)",
        "####################################################################\n"
        "# THIS IS A WARNING ONLY.  YOU DO NOT NEED TO RESEND YOUR MESSAGE. #\n"
        "####################################################################\n\n"
        "Your message could not be delivered for {hours} hour(s).\n"
        "It will be retried until it is {days} day(s) old.",
    ),
    "delivered": (
        "Successful Mail Delivery Report",
        "Your message was successfully delivered to the destination(s)\n"
        "listed below. If the message was delivered to mailbox you will\n"
        "receive no further notifications. Otherwise you may still receive\n"
        "notifications of mail delivery errors from other systems.",
    ),
}


class Action(enum.StrEnum):
    """The RFC 3464 §2.3.3 Action of a recipient."""

    FAILED = "failed"
    DELAYED = "delayed"
    DELIVERED = "delivered"
    RELAYED = "relayed"


@dataclass(frozen=True, slots=True)
class DsnRecipient:
    """One recipient's line in a DSN.

    Attributes:
        recipient: the envelope recipient (address, ORCPT).
        action: what happened.
        status: the RFC 3463 code, e.g. ``5.1.1``.
        diagnostic: the reason: a remote SMTP reply (``550 5.1.1 ...``) or our own text.
        remote_mta: the host that gave the reply, if any.
        smtp_reply: True when ``diagnostic`` is an SMTP reply (Diagnostic-Code type smtp).
    """

    recipient: Recipient
    action: Action
    status: str
    diagnostic: str
    remote_mta: str | None = None
    smtp_reply: bool = False


def wants_dsn(recipient: Recipient, action: Action) -> bool:
    """Apply RFC 3461 NOTIFY: should this recipient's outcome be reported?"""
    notify = recipient.notify
    if notify is None:
        return action is Action.FAILED or action is Action.DELAYED
    if Notify.NEVER in notify:
        return False
    if action is Action.FAILED:
        return Notify.FAILURE in notify
    if action is Action.DELAYED:
        return Notify.DELAY in notify
    return Notify.SUCCESS in notify


def _header_block(original: bytes) -> bytes:
    end = original.find(b"\r\n\r\n")
    return original if end < 0 else original[: end + 2]


def _text_address(address: str) -> str:
    return address or "<>"


def build_dsn(
    *,
    envelope: Envelope,
    recipients: Sequence[DsnRecipient],
    original: bytes,
    hostname: str,
    now: float,
    bounce_size_limit: int = 50000,
    will_retry_until: float | None = None,
    to: str | None = None,
) -> bytes:
    """Render a DSN message (CRLF line endings).

    Args:
        envelope: the original message's envelope.
        recipients: the recipients to report, all with the same kind of action.
        original: the original message as queued.
        hostname: ``myhostname`` (Reporting-MTA, From, Message-ID).
        now: the current time in epoch seconds.
        bounce_size_limit: the largest original returned in full, in bytes.
        will_retry_until: for delayed DSNs, when the queue gives up.
        to: the DSN's recipient (default: the original envelope sender).

    Returns:
        The message, ready for the queue with the null envelope sender.
    """
    action = recipients[0].action
    subject, text = _TEXT["failed" if action is Action.FAILED else action.value]
    if action is Action.DELAYED:
        hours = int((now - envelope.arrival_time) // 3600)
        days = int(((will_retry_until or now) - envelope.arrival_time) // 86400)
        text = text.format(hours=hours, days=days)
    boundary = f"{envelope.queue_id or 'dsn'}.{secrets.token_hex(8)}/{hostname}"
    date = email.utils.formatdate(now, localtime=True)
    recipient_to = to if to is not None else envelope.envelope_sender
    message_id = f"<{secrets.token_hex(8)}.{envelope.queue_id or 'dsn'}@{hostname}>"
    human = [
        f"This is the mail system at host {hostname}.",
        "",
        text,
        "",
        "",
        "  The mail system",
        "",
    ]
    for item in recipients:
        human.append(f"<{item.recipient.address}>: {item.diagnostic}")
    per_message = [
        f"Reporting-MTA: dns; {hostname}",
        f"X-Roost-Queue-ID: {envelope.queue_id}",
        f"X-Roost-Sender: rfc822; {_text_address(envelope.envelope_sender)}",
        f"Arrival-Date: {email.utils.formatdate(envelope.arrival_time, localtime=True)}",
    ]
    if envelope.envid:
        per_message.append(f"Original-Envelope-Id: {envelope.envid}")
    per_recipient: list[str] = []
    for item in recipients:
        block = ["", f"Final-Recipient: rfc822; {item.recipient.address}"]
        if item.recipient.orcpt:
            kind, _, address = item.recipient.orcpt.partition(";")
            block.append(f"Original-Recipient: {kind}; {address}")
        block += [f"Action: {item.action}", f"Status: {item.status}"]
        if item.remote_mta:
            block.append(f"Remote-MTA: dns; {item.remote_mta}")
        kind = "smtp" if item.smtp_reply else "X-Roost"
        block.append(f"Diagnostic-Code: {kind}; {item.diagnostic}")
        block.append(f"Last-Attempt-Date: {date}")
        if action is Action.DELAYED and will_retry_until is not None:
            block.append(
                f"Will-Retry-Until: {email.utils.formatdate(will_retry_until, localtime=True)}"
            )
        per_recipient += block
    full = envelope.ret is not Ret.HDRS and len(original) <= bounce_size_limit
    if action in (Action.DELIVERED, Action.DELAYED):
        full = False  # only a bounce returns the whole message
    attached_type = "message/rfc822" if full else "text/rfc822-headers"
    attached = original if full else _header_block(original)
    head = [
        f"From: MAILER-DAEMON@{hostname} (Mail Delivery System)",
        f"To: {_text_address(recipient_to)}",
        f"Subject: {subject}",
        f"Date: {date}",
        f"Message-Id: {message_id}",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary="{boundary}"',
        "Content-Transfer-Encoding: 8bit",
        "",
        "This is a MIME-encapsulated message.",
        "",
        f"--{boundary}",
        "Content-Description: Notification",
        "Content-Type: text/plain; charset=utf-8",
        "",
        *human,
        f"--{boundary}",
        "Content-Description: Delivery report",
        "Content-Type: message/delivery-status",
        "",
        *per_message,
        *per_recipient,
        "",
        f"--{boundary}",
        "Content-Description: Undelivered Message"
        if full
        else "Content-Description: Message Headers",
        f"Content-Type: {attached_type}",
        "Content-Transfer-Encoding: 8bit",
        "",
    ]
    body = "\r\n".join(head).encode("utf-8") + b"\r\n" + attached
    if not body.endswith(b"\r\n"):
        body += b"\r\n"
    return body + f"\r\n--{boundary}--\r\n".encode()
