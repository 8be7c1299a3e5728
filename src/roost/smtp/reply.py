"""Every SMTP reply the server sends, with its RFC 3463 enhanced status code.

Texts follow Postfix's smtpd so log habits and client expectations carry over. A reply is
``CODE ENHANCED text``; multi-line replies (EHLO) are built by :func:`multiline`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final

__all__ = ["Reply", "multiline", "parse_reply", "with_enhanced_code"]


@dataclass(frozen=True, slots=True)
class Reply:
    """One SMTP reply.

    Attributes:
        code: the three-digit reply code (RFC 5321 §4.2).
        enhanced: the RFC 3463 status code such as ``"5.7.1"``.
        text: the human-readable rest of the line.
        wire: the reply as sent, ``str(reply)`` and CRLF in UTF-8 (client bytes kept as
            surrogates in ``text`` go back as they came), made once with the reply: a
            constant reply is not formatted and encoded again for every session. Empty
            when the text cannot be encoded so (sending the reply raises, as before).
    """

    code: int
    enhanced: str
    text: str
    wire: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        line = f"{self.code} {self.enhanced} {self.text}\r\n"
        try:
            wire = line.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            wire = b""
        object.__setattr__(self, "wire", wire)

    def __str__(self) -> str:
        return f"{self.code} {self.enhanced} {self.text}"

    @property
    def temporary(self) -> bool:
        """True for 4xx replies."""
        return 400 <= self.code < 500

    @property
    def error(self) -> bool:
        """True for 4xx and 5xx replies (they count towards the error limits)."""
        return self.code >= 400

    def prefixed(self, prefix: str) -> Reply:
        """Return the reply with ``prefix`` before its text (``<addr>: ...``)."""
        return Reply(self.code, self.enhanced, f"{prefix}{self.text}")


def multiline(code: int, lines: list[str]) -> str:
    """Render a multi-line reply: ``250-first``, ..., ``250 last`` (RFC 5321 §4.2.1)."""
    head = [f"{code}-{line}" for line in lines[:-1]]
    return "\r\n".join([*head, f"{code} {lines[-1]}"])


_REPLY_RE: Final = re.compile(r"([2-5]\d\d)(?:[ -]([245]\.\d{1,3}\.\d{1,3}))?\s*(.*)", re.S)


def parse_reply(text: str) -> Reply | None:
    """Parse ``"450 4.7.1 text"`` or ``"450 text"`` (access table results); None if not one."""
    match = _REPLY_RE.fullmatch(text.strip())
    if match is None:
        return None
    code = int(match.group(1))
    enhanced = match.group(2) or f"{code // 100}.7.1"
    if enhanced[0] != str(code)[0]:
        enhanced = f"{code // 100}{enhanced[1:]}"
    return Reply(code, enhanced, match.group(3))


def with_enhanced_code(line: str) -> str:
    """Replace a reply of aiosmtpd's own command loop by ours, with its enhanced code."""
    replacement = AIOSMTPD_REPLIES.get(line)
    if replacement is not None:
        return str(replacement)
    if line == '500 Error: command "" not recognized':
        return str(BAD_SYNTAX)
    if line.startswith('500 Error: command "'):
        return str(UNKNOWN_COMMAND)
    return line


# --- connection --------------------------------------------------------------------
CLOSING = Reply(221, "2.0.0", "Bye")
TIMEOUT = Reply(421, "4.4.2", "Error: timeout exceeded")
TOO_MANY_ERRORS = Reply(421, "4.7.0", "Error: too many errors")
TOO_MANY_CONNECTIONS = Reply(421, "4.7.0", "Error: too many connections from {client}")
TOO_MANY_CONNECTION_RATE = Reply(421, "4.7.0", "Error: too many connections from {client}")
TOO_MANY_AUTH_FAILURES = Reply(421, "4.7.0", "Error: too many authentication failures")
SHUTTING_DOWN = Reply(421, "4.3.2", "Service shutting down, closing transmission channel")

