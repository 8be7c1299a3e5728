"""POP3 responses as octets: status lines, multi-line responses, messages, CAPA.

Every reply text the POP3 server sends is built here, so they can be read in one place.

* Status lines (RFC 1939 §3): ``+OK text`` and ``-ERR [CODE] text``, CRLF-terminated,
  at most :data:`MAX_RESPONSE_LINE` octets (RFC 2449 §4). Response codes are those of
  RFC 2449 §8 (``IN-USE``, ``LOGIN-DELAY``) and RFC 3206 (``SYS/TEMP``, ``SYS/PERM``,
  ``AUTH``): :class:`RespCode`.
* Multi-line responses (RFC 1939 §3): the status line, lines that begin with ``.`` get
  one more ``.`` (byte-stuffing), and the terminator ``.CRLF``. Short ones (LIST, UIDL,
  CAPA) are built whole by :func:`multiline`.
* Messages: :func:`encode_whole` encodes a whole RETR body in a few passes of C code
  (the fast path for messages held in memory); :class:`MultilineEncoder` (push: feed
  chunks, take octets) and :func:`encode_message` (a generator over a message or its
  chunks) stream big messages and TOP, so a 100 MB message never becomes one 100 MB
  response object.

Message sizes and line endings (as Dovecot)
-------------------------------------------
The store may keep messages with bare LF line ends (as Dovecot's Maildir does). On the
wire every bare LF becomes CRLF; a CR that is not followed by LF is sent as it is. The
size of a message reported by STAT, LIST and the RETR status line is the octet count
of the message with CRLF line ends (Dovecot's "virtual size", :func:`wire_size`):
it does not count the octets added by byte-stuffing, nor the terminator ``.CRLF``, nor
the CRLF added before the terminator when the message does not end with a line break.
RFC 1939 §5 (LIST) asks for "the exact size of the message"; §11 lets servers report
the size as it would be with CRLF line ends, not counting the stuffing. So the octets
of a RETR payload, once the stuffing is undone and the terminator removed, are exactly
the reported size (plus the added final CRLF for a message without one).

Nothing here does I/O.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Final, TypeAlias

from roost.auth.sasl import encode_challenge

__all__ = [
    "CRLF",
    "MAX_RESPONSE_LINE",
    "Buffer",
    "Failure",
    "MultilineEncoder",
    "RespCode",
    "capa",
    "capabilities",
    "continuation",
    "encode_message",
    "encode_whole",
    "err",
    "failure",
    "multiline",
    "ok",
    "printable",
    "wire_size",
]

Buffer: TypeAlias = bytes | bytearray | memoryview
"""What the message encoder accepts."""

CRLF: Final = b"\r\n"

MAX_RESPONSE_LINE: Final = 512
"""Longest status line in octets, CRLF included (RFC 2449 §4)."""

CHUNK_SIZE: Final = 64 * 1024
"""Octets of a stored message encoded per piece by :func:`encode_message`."""

TERMINATOR: Final = b".\r\n"
"""The end of a multi-line response (RFC 1939 §3)."""


# --- status lines -------------------------------------------------------------------------


_DOT_AFTER_LF: Final = re.compile(rb"\n\.")


class RespCode(enum.Enum):
    """Extended response codes, sent in brackets after ``-ERR``.

    RESP-CODES (RFC 2449 §6.4, §8) and AUTH-RESP-CODE (RFC 3206 §6) are advertised, so
    clients may act on them.
    """

    IN_USE = "IN-USE"
    """The maildrop is locked by another session (RFC 2449 §8.1.1); PASS/APOP/AUTH only."""
    LOGIN_DELAY = "LOGIN-DELAY"
    """The user logged in too recently (RFC 2449 §8.1.2); PASS/APOP/AUTH only."""
    SYS_TEMP = "SYS/TEMP"
    """A temporary system problem: trying again later may work (RFC 3206 §4)."""
    SYS_PERM = "SYS/PERM"
    """A permanent system problem: an administrator must act (RFC 3206 §4)."""
    AUTH = "AUTH"
    """A problem with the user's credentials, not the system (RFC 3206 §5)."""


def printable(text: str | bytes, *, limit: int = 40) -> str:
    """Make client-supplied text safe to echo in a reply: printable ASCII, at most ``limit``.

    Args:
        text: the text (bytes are read as Latin-1, so every octet maps to one character).
        limit: the longest result in characters; longer text is cut and ends in ``...``.

    Returns:
        The text with every character outside ``0x20..0x7E`` replaced by ``?``.
    """
    if isinstance(text, bytes):
        text = text.decode("latin-1")
    safe = "".join(char if " " <= char <= "~" else "?" for char in text[: limit + 1])
    return safe if len(safe) <= limit else safe[: max(limit - 3, 0)] + "..."


