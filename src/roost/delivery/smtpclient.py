"""The smtp transport's client connection: SMTP replies over one TCP (or TLS) stream.

A small client of roost's own on :class:`asyncio.Protocol`, in place of aiosmtplib, for one
reason: **PIPELINING** (RFC 2920). aiosmtplib's protocol parses one reply per read and drops
data that arrives while no command is waiting, so it cannot take the replies to MAIL,
RCPT... and DATA sent in one write. Here every complete reply that arrives is parsed into a
queue, whatever was asked, and :meth:`SmtpConnection.read` takes them in order; the caller
(:mod:`roost.delivery.smtp`) decides what to send together. The measured effect is in
docs/outbound.md ("Why roost has its own SMTP client").

What the connection does: the greeting, EHLO (extensions parsed as aiosmtplib does,
old-style ``AUTH=`` included), HELO, STARTTLS (``loop.start_tls``, with RFC 3207 §4.2's
defence: anything received before the handshake is discarded), AUTH PLAIN and LOGIN
(RFC 4954), single commands and raw writes, QUIT. It decides nothing about mail: what a
reply means is :mod:`roost.delivery.nexthop`'s job.

Errors: :class:`ClientTimeout` (no reply within the stage's time limit), :class:`ClientLost`
(the connection closed or broke), :class:`ClientProtocolError` (a line that is not an SMTP
reply, or a reply too long); all are :class:`ClientError`. Replies, whatever their code,
are returned, never raised.

See Also: RFC 5321 §4.2 (replies), §4.1.1.1 (EHLO); RFC 2920; RFC 3207; RFC 4954.
"""

from __future__ import annotations

import asyncio
import base64
import re
import socket
import ssl
from collections import deque
from typing import Final, cast

from roost.delivery.nexthop import Reply

__all__ = [
    "MAX_REPLY_BYTES",
    "ClientError",
    "ClientLost",
    "ClientProtocolError",
    "ClientTimeout",
    "SmtpConnection",
    "parse_extensions",
]

#: At most this many bytes in one reply (all its lines); more is a protocol error.
MAX_REPLY_BYTES: Final = 32768

_CONTROLS: Final = re.compile(rb"[\x00-\x1f\x7f]")
_OLD_AUTH: Final = re.compile(r"auth=(.*)", re.IGNORECASE)


class ClientError(Exception):
    """The connection cannot go on (the subclass says why)."""


class ClientTimeout(ClientError):
    """No complete reply within the time limit."""


class ClientLost(ClientError):
    """The connection was closed or broke."""


class ClientProtocolError(ClientError):
    """The server sent something that is not an SMTP reply."""


def parse_extensions(text: str) -> dict[str, str]:
    """The EHLO reply's extensions: lower-case keyword -> its parameters (``""``: none).

    ``text`` is the reply's text, lines joined with ``\\n``; the first line (the server's
    name) is skipped. ``AUTH=PLAIN LOGIN`` (the pre-RFC 4954 form) counts as ``auth``.

    See Also: RFC 5321 §4.1.1.1; RFC 1869 §4.3.
    """
    extensions: dict[str, str] = {}
    for raw in text.split("\n")[1:]:
        line = raw.strip()
        if not line:
            continue
        old = _OLD_AUTH.fullmatch(line)
        if old is not None:
            extensions["auth"] = old.group(1)
            continue
        keyword, _, params = line.partition(" ")
        extensions[keyword.lower()] = params
    return extensions


