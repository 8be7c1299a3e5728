"""Streaming helpers shared by the writers: read a message in chunks, convert line endings.

The spool holds messages with CRLF line endings (RFC 5322 §2.1). Maildir and mbox files,
and the input of ``|command`` deliveries, use UNIX LF endings, as Postfix's local(8) and
Dovecot's LDA write them. :class:`UnixConverter` turns one into the other incrementally, so
a message is never held in memory as a whole, and optionally applies mboxrd ``>From ``
quoting on the way.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO, Final

__all__ = [
    "CHUNK_BYTES",
    "MessageReadError",
    "MessageSource",
    "UnixConverter",
    "iter_chunks",
    "with_prepend",
]

#: Bytes read from the message per step.
CHUNK_BYTES: Final = 64 * 1024

MessageSource = BinaryIO | bytes
"""A message: an open binary file (read from its current position) or the bytes."""

_FROM: Final = b"From "


class MessageReadError(Exception):
    """Reading the message failed with an ``OSError`` (the cause is chained)."""


def iter_chunks(message: MessageSource, size: int = CHUNK_BYTES) -> Iterator[bytes]:
    """Yield the message in pieces of at most ``size`` bytes.

    Raises:
        MessageReadError: ``message.read()`` raised an ``OSError``. Other exceptions from
            ``read()`` propagate unchanged.
    """
    if isinstance(message, bytes | bytearray | memoryview):
        view = memoryview(message)
        for start in range(0, len(view), size):
            yield bytes(view[start : start + size])
        return
    while True:
        try:
            chunk = message.read(size)
        except OSError as exc:
            raise MessageReadError(exc.strerror or str(exc)) from exc
        if not chunk:
            return
        yield chunk


def with_prepend(prepend: bytes, message: MessageSource) -> Iterator[bytes]:
    """Yield ``prepend`` (when not empty), then the message in chunks (see iter_chunks)."""
    if prepend:
        yield prepend
    yield from iter_chunks(message)


class UnixConverter:
    """Convert CRLF to LF incrementally, optionally with mboxrd ``From `` quoting.

    mboxrd (see qmail's mbox(5) and RFC 4155 §2): every line matching ``^>*From `` gets one
    more leading ``>``, so a reader strips exactly one again.

    Args:
        quote_from: apply mboxrd quoting.

    Attributes:
        size: bytes produced so far.
        newlines: LF bytes produced so far (a Maildir ``W=`` size is ``size + newlines``).
        last: the last byte produced (``b""`` before any).
    """

    __slots__ = ("_at_line_start", "_pending_cr", "_prefix", "_quote", "last", "newlines", "size")

    def __init__(self, *, quote_from: bool = False) -> None:
        self._quote = quote_from
        self._pending_cr = False
        self._at_line_start = True
        self._prefix = bytearray()
        self.size = 0
        self.newlines = 0
        self.last = b""

    def feed(self, data: bytes) -> bytes:
        """Convert the next piece of input; return the output ready so far."""
        if self._pending_cr:
            data = b"\r" + data
            self._pending_cr = False
        if data.endswith(b"\r"):
            self._pending_cr = True
            data = data[:-1]
        data = data.replace(b"\r\n", b"\n")
        if self._quote:
            data = self._quote_from(data)
        return self._count(data)

    def finish(self) -> bytes:
        """Return what is still held back (a trailing CR, an incomplete ``>>Fro`` prefix)."""
        out = b"\r" if self._pending_cr else b""
        self._pending_cr = False
        if self._quote:
            out = self._quote_from(out) + bytes(self._prefix)
            self._prefix.clear()
        return self._count(out)

    def _count(self, data: bytes) -> bytes:
        if data:
            self.size += len(data)
            self.newlines += data.count(b"\n")
            self.last = data[-1:]
        return data

    def _quote_from(self, data: bytes) -> bytes:
        out = bytearray()
        pos = 0
        length = len(data)
        while pos < length:
            if not self._at_line_start:
                newline = data.find(b"\n", pos)
                if newline < 0:
                    out += data[pos:]
                    break
                out += data[pos : newline + 1]
                pos = newline + 1
                self._at_line_start = True
                continue
            # At a line start: collect ">*From " as far as the input goes.
            byte = data[pos : pos + 1]
            gts = len(self._prefix) - len(self._prefix.lstrip(b">"))
            matched = len(self._prefix) - gts
            if matched == 0 and byte == b">":
                self._prefix += byte
                pos += 1
                continue
            if byte == _FROM[matched : matched + 1]:
                self._prefix += byte
                pos += 1
                if matched + 1 == len(_FROM):
                    out += b">" + self._prefix
                    self._prefix.clear()
                    self._at_line_start = False
                continue
            out += self._prefix
            self._prefix.clear()
            self._at_line_start = False
            if byte == b"\n":
                out += byte
                pos += 1
                self._at_line_start = True
        return bytes(out)