def _status(indicator: bytes, text: str) -> bytes:
    if not text:
        return indicator + CRLF
    if text.isascii() and text.isprintable():  # the usual case: 0x20-0x7E only
        encoded = text.encode("ascii")
    else:
        body = "".join(char if char >= " " and char != "\x7f" else " " for char in text)
        encoded = body.encode("utf-8", "replace")
    room = MAX_RESPONSE_LINE - len(indicator) - 1 - len(CRLF)
    if len(encoded) > room:
        encoded = encoded[:room].decode("utf-8", "ignore").encode("utf-8")
    return indicator + b" " + encoded + CRLF


def ok(text: str = "") -> bytes:
    """A positive status line: ``+OK text`` CRLF, or ``+OK`` CRLF (RFC 1939 §3).

    Control characters in ``text`` become spaces; the line is cut to
    :data:`MAX_RESPONSE_LINE` octets.
    """
    return _status(b"+OK", text)


def err(text: str, code: RespCode | None = None) -> bytes:
    """A negative status line: ``-ERR [CODE] text`` CRLF (RFC 1939 §3, RFC 2449 §8).

    Args:
        text: the human-readable reason; control characters become spaces.
        code: the extended response code, or ``None`` for none.
    """
    return _status(b"-ERR", text if code is None else f"[{code.value}] {text}")


def continuation(challenge: bytes) -> bytes:
    """A SASL server challenge: ``+ base64`` CRLF; ``+ `` CRLF when empty (RFC 5034 §4)."""
    return b"+ " + encode_challenge(challenge) + CRLF


# --- failures -----------------------------------------------------------------------------


class Failure(enum.Enum):
    """Why a login or a maildrop operation failed, each answered by one reply.

    The session turns its domain errors into these (``roost.pop3.errors`` is that table):
    a bad password or unknown user is :attr:`AUTH_FAILED`; an unreachable user database or
    a throttled client is :attr:`AUTH_UNAVAILABLE`; a locked maildrop :attr:`IN_USE`;
    other store errors :attr:`TEMPORARY` or :attr:`PERMANENT` by their ``temporary``.
    """

    AUTH_FAILED = "auth failed"
    AUTH_UNAVAILABLE = "auth unavailable"
    IN_USE = "in use"
    LOGIN_DELAY = "login delay"
    TEMPORARY = "temporary"
    PERMANENT = "permanent"


FAILURE_REPLIES: Final[Mapping[Failure, tuple[RespCode, str]]] = {
    Failure.AUTH_FAILED: (RespCode.AUTH, "Authentication failed."),
    Failure.AUTH_UNAVAILABLE: (
        RespCode.SYS_TEMP,
        "Temporary authentication failure, try again later.",
    ),
    Failure.IN_USE: (RespCode.IN_USE, "Maildrop is locked by another session."),
    Failure.LOGIN_DELAY: (RespCode.LOGIN_DELAY, "Logged in too recently, try again later."),
    Failure.TEMPORARY: (RespCode.SYS_TEMP, "Temporary server failure, try again later."),
    Failure.PERMANENT: (RespCode.SYS_PERM, "Server failure, contact your administrator."),
}
"""The response code and text of each :class:`Failure`."""


def failure(reason: Failure) -> bytes:
    """The ``-ERR [CODE] text`` line for ``reason`` (:data:`FAILURE_REPLIES`)."""
    code, text = FAILURE_REPLIES[reason]
    return err(text, code)


# --- multi-line responses -----------------------------------------------------------------


def multiline(status: bytes, lines: Iterable[str | bytes]) -> bytes:
    """A whole multi-line response (RFC 1939 §3) for short listings: LIST, UIDL, CAPA.

    Args:
        status: the status line with its CRLF (from :func:`ok`).
        lines: the lines without line ends; a line starting with ``.`` is byte-stuffed.

    Returns:
        The status line, each line with CRLF, then ``.`` CRLF.
    """
    parts = [status]
    for line in lines:
        data = line.encode("utf-8") if isinstance(line, str) else line
        parts.append(b"." + data if data.startswith(b".") else data)
        parts.append(CRLF)
    parts.append(TERMINATOR)
    return b"".join(parts)