class _Protocol(asyncio.Protocol):
    """Parses every reply that arrives into a queue; wakes the one reader waiting."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._lines: list[bytes] = []
        self._size = 0
        self.replies: deque[tuple[int, str]] = deque()
        self.error: ClientError | None = None
        self._waiter: asyncio.Future[None] | None = None
        # the time limit of the read waiting now, and the one timer that enforces it
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def connection_lost(self, exc: Exception | None) -> None:
        if self.error is None:
            self.error = ClientLost(f"connection lost: {exc}" if exc else "connection closed")
        self.transport = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._wake()

    def eof_received(self) -> bool:
        if self.error is None:
            self.error = ClientLost("the server closed the connection")
        self._wake()
        return False

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        start = 0
        complete = False
        while True:
            end = buffer.find(b"\n", start)
            if end < 0:
                break
            line = bytes(buffer[start:end]).rstrip(b"\r")
            start = end + 1
            self._size += len(line)
            code = line[:3]
            if (
                len(code) != 3
                or not code.isdigit()
                or line[3:4] not in (b"", b" ", b"-")
                or self._size > MAX_REPLY_BYTES
            ):
                text = line[:80].decode("utf-8", "replace")
                self._fail(ClientProtocolError(f"malformed SMTP reply line: {text!r}"))
                return
            if line[3:4] == b"-":
                self._lines.append(line[4:])
                continue
            lines, self._lines, self._size = self._lines, [], 0
            lines.append(line[4:])
            message = b"\n".join(lines) if len(lines) > 1 else lines[0]
            self.replies.append((int(code), message.decode("utf-8", "surrogateescape")))
            complete = True
        if start:
            del buffer[:start]
        if len(buffer) > MAX_REPLY_BYTES:
            self._fail(ClientProtocolError("SMTP reply line too long"))
            return
        if complete:
            self._wake()

    def _fail(self, error: ClientError) -> None:
        self.error = error
        self._buffer.clear()
        if self.transport is not None:
            self.transport.abort()
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def discard_input(self) -> None:
        """Forget what was received and not read (before a TLS handshake)."""
        self._buffer.clear()
        self._lines.clear()
        self._size = 0
        self.replies.clear()

    async def wait(self, timeout: float) -> None:
        """Wait until a reply (or an error) arrives, at most ``timeout`` seconds.

        One timer per connection, not one per wait: it stays armed across waits and is
        moved only when a wait's limit is earlier than the time it is set for; when it
        fires before the limit of the wait then in progress it is set again for that limit.
        (Two timers created and cancelled per relayed message cost more than the rest of
        the wait.)
        """
        loop = self._loop
        deadline = loop.time() + timeout
        self._deadline = deadline
        if self._timer is None or self._timer_at > deadline:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = loop.call_at(deadline, self._check_deadline)
            self._timer_at = deadline
        waiter = loop.create_future()
        self._waiter = waiter
        try:
            await waiter
        finally:
            self._waiter = None

    def _check_deadline(self) -> None:
        self._timer = None
        waiter = self._waiter
        if waiter is None or waiter.done():
            return  # nothing waits: the next wait sets the timer again
        deadline = self._deadline
        if self._loop.time() + 0.001 >= deadline:  # timers may fire a little early
            waiter.set_exception(ClientTimeout("timed out waiting for the server's reply"))
        else:
            self._timer = self._loop.call_at(deadline, self._check_deadline)
            self._timer_at = deadline


class SmtpConnection:
    """One client connection to an SMTP server.

    Build it with :meth:`open`; read the greeting with :meth:`read`. Commands may be
    written several at a time (:meth:`write`) when the server offers PIPELINING; then one
    :meth:`read` per command, in order.

    Attributes:
        extensions: the last EHLO reply's extensions (:func:`parse_extensions`); empty
            after HELO or before EHLO.
    """

    def __init__(self, protocol: _Protocol, loop: asyncio.AbstractEventLoop) -> None:
        self._protocol = protocol
        self._loop = loop
        self.extensions: dict[str, str] = {}

    @classmethod
    async def open(cls, sock: socket.socket) -> SmtpConnection:
        """Wrap a connected socket (the caller connects: ``smtp_bind_address``, timeouts).

        Raises:
            OSError: the socket cannot be used.
        """
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_connection(lambda: _Protocol(loop), sock=sock)
        return cls(protocol, loop)

    @property
    def is_connected(self) -> bool:
        """The connection is open and nothing went wrong on it."""
        protocol = self._protocol
        return (
            protocol.error is None
            and protocol.transport is not None
            and not protocol.transport.is_closing()
        )

    @property
    def ssl_object(self) -> ssl.SSLObject | None:
        """The TLS session after :meth:`starttls`, else None."""
        transport = self._protocol.transport
        return None if transport is None else transport.get_extra_info("ssl_object")

    def write(self, data: bytes) -> None:
        """Send bytes as they are (commands ending in CRLF, or the dot-stuffed content).

        Raises:
            ClientLost: the connection is closed.
        """
        protocol = self._protocol
        if protocol.error is not None:
            raise protocol.error
        transport = protocol.transport
        if transport is None or transport.is_closing():
            raise ClientLost("connection closed")
        transport.write(data)

    async def read_raw(self, timeout: float) -> tuple[int, str]:
        """The next reply as (code, text with its lines joined by ``\\n``), waiting at
        most ``timeout`` seconds for it.

        Raises:
            ClientTimeout: no complete reply in time.
            ClientLost: the connection closed first.
            ClientProtocolError: the server sent junk.
        """
        protocol = self._protocol
        replies = protocol.replies
        while not replies:
            if protocol.error is not None:
                raise protocol.error
            await protocol.wait(timeout)
        return replies.popleft()

    async def read(self, timeout: float) -> Reply:
        """The next reply (:meth:`read_raw`, made safe for logs by :meth:`Reply.of`).

        Raises:
            ClientError: as :meth:`read_raw`.
        """
        code, message = await self.read_raw(timeout)
        return Reply.of(code, message)

    def send(self, line: bytes) -> None:
        """Write one command line (without CRLF); its reply is read later.

        Raises:
            ValueError: the line holds a control character (CR, LF, NUL...).
            ClientLost: the connection is closed.
        """
        if _CONTROLS.search(line):
            raise ValueError("command contains a control character")
        self.write(line + b"\r\n")

    async def command(self, line: bytes, timeout: float) -> Reply:
        """Send one command line (without CRLF) and read its reply.

        Raises:
            ValueError: the line holds a control character (CR, LF, NUL...).
            ClientError: as :meth:`read`.
        """
        self.send(line)
        return await self.read(timeout)

    async def ehlo(self, name: str, timeout: float) -> Reply:
        """EHLO; on 250 :attr:`extensions` holds what the server offers."""
        self.extensions = {}
        self.send(b"EHLO " + name.encode())
        code, text = await self.read_raw(timeout)
        if 200 <= code < 300:
            self.extensions = parse_extensions(text)
        return Reply.of(code, text)

    async def helo(self, name: str, timeout: float) -> Reply:
        """HELO (no extensions)."""
        self.extensions = {}
        return await self.command(b"HELO " + name.encode(), timeout)

    async def starttls(
        self, context: ssl.SSLContext, server_hostname: str | None, timeout: float
    ) -> Reply:
        """STARTTLS, and the handshake when the server answers 220.

        Returns the reply to STARTTLS; when it is 220 the connection is encrypted on
        return, and :attr:`extensions` is empty until the next EHLO.

        Raises:
            ssl.SSLCertVerificationError: the certificate was refused (verify/secure).
            ssl.SSLError: the handshake failed.
            ClientTimeout: the reply or the handshake took too long.
            ClientLost: the connection broke.
        """
        reply = await self.command(b"STARTTLS", timeout)
        if reply.code != 220:
            return reply
        protocol = self._protocol
        protocol.discard_input()  # RFC 3207 §4.2: nothing may come before the handshake
        transport = protocol.transport
        if transport is None or protocol.error is not None:
            raise ClientLost("connection closed before the TLS handshake")
        try:
            tls_transport = await self._loop.start_tls(
                transport,
                protocol,
                context,
                server_side=False,
                server_hostname=server_hostname,
                ssl_handshake_timeout=timeout,
            )
        except (TimeoutError, ConnectionAbortedError):
            raise ClientTimeout("timed out during the TLS handshake") from None
        except ConnectionError as exc:
            raise ClientLost(f"connection lost during the TLS handshake: {exc}") from None
        if tls_transport is None:
            raise ClientLost("connection closed during the TLS handshake")
        protocol.transport = tls_transport
        self.extensions = {}
        return reply

    async def auth_plain(self, user: str, password: str, timeout: float) -> Reply:
        """AUTH PLAIN with an initial response (RFC 4616); 235 means accepted."""
        token = base64.b64encode(f"\0{user}\0{password}".encode())
        return await self.command(b"AUTH PLAIN " + token, timeout)

    async def auth_login(self, user: str, password: str, timeout: float) -> Reply:
        """AUTH LOGIN (two 334 challenges); 235 means accepted."""
        reply = await self.command(b"AUTH LOGIN", timeout)
        for secret in (user, password):
            if reply.code != 334:
                return reply
            reply = await self.command(base64.b64encode(secret.encode()), timeout)
        return reply

    async def quit(self, timeout: float) -> None:
        """QUIT, wait for the reply (at most ``timeout`` s), then close. Never raises."""
        try:
            await self.command(b"QUIT", timeout)
        except (ClientError, OSError):
            pass
        finally:
            self.close()

    def close(self) -> None:
        """Close the connection at once (unsent data is dropped)."""
        transport = self._protocol.transport
        if transport is not None:
            transport.abort()