# --- generic -----------------------------------------------------------------------
OK = Reply(250, "2.0.0", "Ok")
MAIL_OK = Reply(250, "2.1.0", "Ok")
RCPT_OK = Reply(250, "2.1.5", "Ok")
QUEUED = Reply(250, "2.0.0", "Ok: queued as {queue_id}")
START_DATA = "354 End data with <CR><LF>.<CR><LF>"
#: :data:`START_DATA` as sent.
START_DATA_WIRE: Final = f"{START_DATA}\r\n".encode()
VRFY_CANNOT = Reply(252, "2.0.0", "{address}")
VRFY_DISABLED = Reply(502, "5.5.1", "VRFY command is disabled")
EXPN_DISABLED = Reply(502, "5.5.1", "EXPN command is disabled")
HELP = Reply(214, "2.0.0", "See RFC 5321; commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY")

# --- syntax and sequence (RFC 5321 §4.3.2) ----------------------------------------
UNKNOWN_COMMAND = Reply(502, "5.5.2", "Error: command not recognized")
LINE_TOO_LONG = Reply(500, "5.5.2", "Error: line too long")
BAD_SYNTAX = Reply(500, "5.5.2", "Error: bad syntax")
NON_ASCII_COMMAND = Reply(500, "5.5.2", "Error: non-ASCII command without SMTPUTF8")
NUL_IN_COMMAND = Reply(500, "5.5.2", "Error: NUL character in command")
SYNTAX_HELO = Reply(501, "5.5.4", "Syntax: HELO hostname")
SYNTAX_EHLO = Reply(501, "5.5.4", "Syntax: EHLO hostname")
SYNTAX_MAIL = Reply(501, "5.5.4", "Syntax: MAIL FROM:<address>")
SYNTAX_RCPT = Reply(501, "5.5.4", "Syntax: RCPT TO:<address>")
SYNTAX_NO_ARGUMENT = Reply(501, "5.5.4", "Syntax: {command}")
SYNTAX_AUTH = Reply(501, "5.5.4", "Syntax: AUTH mechanism [initial-response]")
BAD_PARAMETER = Reply(555, "5.5.4", "Unsupported option: {parameter}")
BAD_PARAMETER_VALUE = Reply(501, "5.5.4", "Bad {parameter} parameter value")
NEED_HELO = Reply(503, "5.5.1", "Error: send HELO/EHLO first")
NESTED_MAIL = Reply(503, "5.5.1", "Error: nested MAIL command")
NEED_MAIL = Reply(503, "5.5.1", "Error: need MAIL command")
NEED_RCPT = Reply(503, "5.5.1", "Error: need RCPT command")
NO_VALID_RECIPIENTS = Reply(554, "5.5.1", "Error: no valid recipients")
BAD_SENDER_SYNTAX = Reply(501, "5.1.7", "Bad sender address syntax")
BAD_RECIPIENT_SYNTAX = Reply(501, "5.1.3", "Bad recipient address syntax")
SMTPUTF8_REQUIRED = Reply(553, "5.6.7", "Error: address needs SMTPUTF8")

# --- TLS and AUTH (RFC 3207, RFC 4954, RFC 6409) ----------------------------------
READY_TLS = Reply(220, "2.0.0", "Ready to start TLS")
TLS_UNAVAILABLE = Reply(454, "4.7.0", "TLS not available due to local problem")
TLS_ALREADY = Reply(554, "5.5.1", "Error: TLS already active")
TLS_REQUIRED = Reply(530, "5.7.0", "Must issue a STARTTLS command first")
AUTH_OK = Reply(235, "2.7.0", "Authentication successful")
AUTH_FAILED = Reply(535, "5.7.8", "Error: authentication failed: authentication failure")
AUTH_TEMP_FAILED = Reply(454, "4.7.0", "Temporary authentication failure")
AUTH_CANCELLED = Reply(501, "5.7.0", "Authentication aborted")
AUTH_BAD_BASE64 = Reply(501, "5.5.2", "Cannot decode response")
AUTH_NOT_ENABLED = Reply(503, "5.5.1", "Error: authentication not enabled")
AUTH_ALREADY = Reply(503, "5.5.1", "Error: already authenticated")
AUTH_DURING_MAIL = Reply(503, "5.5.1", "Error: MAIL transaction in progress")
AUTH_UNKNOWN_MECHANISM = Reply(504, "5.5.4", "Unrecognized authentication type")
AUTH_NEEDS_TLS = Reply(538, "5.7.11", "Encryption required for requested authentication mechanism")
AUTH_REQUIRED = Reply(530, "5.7.0", "Authentication required")