def wire_size(message: Buffer) -> int:
    """The size of a stored message as STAT and LIST report it, in octets.

    That is its length with every bare LF counted as CRLF, without byte-stuffing and
    without the terminator (as Dovecot's virtual size; see the module docstring).
    """
    data = bytes(message)
    return len(data) + data.count(b"\n") - data.count(b"\r\n")


def retr_status(size: int) -> bytes:
    """RETR's status line: ``+OK <size> octets`` CRLF (RFC 1939 §5)."""
    return b"+OK %d octets\r\n" % size


def encode_whole(message: Buffer, *, status: bytes = b"") -> bytes:
    """A whole RETR response: ``status``, the message encoded, and the terminator.

    The body is the same octets as ``b"".join(encode_message(message))`` (bare LF to
    CRLF, a CR not followed by LF kept, lines starting with ``.`` byte-stuffed, a CRLF
    added when the message does not end with a line end, then ``.`` CRLF), made by a
    few passes of C code over the whole message instead of chunk by chunk: the fast path
    for a message that is in memory anyway. Memory: about three times the message.

    Args:
        message: the stored message (LF or CRLF line ends).
        status: octets to send first (the status line), joined here to save a copy.
    """
    data = message if isinstance(message, bytes) else bytes(message)
    if not data:
        return status + TERMINATOR
    if b"\r" in data:
        data = data.replace(b"\r\n", b"\n")
    # Stuff before doubling the line ends: the regular expression scans fewer octets,
    # and is much faster than bytes.replace with a two-octet pattern.
    data = _DOT_AFTER_LF.sub(b"\n..", data)
    if data[0] == 0x2E:  # "." on the first line
        data = b"." + data
    data = data.replace(b"\n", b"\r\n")
    return b"".join((status, data, TERMINATOR if data[-1] == 0x0A else _CRLF_TERMINATOR))


_CRLF_TERMINATOR: Final = CRLF + TERMINATOR


class MultilineEncoder:
    """Encode a stored message as the body of a RETR or TOP response, chunk by chunk.

    Feed the raw message (LF or CRLF line ends) in pieces of any size; each call returns
    the octets to send next: bare LF turned into CRLF, lines starting with ``.``
    byte-stuffed (RFC 1939 §3), also when a line, a CRLF or a ``\\n.`` is split between
    two chunks. :meth:`end` returns the rest and the terminator. Memory use does not
    depend on the message size.

    For TOP (RFC 1939 §7) pass ``body_lines``: the headers, the empty line after them and
    that many body lines are sent; once they are, :attr:`complete` is true and the
    rest of the input is ignored, so the caller may stop reading.

    Args:
        body_lines: for TOP, how many body lines to send (0 or more); ``None`` for RETR.

    Attributes:
        octets: message octets produced so far with CRLF line ends, without the
            byte-stuffing (for RETR of a whole message: :func:`wire_size` of it).

    Raises:
        ValueError: ``body_lines`` is negative.
    """

    __slots__ = ("_ended", "_held_cr", "_in_header", "_line_start", "_remaining", "octets")

    def __init__(self, *, body_lines: int | None = None) -> None:
        if body_lines is not None and body_lines < 0:
            raise ValueError("body_lines must not be negative")
        self._remaining = body_lines
        self._in_header = body_lines is not None
        self._held_cr = False
        self._line_start = True
        self._ended = False
        self.octets = 0

    @property
    def complete(self) -> bool:
        """All of a TOP response's lines were produced; further input is ignored."""
        return self._remaining == 0 and not self._in_header

    def feed(self, chunk: Buffer) -> bytes:
        """Encode the next piece of the message; returns the octets to send (maybe ``b""``).

        Raises:
            RuntimeError: called after :meth:`end`.
        """
        if self._ended:
            raise RuntimeError("feed() after end()")
        if self.complete or not chunk:
            return b""
        data = bytes(chunk)
        if self._held_cr:
            data = b"\r" + data
            self._held_cr = False
        # A CR at the end may be the first half of a CRLF split between two chunks: keep it
        # back so that a CRLF is never cut (the next chunk decides: CRLF or a bare CR).
        if data.endswith(b"\r"):
            data = data[:-1]
            self._held_cr = True
        return self._emit(data)

    def end(self) -> bytes:
        """Finish: the octets held back, a CRLF if the message did not end with one, ``.``.

        Raises:
            RuntimeError: called twice.
        """
        if self._ended:
            raise RuntimeError("end() called twice")
        out = b""
        if self._held_cr:
            self._held_cr = False
            if not self.complete:
                out = self._emit(b"\r")
        self._ended = True
        return out + (TERMINATOR if self._line_start else CRLF + TERMINATOR)

    def _emit(self, data: bytes) -> bytes:
        if not data:
            return b""
        if b"\r" in data:
            data = data.replace(b"\r\n", b"\n")
        data = data.replace(b"\n", b"\r\n")  # CRLF on the wire whatever the file holds
        if self._remaining is not None:
            data = self._truncate(data)
            if not data:
                return b""
        self.octets += len(data)
        stuffed = _DOT_AFTER_LF.sub(b"\n..", data)  # faster than bytes.replace here
        if self._line_start and stuffed.startswith(b"."):
            stuffed = b"." + stuffed
        self._line_start = stuffed.endswith(b"\n")
        return stuffed

    def _truncate(self, data: bytes) -> bytes:
        """Keep the headers, the empty line and ``_remaining`` body lines (TOP)."""
        parts: list[bytes] = []
        line_start = self._line_start
        pos = 0
        size = len(data)
        while pos < size and not self.complete:
            if self._in_header and line_start and data.startswith(CRLF, pos):
                self._in_header = False  # the empty line between headers and body
                parts.append(CRLF)
                pos += len(CRLF)
                continue
            if not self._in_header and self._remaining == 0:
                break
            lf = data.find(b"\n", pos)
            if lf < 0:
                parts.append(data[pos:])
                line_start = False
                break
            parts.append(data[pos : lf + 1])
            pos = lf + 1
            line_start = True
            if not self._in_header and self._remaining is not None:
                self._remaining -= 1
        return b"".join(parts)


def _pieces(message: Buffer, size: int) -> Iterator[memoryview]:
    view = memoryview(message)
    for start in range(0, len(view), size):
        yield view[start : start + size]


def encode_message(
    message: Buffer | Iterable[Buffer],
    *,
    body_lines: int | None = None,
    chunk_size: int = CHUNK_SIZE,
) -> Iterator[bytes]:
    """Yield a RETR or TOP response body piece by piece, terminator included.

    Args:
        message: the stored message (LF or CRLF line ends), whole or as chunks.
        body_lines: for TOP, the number of body lines (RFC 1939 §7); ``None`` for RETR.
        chunk_size: octets of a whole ``message`` encoded per piece.

    Yields:
        Non-empty octet strings; the last one ends with ``.`` CRLF. The status line is
        not included.
    """
    encoder = MultilineEncoder(body_lines=body_lines)
    chunks: Iterable[Buffer]
    if isinstance(message, bytes | bytearray | memoryview):
        chunks = _pieces(message, chunk_size)
    else:
        chunks = message
    for chunk in chunks:
        piece = encoder.feed(chunk)
        if piece:
            yield piece
        if encoder.complete:
            break
    yield encoder.end()


# --- CAPA (RFC 2449 §5, §6) ---------------------------------------------------------------


def capabilities(
    *,
    user: bool,
    sasl: Sequence[str],
    stls: bool,
    implementation: str,
) -> tuple[str, ...]:
    """The capability lines, in the order they are sent.

    Args:
        user: USER/PASS is allowed now (RFC 2449 §6.2: TLS active, a secure channel, or
            plaintext logins allowed, i.e. ``disable_plaintext_auth = no``).
        sasl: the SASL mechanisms offered now (RFC 5034 §3, RFC 2449 §6.3); none: no line.
        stls: STLS can be used: TLS is configured and not yet active (RFC 2595 §4).
        implementation: the IMPLEMENTATION text (RFC 2449 §6.9); empty: no line.

    Returns:
        ``TOP``, ``UIDL``, ``RESP-CODES``, ``AUTH-RESP-CODE``, ``PIPELINING``, then
        ``USER``, ``SASL ...``, ``STLS`` and ``IMPLEMENTATION ...`` as they apply.
        ``EXPIRE`` and ``LOGIN-DELAY`` are not announced: no retention or delay policy is
        implemented.
    """
    lines = ["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"]
    if user:
        lines.append("USER")
    if sasl:
        lines.append("SASL " + " ".join(sasl))
    if stls:
        lines.append("STLS")
    if implementation:
        lines.append("IMPLEMENTATION " + printable(implementation, limit=200))
    return tuple(lines)


def capa(*, user: bool, sasl: Sequence[str], stls: bool, implementation: str) -> bytes:
    """The whole CAPA response (RFC 2449 §5); arguments as :func:`capabilities`."""
    lines = capabilities(user=user, sasl=sasl, stls=stls, implementation=implementation)
    return multiline(ok("Capability list follows"), lines)