# --- policy (Postfix smtpd restriction texts) -------------------------------------
RELAY_DENIED = Reply(554, "5.7.1", "Relay access denied")
RELAY_DEFERRED = Reply(450, "4.7.1", "Relay access denied")
USER_UNKNOWN_LOCAL = Reply(
    550, "5.1.1", "Recipient address rejected: User unknown in local recipient table"
)
USER_UNKNOWN_VIRTUAL = Reply(
    550, "5.1.1", "Recipient address rejected: User unknown in virtual mailbox table"
)
RECIPIENT_LOOKUP_FAILED = Reply(
    451, "4.3.0", "Recipient address rejected: Temporary lookup failure"
)
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Error: too many recipients")
SIZE_EXCEEDED = Reply(552, "5.3.4", "Message size exceeds fixed limit")
MAIL_LOOP = Reply(554, "5.4.6", "Too many hops")
BARE_NEWLINE = Reply(550, "5.5.2", "Error: bare <LF> received")
STORAGE_FULL = Reply(452, "4.3.1", "Insufficient system storage")
QUEUE_ERROR = Reply(451, "4.3.0", "Error: queue file write error")
NOT_FQDN_HELO = Reply(504, "5.5.2", "Helo command rejected: need fully-qualified hostname")
INVALID_HELO = Reply(501, "5.5.2", "Helo command rejected: Invalid name")
NOT_FQDN_SENDER = Reply(504, "5.5.2", "Sender address rejected: need fully-qualified address")
NOT_FQDN_RECIPIENT = Reply(504, "5.5.2", "Recipient address rejected: need fully-qualified address")
UNKNOWN_SENDER_DOMAIN = Reply(450, "4.1.8", "Sender address rejected: Domain not found")
SENDER_LOGIN_MISMATCH = Reply(553, "5.7.1", "Sender address rejected: not owned by user {user}")
SENDER_NOT_LOGGED_IN = Reply(553, "5.7.1", "Sender address rejected: not logged in")
ACCESS_DENIED = Reply(554, "5.7.1", "{what} rejected: Access denied")
ACCESS_DEFERRED = Reply(450, "4.7.1", "{what} rejected: Access denied")
REJECTED = Reply(554, "5.7.1", "{what} rejected: Access denied")
DEFERRED = Reply(450, "4.7.1", "{what} rejected: Try again later")
CONFIG_ERROR = Reply(451, "4.3.5", "Server configuration error")

#: aiosmtpd's own loop replies, as we send them.
AIOSMTPD_REPLIES: Final[dict[str, Reply]] = {
    "500 Command line too long": LINE_TOO_LONG,
    "500 Error: bad syntax": BAD_SYNTAX,
    "500 Error: strict ASCII mode": NON_ASCII_COMMAND,
    "501 Syntax: STARTTLS": Reply(501, "5.5.4", "Syntax: STARTTLS"),
    "454 TLS not available": TLS_UNAVAILABLE,
    "220 Ready to start TLS": READY_TLS,
    "530 Must issue a STARTTLS command first": TLS_REQUIRED,
    "554 Command refused due to lack of security": Reply(554, "5.7.0", "Error: TLS required"),
}
